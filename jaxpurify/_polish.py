"""The polish: least squares on the inlier rows, outlier mask re-read until stable.

Inside the l1 threshold this turns ADMM's approximate answer into one exact to float precision;
the fit is a least-squares solve on the inlier set, by conjugate gradients on Qᵀ D Q.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxpurify._certify import Fit
from jaxpurify._numerics import bisect, matmul

# A re-read marks a row an outlier only past this many times the mean inlier residual (as well as
# past the exactness tolerance): one missed outlier spreads its error over every residual of the
# fit, and without this bound every row would be flagged at once.
SPREAD = 10.0
# The greedy read (``_read``) also marks rows past this fraction of the largest inlier residual.
GREEDY = 0.5


class Block(NamedTuple):
    """A block of columns (K, b) to fit, in the columns' own units (``_units``): the code matrix
    A = QR (thin QR; its columns from ``n`` on are padding, ``_solver._factor``), the columns, and
    their inlier tolerance τ = rtol·max|y_inlier| + atol (:func:`tolerance`)."""

    A: jax.Array  # (K, N)
    Q: jax.Array  # (K, N)
    R: jax.Array  # (N, N)
    n: jax.Array  # () real columns of A (traced: padded codes share one solver)
    y: jax.Array  # (K, b) the columns, 0 where not finite
    finite: jax.Array  # (K, b) rows a fit may use
    rtol: jax.Array  # () in y's dtype
    atol: jax.Array  # (b,) in each column's units


class _Refit(NamedTuple):
    c: jax.Array  # (N, b) the least-squares fit in the Q basis
    solved: jax.Array  # (b,) CG converged within its step cap


class _CG(NamedTuple):
    """Conjugate-gradient state for the normal equations of a block's columns."""

    c: jax.Array  # (N, b) the iterate
    r: jax.Array  # (N, b) its residual b − G c
    p: jax.Array  # (N, b) the search direction
    rs: jax.Array  # (b,) ‖r‖², 0 for a column that is done
    k: jax.Array  # () steps taken


def tolerance(y: jax.Array, inlier: jax.Array, rtol: jax.Array, atol: jax.Array) -> jax.Array:
    """The per-column inlier tolerance τ = rtol·max|y_inlier| + atol."""
    big = jnp.max(jnp.where(inlier, jnp.abs(y), 0.0), axis=0)
    return rtol * big + atol


def _mean_abs(a: jax.Array, mask: jax.Array) -> jax.Array:
    cnt = jnp.maximum(jnp.sum(mask, axis=0), 1)
    return jnp.sum(jnp.where(mask, a, 0.0), axis=0) / cnt


def _fit(
    Q: jax.Array, y: jax.Array, inlier: jax.Array, c0: jax.Array, active: jax.Array, *, max_cg: jax.Array
) -> _Refit:
    """Least squares on the inlier rows of each column, in the Q basis: c = argmin ‖D(y − Q c)‖₂.

    Conjugate gradients on the normal equations G c = Qᵀ D y with G = Qᵀ D Q = I − Q_Oᵀ Q_O, an
    identity perturbed by the k outlier rows, so CG converges in about as many steps as it takes
    to resolve those k directions.  Each step is the same two products over all columns that an
    ADMM iteration costs; nothing is factorized per column and memory stays O(K·m).  Warm-started
    from ``c0``; every call restarts from the true residual, so successive polish rounds act as
    iterative refinement.
    """
    dtype = y.dtype
    d = inlier.astype(dtype)
    b = matmul(Q.T, d * y)
    bb = jnp.sum(b * b, axis=0)
    c = jnp.where(bb > 0, c0, 0.0)  # an all-zero inlier set has the exact answer 0

    def G(p: jax.Array) -> jax.Array:
        return matmul(Q.T, d * matmul(Q, p))

    r = b - G(c)
    rs = jnp.sum(r * r, axis=0)
    rs = jnp.where(active, rs, 0.0)  # inactive columns keep c0 and do not hold the loop
    stop = (jnp.finfo(dtype).eps ** 2) * bb

    def cond(st: _CG) -> jax.Array:
        return (st.k < max_cg) & jnp.any(st.rs > stop)

    def body(st: _CG) -> _CG:
        Gp = G(st.p)
        pGp = jnp.sum(st.p * Gp, axis=0)
        live = (st.rs > stop) & (pGp > 0)
        alpha = jnp.where(live, st.rs / jnp.where(live, pGp, 1.0), 0.0)
        c = st.c + alpha * st.p
        r = st.r - alpha * Gp
        rs_new = jnp.sum(r * r, axis=0)
        beta = jnp.where(live, rs_new / jnp.where(live, st.rs, 1.0), 0.0)
        return _CG(c=c, r=r, p=r + beta * st.p, rs=jnp.where(live, rs_new, 0.0), k=st.k + 1)

    st = lax.while_loop(cond, body, _CG(c=c, r=r, p=r, rs=rs, k=jnp.asarray(0, jnp.int32)))
    return _Refit(c=jnp.where(jnp.isfinite(st.c), st.c, 0.0), solved=st.rs <= stop)


class LeastSquares(NamedTuple):
    c: jax.Array  # (N, b) the least-squares fit on the inlier rows, in the Q basis
    x: jax.Array  # (N, b) the same fit: R x = c
    solved: jax.Array  # (b,) CG converged within its step cap


def fit_inliers(b: Block, inlier: jax.Array, c0: jax.Array, active: jax.Array, *, max_cg: jax.Array) -> LeastSquares:
    """x = argmin ‖(y − A x)_I‖₂ on the ``inlier`` rows of the ``active`` columns (``_fit``, warm-started
    from ``c0`` in the Q basis); the others keep ``c0``."""
    refit = _fit(b.Q, b.y, inlier, c0, active, max_cg=max_cg)
    x = jax.scipy.linalg.solve_triangular(b.R, refit.c, lower=False)
    return LeastSquares(c=refit.c, x=x, solved=refit.solved)


def over_bound(outliers: jax.Array, finite: jax.Array, n: jax.Array) -> jax.Array:
    """Per column: the mask breaks the count bound, 2·k̂ ≥ K' − n + 1 (``_certify``), so no refit
    of it can be certified."""
    k_hat = jnp.sum(outliers & finite, axis=0)
    return 2 * k_hat >= jnp.sum(finite, axis=0) - n + 1


class _Rounds(NamedTuple):
    """The polish's loop state for a block of columns (K, b)."""

    c: jax.Array  # (n, b) the fit in the Q basis
    x: jax.Array  # (n, b) the fit
    r: jax.Array  # (K, b) its residual
    outliers: jax.Array  # (K, b) the mask read from it
    live: jax.Array  # (b,) the mask changed in the last round: refit
    over: jax.Array  # (b,) the last read broke the count bound
    gave: jax.Array  # (b,) given up past the count bound
    solved: jax.Array  # (b,) the last refit's CG converged
    k: jax.Array  # () rounds done


def _read(a: jax.Array, outl: jax.Array, finite: jax.Array, n: jax.Array, tol: jax.Array, greedy: bool) -> jax.Array:
    """The next outlier mask from the residuals ``a = |r|`` of a fit on the inliers ``~outl``.

    A row is an outlier past the exactness tolerance and ``SPREAD`` times the mean inlier residual.
    With ``greedy`` also past ``GREEDY`` times the largest inlier residual, unless that read
    breaks the count bound: so the largest residual of an inexact fit is always read as an
    outlier, however small the outliers are beside each other, and a mask is never pushed past
    the bound by this rule alone (a column of dense noise keeps its ``inexact_fit``)."""
    spread = SPREAD * _mean_abs(a, ~outl)
    new = ~finite | (a > jnp.maximum(tol, spread))
    if not greedy:
        return new
    top = jnp.max(jnp.where(outl, 0.0, a), axis=0)
    g = ~finite | (a > jnp.maximum(tol, jnp.minimum(spread, GREEDY * top)))
    return jnp.where(over_bound(g, finite, n), new, g)


def _rounds(b: Block, st: _Rounds, *, rounds: jax.Array, max_cg: jax.Array, greedy: bool) -> _Rounds:
    """Polish rounds from ``st`` until no mask moves or ``rounds`` rounds are done."""

    def body(st: _Rounds) -> _Rounds:
        # only columns whose mask changed in the last round are refitted: a stable column is
        # frozen, so its answer does not depend on how many rounds the rest of the batch needs
        live = st.live
        refit = fit_inliers(b, ~st.outliers, st.c, live, max_cg=max_cg)
        x = refit.x
        r = b.y - matmul(b.A, x)
        tol = tolerance(b.y, ~st.outliers, b.rtol, b.atol)

        def keep(new: jax.Array, old: jax.Array) -> jax.Array:
            return jnp.where(live, new, old)

        new = keep(_read(jnp.abs(r), st.outliers, b.finite, b.n, tol, greedy), st.outliers)
        over = over_bound(new, b.finite, b.n)
        moved = live & jnp.any(new != st.outliers, axis=0)
        # given up after two reads in a row past the bound: one can be a missed outlier's spread
        quit = moved & over & st.over
        return _Rounds(
            c=keep(refit.c, st.c),
            x=keep(x, st.x),
            r=keep(r, st.r),
            outliers=new,
            live=moved & ~quit,
            over=over,
            gave=st.gave | quit,
            solved=keep(refit.solved, st.solved),
            k=st.k + 1,
        )

    return lax.while_loop(lambda st: jnp.any(st.live) & (st.k < rounds), body, st)


def _as_fit(b: Block, st: _Rounds) -> Fit:
    tol = tolerance(b.y, ~st.outliers, b.rtol, b.atol)
    exact = jnp.all(st.outliers | (jnp.abs(st.r) <= tol), axis=0)
    # a given-up column's mask is the read after its last fit: not a settled mask of that fit
    stable = ~st.live & ~st.gave
    return Fit(
        x=st.x,
        r=st.r,
        outliers=st.outliers,
        exact=exact,
        stable=stable,
        solved=st.solved,
        over=st.gave | (stable & over_bound(st.outliers, b.finite, b.n)),
    )


def polish(
    block: Block, outl0: jax.Array, c0: jax.Array, *, rounds: jax.Array, max_cg: jax.Array, greedy: bool = False
) -> Fit:
    """Refit on the inliers and re-read the outlier mask until it is stable; columns are (K, b).

    A row is read as an outlier when its residual exceeds both the exactness tolerance and
    ``SPREAD`` times the mean inlier residual.  A column whose mask breaks the count bound in two
    reads in a row is given up (not refitted again, not ``stable``; ``Fit.over``): no fit of it
    can be certified, and at K/n = 2 such columns held the loop for all the others.  Its first
    refit still runs, so a column whose too many errors were all found comes back exact.

    With ``greedy``, a column whose mask settled on an inexact fit within the count bound is
    polished again from there with the greedy read (``_read``: small outliers that hide beside
    each other below ``SPREAD`` × the mean, e.g. flipped mantissa bits); that answer is kept only
    where it is exact on a settled mask, so the greedy read never changes a result code.

    ``outl0`` is the first outlier mask, ``c0`` the fit (in the Q basis) the first refit starts
    from; ``rounds`` caps the rounds, ``max_cg`` the CG steps of a refit.
    """
    width = block.y.shape[1]
    none = jnp.zeros((width,), bool)
    zero = jnp.asarray(0, jnp.int32)
    st = _Rounds(
        c=c0,
        x=jnp.zeros_like(c0),
        r=block.y,
        outliers=outl0,
        live=jnp.ones((width,), bool),
        over=none,
        gave=none,
        solved=none,
        k=zero,
    )
    st = _rounds(block, st, rounds=rounds, max_cg=max_cg, greedy=False)
    fit = _as_fit(block, st)
    if not greedy:
        return fit
    want = fit.stable & ~fit.exact & ~fit.over
    st = _rounds(block, st._replace(live=want, over=none, k=zero), rounds=rounds, max_cg=max_cg, greedy=True)
    more = _as_fit(block, st)
    take = want & more.exact & more.stable & ~more.over
    return select(take, more, fit)


def select(take: jax.Array, new: Fit, old: Fit) -> Fit:
    """Per column, ``new`` where ``take`` and ``old`` elsewhere."""
    return Fit(**{name: jnp.where(take, a, b) for name, a, b in zip(Fit._fields, new, old, strict=True)})


def _median_bound(a: jax.Array, usable: jax.Array) -> jax.Array:
    """Per column, a power of two t with median(a) ≤ t < 2·median(a) over the usable rows.

    Bisection on the binary exponent: a dozen compare-and-count passes instead of a sort, and a
    factor-of-two answer is all the thresholds below need.  0 when the median is 0.
    """
    dtype = a.dtype
    fi = jnp.finfo(dtype)
    lo_e, hi_e = int(np.floor(np.log2(fi.tiny))) - int(fi.nmant) - 1, int(fi.maxexp)
    half = (jnp.sum(usable, axis=0) + 1) // 2
    a = jnp.where(usable, a, jnp.inf)
    m = a.shape[1]
    lo = jnp.full((m,), lo_e, jnp.int32)  # count(a ≤ 2^lo) < half
    hi = jnp.full((m,), hi_e, jnp.int32)  # count(a ≤ 2^hi) ≥ half

    def enough(mid: jax.Array) -> jax.Array:
        return jnp.sum(a <= jnp.ldexp(jnp.ones((), dtype), mid), axis=0) >= half

    _, hi = bisect(enough, lo, hi, int(np.ceil(np.log2(hi_e - lo_e + 1))))
    zero = jnp.sum(a <= 0, axis=0) >= half
    return jnp.where(zero, 0.0, jnp.ldexp(jnp.ones((), dtype), hi))


def far_above_median(r: jax.Array, usable: jax.Array, factor: float) -> jax.Array:
    """Rows whose |r| exceeds `factor` times (a power-of-two bound of) the column's median |r|."""
    a = jnp.abs(r)
    return ~usable | (a > factor * _median_bound(a, usable))


def largest(a: jax.Array, usable: jax.Array, h: jax.Array) -> jax.Array:
    """Mask of (at most) the ``h`` largest usable entries of ``a ≥ 0`` per column, ``h`` per column.

    Bisection on the float's bit pattern (monotone for non-negative floats): 32 compare-and-count
    passes over the block instead of a per-column sort, which XLA's CPU backend runs ~10× slower.
    """
    ibits = np.dtype(np.int32 if a.dtype.itemsize == 4 else np.int64)
    top = int(np.asarray(np.inf, a.dtype).view(ibits))
    bits = lax.bitcast_convert_type(jnp.where(usable, jnp.abs(a), 0.0).astype(a.dtype), ibits)
    m = a.shape[1]
    lo = jnp.full((m,), -1, ibits)  # count(bits > lo) may exceed h
    hi = jnp.full((m,), top, ibits)  # count(bits > hi) ≤ h

    def few(mid: jax.Array) -> jax.Array:
        return jnp.sum(bits > mid, axis=0) <= h

    _, hi = bisect(few, lo, hi, 8 * a.dtype.itemsize)
    chosen: jax.Array = usable & (bits > hi)
    return chosen
