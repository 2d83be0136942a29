"""What the greedy polish of the later passes costs: ``recover`` with and without it, side by side.

    python -m benchmarks.greedy_cost [--repeat 3] [--json FILE]

The greedy read (``jaxpurify._polish``) runs only in passes after the first, on the columns the
first pass left uncertified; it is switched by the private constant ``jaxpurify._solver.GREEDY``
(not an option: this benchmark flips it and clears JAX's caches so the solver is traced again).
Three problems, float32, each timed warm: ``--repeat`` rounds, in each both settings (traced and
compiled again, then timed twice); the best of each setting:

* **core**: ``benchmarks.core``'s batch (K = 256, n = 64, m = 512, 15% gross errors 1–1e3×):
  the common path, where the first pass certifies nearly everything;
* **hard**: K = 128, n = 32, m = 2048, 20 errors per column of 0.01–1000× (later passes matter);
* **small**: ``benchmarks.lp_check``'s small set at K = 64, n = 16 (2400 columns of flipped
  bits, gross errors 0.01–1000×, zeroed and negated entries).

Reported per problem: seconds with and without, their ratio, and columns certified by each.  Run
it once with ``OPENBLAS_NUM_THREADS=1`` and once without, and say the load (``uptime``): the
machine is shared and timings are ratios only.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

import jaxpurify as jp
from benchmarks._common import write_json
from benchmarks.lp_check import small_set
from benchmarks.problems import machine, problem
from jaxpurify import _solver


def _hard(seed: int = 0):
    """K = 128, n = 32, 2048 columns, 20 errors each of 0.01–1000 × the column's rms."""
    rng = np.random.default_rng(seed)
    K, n, m, k = 128, 32, 2048, 20
    A = rng.standard_normal((K, n)) / np.sqrt(n)
    Y = A @ rng.standard_normal((n, m))
    rms = np.sqrt(np.mean(Y**2, axis=0))
    idx = np.argsort(rng.random((K, m)), axis=0)[:k]
    mag = 10.0 ** rng.uniform(-2, 3, (k, m)) * rng.choice([-1.0, 1.0], (k, m)) * rms
    np.put_along_axis(Y, idx, np.take_along_axis(Y, idx, 0) + mag, axis=0)
    return A.astype(np.float32), Y.astype(np.float32)


def problems() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    A, _, Y = problem(256, 64, 512, 0.15)
    As, Ys, _, _ = small_set(np.random.default_rng(0), 2400, 64, 16)
    return {"core": (A.astype(np.float32), Y.astype(np.float32)), "hard": _hard(), "small": (As, Ys)}


def _run(A, Y, greedy: bool) -> tuple[float, int]:
    _solver.GREEDY = greedy
    t0 = time.perf_counter()
    out = jax.block_until_ready(jp.recover(A, Y))
    return time.perf_counter() - t0, int(np.asarray(out.certified).sum())


def measure(repeat: int = 3, log=print) -> dict:
    rows = []
    saved = _solver.GREEDY
    try:
        for name, (A, Y) in problems().items():
            best = {True: np.inf, False: np.inf}
            cert = {}
            for _ in range(repeat):  # rounds, the settings alternating within each
                for greedy in (True, False):
                    jax.clear_caches()  # the constant is read at trace time: trace and compile again
                    _run(A, Y, greedy)
                    for _ in range(2):
                        t, cert[greedy] = _run(A, Y, greedy)
                        best[greedy] = min(best[greedy], t)
            row = dict(
                problem=name,
                K=int(A.shape[0]),
                n=int(A.shape[1]),
                columns=int(Y.shape[1]),
                seconds_greedy=best[True],
                seconds_plain=best[False],
                ratio=best[True] / best[False],
                certified_greedy=cert[True],
                certified_plain=cert[False],
            )
            rows.append(row)
            log(row)
    finally:
        _solver.GREEDY = saved
        jax.clear_caches()
    return dict(
        rows=rows,
        machine=machine(),
        openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
        load=os.getloadavg(),
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    load0 = os.getloadavg()
    result = measure(a.repeat)
    result["load_before"] = load0
    print(f"OPENBLAS_NUM_THREADS={result['openblas_threads']}, load {load0} → {result['load']}")
    print("| problem | K | n | columns | greedy s | plain s | ratio | certified greedy / plain |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['problem']} | {r['K']} | {r['n']} | {r['columns']} | {r['seconds_greedy']:.3f} | "
            f"{r['seconds_plain']:.3f} | {r['ratio']:.2f} | {r['certified_greedy']} / {r['certified_plain']} |"
        )
    if a.json:
        write_json(a.json, result)
    return result


if __name__ == "__main__":
    main()
