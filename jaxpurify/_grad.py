"""Derivatives of :func:`jaxpurify.recover` by implicit differentiation of the polished fit.

The solver (ADMM finder, polish, certificate: ``while_loop``s, masks, sorting) is not
differentiated.  What is differentiated is the map its answer satisfies.  With the outlier mask
of a column held fixed, inlier set I (the rows *not* in ``outliers``), the answer is the least
squares fit on I,

    x(A, y) = argmin_x ‖(y − A x)_I‖₂,      residual = y − A x,

whose normal equations A_Iᵀ(y_I − A_I x) = 0 differentiate to

    G dx = A_Iᵀ(dy_I − dA_I x) + dA_Iᵀ r_I,      G = A_Iᵀ A_I,      dr = dy − dA x − A dx.

On a certified column the fit is exact (r_I within the inlier tolerance) and G is nonsingular
(the certificate checks the rank), so this is the derivative of what ``recover`` returns along
every perturbation that keeps the mask, e.g. any small one when the certificate's ``atol`` covers
it, or dy = A dθ on I plus anything on the outlier rows when it is exact.  Entries of y on outlier
rows get a zero derivative: the mask is piecewise constant, so the derivative is the one-sided
derivative of the current piece and says nothing about where the mask changes (at the boundary
of a piece, where an entry crosses the inlier tolerance, ``recover`` itself is discontinuous).
An uncertified column gets the derivative of the estimate it returns on the rows that estimate
explains (its ``outliers`` are the rows it does not): for an l1 vertex that interpolates n rows
this is the derivative of that vertex.  G may then be singular; its pseudo-inverse is used (the
minimum-norm dx), and the column stays flagged by ``certified == False``.

``x`` and ``residual`` carry these derivatives; ``bound`` is treated as constant
(``stop_gradient``); ``outliers``, ``certified``, ``result``, ``iterations``, ``converged`` are
integer or bool and have none.  The rule is a ``custom_jvp`` linear in the tangents, so
``jax.jvp``, ``jax.vjp`` and ``jax.grad`` (by JAX's transposition), ``jit`` and ``vmap`` all
apply, and nothing is added to the forward computation.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxpurify._numerics import einsum as _ein
from jaxpurify._solution import Recovery


def _pinv_apply(G: jax.Array, b: jax.Array) -> jax.Array:
    """dx = G⁺ b per column: G (..., m, n, n) symmetric PSD, b (..., n, m).

    Eigenvalues below ``n·eps·λ_max`` count as zero, so a rank-deficient inlier set (possible only
    on uncertified columns) gives the minimum-norm derivative instead of Inf/NaN."""
    lam, V = jnp.linalg.eigh(G)
    cut = lam[..., -1:] * (G.shape[-1] * jnp.finfo(G.dtype).eps)
    inv = jnp.where(lam > cut, 1.0 / jnp.where(lam > cut, lam, 1.0), 0.0)
    c = _ein("...mpn,...pm->...mn", V, b) * inv
    return _ein("...mnp,...mp->...nm", V, c)


@jax.custom_jvp
def _refit(
    A: jax.Array, Y: jax.Array, x: jax.Array, residual: jax.Array, inlier: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(x, residual) as solved; its derivative is that of least squares on ``inlier`` (module doc).

    A: (..., K, n); Y, residual, inlier: (..., K, m); x: (..., n, m).  ``x``, ``residual`` and
    ``inlier`` come from the (not differentiated) solver; their tangents are ignored."""
    return x, residual


@jax.jit  # one compiled piece when differentiating eagerly, not one per operation
def _tangents(
    A: jax.Array, x: jax.Array, r: jax.Array, inlier: jax.Array, dA: jax.Array, dY: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(dx, dr), linear in (dA, dY); G and its eigenvectors depend on the primals only."""
    w = inlier.astype(dY.dtype)
    G = _ein("...kn,...km,...kp->...mnp", A, w, A)
    dAx = _ein("...kn,...nm->...km", dA, x)
    b = _ein("...kn,...km->...nm", A, w * (dY - dAx)) + _ein("...kn,...km->...nm", dA, jnp.where(inlier, r, 0.0))
    dx = _pinv_apply(G, b)
    return dx, dY - dAx - _ein("...kn,...nm->...km", A, dx)


@_refit.defjvp
def _refit_jvp(
    primals: tuple[jax.Array, ...], tangents: tuple[jax.Array, ...]
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    A, _, x, r, inlier = primals
    dA, dY = tangents[:2]
    return (x, r), _tangents(A, x, r, inlier, dA, dY)


def differentiable(A: jax.Array, Y: jax.Array, out: Recovery, vector: bool) -> Recovery:
    """``out`` (solved from ``stop_gradient`` of A and Y) with x and residual differentiable in
    A and Y by the rule above; same values, bit for bit.  ``vector``: Y is (..., K), one column."""
    col: Callable[[jax.Array], jax.Array] = (lambda a: a[..., None]) if vector else (lambda a: a)
    x, r = _refit(A, col(Y), col(out.x), col(out.residual), ~col(out.outliers))
    if vector:
        x, r = x[..., 0], r[..., 0]
    return out._replace(x=x, residual=r, bound=lax.stop_gradient(out.bound))


__all__ = ["differentiable"]
