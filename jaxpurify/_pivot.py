"""Simplex pivots of the l1 linear program, for the columns the polish leaves uncertified.

min_x ‖y − A x‖₁ is a linear program, and an optimum is attained at a *vertex*: an x that fits n
rows B (the basis) exactly, A_B x = y_B.  Freeing basis row s moves x along the edge
x(t) = x + σ t d_s (σ = ±1, t ≥ 0) with d_s = A_B⁻¹ e_s, and the residuals as r(t) = r − σ t D_s,
D = A A_B⁻¹.  Along the edge the objective f(t) = t + Σ_{k∉B} |r_k − σ t D_ks| is convex and
piecewise linear, with slope at t = 0⁺

    g_s^σ = 1 + Σ_{k∈Z} |D_ks| − σ Σ_{k∉B∪Z} sign(r_k) D_ks,

Z the nonbasic rows with |r_k| ≤ ε, taken as zero: residuals at rounding level (at an exact
answer every clean row is one; ε = ``DEGENERATE`` × the inlier tolerance τ).  The vertex is
optimal when no g is negative.  Otherwise the most negative edge is followed to its
weighted-median breakpoint (Barrodale & Roberts 1973): past each breakpoint t_k = r_k / (σ D_ks) > 0
the slope rises by 2|D_ks|, so the step ends at the first breakpoint where the slope turns ≥ 0, and
that row enters the basis in place of row s.  ‖r‖₁ falls at every pivot (in exact arithmetic), so
no basis repeats.

Why here: the polish (least squares on the inliers, mask re-read) can settle short of an answer
that the exact LP finds, e.g. when many entries are changed by about the inlier tolerance (each
one's least-squares spread pushes a clean row past τ) or near the count bound.  The l1 optimum of
a column the LP recovers fits the clean rows to rounding, and its mask, read at τ, is then
certified as usual (``_certify``): nothing about the certificate changes, only the candidate.

The start is the n rows the current estimate fits best (one n × n solve per column).  Every column
is its own LP, batched: a pivot is a rank-one update of A_B⁻¹ and D, O(K·n) per column; a column
leaves the loop when it is optimal, when a pivot raises its objective past rounding, or at the cap.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxpurify._certify import Fit
from jaxpurify._numerics import einsum, matmul
from jaxpurify._polish import Block, far_above_median, fit_inliers, over_bound, tolerance

# A residual below this fraction of the column's inlier tolerance τ counts as zero (a degenerate
# row): far above rounding (τ is 64·eps of the largest inlier by default), below what τ flags.
DEGENERATE = 1.0 / 8
# Reads of the inlier set from a fit (``read``): each admits the rows within the tolerance the last
# set gives; it settled in two on the columns measured.
READS = 4
# ``hopeful``: a row is near the passes' estimate within HOPE × the column's tolerance τ0 (about
# 0.12 × its largest entry in float32 by default).  Columns of dense noise, which no LP recovers,
# have far fewer such rows than a recoverable column needs, and without this test every one of them
# ran the pivots to their cap (22–52× the passes' time on a block of noise).
HOPE = 2.0**14


class _Vertex(NamedTuple):
    """The simplex's loop state for a block of columns (K, b); N = A's padded width."""

    basis: jax.Array  # (N, b) int32 the row in each basis slot (slots from n on: padding, unused)
    x: jax.Array  # (N, b) the vertex: A_B x = y_B
    r: jax.Array  # (K, b) its residual y − A x
    inv: jax.Array  # (b, N, N) A_B⁻¹ (identity rows in the padding slots)
    D: jax.Array  # (K, N, b) A A_B⁻¹: row k's fitted value per unit step along each edge
    f: jax.Array  # (b,) ‖r‖₁ over the finite rows
    live: jax.Array  # (b,) not yet optimal, still pivoting
    pivots: jax.Array  # (b,) int32 pivots taken
    k: jax.Array  # () pivot rounds run


class LPResult(NamedTuple):
    """What :func:`lp_fit` gives a block of columns."""

    fit: Fit  # the candidate: a least-squares refit on the vertex's basis and zero rows
    x: jax.Array  # (N, b) the final vertex (an l1 optimum where the pivots ended optimal)
    f: jax.Array  # (b,) its ‖r‖₁
    pivots: jax.Array  # (b,) pivots taken


def read(y: jax.Array, r: jax.Array, finite: jax.Array, rtol: jax.Array, atol: jax.Array) -> jax.Array:
    """The inlier rows of a fit with residual ``r``: rows within τ(I) = rtol·max|y_I| + atol.

    From the rows up to about the median residual (a power of two below twice it: at least half
    the rows, within the count bound mostly rows an exact fit explains), each read admits the rows
    within the tolerance the last set gives.  τ
    only grows as rows join, so every row of the returned set is within its τ: the fit is exact
    on it by construction (``Fit.exact``); a row that the last read would still admit stays an
    outlier, which only costs the certificate a row."""
    a = jnp.abs(r)
    inl = finite & ~far_above_median(r, finite, 1.0)
    for _ in range(READS):
        inl = inl | (finite & (a <= tolerance(y, inl, rtol, atol)))
    return inl


def candidate(b: Block, x: jax.Array, solved: jax.Array) -> Fit:
    """``x`` as a fit: its mask read at τ (:func:`read`); stable, since the mask is x's own read."""
    r = b.y - matmul(b.A, x)
    outl = ~read(b.y, r, b.finite, b.rtol, b.atol)
    tol = tolerance(b.y, ~outl, b.rtol, b.atol)
    exact = jnp.all(outl | (jnp.abs(r) <= tol), axis=0)
    over = over_bound(outl, b.finite, b.n)
    ones = jnp.ones_like(exact)
    return Fit(x=x, r=r, outliers=outl, exact=exact, stable=ones, solved=solved, over=over)


def _solve_basis(b: Block, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x, A_B⁻¹) for the basis rows ``basis`` (N, b); slots from n on are padding: an identity row,
    so the padding coordinates of x stay 0 and A_B stays invertible."""
    A, y = b.A, b.y
    N = A.shape[1]
    real = jnp.arange(N) < b.n
    eye = jnp.eye(N, dtype=y.dtype)
    M = jnp.where(real[:, None, None], jnp.take(A, basis, axis=0), eye[:, None, :])  # (slot, col, N)
    M = jnp.moveaxis(M, 1, 0)  # (b, N, N)
    yb = jnp.where(real[:, None], jnp.take_along_axis(y, basis, axis=0), 0.0)  # (N, b)
    rhs = jnp.concatenate([yb.T[:, :, None], jnp.broadcast_to(eye, M.shape)], axis=2)
    sol = jnp.linalg.solve(M, rhs)
    return sol[:, :, 0].T, sol[:, :, 1:]


def _basic(basis: jax.Array, n: jax.Array, K: int) -> jax.Array:
    """(K, b) mask of the rows in the basis."""
    real = (jnp.arange(basis.shape[0]) < n)[:, None, None]
    return jnp.any(real & (basis[:, None, :] == jnp.arange(K)[None, :, None]), axis=0)


def _pivot(b: Block, eps: jax.Array, st: _Vertex) -> _Vertex:
    """One simplex pivot on every live column (module docstring); ``eps`` (b,): the zero level.

    The basis change is a rank-one update of A_B⁻¹ and D (product form: replacing basis row s by
    row e with pivot element p = D_es gives A_B'⁻¹ = A_B⁻¹ − A_B⁻¹e_s (D_e − e_s)ᵀ / p, and D the
    same), O(K·n) per column instead of a refactorization; the refit in ``lp_fit`` removes the
    updates' drift.
    """
    A, y, finite, r = b.A, b.y, b.finite, st.r
    K, N = A.shape
    dtype = y.dtype
    nonbasic = finite & ~_basic(st.basis, b.n, K)
    zero = nonbasic & (jnp.abs(r) <= eps)
    moving = nonbasic & ~zero
    D = st.D
    aD = jnp.abs(D)
    c = jnp.sum(jnp.where(moving, jnp.sign(r), 0.0)[:, None, :] * D, axis=0)  # (N, b)
    z = jnp.sum(jnp.where(zero, 1.0, 0.0)[:, None, :] * aD, axis=0)
    weight = 1.0 + jnp.sum(jnp.where(nonbasic, 1.0, 0.0)[:, None, :] * aD, axis=0)
    real = (jnp.arange(N) < b.n)[:, None]
    g = jnp.where(real, jnp.stack([1.0 + z - c, 1.0 + z + c]), jnp.inf)  # (2, N, b): σ = +1, −1
    # the steepest edge per unit of its weight, so one long edge does not win on scale alone
    best = jnp.argmin((g / weight).reshape(2 * N, -1), axis=0)
    sigma = jnp.where(best < N, 1.0, -1.0).astype(dtype)
    s = best % N
    g_s = jnp.take_along_axis(g.reshape(2 * N, -1), best[None], axis=0)[0]
    w_s = jnp.take_along_axis(weight, s[None], axis=0)[0]
    # a slope counts as negative past the rounding of its K-term sums
    down = g_s < -K * jnp.finfo(dtype).eps * w_s
    # the line search: breakpoints ahead on this edge, in order; the step ends where the slope,
    # which rises by 2|D_ks| at each, turns ≥ 0 (a weighted median of the breakpoints)
    edge = jnp.arange(N)[:, None] == s  # (N, b) one-hot of s: a masked sum, not a gather
    Ds = jnp.sum(jnp.where(edge, D, 0.0), axis=1)  # (K, b) column s of D
    d = sigma * Ds
    ahead = moving & (r * d > 0)
    t = jnp.where(ahead, r / jnp.where(ahead, d, 1.0), jnp.inf)
    order = jnp.argsort(t, axis=0)
    rises = jnp.take_along_axis(jnp.where(ahead, 2.0 * jnp.abs(d), 0.0), order, axis=0)
    turned = (g_s + jnp.cumsum(rises, axis=0) >= 0) & jnp.isfinite(jnp.take_along_axis(t, order, axis=0))
    enter = jnp.take_along_axis(order, jnp.argmax(turned, axis=0)[None], axis=0)[0].astype(st.basis.dtype)
    go = st.live & down & jnp.any(turned, axis=0)

    step = jnp.where(go, jnp.take_along_axis(t, enter[None], axis=0)[0], 0.0)
    inv_s = jnp.sum(jnp.where(edge.T[:, None, :], st.inv, 0.0), axis=2)  # (b, N) the edge d_s
    x = st.x + sigma * step * inv_s.T
    r_new = y - matmul(A, x)
    f = jnp.sum(jnp.where(finite, jnp.abs(r_new), 0.0), axis=0)
    row = jnp.sum(jnp.where((jnp.arange(K)[:, None] == enter)[:, None, :], D, 0.0), axis=0)  # (N, b) D_e
    p = jnp.sum(jnp.where(edge, row, 0.0), axis=0)
    u = (row - edge) / jnp.where(go, p, 1.0)  # (D_e − e_s) / p
    D_new = D - Ds[:, None, :] * u[None]
    inv = st.inv - inv_s[:, :, None] * u.T[:, None, :]
    # each pivot lowers ‖r‖₁ in exact arithmetic, but by less than the rounding of its float sum
    # once large outliers dominate it (the last pivots only fit clean rows better): a column stops
    # where it was only if the sum rose past that rounding (or the update overflowed)
    ok = go & (f <= st.f * (1 + K * jnp.finfo(dtype).eps)) & jnp.all(jnp.isfinite(x), axis=0)
    return _Vertex(
        basis=jnp.where(ok & edge, enter, st.basis),
        x=jnp.where(ok, x, st.x),
        r=jnp.where(ok, r_new, st.r),
        inv=jnp.where(ok[:, None, None], inv, st.inv),
        D=jnp.where(ok, D_new, D),
        f=jnp.where(ok, f, st.f),
        live=ok,
        pivots=st.pivots + ok,
        k=st.k + 1,
    )


def lp_fit(b: Block, x0: jax.Array, active: jax.Array, *, max_pivots: int, max_cg: jax.Array) -> LPResult:
    """Simplex pivots from the n rows ``x0`` fits best to an l1 optimum, on the ``active`` columns
    of a block (K, b); then a least-squares refit on the optimum's basis and zero rows.

    The refit's mask is read at τ (:func:`candidate`).  Columns not active, or with n or fewer
    finite rows, are not pivoted.  The pivots keep the start's zero level ε (it moves little: τ is
    set by the largest inlier); the refit's rows are read at the optimum's own."""
    A, y, finite = b.A, b.y, b.finite
    K, N = A.shape
    r0 = y - matmul(A, x0)
    basis = jnp.argsort(jnp.where(finite, jnp.abs(r0), jnp.inf), axis=0)[:N].astype(jnp.int32)
    basis = jnp.where((jnp.arange(N) < b.n)[:, None], basis, 0)
    x, inv = _solve_basis(b, basis)
    fine = active & (jnp.sum(finite, axis=0) > b.n) & jnp.all(jnp.isfinite(x), axis=0)
    x = jnp.where(fine, x, x0)
    r = y - matmul(A, x)
    st = _Vertex(
        basis=basis,
        x=x,
        r=r,
        inv=inv,
        D=einsum("kn,bns->ksb", A, inv),
        f=jnp.sum(jnp.where(finite, jnp.abs(r), 0.0), axis=0),
        live=fine,
        pivots=jnp.zeros(fine.shape, jnp.int32),
        k=jnp.asarray(0, jnp.int32),
    )
    eps = DEGENERATE * tolerance(y, read(y, r0, finite, b.rtol, b.atol), b.rtol, b.atol)
    st = lax.while_loop(lambda st: jnp.any(st.live) & (st.k < max_pivots), lambda st: _pivot(b, eps, st), st)

    # the rank-one updates drift by rounding: the refit, on the optimum's basis and zero rows
    # (clean rows only, where the optimum is exact), is accurate whatever that drift or A_B's condition
    inl = read(y, st.r, finite, b.rtol, b.atol)
    rows = _basic(st.basis, b.n, K) | (finite & (jnp.abs(st.r) <= DEGENERATE * tolerance(y, inl, b.rtol, b.atol)))
    # only where the optimum's own mask could be certified: a column of dense noise fits n rows,
    # and a refit on those would take CG its whole step cap for nothing
    hope = fine & ~over_bound(~inl, finite, b.n)
    refit = fit_inliers(b, rows, matmul(b.R, st.x), hope, max_cg=max_cg)
    return LPResult(fit=candidate(b, refit.x, refit.solved), x=st.x, f=st.f, pivots=st.pivots)


def hopeful(b: Block, x: jax.Array) -> jax.Array:
    """(m,) the columns worth pivoting from the estimate ``x``: at least K' − ⌊(K' − n)/2⌋ of their
    K' finite rows lie within HOPE · τ0 of it (τ0: the tolerance read on every finite row), as
    many as the inliers of any column the uniqueness bound lets the LP recover."""
    r = jnp.abs(b.y - matmul(b.A, x))
    near = jnp.sum(b.finite & (r <= HOPE * tolerance(b.y, b.finite, b.rtol, b.atol)), axis=0)
    k = jnp.sum(b.finite, axis=0)
    return near >= k - (k - b.n) // 2


def certifiable(fit: Fit, b: Block) -> jax.Array:
    """The fit passes the certificate's tests on the mask (exact, settled, within the count bound,
    a redundant row left); rank and error bound are left to ``_certify``."""
    slack = jnp.sum(b.finite & ~fit.outliers, axis=0) >= b.n + 1
    return fit.exact & fit.stable & fit.solved & ~fit.over & slack
