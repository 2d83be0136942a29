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

import jax
import numpy as np

from benchmarks._common import write_json
from benchmarks.peers import highs, time_peer
from benchmarks.problems import problem
from benchmarks.suite import time_recover


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
    ours = time_recover(A, Y, X, repeat=a.repeat)
    cols = np.linspace(0, a.m - 1, a.highs_columns).astype(int)
    lp = time_peer(highs, A, Y, X, cols)
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}",
        "K": a.K,
        "n": a.n,
        "m": a.m,
        "rho": a.rho,
        "recover_seconds": ours["seconds"],
        "recover_first_call_seconds": ours["first_call_seconds"],
        "recover_columns_per_s": ours["columns_per_s"],
        "recover_max_rel_err": ours["max_rel_err"],
        "certified": f"{ours['certified']}/{a.m}",
        "iterations_median": ours["iterations_median"],
        "iterations_max": ours["iterations_max"],
        "highs_seconds_per_column": lp["seconds_per_column"],
        "highs_columns_timed": len(cols),
        "highs_columns_per_s": lp["columns_per_s"],
        "highs_max_rel_err": lp["max_rel_err"],
        "throughput_ratio": ours["columns_per_s"] / lp["columns_per_s"],
    }
    print(f"machine: {res['machine']}")
    print(f"problem: K={a.K} n={a.n} m={a.m}, {a.rho:.0%} gross errors per column")
    print(
        f"recover : {res['recover_seconds'] * 1e3:8.1f} ms for {a.m} columns = "
        f"{res['recover_columns_per_s']:10.0f} col/s  "
        f"(first call incl. compile {res['recover_first_call_seconds']:.2f} s; best of {a.repeat}); "
        f"max rel err {res['recover_max_rel_err']:.1e}; certified {res['certified']}; "
        f"ADMM iterations median {res['iterations_median']:.0f}, max {res['iterations_max']}"
    )
    print(
        f"HiGHS   : {res['highs_seconds_per_column'] * 1e3:8.1f} ms per column = "
        f"{res['highs_columns_per_s']:10.1f} col/s  "
        f"(timed on {len(cols)} of {a.m} columns after one warm-up, extrapolated); "
        f"max rel err {res['highs_max_rel_err']:.1e}"
    )
    print(f"throughput ratio recover / HiGHS: {res['throughput_ratio']:.0f}x  (target ≥ 300x at rel err ≤ 1e-5)")
    if a.json:
        write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
