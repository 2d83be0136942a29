"""Benchmark suite entry point: recover against LP peers, side by side in one run.

    python -m benchmarks.run [--quick]

Peers, each on the same problem and timed on a sample of its columns (extrapolated; said in the
output): HiGHS (scipy.optimize.linprog), CVXPY with its default solver and a Parameter reused
across columns (its fastest use), and scikit-learn's QuantileRegressor(quantile=0.5, alpha=0,
solver="highs").  A peer that is not installed is reported as such.  Writes
benchmarks/results/peers.json and benchmarks/results/summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

import jaxpurify as jp
from benchmarks.core import problem, rel_err
from jaxpurify.experiments._common import lad_highs

HERE = os.path.dirname(__file__)


def cvxpy_solver(A):
    import cvxpy as cp

    K, n = A.shape
    x, y = cp.Variable(n), cp.Parameter(K)
    prob = cp.Problem(cp.Minimize(cp.norm1(y - A @ x)))

    def solve(col):
        y.value = col
        prob.solve()
        return np.asarray(x.value)

    return solve, lambda: prob.solver_stats.solver_name


def quantile_solver(A):
    from sklearn.linear_model import QuantileRegressor

    def solve(col):
        return QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs", fit_intercept=False).fit(A, col).coef_

    return solve, lambda: "HiGHS via QuantileRegressor"


def time_peer(make, A, Y, X, cols):
    try:
        solve, name = make(A)
    except ImportError as e:
        return {"available": False, "reason": str(e)}
    solve(Y[:, cols[0]])  # warm-up (CVXPY canonicalization)
    t0 = time.perf_counter()
    xs = np.stack([solve(Y[:, j]) for j in cols], axis=1)
    dt = (time.perf_counter() - t0) / len(cols)
    return {"available": True, "solver": name(), "seconds_per_column": dt, "columns_per_s": 1 / dt,
            "columns_timed": len(cols), "max_rel_err": float(rel_err(xs, X[:, cols]).max())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer sampled peer columns")
    a = p.parse_args(argv)
    K, n, m, rho = 256, 64, 512, 0.15
    A, X, Y = problem(K, n, m, rho)
    A32, Y32 = A.astype(np.float32), Y.astype(np.float32)
    jax.block_until_ready(jp.recover(A32, Y32))
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = jax.block_until_ready(jp.recover(A32, Y32))
        ts.append(time.perf_counter() - t0)
    ours = {"seconds": min(ts), "columns_per_s": m / min(ts), "max_rel_err": float(rel_err(out.x, X).max()),
            "certified": int(np.asarray(out.certified).sum())}
    ncols = 4 if a.quick else 32
    cols = np.linspace(0, m - 1, ncols).astype(int)
    peers = {
        "HiGHS (linprog)": time_peer(lambda A: (lambda c: lad_highs(A, c), lambda: "HiGHS"), A, Y, X, cols),
        "CVXPY (Parameter reused)": time_peer(cvxpy_solver, A, Y, X, cols),
        "scikit-learn QuantileRegressor": time_peer(quantile_solver, A, Y, X, cols),
        "MPAX": {"available": False, "reason": "not measured yet"},
    }
    lines = [f"# recover vs LP peers (K={K}, n={n}, m={m}, {rho:.0%} gross errors)", "",
             f"machine: {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}", "",
             "| solver | columns/s | max rel err | ratio recover/peer |", "|---|---|---|---|",
             f"| jaxpurify.recover (float32, all {m} columns) | {ours['columns_per_s']:.0f} | {ours['max_rel_err']:.1e} | 1 |"]
    for name, r in peers.items():
        if r["available"]:
            r["ratio"] = ours["columns_per_s"] / r["columns_per_s"]
            lines.append(f"| {name}: {r['solver']} ({r['columns_timed']} columns, extrapolated) | "
                         f"{r['columns_per_s']:.1f} | {r['max_rel_err']:.1e} | {r['ratio']:.0f}× |")
        else:
            lines.append(f"| {name} | not available: {r['reason']} | | |")
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "peers.json"), "w") as f:
        json.dump({"recover": ours, "peers": peers, "K": K, "n": n, "m": m, "rho": rho}, f, indent=1)
    with open(os.path.join(HERE, "results", "summary.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
