"""Cross-check against the exact LP: is ``recover`` ever worse than HiGHS on the same stored values?

    python -m benchmarks.lp_check [--sets small,campaign] [--small 2400] [--shapes 64x16,32x16]
                                  [--per-regime 256] [--K 16,64] [--ratios 1.5,2,4,8] [--json FILE]
                                  [--save FILE.npz]

A benchmark, not a test.  Two sets of float32 columns, each solved by ``recover`` (float32) and, one
column at a time, by HiGHS (``scipy.optimize.linprog``: min ‖y − A x‖₁ as an LP, in float64 on the
same stored float32 values, non-finite entries dropped):

* **small** (``--small`` columns per shape ``--shapes``, default K = 64, n = 16): 1 to ⌊(K − n)/2⌋
  changed entries per column (within the uniqueness bound 2k < K − n + 1), one of five kinds per
  column: a flipped mantissa bit, a flipped bit anywhere (exponent flips to ±Inf/NaN are erasures),
  gross errors of 0.01–1000 × the rms weight, entries zeroed, entries negated; weights at scale
  10^U(−3, 3).
* **campaign** (``--per-regime`` columns per regime (K, K/n)): the fault campaign's entry-fault
  columns (``benchmarks.campaign.entry_batch``: six models, rates U(0, 0.6), scales 10^U(−30, 30)).

A column is **LP-exact** when HiGHS's x is within 1e-6 (relative, ‖x − θ‖/‖θ‖) of the clean latent θ,
and **recover-exact** when ``recover``'s is within ``EXACT`` (1e-5).  The goal: every LP-exact column
certified and recover-exact.  Reported per set and kind: columns, LP-exact, certified, LP-exact but
not certified-exact (with the result codes), certified but wrong (error above both EXACT and the
column's own bound: must be 0).  HiGHS treats |b| ≥ 1e20 as infinite, so each column is scaled by
a power of two (exact) and entries beyond 1e12 × its median are clipped there (an LP's optimum
does not move when an entry it already leaves as an outlier grows further).

``--save`` writes the instances (A per shape, Y, θ, the LP's x) to an ``.npz``.  The same
generator (``small_set``), seeded, makes the fixed sets of ``tests/test_lp_exact.py``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

import jaxpurify as jp
from benchmarks import campaign
from benchmarks._common import report
from benchmarks.highs import lad_highs
from benchmarks.problems import machine
from jaxpurify import RESULTS

LP_EXACT = 1e-6
EXACT = 1e-5
KINDS = ("mantissa", "bit", "gross", "zeroed", "negated")
CLIP = 1e12


def lad_lp(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ‖y − A x‖₁ by HiGHS in float64 over the finite entries of y (see the module docstring
    for the power-of-two scaling and the clipping); NaN where HiGHS finds no optimum."""
    fin = np.isfinite(y)
    A, y = A[fin].astype(np.float64), y[fin].astype(np.float64)
    nz = np.abs(y[y != 0])
    s = 2.0 ** np.round(np.log2(np.median(nz))) if nz.size else 1.0
    return lad_highs(A, np.clip(y / s, -CLIP, CLIP), strict=False) * s


def rel(x: np.ndarray, X: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    num, den = np.linalg.norm(x - X, axis=0), np.linalg.norm(X, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.inf, 0.0))


def small_set(rng, columns: int, K: int = 64, n: int = 16):
    """(A, Y, θ, kind per column) of the small set (module docstring): 1 to ⌊(K − n)/2⌋ (the
    uniqueness bound) changed entries per column, one kind per column in turn."""
    A = (rng.standard_normal((K, n)) / np.sqrt(n)).astype(np.float32)
    X = rng.standard_normal((n, columns)) * 10.0 ** rng.uniform(-3, 3, columns)
    Y = (A.astype(np.float64) @ X).astype(np.float32)
    kinds = np.array([KINDS[i % len(KINDS)] for i in range(columns)])
    rms = np.sqrt(np.mean(np.square(Y.astype(np.float64)), axis=0))
    for j in range(columns):
        rows = rng.choice(K, int(rng.integers(1, (K - n) // 2 + 1)), replace=False)
        v = Y[rows, j]
        if kinds[j] in ("mantissa", "bit"):
            hi = 23 if kinds[j] == "mantissa" else 32
            bit = rng.integers(0, hi, rows.size).astype(np.uint32)
            Y[rows, j] = (v.view(np.uint32) ^ (np.uint32(1) << bit)).view(np.float32)
        elif kinds[j] == "gross":
            mag = 10.0 ** rng.uniform(-2, 3, rows.size) * rms[j] * rng.choice([-1, 1], rows.size)
            Y[rows, j] = (v + mag).astype(np.float32)
        elif kinds[j] == "zeroed":
            Y[rows, j] = 0
        else:
            Y[rows, j] = -v
    return A, Y, X, kinds


def campaign_set(rng, K: int, ratio: float, columns: int, seed: int):
    """(A, Y, θ, model per column): ``columns`` of the campaign's float32 entry-fault columns."""
    cb, name = campaign._codebook(K, ratio, "float32", 64, seed)
    A = np.asarray(cb.matrix(name, "float32"))
    width = -(-columns // campaign.GROUP) * campaign.GROUP
    Y, X, _, model = campaign.entry_batch(rng, A, width, "float32")
    return A, Y[:, :columns], X[:, :columns], model[:columns]


def judge(A, Y, X, log=print, pivots: int = 1) -> dict[str, np.ndarray]:
    """LP and ``recover`` (with ``pivots``: the simplex stage, ``recover``'s default 1) on
    every column: errors, certificate, code, bound, LP's x."""
    t0 = time.perf_counter()
    x_lp = np.stack([lad_lp(A, Y[:, j]) for j in range(Y.shape[1])], axis=1)
    t_lp = time.perf_counter() - t0
    out = jp.recover(A, Y, pivots=pivots)
    t0 = time.perf_counter()
    out = jax.block_until_ready(jp.recover(A, Y, pivots=pivots))
    t_rec = time.perf_counter() - t0
    log(f"  K={A.shape[0]} n={A.shape[1]}: {Y.shape[1]} columns, HiGHS {t_lp:.1f} s, recover {t_rec:.2f} s (warm)")
    return dict(
        x_lp=x_lp,
        lp_err=rel(x_lp, X),
        err=rel(out.x, X),
        certified=np.asarray(out.certified),
        code=np.asarray(out.result),
        bound=np.asarray(out.bound, np.float64),
        lp_seconds=np.full(Y.shape[1], t_lp / Y.shape[1]),
    )


def summary(res: dict[str, np.ndarray]) -> dict:
    lp_ok = res["lp_err"] <= LP_EXACT
    cert, err, bound = res["certified"], res["err"], res["bound"]
    good = cert & (err <= EXACT)
    miss = lp_ok & ~good
    codes, counts = np.unique(res["code"][miss], return_counts=True)
    return dict(
        columns=int(cert.size),
        lp_exact=int(lp_ok.sum()),
        recover_exact=int((err <= EXACT).sum()),
        certified=int(cert.sum()),
        lp_exact_not_certified_exact=int(miss.sum()),
        miss_codes={RESULTS.message(c).split(":")[0][:60]: int(k) for c, k in zip(codes, counts)},
        miss_errors_above_1e4=int((miss & (err > 1e-4)).sum()),
        certified_wrong=int((cert & (err > np.maximum(EXACT, bound))).sum()),
        certified_not_lp_exact=int((cert & ~lp_ok).sum()),
        max_certified_error_over_bound=float(np.max(np.where(cert, err / np.maximum(bound, 1e-300), 0), initial=0)),
    )


def run(
    sets,
    small: int,
    per_regime: int,
    Ks,
    ratios,
    seed: int = 0,
    log=print,
    save: str | None = None,
    shapes=((64, 16),),
    pivots: int = 1,
) -> dict:
    rng = np.random.default_rng(seed)
    rows, keep = [], []
    for K, n in shapes if "small" in sets else ():
        A, Y, X, kinds = small_set(rng, small, K, n)
        res = judge(A, Y, X, log, pivots)
        keep.append((A, Y, X, res["x_lp"], kinds))
        for kind in KINDS:
            sel = kinds == kind
            rows.append(dict(set="small", K=K, n=n, kind=kind, **summary({k: v[..., sel] for k, v in res.items()})))
            log(f"small {kind}: {rows[-1]}")
    if "campaign" in sets:
        for K in Ks:
            for ratio in ratios:
                A, Y, X, model = campaign_set(rng, K, ratio, per_regime, seed + 1000 + len(rows))
                res = judge(A, Y, X, log, pivots)
                keep.append((A, Y, X, res["x_lp"], model))
                for kind in campaign.MODELS:
                    sel = model == kind
                    if sel.any():
                        s = summary({k: v[..., sel] for k, v in res.items()})
                        rows.append(dict(set="campaign", K=K, n=A.shape[1], kind=kind, **s))
                        log(f"campaign K={K} n={A.shape[1]} {kind}: {rows[-1]}")
    if save:
        arrays = {}
        for i, (A, Y, X, x_lp, kind) in enumerate(keep):
            arrays.update({f"A{i}": A, f"Y{i}": Y, f"X{i}": X, f"x_lp{i}": x_lp, f"kind{i}": kind.astype("U16")})
        np.savez_compressed(save, **arrays)
    tot = {}
    for r in rows:
        for k, v in r.items():
            if isinstance(v, int) and k not in ("K", "n"):
                tot[k] = tot.get(k, 0) + v
    return dict(rows=rows, total=tot, machine=machine(), load=os.getloadavg(), seed=seed, pivots=pivots)


def table(result: dict) -> str:
    head = (
        "| set | K | n | kind | columns | LP-exact | certified | LP-exact, not certified-exact | of them error > 1e-4 "
        "| certified wrong |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in result["rows"] + [dict(set="all", K="", n="", kind="", **result["total"])]:
        lines.append(
            f"| {r['set']} | {r['K']} | {r['n']} | {r['kind']} | {r['columns']:,} | {r['lp_exact']:,} | "
            f"{r['certified']:,} | {r['lp_exact_not_certified_exact']} | {r['miss_errors_above_1e4']} | "
            f"{r['certified_wrong']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="small,campaign")
    p.add_argument("--small", type=int, default=2400, help="columns of the small set per shape")
    p.add_argument("--shapes", default="64x16", help="K x n of the small set, comma-separated")
    p.add_argument("--per-regime", type=int, default=256)
    p.add_argument("--K", default="16,64")
    p.add_argument("--ratios", default="1.5,2,4,8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--save", default=None, help="write the instances and the LP's answers to this .npz")
    p.add_argument(
        "--pivots", type=int, default=1, help="recover's simplex stage (RecoverOptions.pivots; 0: without it)"
    )
    a = p.parse_args(argv)
    result = run(
        tuple(a.sets.split(",")),
        a.small,
        a.per_regime,
        tuple(int(k) for k in a.K.split(",")),
        tuple(float(r) for r in a.ratios.split(",")),
        a.seed,
        save=a.save,
        shapes=tuple(tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")),
        pivots=a.pivots,
    )
    result["command"] = "python -m benchmarks.lp_check " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    report(table(result), result, a.json)
    return result


if __name__ == "__main__":
    main()
