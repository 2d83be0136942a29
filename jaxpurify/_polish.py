"""The polish: least squares on the inlier rows, outlier mask re-read until stable.

Inside the l1 threshold this turns ADMM's approximate answer into one exact to float precision;
the fit is a least-squares solve on the inlier set, by conjugate gradients on Qᵀ D Q.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxpurify._admm import _mm
from jaxpurify._certify import Fit

# A re-read marks a row an outlier only past this many times the mean inlier residual (as well as
# past the exactness tolerance): one missed outlier spreads its error over every residual of the
# fit, and without this bound every row would be flagged at once.
SPREAD = 10.0


def tolerance(y, inlier, rtol, atol):
    big = jnp.max(jnp.where(inlier, jnp.abs(y), 0.0), axis=0)
    return rtol * big + atol


def _mean_abs(a, mask):
    cnt = jnp.maximum(jnp.sum(mask, axis=0), 1)
    return jnp.sum(jnp.where(mask, a, 0.0), axis=0) / cnt


def _fit(Q, y, inlier, c0, max_cg, active):
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
    b = _mm(Q.T, d * y)
    bb = jnp.sum(b * b, axis=0)
    c = jnp.where(bb > 0, c0, 0.0)  # an all-zero inlier set has the exact answer 0
    G = lambda p: _mm(Q.T, d * _mm(Q, p))
    r = b - G(c)
    rs = jnp.sum(r * r, axis=0)
    rs = jnp.where(active, rs, 0.0)  # inactive columns keep c0 and do not hold the loop
    stop = (jnp.finfo(dtype).eps ** 2) * bb

    def cond(st):
        _, _, _, rs, k = st
        return (k < max_cg) & jnp.any(rs > stop)

    def body(st):
        c, r, p, rs, k = st
        Gp = G(p)
        pGp = jnp.sum(p * Gp, axis=0)
        live = (rs > stop) & (pGp > 0)
        alpha = jnp.where(live, rs / jnp.where(live, pGp, 1.0), 0.0)
        c = c + alpha * p
        r = r - alpha * Gp
        rs_new = jnp.sum(r * r, axis=0)
        beta = jnp.where(live, rs_new / jnp.where(live, rs, 1.0), 0.0)
        return c, r, r + beta * p, jnp.where(live, rs_new, 0.0), k + 1

    c, _, _, rs, _ = lax.while_loop(cond, body, (c, r, r, rs, jnp.asarray(0, jnp.int32)))
    return jnp.where(jnp.isfinite(c), c, 0.0), rs <= stop


def over_bound(outliers, finite, n):
    """Per column: the mask breaks the count bound, 2·k̂ ≥ K' − n + 1 (``_certify``), so no refit
    of it can be certified."""
    k_hat = jnp.sum(outliers & finite, axis=0)
    return 2 * k_hat >= jnp.sum(finite, axis=0) - n + 1


def polish(A, Q, R, n, y, finite, outl0, c0, rtol, atol, rounds, max_cg) -> Fit:
    """Refit on the inliers and re-read the outlier mask until it is stable; columns are (K, b).

    A row is read as an outlier when its residual exceeds both the exactness tolerance and
    ``SPREAD`` times the mean inlier residual.  A column whose mask breaks the count bound in two
    reads in a row is given up (not refitted again, not ``stable``; ``Fit.over``): no fit of it
    can be certified, and at K/n = 2 such columns held the loop for all the others.  Its first
    refit still runs, so a column whose too many errors were all found comes back exact.
    """

    def body(carry):
        # only columns whose mask changed in the last round are refitted: a stable column is
        # frozen, so its answer does not depend on how many rounds the rest of the batch needs
        c0, x0, r0, outl, live, over0, gave, solved0, k = carry
        c, solved = _fit(Q, y, ~outl, c0, max_cg, live)
        x = jax.scipy.linalg.solve_triangular(R, c, lower=False)
        r = y - _mm(A, x)
        a = jnp.abs(r)
        tol = tolerance(y, ~outl, rtol, atol)
        new = ~finite | (a > jnp.maximum(tol, SPREAD * _mean_abs(a, ~outl)))
        keep = lambda a, b: jnp.where(live, a, b)
        new = keep(new, outl)
        over = over_bound(new, finite, n)
        moved = live & jnp.any(new != outl, axis=0)
        # given up after two reads in a row past the bound: one can be a missed outlier's spread
        quit = moved & over & over0
        return (
            keep(c, c0),
            keep(x, x0),
            keep(r, r0),
            new,
            moved & ~quit,
            over,
            gave | quit,
            keep(solved, solved0),
            k + 1,
        )

    def cond(carry):
        return jnp.any(carry[4]) & (carry[8] < rounds)

    b = y.shape[1]
    none = jnp.zeros((b,), bool)
    carry = (c0, jnp.zeros_like(c0), y, outl0, jnp.ones((b,), bool), none, none, none, jnp.asarray(0, jnp.int32))
    _, x, r, outl, changed, _, gave, solved, _ = lax.while_loop(cond, body, carry)
    tol = tolerance(y, ~outl, rtol, atol)
    exact = jnp.all(outl | (jnp.abs(r) <= tol), axis=0)
    # a given-up column's mask is the read after its last fit: not a settled mask of that fit
    stable = ~changed & ~gave
    return Fit(x, r, outl, exact, stable, solved, gave | (stable & over_bound(outl, finite, n)))


def _median_bound(a, usable):
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

    def body(_, lh):
        lo, hi = lh
        mid = (lo + hi) // 2
        enough = jnp.sum(a <= jnp.ldexp(jnp.ones((), dtype), mid), axis=0) >= half
        return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

    steps = int(np.ceil(np.log2(hi_e - lo_e + 1)))
    lo, hi = lax.fori_loop(0, steps, body, (lo, hi))
    zero = jnp.sum(a <= 0, axis=0) >= half
    return jnp.where(zero, 0.0, jnp.ldexp(jnp.ones((), dtype), hi))


def far_above_median(r, usable, factor):
    """Rows whose |r| exceeds `factor` times (a power-of-two bound of) the column's median |r|."""
    a = jnp.abs(r)
    return ~usable | (a > factor * _median_bound(a, usable))


def largest(a, usable, h):
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

    def body(_, lh):
        lo, hi = lh
        mid = lo + (hi - lo) // 2
        few = jnp.sum(bits > mid, axis=0) <= h
        return jnp.where(few, lo, mid), jnp.where(few, mid, hi)

    steps = 8 * a.dtype.itemsize
    lo, hi = lax.fori_loop(0, steps, body, (lo, hi))
    return usable & (bits > hi)
