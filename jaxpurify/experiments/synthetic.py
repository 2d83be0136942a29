"""``jaxpurify reproduce synthetic``: exact-recovery phase diagrams for weights and biases.

Teacher: the paper's one-hidden-layer CNN (K filters, p×p non-overlapping patches).  Its hidden
weights W (columns: one per patch pixel, K entries each) and biases b (one column of K entries)
are encoded at redundancy K/n with independent secret matrices, W = A Θ and b = A_β θ_b.  In every
trial a fraction ρ of the entries of each column is replaced by gross errors and both leaves are
recovered.  A trial succeeds for a leaf when its relative error ‖Ŵ − W‖_F / ‖W‖_F ≤ 1e-5; the same
instances are solved by the exact LP (HiGHS), so the figure shows both boundaries.  Theorems 1 and
2 of the paper say: below a threshold in ρ that grows with K/n, recovery is exact.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify import contamination as C
from jaxpurify import models
from jaxpurify._codebook import Codebook
from jaxpurify._solver import recover
from jaxpurify._progress import Progress
from jaxpurify.experiments._common import lad_highs, rel_fro, write_csv, write_json

FULL = dict(ratios=(1.5, 2, 3, 4, 6, 8), rhos=tuple(round(0.05 * i, 2) for i in range(1, 11)), trials=20)
QUICK = dict(ratios=(2, 4, 8), rhos=(0.1, 0.25, 0.4), trials=4)
SUCCESS = 1e-5


def _trial(key, K, patch, ratio, rho):
    """One teacher: clean and contaminated hidden weights and biases with their matrices."""
    model = models.OneHiddenCNN(filters=K, patch=patch, num_classes=10)
    kinit, kcb, klat, kc = jax.random.split(key, 4)
    params = model.init(kinit, jnp.zeros((1, 2 * patch, 2 * patch, 1)))["params"]
    cb = Codebook.create(params, kcb, redundancy=ratio, select=lambda p, _: -1 if p.startswith("hidden/") else False)
    latent = cb.encode(params)
    # a random latent for the biases too (Flax initializes them at zero, which is trivial)
    latent["hidden/bias"] = jax.random.normal(klat, latent["hidden/bias"].shape)
    clean = cb.decode(latent)
    bad = C.contaminate(kc, clean, cb, C.gross_errors, rate=rho)
    return model, cb, clean, bad


def _cols(leaf, spec):
    return np.moveaxis(np.asarray(leaf), spec.axis, 0).reshape(spec.K, -1)


def run_cell(key, K, patch, ratio, rho, trials, lp: bool):
    """All trials of one (ratio, ρ) cell in one batched recover() call."""
    inst = [_trial(jax.random.fold_in(key, t), K, patch, ratio, rho) for t in range(trials)]
    specs = [(cb.specs["hidden/kernel"], cb.specs["hidden/bias"]) for _, cb, _, _ in inst]
    d = specs[0][0].columns
    A, Y, clean = [], [], []
    for (model, cb, c, b), (sw, sb) in zip(inst, specs):
        A += [cb.matrix("hidden/kernel"), cb.matrix("hidden/bias")]
        Y += [_cols(b["hidden"]["kernel"], sw), np.pad(_cols(b["hidden"]["bias"], sb), ((0, 0), (0, d - 1)))]
        clean += [_cols(c["hidden"]["kernel"], sw), _cols(c["hidden"]["bias"], sb)]
    out = recover(jnp.stack(A), jnp.stack(Y))
    AX = np.asarray(jnp.matmul(jnp.stack(A), out.x, precision=jax.lax.Precision.HIGHEST))
    cert = np.asarray(out.certified)
    res = {"weights": [], "biases": []}
    for t in range(trials):
        for j, (leaf, ncol) in enumerate((("weights", d), ("biases", 1))):
            i = 2 * t + j
            ok = rel_fro(AX[i, :, :ncol], clean[i]) <= SUCCESS
            lp_ok = None
            if lp:
                Ai = np.asarray(A[i], np.float64)
                Yi = np.asarray(Y[i][:, :ncol], np.float64)
                xl = np.stack([lad_highs(Ai, Yi[:, c]) for c in range(ncol)], axis=1)
                lp_ok = rel_fro(Ai @ xl, clean[i]) <= SUCCESS
            res[leaf].append((ok, bool(cert[i, :ncol].all()), lp_ok))
    # function-level check on the first trial: purified CNN outputs equal the teacher's
    model, cb, c, _ = inst[0]
    pur = jax.tree.map(lambda x: x, c)
    pur["hidden"] = {
        "kernel": jnp.moveaxis(jnp.asarray(AX[0]).reshape((specs[0][0].K,) + specs[0][0].shape[:-1]), 0, -1),
        "bias": jnp.asarray(AX[1][:, 0]),
    }
    xin = jax.random.normal(jax.random.fold_in(key, 999), (64, 4 * patch, 4 * patch, 1))
    f0 = model.apply({"params": c}, xin)
    f1 = model.apply({"params": pur}, xin)
    func_err = float(jnp.max(jnp.abs(f1 - f0)) / jnp.maximum(jnp.max(jnp.abs(f0)), 1e-30))
    return res, func_err, bool(cert[0].all() and cert[1, 0])


def plot(rows_w, rows_b, ratios, rhos, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, rows, title in ((axes[0], rows_w, "hidden-layer weights (Theorem 1)"), (axes[1], rows_b, "biases (Theorem 2)")):
        grid = np.full((len(ratios), len(rhos)), np.nan)
        lpg = np.full_like(grid, np.nan)
        for r in rows:
            i, j = ratios.index(r["ratio"]), rhos.index(r["rho"])
            grid[i, j] = r["success_rate"]
            if r["lp_success_rate"] != "":
                lpg[i, j] = r["lp_success_rate"]
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1,
                       extent=(-0.5, len(rhos) - 0.5, -0.5, len(ratios) - 0.5))
        if np.isfinite(lpg).any():
            ax.contour(np.arange(len(rhos)), np.arange(len(ratios)), lpg, levels=[0.5], colors="red", linewidths=2)
            ax.plot([], [], color="red", label="exact LP (HiGHS): 50% success")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_xticks(range(len(rhos)), [f"{x:.2f}" for x in rhos], rotation=45)
        ax.set_yticks(range(len(ratios)), [f"{x:g}" for x in ratios])
        ax.set_xlabel("fraction ρ of corrupted entries per column")
        ax.set_ylabel("redundancy K/n")
        ax.set_title(title)
    fig.colorbar(im, ax=axes, label="exact-recovery rate (jaxpurify)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(out: str, quick: bool = False, K: int = 64, patch: int = 4, seed: int = 0, lp: bool = True, progress: bool = True) -> dict:
    os.makedirs(out, exist_ok=True)
    cfg = QUICK if quick else FULL
    ratios, rhos, trials = list(cfg["ratios"]), list(cfg["rhos"]), cfg["trials"]
    key = jax.random.key(seed)
    rows = {"weights": [], "biases": []}
    func = []
    with Progress(len(ratios) * len(rhos), "synthetic", disable=not progress or None) as bar:
        for i, ratio in enumerate(ratios):
            for j, rho in enumerate(rhos):
                res, ferr, fcert = run_cell(jax.random.fold_in(key, 1000 * i + j), K, patch, ratio, rho, trials, lp)
                func.append({"ratio": ratio, "rho": rho, "certified": fcert, "output_rel_err": ferr})
                for leaf in rows:
                    r = res[leaf]
                    rows[leaf].append({
                        "ratio": ratio, "rho": rho, "trials": trials,
                        "success_rate": sum(a for a, _, _ in r) / trials,
                        "certified_rate": sum(b for _, b, _ in r) / trials,
                        "lp_success_rate": (sum(c for _, _, c in r) / trials) if lp else "",
                    })
                bar.update(1, cell=f"K/n={ratio} rho={rho}")
    write_csv(os.path.join(out, "phase_weights.csv"), rows["weights"])
    write_csv(os.path.join(out, "phase_biases.csv"), rows["biases"])
    write_csv(os.path.join(out, "function_check.csv"), func)
    plot(rows["weights"], rows["biases"], ratios, rhos, os.path.join(out, "phase.png"))
    summary = {"K": K, "patch": patch, "n": {str(r): math.ceil(K / r) for r in ratios}, "trials": trials,
               "success_threshold": SUCCESS, "quick": quick,
               "function_check_certified_max_err": max([f["output_rel_err"] for f in func if f["certified"]], default=None)}
    write_json(os.path.join(out, "synthetic.json"), summary)
    return {"weights": rows["weights"], "biases": rows["biases"], "function": func, "summary": summary}
