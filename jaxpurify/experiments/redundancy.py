"""``jaxpurify reproduce redundancy``: what redundancy K/n costs in accuracy and buys in capacity.

For each K/n in ``RATIOS`` the CNN is trained encoded by the data set's recipe (the plain model
once, the same recipe and key), and the encoded model is contaminated with gross errors in 5%,
10% and 20% of the entries of every code column and purified. Per K/n: clean test accuracy
(plain and encoded), the errors per column a certificate can accept, ⌊(K − n)/2⌋ (as a fraction
of K: the uniqueness bound; for the largest group and the smallest fraction over the groups), and
the certified fraction and purified accuracy at each error rate.  Writes redundancy.json,
redundancy.csv and redundancy.png; the library's default, K/n = 4, is marked.
"""

from __future__ import annotations

import os
import time
from typing import Any, cast

import jax

from jaxpurify import Codebook, Report, data, purify
from jaxpurify import contamination as C
from jaxpurify.experiments import recipes
from jaxpurify.experiments._common import QUICK_EXAMPLES, Record, first, write_csv, write_json
from jaxpurify.experiments.realdata import build, secret
from jaxpurify.progress import Progress
from jaxpurify.train import accuracy

PyTree = Any

RATIOS = (1.5, 2.0, 3.0, 4.0, 6.0)
LEVELS = (0.05, 0.10, 0.20)
DEFAULT = 4.0  # Codebook.create's redundancy


def run(
    dataset: str,
    out: str,
    arch: str = "multi",
    quick: bool = False,
    data_dir: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    progress: bool = True,
    source: str = "files",
    ratios: tuple[float, ...] = RATIOS,
) -> Record:
    if not ratios or any(not r > 1 for r in ratios):
        raise ValueError(f"ratios must be K/n values > 1, got {ratios!r}")
    os.makedirs(out, exist_ok=True)
    ds = data.load(dataset, data_dir, seed=seed, source=source)
    if quick:
        ds = first(ds, *QUICK_EXAMPLES)
    r = recipes.recipe_for(dataset, quick, steps)
    shown = None if progress else False
    key = jax.random.key(seed)
    model, select = build(arch, ds)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    params0 = model.init(jax.random.fold_in(key, 0), ds.train.x[:1])["params"]

    def acc(p: PyTree) -> float:
        return accuracy(apply, p, ds.test.x, ds.test.y)

    plain, t_plain = recipes.fit(apply, params0, None, ds.train.x, ds.train.y, r, jax.random.fold_in(key, 2), shown)
    acc_plain = acc(plain)
    rows: list[Record] = []
    with Progress(len(ratios), f"redundancy {dataset}/{arch}", disable=not progress or None) as bar:
        for ratio in ratios:
            cb = Codebook.create(params0, secret(seed, ratio), redundancy=ratio, select=select)
            clean, t_enc = recipes.fit(apply, params0, cb, ds.train.x, ds.train.y, r, jax.random.fold_in(key, 2), shown)
            groups = cb.groups.values()
            big = max(groups, key=lambda g: g.K * g.columns)
            row: Record = {
                "ratio": ratio,
                "default": ratio == DEFAULT,
                "acc_plain": acc_plain,
                "acc_encoded": acc(clean),
                "latent_fraction": sum(g.n * g.columns for g in groups) / sum(g.K * g.columns for g in groups),
                "largest_group": big.name,
                "largest_K": big.K,
                "largest_n": big.n,
                "correctable_per_column": (big.K - big.n) // 2,
                "correctable_fraction_min": min(((g.K - g.n) // 2) / g.K for g in groups),
                "train_seconds_encoded": t_enc,
            }
            for i, level in enumerate(LEVELS):
                bad = C.contaminate(jax.random.fold_in(key, 100 + i), clean, cb, C.gross_errors, rate=level)
                t0 = time.perf_counter()
                pur, any_rep = purify(bad, cb)
                rep = cast(Report, any_rep)  # host arrays in: a host Report, not a DeviceReport
                row[f"certified_{level:g}"] = rep.certified / rep.columns
                row[f"acc_purified_{level:g}"] = acc(pur)
                row[f"purify_seconds_{level:g}"] = time.perf_counter() - t0
            rows.append(row)
            bar.update(1, ratio=f"{ratio:g}")
    res = {
        "dataset": ds.name,
        "arch": arch,
        "quick": quick,
        "seed": seed,
        "recipe": r.record(),
        "train_examples": len(ds.train.x),
        "test_examples": len(ds.test.x),
        "train_seconds_plain": t_plain,
        "levels": list(LEVELS),
        "rows": rows,
    }
    write_json(os.path.join(out, "redundancy.json"), res)
    write_csv(os.path.join(out, "redundancy.csv"), rows)
    plot(res, os.path.join(out, "redundancy.png"))
    return res


def table(res: Record) -> str:
    """The trade-off as a markdown table (the default K/n in bold)."""
    levels = res["levels"]
    head = (
        "| K/n | clean acc. plain | clean acc. encoded | errors / column (largest group) | "
        + " | ".join(f"certified at {100 * v:g}%" for v in levels)
        + " |\n|"
        + "---|" * (4 + len(levels))
    )
    lines = [head]
    for r in res["rows"]:
        k = f"**{r['ratio']:g}** (default)" if r["default"] else f"{r['ratio']:g}"
        cert = " | ".join(f"{r[f'certified_{v:g}']:.3f}" for v in levels)
        lines.append(
            f"| {k} | {r['acc_plain']:.4f} | {r['acc_encoded']:.4f} | {r['correctable_per_column']} of "
            f"{r['largest_K']} ({r['correctable_per_column'] / r['largest_K']:.1%}) | {cert} |"
        )
    return "\n".join(lines)


def plot(res: Record, path: str) -> None:
    try:
        import matplotlib
    except ImportError:  # the figure is optional; the JSON and CSV carry the numbers
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    ratio = [r["ratio"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    a1.plot(ratio, [r["acc_encoded"] for r in rows], "o-", label="encoded")
    a1.axhline(rows[0]["acc_plain"], color="k", ls="--", lw=1, label="plain")
    a1.set_xlabel("redundancy K/n")
    a1.set_ylabel("clean test accuracy")
    a1.legend(fontsize=8)
    a2.plot(ratio, [r["correctable_per_column"] / r["largest_K"] for r in rows], "k:", label="bound ⌊(K−n)/2⌋/K")
    for v in res["levels"]:
        a2.plot(ratio, [r[f"certified_{v:g}"] for r in rows], "o-", label=f"certified, {100 * v:g}% gross errors")
    a2.set_xlabel("redundancy K/n")
    a2.set_ylabel("fraction")
    a2.set_ylim(-0.02, 1.02)
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.axvline(DEFAULT, color="grey", lw=6, alpha=0.2)
    fig.suptitle(f"{res['dataset']}, {res['arch']} CNN: redundancy vs accuracy vs capacity (grey: the default)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
