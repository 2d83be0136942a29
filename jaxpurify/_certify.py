"""The certificate, stand-alone: from a fit and its outlier mask to a result code and an error bound.

With k̂ outliers among the K' usable rows (K minus erasures) a column is certified iff

* A has full column rank,
* the fit is exact on its inliers, ``|y_i − a_iᵀx̂| ≤ τ = rtol·max|y_inlier| + atol``,
  with an outlier mask that no longer changes,
* at least one redundant row is left, ``K' − k̂ ≥ n + 1`` (with K' − k̂ = n any column fits
  exactly: nothing would be checked), and
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
(float64 clean columns), which it exceeded in every case measured.  inf: no usable estimate.
The bound also assumes the clean column explains every inlier row to within τ, i.e. every entry
corrupted by more than τ was flagged.  At the edge of the guarantee (k + k̂ = K' − n) a corrupted
entry can be taken as an inlier while a clean row is flagged; only the clean inliers then hold x̂,
and the error can exceed the bound (the fault campaign found K' = 14, n = 12, one mantissa flip:
2.4e-4 against a bound of 1.5e-4; tests/test_campaign_properties.py keeps it as a strict xfail).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxpurify._admm import _mm
from jaxpurify._solution import RESULTS

POWER_STEPS = 8  # power iterations for ‖Q_O‖²: each costs one projection


class Fit(NamedTuple):
    """A candidate answer for a block of columns (K, m), in the solver's normalized units."""

    x: jax.Array  # (n, m)
    r: jax.Array  # (K, m) residual on finite rows
    outliers: jax.Array  # (K, m) bool, erasures included
    exact: jax.Array  # (m,) fit within tolerance on every inlier
    stable: jax.Array  # (m,) the mask did not change in the last polish round
    solved: jax.Array  # (m,) the last least-squares refit converged within its step cap


def _outlier_norm2(Q, outliers):
    """Per column, an estimate of ‖Q_O‖² = λ_max(Q_Oᵀ Q_O) meant to err high: power iteration gives
    a Rayleigh quotient θ ≤ λ_max; θ + 2‖Mv − θv‖ adds twice the eigen-residual, which covers the
    gap once v leans toward the top eigenvector (not a proof: see the module docstring)."""
    dtype = Q.dtype
    tiny = jnp.finfo(dtype).tiny
    o = outliers.astype(dtype)
    M = lambda v: _mm(Q.T, o * _mm(Q, v))
    v0 = _mm(Q.T, o)  # the sum of the outlier rows: a start with weight on the top eigenvector
    v0 = jnp.where(jnp.sum(v0 * v0, axis=0) > 0, v0, 1.0)
    unit = lambda v: v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=0), tiny))
    v = unit(lax.fori_loop(0, POWER_STEPS, lambda _, v: M(unit(v)), v0))
    w = M(v)
    theta = jnp.sum(v * w, axis=0)
    return theta + 2.0 * jnp.sqrt(jnp.sum(jnp.square(w - theta * v), axis=0))


def certify(Q, R, n, fit: Fit, finite, tol) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Result codes (int8), certified flags and relative error bounds for a block of columns.

    ``tol`` is the per-column inlier tolerance τ; ``finite`` marks the usable rows.  ``n`` (may be
    traced) is the number of real columns of A: Q's and R's columns from n on are padding (zero in
    Q, identity in R; ``_solver._factor``).
    """
    usable = jnp.sum(finite, axis=0)
    k_hat = jnp.sum(fit.outliers & finite, axis=0)
    inliers = usable - k_hat
    code = jnp.full(k_hat.shape, RESULTS.count_bound, jnp.int8)
    code = jnp.where(2 * k_hat < usable - n + 1, jnp.int8(RESULTS.successful), code)
    code = jnp.where(inliers >= n + 1, code, jnp.int8(RESULTS.no_slack))
    fit_ok = fit.exact & fit.stable
    cause = jnp.where(~fit.stable, RESULTS.unstable_mask, jnp.where(fit.solved, RESULTS.inexact_fit, RESULTS.iteration_cap))
    code = jnp.where(fit_ok, code, cause.astype(jnp.int8))
    # rank from the singular values of R (those of A), not from R's diagonal: an unpivoted QR's
    # min|R_ii| only bounds σ_min from above, so a nearly singular A could pass that test
    N = R.shape[0]
    real = jnp.arange(N) < n
    s = jnp.linalg.svd(jnp.where(real[:, None] & real, R, 0.0), compute_uv=False)  # padding: 0s, last
    smin_r = s[n - 1]
    full_rank = smin_r > Q.shape[0] * jnp.finfo(R.dtype).eps * s[0]
    code = jnp.where(full_rank, code, jnp.int8(RESULTS.rank_deficient))
    certified = code == RESULTS.successful

    lam = jnp.clip(_outlier_norm2(Q, fit.outliers | ~finite), 0.0, 1.0)
    smin = smin_r * jnp.sqrt(jnp.maximum(1.0 - lam, 0.0))
    xn = jnp.sqrt(jnp.sum(fit.x * fit.x, axis=0))
    abs_bound = 2.0 * tol * jnp.sqrt(inliers.astype(tol.dtype)) / jnp.maximum(smin, jnp.finfo(tol.dtype).tiny)
    rel = jnp.where(xn > 0, abs_bound / jnp.where(xn > 0, xn, 1.0), jnp.where(abs_bound > 0, jnp.inf, 0.0))
    bound = jnp.where(certified & (smin > 0), rel, jnp.inf)
    return code, certified, bound
