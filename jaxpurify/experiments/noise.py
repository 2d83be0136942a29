"""``jaxpurify reproduce noise``: dense plus sparse contamination (the inexact regime).

W_c = A X + E + Z with a fixed fraction of gross errors E per column and dense Gaussian noise Z of
level σ (relative to the weight rms).  Compared, on the same instances:

* l1 (jaxpurify): ``recover`` with the inlier tolerance set at the noise level (atol = 4σ·rms),
  so the polish refits on the rows it judges clean;
* l1, strict: ``recover`` with the default (float-precision) tolerance; no column can be
  certified under dense noise, and ``x`` is its l1 estimate;
* l2 projection: least squares onto range(A), x = A⁺ w;
* Huber: the classic robust M-estimator (iteratively reweighted least squares, threshold
  1.345 × the MAD scale of the residuals), a per-column robust baseline.

Expected: the l1 error grows in proportion to σ, while the l2 projection is ruined by E.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jaxpurify import recover
from jaxpurify.experiments._common import Record, write_csv, write_json
from jaxpurify.progress import Progress

SIGMAS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1)


def huber(A: np.ndarray, Y: np.ndarray, iters: int = 50) -> np.ndarray:
    """Huber M-estimate per column by IRLS, threshold 1.345·(1.4826·median|r|)."""
    X: np.ndarray = np.linalg.lstsq(A, Y, rcond=None)[0]
    for _ in range(iters):
        R = Y - A @ X
        scale = 1.4826 * np.median(np.abs(R), axis=0) + 1e-300
        w = np.minimum(1.0, 1.345 * scale / np.maximum(np.abs(R), 1e-300))
        for j in range(Y.shape[1]):
            sw = np.sqrt(w[:, j])
            X[:, j] = np.linalg.lstsq(A * sw[:, None], Y[:, j] * sw, rcond=None)[0]
    return X


def _rel_err(A: np.ndarray, W: np.ndarray, Xh: ArrayLike) -> float:
    """‖A X̂ − W‖_F / ‖W‖_F in float64: the relative error of the weights an estimate X̂ gives."""
    return float(np.linalg.norm(A @ np.asarray(Xh, np.float64) - W) / np.linalg.norm(W))


def run(
    out: str,
    quick: bool = False,
    K: int = 128,
    ratio: float = 4.0,
    rho: float = 0.1,
    m: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[Record]:
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(np.ceil(K / ratio))
    sigmas = SIGMAS[::2] if quick else SIGMAS
    trials = 2 if quick else 5
    rows: list[Record] = []
    acc: dict[float, dict[str, list[float]]] = {
        s: {k: [] for k in ("l1", "l1_strict", "l2", "huber", "cert")} for s in sigmas
    }
    with Progress(len(sigmas) * trials, "noise", disable=not progress or None) as bar:
        for _ in range(trials):
            A = rng.standard_normal((K, n)) / np.sqrt(n)
            X = rng.standard_normal((n, m))
            W = A @ X
            rms = np.sqrt(np.mean(W**2))
            E = np.zeros_like(W)
            k = int(round(rho * K))
            for j in range(m):
                idx = rng.choice(K, k, replace=False)
                E[idx, j] = rng.choice([-1, 1], k) * np.exp(rng.uniform(0, np.log(1e3), k)) * rms
            Z = rng.standard_normal(W.shape) * rms
            for s in sigmas:
                Wc = (W + E + s * Z).astype(np.float32)
                A32 = A.astype(np.float32)
                o = recover(A32, Wc, atol=4 * s * rms)
                acc[s]["l1"].append(_rel_err(A, W, o.x))
                acc[s]["cert"].append(float(jnp.mean(o.certified)))
                acc[s]["l1_strict"].append(_rel_err(A, W, recover(A32, Wc).x))
                acc[s]["l2"].append(_rel_err(A, W, np.linalg.lstsq(A, Wc.astype(np.float64), rcond=None)[0]))
                acc[s]["huber"].append(_rel_err(A, W, huber(A, Wc.astype(np.float64))))
                bar.update(1, sigma=f"{s:g}")
    for s in sigmas:
        rows.append(
            {
                "sigma": s,
                "K": K,
                "n": n,
                "rho": rho,
                "trials": trials,
                "l1_err": np.mean(acc[s]["l1"]),
                "l1_certified_rate": np.mean(acc[s]["cert"]),
                "l1_strict_err": np.mean(acc[s]["l1_strict"]),
                "l2_err": np.mean(acc[s]["l2"]),
                "huber_err": np.mean(acc[s]["huber"]),
            }
        )
    write_csv(os.path.join(out, "noise.csv"), rows)
    write_json(os.path.join(out, "noise.json"), rows)
    plot(rows, os.path.join(out, "noise.png"))
    return rows


def plot(rows: list[Record], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = np.array([r["sigma"] for r in rows])
    pos = s > 0
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    for key, label, style in (
        ("l1_err", "l1, atol = 4σ (jaxpurify)", "o-"),
        ("l1_strict_err", "l1, strict tolerance", "s--"),
        ("l2_err", "l2 projection", "^-"),
        ("huber_err", "Huber M-estimator", "v-"),
    ):
        ax.loglog(s[pos], np.maximum([r[key] for r in np.array(rows)[pos]], 1e-9), style, label=label)
    ax.loglog(s[pos], s[pos], "k:", label="∝ σ")
    ax.set_xlabel("dense noise σ (relative to weight rms)")
    ax.set_ylabel("relative weight error ‖AX̂ − W‖ / ‖W‖")
    ax.set_title(f"{rows[0]['rho']:.0%} gross errors per column, K={rows[0]['K']}, n={rows[0]['n']}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
