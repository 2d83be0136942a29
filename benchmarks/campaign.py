"""Fault campaign (issue 10): does a certificate ever overstate, and does the seal see what l1 cannot?

    python -m benchmarks.campaign [--columns N] [--width W] [--trials T] [--K 256,1024]
                                       [--ratios 1.5,2] [--dtypes float32] [--out FILE]

A benchmark, not a test.  Regimes are (K, K/n, dtype) with K ∈ {16, 64, 256, 1024},
K/n ∈ {1.5, 2, 4, 8}, float32 and float64 (32 in all); each regime gets its own small codebook
(one leaf encoded along its last axis, so A is the codebook's secret K × n matrix) and:

* **entry faults**: batches of ``W`` columns y = A·(s·θ) in groups of 64 columns, each group with
  one scale s (10^U(−30, 30), every other group an exact power of two) and one contamination
  model at a rate ρ (0 for a tenth of the groups, else U(0, 0.6)): gross errors of magnitude
  10^U(−7, 30) times the weight scale, bit flips of any bit (mantissa, exponent, sign),
  erasures (NaN/±Inf) plus gross errors, entries stuck at zero, and structured faults (the same
  random rows, or the same contiguous block of rows, in every column of the group).  Each column
  is solved by ``recover`` and compared with its clean latent in float64.
* **in-range faults**: one sealed leaf of W columns (clean A·θ) with 5% of its columns zeroed,
  5% copied from another column, 2% negated, 2% doubled and 5% moved inside range(A) (y + A·z,
  the key-less span attack); ``recover`` says which are certified (l1 alone accepts them) and
  ``purify``'s seal verdict (per chunk of the leaf) whether each was detected.
* **within capacity, sealed**: one sealed leaf of W columns, each with k ≤ (K − n)/4 gross
  errors or exponent/sign flips and no tampering, purified: certified, ``report.ok``, and seal
  false alarms (failed chunks whose columns are all certified).

``--trials`` sealed leaves of each kind per regime (default 1); ``--columns 0`` runs them alone.

Per regime and per model it prints: columns, certified, certified outside the bound with the
corruption within the guarantee (k ≤ K' − n − k̂ changed entries; target 0), certified wrong
beyond the guarantee, exact (rel. error ≤ 1e-4 float32, 1e-10 float64) but uncertified, how loose
the bound is (median bound / true error; also over the certified columns with |I| = n+1 inliers,
where the bound carries the leverage factor of ``jaxpurify._certify``), and the
in-range faults: certified by l1 and undetected by the seal (target 0), plus seal false alarms
(failed chunks holding no faulted column), the smallest single-entry change purify's seal is sure
to detect (worst chunk, × max|W|), and the within-capacity trials.  ``--columns`` sets the entry-fault columns in all
(default 106,496: 4 batches of 1024 per regime at K ≤ 256, 1 at K = 1024, scaled to fit).
With ``--out FILE`` the JSON goes there too (the committed runs: ``benchmarks/results/campaign_entry.json``,
``campaign_in_range.json``; ``campaign.json`` is an earlier solver's).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
import warnings

import jax
import numpy as np

import jaxpurify as jp
from benchmarks._common import dump_json
from jaxpurify import contamination as C

KS = (16, 64, 256, 1024)
RATIOS = (1.5, 2.0, 4.0, 8.0)
DTYPES = ("float32", "float64")
GROUP = 64  # columns sharing one scale and one contamination model
MODELS = ("gross", "bit_flips", "erasures+gross", "stuck_zero", "rows", "block")
EXACT = {"float32": 1e-4, "float64": 1e-10}
FAULTS = (("zeroed", 0.05), ("copied", 0.05), ("negated", 0.02), ("doubled", 0.02), ("span", 0.05))


def _batches(K: int, columns: int, width: int) -> int:
    """Entry-fault batches of a regime: 4 at K ≤ 256, 1 at K = 1024 per 106,496 columns (none if 0)."""
    share = 1 if K == 1024 else 4
    return max(1, round(share * columns / 106_496 * 1024 / width)) if columns > 0 else 0


def _codebook(K: int, ratio: float, dtype: str, width: int, seed: int):
    leaf = np.zeros((width, K), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an int seed: reproducible on purpose (WeakKeyWarning)
        cb = jp.Codebook.create({"w": leaf}, seed, redundancy=ratio, select=lambda path, x: 1)
    (name,) = cb.groups
    return cb, name


def _contaminate(rng: np.random.Generator, y: np.ndarray, model: str, rate: float) -> np.ndarray:
    """One group of columns (K, c) in its dtype → contaminated copy (library models where they exist)."""
    key = int(rng.integers(1 << 31))
    K = y.shape[0]
    if model == "gross":
        return np.asarray(C.gross_errors(key, y, rate, axis=0, low=1e-7, high=1e30))
    if model == "bit_flips":
        return np.asarray(C.bit_flips(key, y, rate, bits=tuple(range(8 * y.dtype.itemsize))))
    if model == "erasures+gross":
        z = np.asarray(C.erasures(key, y, rate / 2))
        return np.asarray(C.gross_errors(key + 1, z, rate / 2, axis=0, low=1e-7, high=1e30))
    if model == "stuck_zero":
        return np.asarray(C.stuck_at(key, y, rate, value=0.0, axis=0))
    k = int(round(rate * K))
    rows = rng.choice(K, k, replace=False) if model == "rows" else (int(rng.integers(K)) + np.arange(k)) % K
    out = np.array(y, copy=True)
    fin = np.isfinite(y)
    rms = float(np.sqrt(np.mean(np.square(y[fin].astype(np.float64))))) if fin.any() else 1.0
    with np.errstate(over="ignore"):
        out[rows] = (y[rows] + C.error_values(rng, (k, y.shape[1]), rms, 1e-7, 1e30)).astype(y.dtype)
    return out


def entry_batch(rng, A: np.ndarray, width: int, dtype: str) -> list[dict]:
    """One batch of entry-fault columns: contaminated Y, clean latents X (float64), clean Y, model per column."""
    K, n = A.shape
    A64 = A.astype(np.float64)
    cols, xs, cleans, meta = [], [], [], []
    for g in range(width // GROUP):
        model = MODELS[int(rng.integers(len(MODELS)))]
        rate = 0.0 if rng.random() < 0.1 else float(rng.uniform(0, 0.6))
        u = rng.uniform(-30, 30)
        s = 2.0 ** round(u * math.log2(10)) if g % 2 == 0 else 10.0**u
        x = rng.standard_normal((n, GROUP)) * s
        clean = (A64 @ x).astype(dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # errors past the float range become ±Inf: erasures
            cols.append(_contaminate(rng, clean, model, rate))
        xs.append(x)
        cleans.append(clean)
        meta += [model] * GROUP
    return np.concatenate(cols, 1), np.concatenate(xs, 1), np.concatenate(cleans, 1), np.array(meta)


def judge(A, Y, X, clean, out, dtype) -> dict[str, np.ndarray]:
    """Per column: certified, bound, relative error vs the clean latent, changed entries k,
    usable rows K', flagged outliers k̂."""
    n = A.shape[1]
    x = np.asarray(out.x[0], np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        num = np.linalg.norm(x - X, axis=0)
        den = np.linalg.norm(x, axis=0)
        rel = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.inf, 0.0))
    fin = np.isfinite(Y)
    changed = fin & ~((Y == clean) | (np.isnan(Y) & np.isnan(clean)))
    k = changed.sum(0)
    usable = fin.sum(0)
    k_hat = (np.asarray(out.outliers[0]) & fin).sum(0)
    return dict(
        certified=np.asarray(out.certified[0]),
        bound=np.asarray(out.bound[0], np.float64),
        rel=rel,
        k=k,
        usable=usable,
        k_hat=k_hat,
        within=k <= usable - n - k_hat,
        exact=rel <= EXACT[dtype],
        n=np.full(k.shape, n),
    )


def _sealed_leaf(rng, cb, name: str, width: int, dtype: str):
    """(sealed cb, K, n, θ, deployed, W): a clean leaf of ``width`` columns, sealed; W a copy to damage."""
    g = cb.groups[name]
    theta = rng.standard_normal((width, g.n)).astype(dtype)
    deployed = cb.decode({name: theta})
    W = np.array(deployed["w"], copy=True)  # column j of the code is row j of W
    return cb.seal(deployed), g.K, g.n, theta, deployed, W


def in_range_trial(rng, cb, name: str, width: int, dtype: str) -> dict:
    """A sealed leaf of clean columns, in-range column faults, recover + purify with the seal."""
    cb, K, n, theta, deployed, W = _sealed_leaf(rng, cb, name, width, dtype)
    A = np.asarray(cb.matrix(name, dtype), np.float64)
    order = rng.permutation(width)
    fault = np.full(width, "", object)
    at = 0
    for kind, rate in FAULTS:
        idx = order[at : at + max(1, round(rate * width))]
        at += idx.size
        fault[idx] = kind
        if kind == "zeroed":
            W[idx] = 0
        elif kind == "copied":
            src = (idx + 1 + rng.integers(width - 1, size=idx.size)) % width
            W[idx] = np.asarray(deployed["w"])[src]
        elif kind == "negated":
            W[idx] = -W[idx]
        elif kind == "doubled":
            W[idx] = 2 * W[idx]
        else:  # a change inside range(A) of a tenth of the column's size
            z = (
                rng.standard_normal((idx.size, n))
                * 0.1
                * np.linalg.norm(theta[idx], axis=1, keepdims=True)
                / math.sqrt(n)
            )
            W[idx] = (W[idx] + z @ A.T).astype(dtype)
    tampered = {"w": W}
    Y = np.asarray(cb.pack(tampered)[name])
    out = jp.recover(np.asarray(cb.matrix(name, dtype))[None], Y[None])
    certified = np.asarray(out.certified[0])
    _, report = jp.purify(tampered, cb)
    (verdict,) = report.seal
    failed = np.zeros(width, bool)
    for start, stop in verdict.failed_chunks:  # flat entry ranges of the (width, K) leaf
        failed[start // K : -(-stop // K)] = True
    faulted = fault != ""
    chunk_cols = max(1, cb.seal_record.chunk // K)
    chunk_of = np.arange(width) // chunk_cols
    false_alarm = sum(1 for c in np.unique(chunk_of[failed]) if not faulted[chunk_of == c].any())
    per = {
        kind: dict(
            columns=int((fault == kind).sum()),
            certified=int((certified & (fault == kind)).sum()),
            undetected=int((certified & (fault == kind) & ~failed).sum()),
        )
        for kind, _ in FAULTS
    }
    return dict(
        columns=width,
        faulted=int(faulted.sum()),
        certified_faulted=int((certified & faulted).sum()),
        seal_tolerance=verdict.tolerance,
        seal_detectable=verdict.detectable,
        max_abs_weight=float(np.abs(np.asarray(deployed["w"])).max()),
        undetected=int((certified & faulted & ~failed).sum()),
        leaf_verified=bool(verdict.verified),
        false_alarm_chunks=int(false_alarm),
        clean_certified=int((certified & ~faulted).sum()),
        clean_columns=int((~faulted).sum()),
        per_fault=per,
    )


def honest_trial(rng, cb, name: str, width: int, dtype: str) -> dict:
    """A sealed leaf purified after faults well within capacity (no tampering): every alarm is false.

    Each column gets k ≤ (K − n)/4 changed entries (k uniform): half gross errors of magnitude
    10^U(0, 30) times the weight scale, half flips of an exponent or sign bit; then ``purify``
    with its own seal check."""
    cb, K, n, _, deployed, W = _sealed_leaf(rng, cb, name, width, dtype)
    bits, mant = (32, 23) if W.dtype == np.float32 else (64, 52)
    udt = np.dtype(f"uint{bits}")
    rms = float(np.sqrt(np.mean(np.square(W.astype(np.float64)))))
    for j in range(width):
        k = int(rng.integers((K - n) // 4 + 1))
        rows = rng.choice(K, k, replace=False)
        flip, add = rows[: k // 2], rows[k // 2 :]
        one = np.ones(flip.size, udt) << rng.integers(mant, bits, size=flip.size).astype(udt)
        W[j, flip] = (W[j, flip].view(udt) ^ one).view(W.dtype)
        with np.errstate(over="ignore"):
            W[j, add] = (W[j, add] + C.error_values(rng, add.size, rms, 1.0, 1e30)).astype(dtype)
    purified, report = jp.purify({"w": W}, cb)
    (verdict,) = report.seal
    Y = np.asarray(cb.pack({"w": W})[name])
    out = jp.recover(np.asarray(cb.matrix(name, dtype))[None], Y[None])  # which columns purify certified
    certified = np.asarray(out.certified[0])
    cols = max(1, cb.seal_record.chunk // K)
    false_alarm = sum(1 for a, _ in verdict.failed_chunks if certified[a // K : a // K + cols].all())
    return dict(
        columns=width,
        certified=int(report.certified),
        ok=int(report.ok),
        verified=int(report.verified),
        false_alarm_chunks=int(false_alarm),
        seal_detectable=verdict.detectable,
        max_abs_weight=float(np.abs(np.asarray(deployed["w"])).max()),
        max_statistic_over_tolerance=verdict.statistic / verdict.tolerance if verdict.tolerance else math.inf,
    )


def merge(trials: list[dict], top: bool = True) -> dict:
    """Trials of one regime as one: counts added, the worst detectable size and margin kept."""
    out: dict = {}
    for t in trials:
        for k, v in t.items():
            if isinstance(v, dict):
                out[k] = merge([out[k], v], top=False) if k in out else dict(v)
            elif k in ("seal_detectable", "seal_tolerance", "max_statistic_over_tolerance"):
                out[k] = max(out.get(k, -math.inf), v)
            elif k == "max_abs_weight":
                out[k] = min(out.get(k, math.inf), v)
            elif k == "leaf_verified":
                out[k] = out.get(k, False) or v
            else:
                out[k] = out.get(k, 0) + v
    if top:
        out["trials"] = len(trials)
    return out


def _row(cols: dict[str, np.ndarray]) -> dict:
    if not cols:  # no entry faults asked for (--columns 0)
        return dict(
            columns=0,
            certified=0,
            outside_bound_within_guarantee=0,
            certified_wrong_beyond_guarantee=0,
            exact_uncertified=0,
            max_error_over_bound=0.0,
            median_bound_over_error=math.nan,
            edge_certified=0,
            edge_median_bound_over_error=math.nan,
        )
    c, w = cols["certified"], cols["within"]
    # how loose the bound is: bound / true error over certified columns within the guarantee with an
    # error (> 0) and a finite bound; "edge": |I| = n+1 inliers, where the leverage factor applies
    tight = c & w & (cols["rel"] > 0) & np.isfinite(cols["bound"])
    edge = c & (cols["usable"] - cols["k_hat"] == cols["n"] + 1)
    med = lambda sel: float(np.median(cols["bound"][sel] / cols["rel"][sel])) if sel.any() else math.nan
    over = c & w & (cols["rel"] > cols["bound"])
    with np.errstate(invalid="ignore"):
        ratio = np.where(c & w & (cols["bound"] > 0), cols["rel"] / np.where(cols["bound"] > 0, cols["bound"], 1), 0)
    return dict(
        columns=int(c.size),
        certified=int(c.sum()),
        outside_bound_within_guarantee=int(over.sum()),
        certified_wrong_beyond_guarantee=int((c & ~w & (cols["rel"] > cols["bound"])).sum()),
        exact_uncertified=int((~c & cols["exact"]).sum()),
        max_error_over_bound=float(ratio.max()) if ratio.size else 0.0,
        median_bound_over_error=med(tight),
        edge_certified=int(edge.sum()),
        edge_median_bound_over_error=med(tight & edge),
    )


def run(
    columns: int, width: int, seed: int = 0, log=print, Ks=KS, ratios=RATIOS, dtypes=DTYPES, trials: int = 1
) -> dict:
    if width % GROUP:
        raise ValueError(f"width must be a multiple of {GROUP}, got {width}")
    rng = np.random.default_rng(seed)
    regimes, per_model = [], {}
    t_all = time.perf_counter()
    for dtype in dtypes:
        for K in Ks:
            for ratio in ratios:
                t0 = time.perf_counter()
                cb, name = _codebook(K, ratio, dtype, width, seed + len(regimes))
                n = cb.groups[name].n
                A = np.asarray(cb.matrix(name, dtype))
                acc: dict[str, list] = {}
                for _ in range(_batches(K, columns, width)):
                    Y, X, clean, model = entry_batch(rng, A, width, dtype)
                    out = jp.recover(A[None], Y[None])
                    res = judge(A, Y, X, clean, out, dtype)
                    res["model"] = model
                    for k, v in res.items():
                        acc.setdefault(k, []).append(v)
                acc = {k: np.concatenate(v) for k, v in acc.items()}
                for model in MODELS if acc else ():
                    sel = acc["model"] == model
                    per_model.setdefault((model, dtype), []).append({k: v[sel] for k, v in acc.items() if k != "model"})
                trial = merge([in_range_trial(rng, cb, name, width, dtype) for _ in range(trials)])
                honest = merge([honest_trial(rng, cb, name, width, dtype) for _ in range(trials)])
                row = dict(
                    K=K,
                    n=n,
                    ratio=ratio,
                    dtype=dtype,
                    **_row(acc),
                    in_range=trial,
                    honest=honest,
                    seconds=round(time.perf_counter() - t0, 1),
                )
                regimes.append(row)
                log(
                    f"K={K:5d} n={n:4d} K/n={K / n:4.2f} {dtype}: {row['columns']} columns, "
                    f"{row['certified']} certified, {row['outside_bound_within_guarantee']} outside bound, "
                    f"{row['exact_uncertified']} exact uncertified, "
                    f"median bound/error {row['median_bound_over_error']:.3g} ({row['edge_certified']} certified with "
                    f"|I| = n+1: {row['edge_median_bound_over_error']:.3g}); "
                    f"in-range faults {trial['certified_faulted']}/{trial['faulted']} certified by l1, "
                    f"{trial['undetected']} undetected with the seal, {trial['false_alarm_chunks']} false alarms "
                    f"({row['seconds']} s); {row['certified_wrong_beyond_guarantee']} certified wrong beyond "
                    "the guarantee, "
                    f"seal detects {trial['seal_detectable'] / trial['max_abs_weight']:.2g} of max|W|; within capacity "
                    f"{honest['certified']}/{honest['columns']} certified, ok {honest['ok']}/{trials}, "
                    f"{honest['false_alarm_chunks']} false alarms, statistic/tolerance ≤ "
                    f"{honest['max_statistic_over_tolerance']:.2g}",
                    flush=True,
                )
    models = []
    for (model, dtype), parts in per_model.items():
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        models.append(dict(model=model, dtype=dtype, **_row(merged)))
    return dict(
        regimes=regimes,
        models=models,
        seconds=round(time.perf_counter() - t_all, 1),
        columns=sum(r["columns"] + r["in_range"]["columns"] + r["honest"]["columns"] for r in regimes),
        machine=dict(cpus=os.cpu_count(), python=platform.python_version(), jax=jax.__version__, load=os.getloadavg()),
        width=width,
        seed=seed,
    )


def table(result: dict) -> str:
    head = (
        "| K | K/n | dtype | columns | certified | outside bound (within guarantee) | certified wrong beyond guarantee "
        "| exact, uncertified | in-range faults certified by l1 | undetected with the seal | seal false alarms "
        "| seal detects (× max|W|) | within capacity, sealed: certified | ok | false alarms |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in result["regimes"]:
        t, h = r["in_range"], r["honest"]
        lines.append(
            f"| {r['K']} | {r['K'] / r['n']:.2f} | {r['dtype']} | {r['columns']:,} | {r['certified']:,} | "
            f"{r['outside_bound_within_guarantee']} | {r['certified_wrong_beyond_guarantee']} | "
            f"{r['exact_uncertified']} | {t['certified_faulted']}/{t['faulted']} | {t['undetected']} | "
            f"{t['false_alarm_chunks']} | {t['seal_detectable'] / t['max_abs_weight']:.2g} | "
            f"{h['certified']:,}/{h['columns']:,} | {h['ok']}/{h['trials']} | {h['false_alarm_chunks']} |"
        )
    lines += [
        "",
        "| model | dtype | columns | certified | outside bound (within guarantee) | certified wrong beyond guarantee "
        "| exact, uncertified | max error / bound | median bound / error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        lines.append(
            f"| {m['model']} | {m['dtype']} | {m['columns']:,} | {m['certified']:,} | "
            f"{m['outside_bound_within_guarantee']} | {m['certified_wrong_beyond_guarantee']} | "
            f"{m['exact_uncertified']} | {m['max_error_over_bound']:.2g} | {m['median_bound_over_error']:.3g} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--columns", type=int, default=106_496, help="entry-fault columns in all (approximately)")
    p.add_argument("--width", type=int, default=1024, help="columns per solver call (a multiple of 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=1, help="sealed in-range and within-capacity leaves per regime")
    p.add_argument("--K", default=",".join(map(str, KS)), help="a subset of the K values, e.g. 16,64")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--out", metavar="FILE", help="also write the results as JSON here")
    a = p.parse_args(argv)
    # float64 regimes solve in float64: switched on when the campaign runs, not when it is imported
    # (importing it must not change JAX's dtypes for the importer, e.g. a test reading its parser)
    jax.config.update("jax_enable_x64", True)
    result = run(
        a.columns,
        a.width,
        a.seed,
        Ks=tuple(int(k) for k in a.K.split(",")),
        ratios=tuple(float(r) for r in a.ratios.split(",")),
        dtypes=tuple(a.dtypes.split(",")),
        trials=a.trials,
    )
    print(table(result))
    print(f"{result['columns']:,} columns in {result['seconds']} s; load {result['machine']['load']}")
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        dump_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
