"""Core benchmark: recover() against HiGHS on the same batch, side by side in one run.

K = 256, n = 64, m = 512 columns, 15% gross errors per column (log-uniform 1–1e3 × weight scale).
HiGHS (scipy.optimize.linprog, method="highs") solves a sample of the columns one LP each and its
throughput is extrapolated from that sample (said in the output).  recover() is timed on the full
batch after a warm-up call (compile time reported separately), best of --repeat runs.

    python -m benchmarks.core [--highs-columns 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np

import jaxpurify as jp
from jaxpurify.bench.problems import problem, rel_err
from jaxpurify.experiments._common import lad_highs, write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--K", type=int, default=256)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--m", type=int, default=512)
    p.add_argument("--rho", type=float, default=0.15)
    p.add_argument("--highs-columns", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="also write the figures to this JSON file")
    a = p.parse_args(argv)

    A, X, Y = problem(a.K, a.n, a.m, a.rho)
    A32, Y32 = A.astype(np.float32), Y.astype(np.float32)

    t0 = time.perf_counter()
    out = jax.block_until_ready(jp.recover(A32, Y32))
    first = time.perf_counter() - t0
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(jp.recover(A32, Y32))
        times.append(time.perf_counter() - t0)
    t_ours = min(times)
    err_ours = rel_err(out.x, X)
    cert = np.asarray(out.certified)

    cols = np.linspace(0, a.m - 1, a.highs_columns).astype(int)
    t0 = time.perf_counter()
    xl = np.stack([lad_highs(A, Y[:, j]) for j in cols], axis=1)
    t_highs_col = (time.perf_counter() - t0) / len(cols)
    err_highs = rel_err(xl, X[:, cols])

    ours_cps = a.m / t_ours
    highs_cps = 1.0 / t_highs_col
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}",
        "K": a.K, "n": a.n, "m": a.m, "rho": a.rho,
        "recover_seconds": t_ours, "recover_first_call_seconds": first,
        "recover_columns_per_s": ours_cps,
        "recover_max_rel_err": float(err_ours.max()), "certified": f"{int(cert.sum())}/{a.m}",
        "iterations_median": float(np.median(np.asarray(out.iterations))),
        "iterations_max": int(np.max(np.asarray(out.iterations))),
        "highs_seconds_per_column": t_highs_col, "highs_columns_timed": len(cols),
        "highs_columns_per_s": highs_cps, "highs_max_rel_err": float(err_highs.max()),
        "throughput_ratio": ours_cps / highs_cps,
    }
    print(f"machine: {res['machine']}")
    print(f"problem: K={a.K} n={a.n} m={a.m}, {a.rho:.0%} gross errors per column")
    print(f"recover : {t_ours*1e3:8.1f} ms for {a.m} columns = {ours_cps:10.0f} col/s  "
          f"(first call incl. compile {first:.2f} s; best of {a.repeat}); max rel err {err_ours.max():.1e}; "
          f"certified {res['certified']}; ADMM iterations median {res['iterations_median']:.0f}, max {res['iterations_max']}")
    print(f"HiGHS   : {t_highs_col*1e3:8.1f} ms per column = {highs_cps:10.1f} col/s  "
          f"(timed on {len(cols)} of {a.m} columns, extrapolated); max rel err {err_highs.max():.1e}")
    print(f"throughput ratio recover / HiGHS: {res['throughput_ratio']:.0f}x  (target ≥ 300x at rel err ≤ 1e-5)")
    if a.json:
        write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
