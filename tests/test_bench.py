"""The benchmark problem and peers: what the suite's ratios rest on."""

import numpy as np
import pytest
from reference import lad_highs

from jaxpurify.bench import peers, problems


def test_problem_plants_exactly_k_gross_errors_per_column():
    A, X, Y = problems.problem(64, 16, 50, 0.2, seed=3)
    assert A.shape == (64, 16) and X.shape == (16, 50) and Y.shape == (64, 50)
    moved = np.abs(Y - A @ X) > 1e-9
    np.testing.assert_array_equal(moved.sum(0), round(0.2 * 64))
    scale = np.sqrt(np.mean((A @ X) ** 2))
    # magnitudes in [1, 1e3] × the rms of the clean values (up to the rms of the corrupted Y)
    d = np.abs(Y - A @ X)[moved]
    assert d.min() >= 0.5 * scale and d.max() <= 2e3 * scale
    A2, X2, Y2 = problems.problem(64, 16, 50, 0.2, seed=3)
    np.testing.assert_array_equal(Y, Y2)


def test_peer_timing_reports_the_peers_own_accuracy():
    A, X, Y = problems.problem(48, 12, 6, 0.1, seed=1)
    r = peers.time_peer(peers.highs, A, Y, X, np.array([0, 3, 5]))
    assert r["available"] and r["columns_timed"] == 3 and r["columns_per_s"] > 0
    ref = np.stack([lad_highs(A, Y[:, j]) for j in (0, 3, 5)], axis=1)
    assert r["max_rel_err"] == pytest.approx(float(problems.rel_err(ref, X[:, [0, 3, 5]]).max()), abs=1e-9)
    missing = peers.time_peer(lambda A: __import__("not_a_real_module_xyz"), A, Y, X, np.array([0]))
    assert missing == {"available": False, "reason": "not installed (not_a_real_module_xyz)"}
