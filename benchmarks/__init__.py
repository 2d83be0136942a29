"""Benchmarks: ``python -m benchmarks.run`` (the suite) and ``python -m benchmarks.<module>``.

``problems`` (the shared test problem), ``peers`` (HiGHS, CVXPY, scikit-learn, MPAX),
``roofline`` (matmul peak, iteration FLOP rate, compile time, memory), ``resnet`` (end-to-end
purify of a ResNet-18-sized tree), ``suite`` (all of it in one run, JSON), ``report``
(summary.md and benchmarks/README.md's tables from that JSON), ``changes`` (solver v2's choices
switched off one at a time, side by side).
Peers are optional dependencies (``pip install -e ".[bench]"``); a missing one is reported.
"""
