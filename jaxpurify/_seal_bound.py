"""The seal's tolerance inside ``purify``: a bound on the honest purification error, per seal chunk.

The seal (``jaxpurify._seal``) needs, for each chunk C of c consecutive entries of a leaf, a number
ε_C with ‖e_C‖₂ ≤ √c·ε_C, where e = P − W is the honest purification error (P purified, W sealed);
its no-false-alarm claim (Hoeffding) holds exactly as far as that inequality does, and the smallest
single-entry change it is sure to detect is (t√c + 1)·ε_C.  So ε_C should be tight, and sound.

Per certified column j of a group (w_j = A x̂_j, K rows; A the K × n matrix the solver used):

* β_j = b_j·‖x̂_j‖₂ bounds ‖d_j‖₂ = ‖x̂_j − x_j‖₂, x_j the clean latent (b_j = ``Recovery.bound``);
  ‖x̂_j‖₂ is recomputed here as ‖A⁺w_j‖₂ from the purified column (equal up to w's rounding).
* The column's error on a set R of its rows is A_R d_j, and ‖A_R d_j‖₂ ≤ ‖A_R‖₂·β_j with
  ‖A_R‖₂ ≤ min(σ_max(A), ‖A_R‖_F), ‖A_R‖_F² = Σ_{i∈R} ‖a_i‖₂².
* Summing over the columns j that meet chunk C in rows R_j(C):

      ‖(A d)_C‖₂² ≤ E_C² = Σ_j min(σ_max(A)², Σ_{i∈R_j(C)} ‖a_i‖₂²)·β_j²

  (rows met in several separate runs are summed run by run, which only adds), and
  ε_C = E_C/√c + ``_seal.default_err`` (the float rounding of P and of W, per entry).

This replaces one ε per leaf, max_i‖a_i‖₂·max_j b_j·‖w_j‖₂/σ_min(A): ‖w‖/σ_min(A) overstates
‖x̂‖ by up to κ(A), a single entry's ‖a_i‖ instead of σ_max over a whole column by about √n,
and the worst column of the leaf set every chunk's tolerance.

The attacker's lever, bounded.  β_j grows as a column loses inliers (erasures, flagged entries),
and whoever damages the weights chooses that: erasing 55% of every column of a leaf (K = 256,
K/n = 4; still certified) widened its tolerance 5.5× and let an in-range change of 0.56% of ‖W‖_F
pass where 0.10% passed before; keeping only n + 1 entries of a column makes β_j 10²–10⁶ times a
clean column's.  So each certified column's β_j enters E_C capped at ``CAP``·β⁰ (``CAP`` = 2), with

      β⁰ = 2·τ⁰·√K / σ_min(A),    τ⁰ = rtol·M + atol,

the bound a clean column of the group (all K rows inliers: the certificate's bound at k̂ = 0 and
no erasure) would get if its largest entry were M, the largest sealed max|W| of the group's
leaves; rtol and atol are the solver's (``options_for`` the group's dtype).  β⁰ depends on A, the
authenticated seal and the options only.  Guarantee, for every chunk C and any input:

      ε_C ≤ CAP·ε⁰_C + ``_seal.default_err``,   ε⁰_C = √(Σ_j min(σ_max(A)², Σ_{i∈R_j(C)} ‖a_i‖₂²)·β⁰² / c),

the sum over every column j meeting C: erasures or repairable damage widen a chunk's tolerance at
most ``CAP``-fold over clean columns at the leaf's largest weight, and the smallest single-entry
change sure to be detected stays ≤ (t√c + 1)·(CAP·ε⁰_C + rounding).  With the cap the 55% attack
above passes 0.26% of ‖W‖_F (2.2× the clean leaf's 0.11%, the same run).  The cost: a column whose
own β_j exceeds CAP·β⁰ (heavy damage that leaves few inliers or an ill-conditioned A_I) is judged
at the capped tolerance, which the no-false-alarm proof (``jaxpurify._seal``) does not cover; its
honest error, typically far below its bound, still passes (measured: docs/security.md), and otherwise
the seal fails, the safe side.

Assumed, not proved: (1) ``Recovery.bound`` is itself an estimate (‖Q_O‖² by power iteration; see
``jaxpurify._certify``), measured above every true error but as low as 0.80× its exact
expression; (2) every entry corrupted by more than the inlier tolerance was flagged (false at the
very edge of the guarantee, k + k̂ = K' − n).  Where either fails, an honest column can exceed ε_C
and the seal may raise a false alarm (never a false "verified").  A certified column whose bound
is not finite (no usable estimate) adds nothing: its chunk is judged at float precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

import numpy as np

from jaxpurify import _seal
from jaxpurify._numerics import widen
from jaxpurify._options import RecoverOptions
from jaxpurify._plan import options_for, solve_dtype

if TYPE_CHECKING:  # both import this module
    from jaxpurify._codebook import Codebook
    from jaxpurify._layout import Group
    from jaxpurify._purify import GroupResult

_BLOCK = 1 << 20  # entries per block of columns: the working memory is a few arrays of this size
CAP = 2.0  # each column's β at most CAP·β⁰, the bound of a clean column (module docstring)


def clean_bound(K: int, smin: float, max_abs: float, rtol: float, atol: float) -> float:
    """β⁰ = 2(rtol·max_abs + atol)·√K / σ_min(A): the latent error bound of a clean column (all K
    rows inliers) whose largest entry is ``max_abs`` (module docstring)."""
    return 2.0 * (rtol * max_abs + atol) * math.sqrt(K) / smin if smin > 0 else math.inf


def latent_norms(values: np.ndarray, A: np.ndarray) -> np.ndarray:
    """‖A⁺w‖₂ of every column w of a (K, m) code (= ‖x̂‖₂ for a purified column w = A x̂), in
    float64, a block of columns at a time; non-finite entries (uncertified inputs) count as 0.

    A⁺w = (AᵀA)⁻¹Aᵀw = L⁻ᵀL⁻¹Aᵀw with AᵀA = LLᵀ: n × n factors only (A⁺ itself, and the SVD
    behind ``np.linalg.pinv``, would cost several K × n float64 arrays at once)."""
    K, m = values.shape
    A = np.asarray(A, np.float64)
    Linv = np.linalg.inv(np.linalg.cholesky(A.T @ A))
    step = max(1, _BLOCK // max(K, 1))
    out = np.empty(m)
    for j in range(0, m, step):
        v = widen(values[:, j : j + step])
        v[~np.isfinite(v)] = 0.0
        out[j : j + step] = np.linalg.norm(Linv.T @ (Linv @ (A.T @ v)), axis=0)
    return out


def _leaf_index(
    codebook: Codebook, g: Group, q: np.ndarray, spans: Mapping[str, tuple[int, np.integer]]
) -> tuple[np.ndarray, np.ndarray]:
    """For code entries q = i·m + j of group ``g``: the index of their leaf in ``spans`` (−1 for
    padding) and their flat C-order index in that leaf (the seal's order)."""
    sizes = np.array([s.size for s in g.segments])
    ends = np.cumsum(sizes)
    seg = np.minimum(np.searchsorted(ends, q, side="right"), len(sizes) - 1)
    pos = q - (ends - sizes)[seg] + np.array([s.start for s in g.segments])[seg]  # index in layout order
    leaf = np.array([spans.get(s.path, (-1,))[0] for s in g.segments])[seg]
    leaf = np.where(q < ends[-1], leaf, -1)
    spec = codebook.specs.get(g.segments[0].path)
    if spec is not None:  # single-axis leaf (one whole group): layout order is C order with the axis first
        moved = (spec.shape[spec.axis],) + tuple(d for i, d in enumerate(spec.shape) if i != spec.axis)
        coords = list(np.unravel_index(np.where(leaf >= 0, pos, 0), moved))
        coords.insert(spec.axis, coords.pop(0))
        pos = np.ravel_multi_index(coords, spec.shape)
    return leaf, pos


def chunk_errors(
    codebook: Codebook,
    matrices: Mapping[str, np.ndarray],
    results: Mapping[str, GroupResult],
    xnorms: Mapping[str, np.ndarray],
    options: RecoverOptions | None = None,
) -> dict[str, np.ndarray]:
    """Per sealed protected leaf, ε_C of each seal chunk (module docstring).  ``results``: per group
    ``certified`` and ``bound`` (relative) per column; ``xnorms``: per group :func:`latent_norms`;
    ``options``: the solver's (its rtol and atol set the cap's clean bound β⁰)."""
    options = RecoverOptions() if options is None else options
    seal = cast(_seal.Seal, codebook.seal_record)  # purify asks for a sealed codebook's errors only
    chunk = seal.chunk
    paths = [p for p in codebook.protected if p in seal.leaves]
    counts = [-(-int(np.prod(seal.leaves[p].shape)) // chunk) for p in paths]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    spans = {p: (k, offsets[k]) for k, p in enumerate(paths)}
    scale = np.array([seal.leaves[p].max_abs or 1.0 for p in paths] or [1.0])  # E² in units of max|W|²: no overflow
    E2 = np.zeros(int(offsets[-1]))
    for name, g in codebook.groups.items():
        r = results[name]
        with np.errstate(invalid="ignore", over="ignore"):
            beta = np.where(r.certified, (r.bound if r.bound is not None else np.nan) * xnorms[name], 0.0)
        beta = np.where(np.isfinite(beta), beta, 0.0)
        if not beta.any():
            continue
        A = np.asarray(matrices[name], np.float64)
        sv = np.linalg.svd(A, compute_uv=False)
        opts = options_for(g.dtype, options)
        top = max((seal.leaves[p].max_abs for p in g.members if p in seal.leaves), default=0.0)
        beta0 = clean_bound(g.K, float(sv[-1]), top, opts.rtol_for(solve_dtype(g.dtype)), opts.atol)
        beta = np.minimum(beta, CAP * beta0)  # the attacker's lever (module docstring)
        cum = np.concatenate([[0.0], np.cumsum((A * A).sum(1))])  # Σ_{i<r} ‖a_i‖²
        smax2 = float(sv[0]) ** 2
        K, m = g.K, g.columns
        step = max(1, _BLOCK // K)
        for j0 in range(0, m, step):
            cols = np.arange(j0, min(m, j0 + step))
            q = (cols[:, None] + m * np.arange(K)[None, :]).ravel()  # column by column: runs along rows
            leaf, pos = _leaf_index(codebook, g, q, spans)
            key = np.where(leaf >= 0, offsets[np.maximum(leaf, 0)] + pos // chunk, -1)
            start = np.ones(key.size, bool)
            start[1:] = key[1:] != key[:-1]
            start[::K] = True  # a run never crosses into the next column
            first = np.flatnonzero(start)
            last = np.append(first[1:], key.size)  # exclusive
            rows0, rows1 = first % K, (last - 1) % K + 1
            ratio = beta[j0 + first // K] / scale[np.maximum(leaf[first], 0)]
            contrib = np.minimum(smax2, np.maximum(cum[rows1] - cum[rows0], 0.0)) * ratio * ratio
            ok = (key[first] >= 0) & (contrib > 0)
            E2 += np.bincount(key[first][ok], contrib[ok], minlength=E2.size)
    out: dict[str, np.ndarray] = {}
    for k, p in enumerate(paths):
        s = seal.leaves[p]
        size = int(np.prod(s.shape))
        c = np.minimum(chunk, size - chunk * np.arange(counts[k]))
        out[p] = np.sqrt(E2[offsets[k] : offsets[k + 1]] / c) * scale[k] + _seal.default_err(s.dtype, s.max_abs)
    return out
