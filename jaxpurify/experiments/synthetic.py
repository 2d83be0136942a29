"""``jaxpurify reproduce synthetic``: exact-recovery phase diagrams for weights and biases.

Teacher: the paper's one-hidden-layer CNN (K filters, p×p non-overlapping patches).  Its hidden
weights W (columns: one per patch pixel, K entries each) and biases b (one column of K entries)
are encoded at redundancy K/n with independent secret matrices, W = A Θ and b = A_β θ_b.  In every
trial a fraction ρ of the entries of each column is replaced by gross errors and both leaves are
recovered.  A trial succeeds for a leaf when its relative error ‖Ŵ − W‖_F / ‖W‖_F ≤ 1e-5; the same
instances are solved by the exact LP (HiGHS), so the figure shows both boundaries.  Theorems 1 and
2 of the paper say: below a threshold in ρ that grows with K/n, recovery is exact.

A trial needs every one of its columns right, so its boundary sits below the columns' own.  The
third panel gives the per-column boundary at a larger K (256 in the full run; in quick mode the
K = 64 sweep's columns, at no extra cost): the fraction of weight columns recovered exactly *and*
certified.  Every panel draws the uniqueness bound 2k < K − n + 1 (k = round(ρK) errors per
column): past it no method can tell the clean column from another sparse explanation, and no
column is certified.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jaxpurify import Codebook, LeafSpec, models, recover
from jaxpurify import contamination as C
from jaxpurify.experiments._common import Record, lad_highs, rel_fro, write_csv, write_json
from jaxpurify.progress import Progress

PyTree = Any


class Grid(NamedTuple):
    """The cells of a sweep: redundancies K/n × error fractions ρ, and the trials per cell."""

    ratios: tuple[float, ...]
    rhos: tuple[float, ...]
    trials: int


FULL = Grid(ratios=(1.5, 2, 3, 4, 6, 8), rhos=tuple(round(0.05 * i, 2) for i in range(1, 11)), trials=20)
QUICK = Grid(ratios=(2, 4, 8), rhos=(0.1, 0.25, 0.4), trials=4)
COLUMNS_K, COLUMNS_TRIALS = 256, 4  # full run: the per-column sweep (no LP: HiGHS at K = 256 is the slow part)
SUCCESS = 1e-5


def latent_rows(K: int, ratio: float) -> int:
    """n for redundancy K/n = ratio, as the codebook chooses it."""
    return math.ceil(K / ratio)


def uniqueness_bound(K: int, ratio: float) -> float:
    """The largest ρ with 2·round(ρK) < K − n + 1, as a real number: ρ* = (K − n + 1) / (2K).

    With k errors per column, any two explanations of a column differ on at most 2k rows, so a
    column is identifiable when the n + (K − 2k) rows they agree on still pin x down: 2k < K − n + 1.
    """
    return (K - latent_rows(K, ratio) + 1) / (2 * K)


class Teacher(NamedTuple):
    """One trial's teacher: its model, codebook, clean and contaminated parameters."""

    model: models.OneHiddenCNN
    codebook: Codebook
    clean: PyTree
    bad: PyTree


class Outcome(NamedTuple):
    """One trial's verdict on one leaf: recovered exactly, every column certified, and the exact
    LP's verdict (None: the LP was not run)."""

    exact: bool
    certified: bool
    lp_exact: bool | None


class Cell(NamedTuple):
    """All trials of one (ratio, ρ) cell (:func:`run_cell`)."""

    leaves: dict[str, list[Outcome]]  # per trial, by leaf: "weights", "biases"
    columns: tuple[int, int, int]  # weight columns over the trials: exact, certified, exact & certified
    output_rel_err: float  # the function check on the first trial: purified vs teacher outputs
    certified: bool  # every column of the first trial's weights and biases certified


class Sweep(NamedTuple):
    """Every cell of a sweep (:func:`_sweep`): rows per leaf, per-column rows, function checks."""

    rows: dict[str, list[Record]]  # by leaf: "weights", "biases"
    columns: list[Record]
    func: list[Record]


class Panel(NamedTuple):
    """One heat map of :func:`plot`: its title, the K of its bound, its rows and the field shown."""

    title: str
    K: int
    rows: list[Record]
    field: str


def _trial(key: jax.Array, K: int, patch: int, ratio: float, rho: float) -> Teacher:
    """One teacher: clean and contaminated hidden weights and biases with their matrices."""
    model = models.OneHiddenCNN(filters=K, patch=patch, num_classes=10)
    kinit, kcb, klat, kc = jax.random.split(key, 4)
    params = model.init(kinit, jnp.zeros((1, 2 * patch, 2 * patch, 1)))["params"]
    # a key from the trial's seed (reproducible research; guessable, so a WeakKeyWarning)
    cb = Codebook.create(params, kcb, redundancy=ratio, select=lambda p, _: -1 if p.startswith("hidden/") else False)
    latent = cb.encode(params)
    # a random latent for the biases too (Flax initializes them at zero, which is trivial)
    latent["hidden/bias"] = jax.random.normal(klat, latent["hidden/bias"].shape)
    clean = cb.decode(latent)
    bad = C.contaminate(kc, clean, cb, C.gross_errors, rate=rho)
    return Teacher(model, cb, clean, bad)


def _cols(leaf: ArrayLike, spec: LeafSpec) -> np.ndarray:
    return np.moveaxis(np.asarray(leaf), spec.axis, 0).reshape(spec.K, -1)


def run_cell(key: jax.Array, K: int, patch: int, ratio: float, rho: float, trials: int, lp: bool) -> Cell:
    """All trials of one (ratio, ρ) cell in one batched recover() call."""
    inst = [_trial(jax.random.fold_in(key, t), K, patch, ratio, rho) for t in range(trials)]
    specs = [(cb.specs["hidden/kernel"], cb.specs["hidden/bias"]) for _, cb, _, _ in inst]
    d = specs[0][0].columns
    A: list[jax.Array] = []
    Y: list[np.ndarray] = []
    clean: list[np.ndarray] = []
    for (_, cb, c, b), (sw, sb) in zip(inst, specs):
        A += [cb.matrix("hidden/kernel"), cb.matrix("hidden/bias")]
        Y += [_cols(b["hidden"]["kernel"], sw), np.pad(_cols(b["hidden"]["bias"], sb), ((0, 0), (0, d - 1)))]
        clean += [_cols(c["hidden"]["kernel"], sw), _cols(c["hidden"]["bias"], sb)]
    out = recover(jnp.stack(A), jnp.stack(Y))
    AX = np.asarray(jnp.matmul(jnp.stack(A), out.x, precision=jax.lax.Precision.HIGHEST))
    cert = np.asarray(out.certified)
    leaves: dict[str, list[Outcome]] = {"weights": [], "biases": []}
    n_exact = n_cert = n_both = 0  # weight columns: exact, certified, exact & certified
    for t in range(trials):
        i = 2 * t  # the weight columns, one by one
        err = np.linalg.norm(AX[i, :, :d] - clean[i], axis=0) / np.maximum(np.linalg.norm(clean[i], axis=0), 1e-30)
        exact, ok = err <= SUCCESS, cert[i, :d]
        n_exact += int(exact.sum())
        n_cert += int(ok.sum())
        n_both += int((exact & ok).sum())
        for j, (leaf, ncol) in enumerate((("weights", d), ("biases", 1))):
            i = 2 * t + j
            leaf_exact = rel_fro(AX[i, :, :ncol], clean[i]) <= SUCCESS
            lp_ok = None
            if lp:
                Ai = np.asarray(A[i], np.float64)
                Yi = np.asarray(Y[i][:, :ncol], np.float64)
                xl = np.stack([lad_highs(Ai, Yi[:, c]) for c in range(ncol)], axis=1)
                lp_ok = rel_fro(Ai @ xl, clean[i]) <= SUCCESS
            leaves[leaf].append(Outcome(leaf_exact, bool(cert[i, :ncol].all()), lp_ok))
    # function-level check on the first trial: purified CNN outputs equal the teacher's
    model, cb, c, _ = inst[0]
    pur = jax.tree.map(lambda x: x, c)
    pur["hidden"] = {
        "kernel": jnp.moveaxis(jnp.asarray(AX[0]).reshape((specs[0][0].K,) + specs[0][0].shape[:-1]), 0, -1),
        "bias": jnp.asarray(AX[1][:, 0]),
    }
    xin = jax.random.normal(jax.random.fold_in(key, 999), (64, 4 * patch, 4 * patch, 1))
    # Module.apply returns (output, state) only when given mutable collections: here the output alone
    f0 = cast(jax.Array, model.apply({"params": c}, xin))
    f1 = cast(jax.Array, model.apply({"params": pur}, xin))
    func_err = float(jnp.max(jnp.abs(f1 - f0)) / jnp.maximum(jnp.max(jnp.abs(f0)), 1e-30))
    return Cell(leaves, (n_exact, n_cert, n_both), func_err, bool(cert[0].all() and cert[1, 0]))


def _grid(rows: list[Record], ratios: list[float], rhos: list[float], field: str) -> np.ndarray:
    grid = np.full((len(ratios), len(rhos)), np.nan)
    for r in rows:
        if r[field] != "":
            grid[ratios.index(r["ratio"]), rhos.index(r["rho"])] = r[field]
    return grid


def plot(panels: Sequence[Panel], ratios: list[float], rhos: list[float], path: str) -> None:
    """``panels``: one :class:`Panel` per heat map; LP contour where rows have it, bound on all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patheffects

    step = rhos[1] - rhos[0] if len(rhos) > 1 else 1.0

    def at(rho: float) -> float:  # ρ → column index (the grid's ρ are evenly spaced)
        return (rho - rhos[0]) / step

    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.4), constrained_layout=True)
    for ax, (title, K, rows, field) in zip(np.atleast_1d(axes), panels):
        grid = _grid(rows, ratios, rhos, field)
        lpg = (
            _grid(rows, ratios, rhos, "lp_success_rate") if "lp_success_rate" in rows[0] else np.full_like(grid, np.nan)
        )
        im = ax.imshow(
            grid,
            origin="lower",
            aspect="auto",
            cmap="viridis",
            vmin=0,
            vmax=1,
            extent=(-0.5, len(rhos) - 0.5, -0.5, len(ratios) - 0.5),
        )
        if np.isfinite(lpg).any():
            ax.contour(np.arange(len(rhos)), np.arange(len(ratios)), lpg, levels=[0.5], colors="red", linewidths=2)
            ax.plot([], [], color="red", label="exact LP (HiGHS): 50% success")
        ax.plot(
            [at(uniqueness_bound(K, r)) for r in ratios],
            range(len(ratios)),
            color="black",
            ls="--",
            lw=2,
            path_effects=[patheffects.withStroke(linewidth=4, foreground="white")],
            label="uniqueness bound 2k < K − n + 1",
        )
        ax.set_xlim(-0.5, len(rhos) - 0.5)
        ax.legend(loc="upper left", fontsize=8)
        ax.set_xticks(range(len(rhos)), [f"{x:.2f}" for x in rhos], rotation=45)
        ax.set_yticks(range(len(ratios)), [f"{x:g}" for x in ratios])
        ax.set_xlabel("fraction ρ of corrupted entries per column")
        ax.set_ylabel("redundancy K/n")
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=axes, label="exact-recovery rate (jaxpurify)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _sweep(
    key: jax.Array,
    K: int,
    patch: int,
    ratios: list[float],
    rhos: list[float],
    trials: int,
    lp: bool,
    bar: Progress,
) -> Sweep:
    """Every (ratio, ρ) cell: per-trial rows for weights and biases, per-column counts, function check."""
    rows: dict[str, list[Record]] = {"weights": [], "biases": []}
    columns: list[Record] = []
    func: list[Record] = []
    for i, ratio in enumerate(ratios):
        for j, rho in enumerate(rhos):
            res = run_cell(jax.random.fold_in(key, 1000 * i + j), K, patch, ratio, rho, trials, lp)
            func.append({"ratio": ratio, "rho": rho, "certified": res.certified, "output_rel_err": res.output_rel_err})
            for leaf in rows:
                r = res.leaves[leaf]
                rows[leaf].append(
                    {
                        "ratio": ratio,
                        "rho": rho,
                        "trials": trials,
                        "success_rate": sum(o.exact for o in r) / trials,
                        "certified_rate": sum(o.certified for o in r) / trials,
                        "lp_success_rate": (sum(o.lp_exact is True for o in r) / trials) if lp else "",
                    }
                )
            exact, cert, both = res.columns
            total = trials * patch * patch
            k = round(rho * K)
            columns.append(
                {
                    "K": K,
                    "n": latent_rows(K, ratio),
                    "ratio": ratio,
                    "rho": rho,
                    "errors": k,
                    "within_bound": 2 * k < K - latent_rows(K, ratio) + 1,
                    "columns": total,
                    "success_rate": exact / total,
                    "certified_rate": cert / total,
                    "certified_exact_rate": both / total,
                }
            )
            bar.update(1, cell=f"K={K} K/n={ratio} rho={rho}")
    return Sweep(rows, columns, func)


def run(
    out: str,
    quick: bool = False,
    K: int = 64,
    patch: int = 4,
    seed: int = 0,
    lp: bool = True,
    progress: bool = True,
    columns_K: int | None = None,
) -> Record:
    """Both sweeps; ``columns_K`` (default: 256, or K in quick mode) is the per-column sweep's K."""
    os.makedirs(out, exist_ok=True)
    cfg = QUICK if quick else FULL
    ratios, rhos, trials = list(cfg.ratios), list(cfg.rhos), cfg.trials
    columns_K = (K if quick else COLUMNS_K) if columns_K is None else columns_K
    key = jax.random.key(seed)
    cells = len(ratios) * len(rhos) * (1 if columns_K == K else 2)
    with Progress(cells, "synthetic", disable=not progress or None) as bar:
        rows, columns, func = _sweep(key, K, patch, ratios, rhos, trials, lp, bar)
        if columns_K != K:  # the same keys as run_columns, so both give the same table
            _, columns, _ = _sweep(
                jax.random.fold_in(key, 7), columns_K, patch, ratios, rhos, COLUMNS_TRIALS, False, bar
            )
    write_csv(os.path.join(out, "phase_weights.csv"), rows["weights"])
    write_csv(os.path.join(out, "phase_biases.csv"), rows["biases"])
    write_csv(os.path.join(out, "phase_columns.csv"), columns)
    write_csv(os.path.join(out, "function_check.csv"), func)
    plot(
        [
            Panel(f"hidden-layer weights (Theorem 1), per trial, K = {K}", K, rows["weights"], "success_rate"),
            Panel(f"biases (Theorem 2), per trial, K = {K}", K, rows["biases"], "success_rate"),
            Panel(
                f"weights per column, exact and certified, K = {columns_K}", columns_K, columns, "certified_exact_rate"
            ),
        ],
        ratios,
        rhos,
        os.path.join(out, "phase.png"),
    )
    summary = {
        "K": K,
        "patch": patch,
        "n": {str(r): latent_rows(K, r) for r in ratios},
        "trials": trials,
        "columns_K": columns_K,
        "columns_n": {str(r): latent_rows(columns_K, r) for r in ratios},
        "uniqueness_bound_rho": {str(r): uniqueness_bound(columns_K, r) for r in ratios},
        "success_threshold": SUCCESS,
        "quick": quick,
        "function_check_certified_max_err": max([f["output_rel_err"] for f in func if f["certified"]], default=None),
    }
    write_json(os.path.join(out, "synthetic.json"), summary)
    return {
        "weights": rows["weights"],
        "biases": rows["biases"],
        "columns": columns,
        "function": func,
        "summary": summary,
    }


def run_columns(
    out: str,
    K: int = COLUMNS_K,
    trials: int = COLUMNS_TRIALS,
    patch: int = 4,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
) -> list[Record]:
    """The per-column sweep alone (no LP): ``phase_columns.csv`` and ``phase_columns.png`` in ``out``."""
    os.makedirs(out, exist_ok=True)
    cfg = QUICK if quick else FULL
    ratios, rhos = list(cfg.ratios), list(cfg.rhos)
    with Progress(len(ratios) * len(rhos), "synthetic columns", disable=not progress or None) as bar:
        _, columns, _ = _sweep(jax.random.fold_in(jax.random.key(seed), 7), K, patch, ratios, rhos, trials, False, bar)
    write_csv(os.path.join(out, "phase_columns.csv"), columns)
    plot(
        [Panel(f"weights per column, exact and certified, K = {K}", K, columns, "certified_exact_rate")],
        ratios,
        rhos,
        os.path.join(out, "phase_columns.png"),
    )
    return columns


if __name__ == "__main__":  # python -m jaxpurify.experiments.synthetic --columns-only --out DIR
    import argparse

    ap = argparse.ArgumentParser(prog="python -m jaxpurify.experiments.synthetic")
    ap.add_argument("--out", required=True)
    ap.add_argument("--columns-only", action="store_true", help="only the per-column sweep at --K (default 256)")
    ap.add_argument("--K", type=int, default=COLUMNS_K)
    ap.add_argument("--trials", type=int, default=COLUMNS_TRIALS)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.columns_only:
        run_columns(args.out, args.K, args.trials, quick=args.quick)
    else:
        run(args.out, quick=args.quick, columns_K=args.K)
