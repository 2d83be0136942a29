"""LP peers of ``recover``, each solving the same columns one LP per column.

* HiGHS via ``scipy.optimize.linprog`` (float64, the exact simplex/IPM answer);
* CVXPY with its default solver, one ``Problem`` whose ``Parameter`` y is reused across columns
  (its fastest use: canonicalization happens once);
* scikit-learn ``QuantileRegressor(quantile=0.5, alpha=0, solver="highs")``;
* MPAX (``r2HPDHG``, a JAX first-order LP solver), vmapped over the sampled columns and jitted, in
  float64 with eps 1e-6 — float32 does not reach 1e-5 relative error — in a subprocess, because
  float64 is a process-wide JAX switch.

Peers are slow, so each is timed on a sample of columns and its throughput extrapolated; the
output says how many columns were timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from benchmarks.problems import problem, rel_err


def highs(A):
    from scipy.optimize import linprog  # noqa: F401  (ImportError → "not available")

    from benchmarks.highs import lad_highs

    return lambda col: lad_highs(A, col, strict=False), "HiGHS"


def cvxpy_default(A):
    import cvxpy as cp

    K, n = A.shape
    x, y = cp.Variable(n), cp.Parameter(K)
    prob = cp.Problem(cp.Minimize(cp.norm1(y - A @ x)))

    def solve(col):
        y.value = col
        prob.solve()
        return np.asarray(x.value)

    solve(np.zeros(K))  # canonicalize once, before timing
    return solve, prob.solver_stats.solver_name


def quantile_regressor(A):
    from sklearn.linear_model import QuantileRegressor

    def solve(col):
        return QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs", fit_intercept=False).fit(A, col).coef_

    return solve, "HiGHS via QuantileRegressor"


PEERS = {
    "HiGHS (linprog)": highs,
    "CVXPY (Parameter reused)": cvxpy_default,
    "scikit-learn QuantileRegressor": quantile_regressor,
}


def time_peer(make, A, Y, X, cols) -> dict:
    """Seconds per column on ``Y[:, cols]`` after a warm-up column; max relative error there."""
    try:
        solve, name = make(A)
    except ImportError as e:
        return {"available": False, "reason": f"not installed ({e.name})"}
    solve(Y[:, cols[0]])
    t0 = time.perf_counter()
    xs = np.stack([solve(Y[:, j]) for j in cols], axis=1)
    dt = (time.perf_counter() - t0) / len(cols)
    return {
        "available": True,
        "solver": name,
        "seconds_per_column": dt,
        "columns_per_s": 1 / dt,
        "columns_timed": len(cols),
        "max_rel_err": float(np.nanmax(rel_err(xs, X[:, cols]))),
    }


def mpax_peer(K, n, m, rho, columns, seed=0, eps=1e-6, timeout=900) -> dict:
    """MPAX in a float64 subprocess on columns ``linspace(0, m−1, columns)`` of the same problem."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.peers",
        "--K",
        str(K),
        "--n",
        str(n),
        "--m",
        str(m),
        "--rho",
        str(rho),
        "--columns",
        str(columns),
        "--seed",
        str(seed),
        "--eps",
        str(eps),
    ]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"available": False, "reason": f"did not finish in {timeout} s"}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"available": False, "reason": tail[:200]}
    return json.loads(lines[-1])


def _mpax_main(a) -> dict:
    try:
        import mpax
    except ImportError:
        return {"available": False, "reason": "not installed (mpax)"}
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    A, X, Y = problem(a.K, a.n, a.m, a.rho, a.seed)
    cols = np.linspace(0, a.m - 1, a.columns).astype(int)
    K, n = A.shape
    # min 1ᵀ(t⁺ + t⁻)  s.t.  A x + t⁺ − t⁻ = y,  t± ≥ 0
    Aeq = jnp.asarray(np.hstack([A, np.eye(K), -np.eye(K)]))
    c = jnp.asarray(np.r_[np.zeros(n), np.ones(2 * K)])
    lo = jnp.asarray(np.r_[np.full(n, -np.inf), np.zeros(2 * K)])
    hi = jnp.full(n + 2 * K, jnp.inf)
    G, h = jnp.zeros((0, n + 2 * K)), jnp.zeros(0)
    solver = mpax.r2HPDHG(eps_abs=a.eps, eps_rel=a.eps, verbose=False)
    solve = jax.jit(
        jax.vmap(
            lambda y: solver.optimize(mpax.create_lp(c, Aeq, y, G, h, lo, hi, use_sparse_matrix=False)).primal_solution[
                :n
            ]
        )
    )
    Yc = jnp.asarray(Y[:, cols].T)
    t0 = time.perf_counter()
    jax.block_until_ready(solve(Yc))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    xs = np.asarray(jax.block_until_ready(solve(Yc)))
    dt = (time.perf_counter() - t0) / len(cols)
    return {
        "available": True,
        "solver": f"MPAX r2HPDHG {mpax.__name__} (float64, eps {a.eps:g}, vmapped)",
        "seconds_per_column": dt,
        "columns_per_s": 1 / dt,
        "columns_timed": len(cols),
        "compile_seconds": first - dt * len(cols),
        "max_rel_err": float(rel_err(xs.T, X[:, cols]).max()),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="MPAX peer (run in its own process: it needs float64)")
    for k, t in (
        ("--K", int),
        ("--n", int),
        ("--m", int),
        ("--rho", float),
        ("--columns", int),
        ("--seed", int),
        ("--eps", float),
    ):
        p.add_argument(k, type=t, required=k not in ("--seed", "--eps"))
    p.set_defaults(seed=0, eps=1e-6)
    print(json.dumps(_mpax_main(p.parse_args())))
