"""What the greedy polish of the later passes costs: ``recover`` with and without it, side by side.

    python -m benchmarks.greedy_cost [--repeat 3] [--switch greedy|pivots] [--json FILE]

``--switch pivots`` measures the simplex stage instead (the option ``pivots``, on: 1, the
default, off: 0), the same way.

The greedy read (``jaxpurify._polish``) runs only in passes after the first, on the columns the
first pass left uncertified; it is switched by the private constant ``jaxpurify._solver.GREEDY``
(not an option: this benchmark flips it and clears JAX's caches so the solver is traced again).
Three problems, float32, each timed warm: ``--repeat`` rounds, in each both settings (traced and
compiled again, then timed twice); the best of each setting:

* **core**: ``benchmarks.core``'s batch (K = 256, n = 64, m = 512, 15% gross errors 1–1e3×):
  the common path, where the first pass certifies nearly everything;
* **hard**: K = 128, n = 32, m = 2048, 20 errors per column of 0.01–1000× (later passes matter);
* **small**: ``benchmarks.lp_check``'s small set at K = 64, n = 16 (2400 columns of flipped
  bits, gross errors 0.01–1000×, zeroed and negated entries);
* **noise**: K = 128, n = 32, 1024 columns of dense Gaussian noise: nothing to certify, every
  column uncertified within the count bound, and far from any answer (``_pivot.hopeful``);
* **noisy**: K = 128, n = 32, 1024 columns of a clean code plus dense noise at 1e-3 of each
  column's largest entry and 10% gross errors, without ``atol``: every column an inexact fit near
  an answer, so the simplex stage runs on each to its cap and certifies none (its worst case; with
  ``atol`` at the noise level the passes certify them and the stage does not run).

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
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal((128, 32)).astype(np.float32), rng.standard_normal((128, 1024)).astype(np.float32))
    An = (rng.standard_normal((128, 32)) / np.sqrt(32)).astype(np.float32)
    Yn = An.astype(np.float64) @ rng.standard_normal((32, 1024))
    Yn += 1e-3 * np.abs(Yn).max(0) * rng.standard_normal(Yn.shape)
    Yn[rng.random(Yn.shape) < 0.1] += 10.0
    return {
        "core": (A.astype(np.float32), Y.astype(np.float32)),
        "hard": _hard(),
        "small": (As, Ys),
        "noise": noise,
        "noisy": (An, Yn.astype(np.float32)),
    }


# what a run can switch: a private constant of the solver (read at trace time) or an option
SWITCHES = ("greedy", "pivots")


def _run(A, Y, on: bool, switch: str = "greedy") -> tuple[float, int]:
    kw = {}
    if switch == "greedy":
        _solver.GREEDY = on
    else:
        kw["pivots"] = 1 if on else 0
    t0 = time.perf_counter()
    out = jax.block_until_ready(jp.recover(A, Y, **kw))
    return time.perf_counter() - t0, int(np.asarray(out.certified).sum())


def measure(repeat: int = 3, log=print, switch: str = "greedy") -> dict:
    rows = []
    saved = _solver.GREEDY
    try:
        for name, (A, Y) in problems().items():
            best = {True: np.inf, False: np.inf}
            cert = {}
            for _ in range(repeat):  # rounds, the settings alternating within each
                for on in (True, False):
                    jax.clear_caches()  # the constant is read at trace time: trace and compile again
                    _run(A, Y, on, switch)
                    for _ in range(2):
                        t, cert[on] = _run(A, Y, on, switch)
                        best[on] = min(best[on], t)
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
        switch=switch,
        rows=rows,
        machine=machine(),
        openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
        load=os.getloadavg(),
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--switch", choices=SWITCHES, default="greedy")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    load0 = os.getloadavg()
    result = measure(a.repeat, switch=a.switch)
    result["load_before"] = load0
    print(f"OPENBLAS_NUM_THREADS={result['openblas_threads']}, load {load0} → {result['load']}")
    print(f"switch: {a.switch} (on: its default, plain: off)")
    print("| problem | K | n | columns | on s | plain s | ratio | certified on / plain |")
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
