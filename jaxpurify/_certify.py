"""The certificate, stand-alone: from a fit and its outlier mask to a result code and an error bound.

With k̂ outliers among the K' usable rows (K minus erasures) a column is certified iff

* A has full column rank,
* the fit is exact on its inliers, ``|y_i − a_iᵀx̂| ≤ τ = rtol·max|y_inlier| + atol``,
  with an outlier mask that no longer changes,
* at least one redundant row is left, ``K' − k̂ ≥ n + 1`` (with K' − k̂ = n any column fits
  exactly: nothing would be checked), and with K' − k̂ = n + 1 every inlier is checked by the others
  (see "Corrupted inliers" below), and
* ``2·k̂ < K' − n + 1``.

Then x̂ is the unique sparsest explanation of the column: another x' with k' gross errors and
k̂ + k' ≤ K' − n would make A(x̂ − x') vanish on ≥ n rows, impossible for A in general position.
So x̂ equals the clean column whenever that column had at most K' − n − k̂ corrupted entries.

Error bound.  Any x that also explains the inliers I to within τ has ‖A_I(x̂ − x)‖₂ ≤ 2τ√|I|, so
``‖x̂ − x‖₂ ≤ 2τ√|I| / σ_min(A_I)`` with ``σ_min(A_I) ≥ σ_min(R)·√(1 − ‖Q_O‖²)`` (A = QR, Q_O
the outlier rows of Q); ``bound`` is that quantity divided by ‖x̂‖₂.  Every factor is exact but
‖Q_O‖², which is *estimated*: power iteration (``POWER_STEPS``) plus twice its eigen-residual.  A plain
power-iteration estimate is low, and was measured to make the bound up to 1.6× too small for
columns with k̂ near (K'−n)/2; with twice the eigen-residual added it was still measured as low as
0.80× the same expression with σ_min(A_I) from an SVD (K = 32, n = 15, k̂ = 8).  So ``bound`` is
an estimate of a bound, not a proof; tests/test_certificate.py checks it against the true error
(float64 clean columns), which it exceeded in every case measured.  Where that estimate exceeds
1 − ``WEAK`` (it reached 1 on columns with erasures or blocks: a certificate with bound = inf),
σ_min(Q_I)² is instead the smallest eigenvalue of Q_IᵀQ_I (eigh, less a rounding margin), as on
the |I| = n+1 columns below.  A certificate always carries a finite bound: where none can be
given (σ_min(A_I) = 0 in the solver's precision, overflow) the column is ``no_bound``, not
certified.  The arithmetic runs in the column's own power-of-two units (``_units``), ‖x̂‖ is
taken scaled by its largest entry, and entries ≥ 2^``far_limit`` times the column's median
(``_solver``: stuck near the largest float) are outliers by fiat, counted in k̂.

Corrupted inliers.  The argument above assumes the clean column explains every inlier to within
τ.  Within the guarantee (k ≤ K' − n − k̂, so k ≤ |I| − n) up to c ≤ |I| − n inliers can instead be
entries changed by more than τ that x̂ happens to fit (the fault campaign found one: K' = 14,
n = 12, a mantissa flip taken as an inlier while a clean row was flagged, error 2.4e-4 against the
plain bound 1.5e-4).  Only the other rows S = I∖C then hold both fits, and with z = A_I(x̂ − x) ∈
range(A_I): |z_i| ≤ 2τ on S, so ‖z‖ ≤ 2τ√|S| / σ_min(Ũ_S), Ũ an orthonormal basis of range(A_I).

* |I| = n+1 (then c ≤ 1): range(A_I) is the complement of one unit vector u ∈ R^I (the leverage of
  row j in A_I is ℓ_j = 1 − u_j²).  For C = {j}: z ⊥ u gives |u_j z_j| = |u_Sᵀz_S| ≤ √(1 − u_j²)·‖z_S‖,
  so ‖z‖² = ‖z_S‖² + z_j² ≤ ‖z_S‖²/u_j², and
  ``bound = 2τ√n / (σ_min(R)·σ_min(Q_I)·min_j |u_j|·‖x̂‖₂)``, which also covers c = 0 (min_j |u_j| ≤
  1/√(n+1)).  σ_min(Q_I)² = λ_min(Q_IᵀQ_I), and min_j |u_j| is bounded below allowing for the
  error of the computed u and for rounding (``_null_margin``): no power-iteration estimate here.
  min_j |u_j| = 0 means some inlier is checked by no other row (A_{I∖j} singular: e.g. two equal
  rows of A among the n+1): a change to it is invisible, so the column is ``no_slack``.
  These columns are rare (certified with |I| = n+1 needs K' ≤ n+2) and solved a few at a time.
* |I| ≥ n+2, a column the simplex stage certified (``one_corrupted``): an l1 vertex fits a small
  corrupted entry as an inlier and flags a clean row instead where that costs less (K' = 15,
  n = 12: 4.8e-4 off against the c = 0 bound's 2.8e-4).  For C = {j}, σ_min(Ũ_S)² = 1 − ℓ_j (ℓ_j
  the leverage of row j in A_I), so ``bound = 2τ√|I| / (σ_min(R)·σ_min(Q_I)·√min_j(1 − ℓ_j)·‖x̂‖₂)``
  covers c ≤ 1, with the leverages' rounding taken off (``_null_margin``, a margin far wider than
  the rounding measured: low-slack columns become ``no_slack`` rather than get a wide bound, and
  ``_solver._pivot_block`` then keeps the passes' answer);
  min_j(1 − ℓ_j) = 0 (an inlier no other row checks) is ``no_slack``.  c ≥ 2: assumed away, as below.
* |I| ≥ n+2 otherwise: the bound keeps the assumption c = 0.  The exact factor would be a minimum
  over all c-subsets of I (c up to |I| − n), which is not computed.  Measured on the property-test instances
  (K' = 14–20, n = 12): 0 of the certified columns within the guarantee with |I| ≥ n+2 outside
  their bound, including those with a corrupted inlier (error ≤ 0.6× the bound); see docs/security.md.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxpurify._numerics import einsum, matmul  # every product at full float32 (tests/test_precision.py)
from jaxpurify._solution import RESULTS

POWER_STEPS = 8  # power iterations for ‖Q_O‖²: each costs one projection
# Past 1 − WEAK, the power-iteration estimate of ‖Q_O‖² is replaced by λ_max from Q_IᵀQ_I's eigh.
WEAK = 1.0 / 16


class Fit(NamedTuple):
    """A candidate answer for a block of columns (K, m), in the solver's normalized units."""

    x: jax.Array  # (n, m)
    r: jax.Array  # (K, m) residual on finite rows
    outliers: jax.Array  # (K, m) bool, erasures included
    exact: jax.Array  # (m,) fit within tolerance on every inlier
    stable: jax.Array  # (m,) the mask did not change in the last polish round
    solved: jax.Array  # (m,) the last least-squares refit converged within its step cap
    over: jax.Array  # (m,) the mask settled past the count bound, or the polish gave it up there


def _outlier_norm2(Q: jax.Array, outliers: jax.Array) -> jax.Array:
    """Per column, an estimate of ‖Q_O‖² = λ_max(Q_Oᵀ Q_O) meant to err high: power iteration gives
    a Rayleigh quotient θ ≤ λ_max; θ + 2‖Mv − θv‖ adds twice the eigen-residual, which covers the
    gap once v leans toward the top eigenvector (not a proof: see the module docstring)."""
    dtype = Q.dtype
    tiny = jnp.finfo(dtype).tiny
    o = outliers.astype(dtype)

    def M(v: jax.Array) -> jax.Array:
        return matmul(Q.T, o * matmul(Q, v))

    v0 = matmul(Q.T, o)  # the sum of the outlier rows: a start with weight on the top eigenvector
    v0 = jnp.where(jnp.sum(v0 * v0, axis=0) > 0, v0, 1.0)

    def unit(v: jax.Array) -> jax.Array:
        return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=0), tiny))

    v = unit(lax.fori_loop(0, POWER_STEPS, lambda _, v: M(unit(v)), v0))
    w = M(v)
    theta = jnp.sum(v * w, axis=0)
    return theta + 2.0 * jnp.sqrt(jnp.sum(jnp.square(w - theta * v), axis=0))


def _null_margin(Q: jax.Array, inl: jax.Array, n: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For s columns with inliers I (``inl``, (K, s)): where I is n+1 rows, a lower bound on
    min_{j∈I}|u_j|, u the unit vector of R^I orthogonal to range(A_I) = range(Q_I) (its leverages
    are 1 − u_j²); σ_min(Q_I)²; and for any I a lower bound on min_{j∈I}(1 − ℓ_j), ℓ_j = q_jᵀG⁻¹q_j
    the leverage of row j in A_I (each (s,); all err low, allowing for G's rounding, not for eigh's
    own backward error or Q's departure from orthonormality, both far smaller here).

    u' = two projections of the uniform vector on I off range(Q_I) (G = Q_IᵀQ_I by eigh); with
    u' = cos θ·u + sin θ·w, w ∈ range(Q_I): ‖Q_Iᵀu'‖ ≥ sin θ·σ_min(Q_I), so
    |u_j| ≥ |u'_j| − ‖Q_Iᵀu'‖/σ_min(Q_I).  0 when that is not positive or G is singular.
    G's entries round by ≤ K·eps, so ‖ΔG‖₂ ≤ n·K·eps and ℓ_j moves by ≤ ‖ΔG‖₂/λ_min(G) (ℓ_j ≤ 1):
    twice that is taken off 1 − ℓ_j."""
    dtype = Q.dtype
    # the rounding terms count the real rows and columns (``rows``, ``n``): padding is exact zeros
    K = rows.astype(dtype)
    eps = jnp.finfo(dtype).eps
    o = inl.astype(dtype)
    # Q's all-zero columns (padding of A, if any) would make G singular: they carry no leverage
    pad = jnp.diag((jnp.sum(Q * Q, axis=0) == 0).astype(dtype))
    G = einsum("kn,ks,kp->snp", Q, o, Q) + pad
    w, V = jnp.linalg.eigh(G)  # one factorization for both the solves and λ_min(G)

    def off_range(v: jax.Array) -> jax.Array:  # (K, s) on I → minus its projection on range(Q_I)
        b = einsum("snp,ns->sp", V, matmul(Q.T, v)) / w
        return o * (v - matmul(Q, einsum("snp,sp->ns", V, b)))

    u = off_range(off_range(o))
    u = u / jnp.sqrt(jnp.sum(u * u, axis=0))
    # the K-term sums of G and Q_Iᵀu' round by ≤ K·eps per entry (‖Q_k‖ ≤ 1), so ‖ΔG‖₂ ≤ n·K·eps:
    # err low on σ², high on ‖Q_Iᵀu'‖
    nk = jnp.asarray(n, dtype) * K * eps
    smin2 = w[:, 0] - nk
    rho = jnp.sqrt(jnp.sum(jnp.square(matmul(Q.T, u)), axis=0)) + K * jnp.sqrt(jnp.asarray(n, dtype)) * eps
    lo = jnp.min(jnp.where(inl, jnp.abs(u), jnp.inf), axis=0) - rho / jnp.sqrt(smin2)
    # leverages ℓ_j = Σ_p (v_pᵀq_j)²/w_p; 1 − ℓ_j = σ_min(Ũ_{I∖j})², Ũ an orthonormal basis of range(A_I)
    lev = jnp.sum(jnp.square(einsum("snp,kn->kps", V, Q)) / w.T[None], axis=1)
    rest = jnp.min(jnp.where(inl, 1.0 - lev, jnp.inf), axis=0) - 2.0 * nk / (smin2 - nk)
    rest = jnp.where((smin2 > nk) & (rest > 0), rest, 0.0)  # NaN (singular G) → 0
    return jnp.where(lo > 0, lo, 0.0), jnp.maximum(smin2, 0.0), rest


class _Margins(NamedTuple):
    """``_edge_margins``' loop state, per column of the block."""

    margin: jax.Array  # (m,) lower bound on min_j |u_j| (``_null_margin``), 1 where not needed
    smin2: jax.Array  # (m,) σ_min(Q_I)², NaN where not needed
    rest: jax.Array  # (m,) lower bound on min_j (1 − ℓ_j), 1 where not needed
    todo: jax.Array  # (m,) still to do


class Certificate(NamedTuple):
    """:func:`certify`'s verdict per column."""

    code: jax.Array  # (m,) int8 result code (``RESULTS``)
    certified: jax.Array  # (m,) code == successful
    bound: jax.Array  # (m,) relative error bound of a certified column, inf otherwise


def _edge_margins(
    Q: jax.Array, inliers: jax.Array, need: jax.Array, n: jax.Array, rows: jax.Array, slots: int = 8
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``_null_margin`` of the columns that ``need`` it, ``slots`` at a time (margins 1 and σ² NaN
    for the others): they are rare (certified with |I| = n+1 needs K' ≤ n+2, the power-iteration
    estimate of ‖Q_O‖² near 1, or a column the simplex stage certified), so a block without one
    costs nothing here."""
    m = need.shape[0]
    s = min(slots, m)

    def body(st: _Margins) -> _Margins:
        idx = jnp.argsort(~st.todo, stable=True)[:s]  # the first s columns still to do (distinct)
        got, got2, got_rest = _null_margin(Q, inliers[:, idx], n, rows)
        keep = st.todo[idx]
        return _Margins(
            margin=st.margin.at[idx].set(jnp.where(keep, got, st.margin[idx])),
            smin2=st.smin2.at[idx].set(jnp.where(keep, got2, st.smin2[idx])),
            rest=st.rest.at[idx].set(jnp.where(keep, got_rest, st.rest[idx])),
            todo=st.todo.at[idx].set(False),
        )

    ones = jnp.ones((m,), Q.dtype)
    init = _Margins(margin=ones, smin2=jnp.full((m,), jnp.nan, Q.dtype), rest=ones, todo=need)
    out = lax.while_loop(lambda st: jnp.any(st.todo), body, init)
    return out.margin, out.smin2, out.rest


def certify(
    Q: jax.Array,
    R: jax.Array,
    n: jax.Array,
    fit: Fit,
    usable: jax.Array,
    tol: jax.Array,
    one_corrupted: jax.Array | None = None,
) -> Certificate:
    """Result codes (int8), certified flags and relative error bounds for a block of columns.

    ``tol`` is the per-column inlier tolerance τ.  ``usable`` (K, m) marks the rows that count in
    K': every finite entry, including those the solver set aside as far above the column's median
    (``_solver``), which ``fit.outliers`` holds and k̂ counts (unlike ``_polish.Block.finite``,
    which leaves them out).  ``n`` (may be traced) is the number of real columns of A: Q's and R's
    columns from n on are padding (zero in Q, identity in R; ``_solver._factor``).
    ``one_corrupted`` (m,): columns whose bound, with |I| ≥ n+2 too, must cover one corrupted
    inlier (the simplex stage's: module docstring); none if not given.
    """
    kprime = jnp.sum(usable, axis=0)
    k_hat = jnp.sum(fit.outliers & usable, axis=0)
    inliers = kprime - k_hat
    code = jnp.full(k_hat.shape, RESULTS.count_bound, jnp.int8)
    code = jnp.where(2 * k_hat < kprime - n + 1, jnp.int8(RESULTS.successful), code)
    code = jnp.where(inliers >= n + 1, code, jnp.int8(RESULTS.no_slack))
    fit_ok = fit.exact & fit.stable
    cause = jnp.where(
        ~fit.stable, RESULTS.unstable_mask, jnp.where(fit.solved, RESULTS.inexact_fit, RESULTS.iteration_cap)
    )
    # a mask that settled past the count bound (or was given up there) is the reason whatever the
    # refit's state; no_slack where the reported mask leaves no redundant row at all
    too_many = jnp.where(code == RESULTS.no_slack, RESULTS.no_slack, RESULTS.count_bound)
    cause = jnp.where(fit.over, too_many, cause)
    code = jnp.where(fit_ok, code, cause.astype(jnp.int8))
    # rank from the singular values of R (those of A), not from R's diagonal: an unpivoted QR's
    # min|R_ii| only bounds σ_min from above, so a nearly singular A could pass that test
    N = R.shape[0]
    real = jnp.arange(N) < n
    s = jnp.linalg.svd(jnp.where(real[:, None] & real, R, 0.0), compute_uv=False)  # padding: 0s, last
    smin_r = s[n - 1]
    # A's real rows: padding rows (purify's shape buckets) are zero in A and so in Q
    rows = jnp.sum(jnp.any(Q != 0, axis=1))
    full_rank = smin_r > rows * jnp.finfo(R.dtype).eps * s[0]
    code = jnp.where(full_rank, code, jnp.int8(RESULTS.rank_deficient))
    # |I| = n+1: one inlier may be a corrupted entry (module docstring): the bound takes 2τ√n / min_j|u_j|,
    # and min_j|u_j| = 0 (an inlier no other row checks, e.g. a duplicated row of A) leaves no slack
    edge = (code == RESULTS.successful) & (inliers == n + 1)
    lam = jnp.clip(_outlier_norm2(Q, fit.outliers | ~usable), 0.0, 1.0)
    # where the power-iteration estimate leaves (almost) nothing of σ_min(Q_I) (it errs high, and
    # reached 1 on columns with erasures or blocks: a certificate without a bound), σ_min(Q_I)² is
    # taken from G = Q_IᵀQ_I itself, as on the |I| = n+1 columns
    weak = (code == RESULTS.successful) & (lam > 1.0 - WEAK)
    # leave one out: the simplex stage's columns cover one corrupted inlier at any |I|
    loo = (code == RESULTS.successful) & ~edge
    loo = loo & (one_corrupted if one_corrupted is not None else jnp.zeros_like(loo))
    # σ_min(Q_I)² from G's eigh, not from the power-iteration estimate
    by_eigh = edge | weak | loo
    margin, smin2_g, rest = _edge_margins(Q, usable & ~fit.outliers, by_eigh, n, rows)
    # min_j (1 − ℓ_j) = 0: an inlier no other row checks (A_{I∖j} singular), as margin = 0 above
    code = jnp.where((edge & (margin == 0)) | (loo & (rest == 0)), jnp.int8(RESULTS.no_slack), code)

    smin = smin_r * jnp.sqrt(jnp.where(by_eigh, smin2_g, jnp.maximum(1.0 - lam, 0.0)))
    count = inliers.astype(tol.dtype)
    # n/0 = inf: no bound
    terms = jnp.where(edge, n / jnp.square(margin), jnp.where(loo, count / rest, count))
    abs_bound = 2.0 * tol * jnp.sqrt(terms) / smin  # 0/0 = NaN, x/0 = inf: no bound
    xn = _norm(fit.x)
    rel = jnp.where(xn > 0, abs_bound / jnp.where(xn > 0, xn, 1.0), jnp.where(abs_bound > 0, jnp.inf, 0.0))
    # a certificate carries a finite bound, or it is none
    code = jnp.where((code == RESULTS.successful) & ~jnp.isfinite(rel), jnp.int8(RESULTS.no_bound), code)
    certified = code == RESULTS.successful
    bound = jnp.where(certified, rel, jnp.inf)
    return Certificate(code=code, certified=certified, bound=bound)


def _norm(x: jax.Array) -> jax.Array:
    """‖x‖₂ per column without overflow or underflow in its squares (scaled by the largest entry)."""
    top = jnp.max(jnp.abs(x), axis=0)
    s = jnp.where(top > 0, top, 1.0)
    return top * jnp.sqrt(jnp.sum(jnp.square(x / s), axis=0))
