"""Solver v2's targets in one run, side by side (issue 8):

1. at K = 256, K/n = 4, m = 512, 15% gross errors: ``recover``'s time in l2 projections
   ``Q(QᵀY)`` (same QR, same columns) and against HiGHS on a sample of the columns;
2. past the l1 boundary: K = 256, K/n ∈ {1.5, 2} × ρ ∈ {0.05, 0.15, 0.20, 0.25}: columns exact
   (relative error ≤ 1e-5) and certified, certified-but-wrong (must be 0), time per cell;
3. threading: ``recover`` as the library runs it, with the BLAS held to one thread from outside
   too (the ratio should be ≈ 1), and with the library's hold switched off
   (``JAXPURIFY_BLAS_THREADS=default``), to show what the hold is for.

    python -m benchmarks.solver [--quick] [--json FILE]

Times are best of ``--repeat`` warm calls; the load of the machine is printed with them.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxpurify as jp
from benchmarks._common import write_json
from benchmarks.peers import highs, time_peer
from benchmarks.problems import machine, problem, rel_err

EXACT = 1e-5


def _best(f, repeat: int) -> float:
    jax.block_until_ready(f())
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t0)
    return min(ts)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def target(repeat: int, highs_columns: int) -> dict:
    A, X, Y = problem(256, 64, 512, 0.15)
    A32, Y32 = jnp.asarray(A, jnp.float32), jnp.asarray(Y, jnp.float32)
    Q, _ = jnp.linalg.qr(A32)
    hi = jax.lax.Precision.HIGHEST
    proj = jax.jit(lambda q, y: jnp.matmul(q, jnp.matmul(q.T, y, precision=hi), precision=hi))
    t_proj = _best(lambda: proj(Q, Y32), repeat)
    t_rec = _best(lambda: jp.recover(A32, Y32).x, repeat)
    out = jp.recover(A32, Y32)
    err = rel_err(out.x, X)
    cols = np.linspace(0, 511, highs_columns).astype(int)
    lp = time_peer(highs, A, Y, X, cols)
    per_col_lp = lp["seconds_per_column"] if lp.get("available") else float("nan")
    return {
        "projection_ms": 1e3 * t_proj,
        "recover_ms": 1e3 * t_rec,
        "projections": t_rec / t_proj,
        "highs_ms_per_column": 1e3 * per_col_lp,
        "vs_highs": per_col_lp * 512 / t_rec,
        "certified": int(np.asarray(out.certified).sum()),
        "exact": int((err <= EXACT).sum()),
        "max_rel_err": float(err.max()),
        "load": _load(),
    }


def boundary(repeat: int, quick: bool) -> list[dict]:
    rows = []
    for ratio in (1.5, 2.0):
        for rho in (0.05, 0.25) if quick else (0.05, 0.15, 0.20, 0.25):
            n = int(256 / ratio)
            A, X, Y = problem(256, n, 512, rho)
            A32, Y32 = jnp.asarray(A, jnp.float32), jnp.asarray(Y, jnp.float32)
            t = _best(lambda A32=A32, Y32=Y32: jp.recover(A32, Y32).x, repeat)
            out = jp.recover(A32, Y32)
            err = rel_err(out.x, X)
            cert = np.asarray(out.certified)
            rows.append(
                {
                    "K/n": ratio,
                    "rho": rho,
                    "n": n,
                    "exact_certified": float(np.mean(cert & (err <= EXACT))),
                    "exact": float(np.mean(err <= EXACT)),
                    "certified_wrong": int(np.sum(cert & (err > EXACT))),
                    "seconds": t,
                    "load": _load(),
                }
            )
    return rows


def threads(repeat: int) -> dict:
    from threadpoolctl import threadpool_limits

    A, X, Y = problem(256, 64, 512, 0.15)
    A32, Y32 = jnp.asarray(A, jnp.float32), jnp.asarray(Y, jnp.float32)
    f = lambda: jp.recover(A32, Y32).x
    res = {}
    for _ in range(2):  # interleaved, best of both rounds
        res["library"] = min(res.get("library", 1e9), _best(f, repeat))
        with threadpool_limits(1, user_api="blas"):
            res["held"] = min(res.get("held", 1e9), _best(f, repeat))
        os.environ["JAXPURIFY_BLAS_THREADS"] = "default"
        try:
            res["unheld"] = min(res.get("unheld", 1e9), _best(f, repeat))
        finally:
            del os.environ["JAXPURIFY_BLAS_THREADS"]
    return {
        "library_ms": 1e3 * res["library"],
        "blas_held_ms": 1e3 * res["held"],
        "unheld_ms": 1e3 * res["unheld"],
        "library_over_held": res["library"] / res["held"],
        "unheld_over_held": res["unheld"] / res["held"],
        "load": _load(),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--highs-columns", type=int, default=32)
    p.add_argument("--json")
    a = p.parse_args(argv)
    print(machine())
    t = target(a.repeat, 8 if a.quick else a.highs_columns)
    print(
        f"target K=256 n=64 m=512 15%: projection {t['projection_ms']:.2f} ms, recover {t['recover_ms']:.1f} ms "
        f"= {t['projections']:.0f} projections; HiGHS {t['highs_ms_per_column']:.1f} ms/column → recover "
        f"{t['vs_highs']:.0f}× faster; certified {t['certified']}/512, exact {t['exact']}, "
        f"max rel err {t['max_rel_err']:.1e} (load {t['load']})"
    )
    b = boundary(a.repeat if not a.quick else 2, a.quick)
    for r in b:
        print(
            f"K=256 K/n={r['K/n']:<3} rho={r['rho']:.2f}: exact & certified {r['exact_certified']:.3f} "
            f"(exact {r['exact']:.3f}), certified but wrong {r['certified_wrong']}, {r['seconds'] * 1e3:.0f} ms "
            f"(load {r['load']})"
        )
    th = threads(a.repeat)
    print(
        f"threads: library {th['library_ms']:.1f} ms, BLAS held to 1 from outside {th['blas_held_ms']:.1f} ms "
        f"(ratio {th['library_over_held']:.2f}); library hold off {th['unheld_ms']:.1f} ms "
        f"(ratio {th['unheld_over_held']:.2f}) (load {th['load']})"
    )
    res = {"machine": machine(), "target": t, "boundary": b, "threads": th}
    if a.json:
        write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
