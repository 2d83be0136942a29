"""ADMM for min_c ‖y − Q c‖₁ with orthonormal Q, every column at once.

The splitting z = y − Q c makes the c-step the projection c = Qᵀ(y − z − u), which does not depend
on the penalty ρ; so ρ adapts per column by residual balancing without any refactorization, and a
step is two matrix–matrix products over all columns.  Only the outliers are needed from here: the
polish (``_polish``) supplies the exactness.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxpurify._numerics import matmul

CHECK_EVERY = 10  # ADMM iterations between residual checks (and penalty updates)
# Residual balancing (Boyd et al. §3.4.1): ρ moves only when the relative primal and dual
# residuals differ by more than BALANCE× either way, by the square root of their ratio clipped to
# STEP_CLIP, so one noisy check cannot swing it by orders of magnitude.
BALANCE = 5.0
STEP_CLIP = (1e-2, 1e2)


class _AdmmState(NamedTuple):
    z: jax.Array  # (K, m) sparse residual estimate
    u: jax.Array  # (K, m) scaled dual, λ = ρ u
    rho: jax.Array  # (m,) per-column penalty
    it: jax.Array  # () iteration counter
    iters: jax.Array  # (m,) iteration at which the column first met the stopping test
    done: jax.Array  # (m,)


class _Dual(NamedTuple):
    """The iterates an update moves: the sparse residual and the scaled dual."""

    z: jax.Array  # (K, m)
    u: jax.Array  # (K, m)


class _Update(NamedTuple):
    w: jax.Array  # (K, m) Q c, the fit of this update
    z: jax.Array  # (K, m)
    u: jax.Array  # (K, m)


class AdmmResult(NamedTuple):
    """What :func:`admm` returns for a block of columns (K, m)."""

    c: jax.Array  # (n, m) the fit in the Q basis
    z: jax.Array  # (K, m) the sparse residual estimate
    iters: jax.Array  # (m,) iteration at which the column first met the stopping test
    done: jax.Array  # (m,) the column met the stopping test


def _soft(v: jax.Array, t: jax.Array | float) -> jax.Array:
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0)


def _norm(v: jax.Array) -> jax.Array:
    """Column 2-norms, scaled so that squares of values near the float maximum cannot overflow."""
    big = jnp.max(jnp.abs(v), axis=0)
    safe = jnp.where(big > 0, big, 1.0)
    return big * jnp.sqrt(jnp.sum(jnp.square(v / safe), axis=0))


def admm(
    Q: jax.Array,
    y: jax.Array,
    usable: jax.Array,
    active: jax.Array,
    *,
    max_iter: jax.Array,
    tol: jax.Array,
    relax: jax.Array,
) -> AdmmResult:
    """ADMM for min ‖y − Q c‖₁ over the usable rows of the active columns.

    ``max_iter`` caps the iterations, ``tol`` is the relative stopping tolerance on the primal
    and dual residuals, ``relax`` the over-relaxation in (0, 2).  Unusable rows are zeroed and
    left free (no l1 cost), so a huge value there cannot cost accuracy through cancellation.
    """
    K, n = Q.shape
    finite = usable
    y = jnp.where(usable, y, 0.0)
    dtype = y.dtype
    tiny = jnp.finfo(dtype).tiny
    alpha = relax.astype(dtype)
    fin = finite.astype(dtype)

    c0 = matmul(Q.T, y)
    r0 = (y - matmul(Q, c0)) * fin
    # Start the threshold at the mean least-squares residual: the scale of the column's errors.
    scale0 = jnp.sum(jnp.abs(r0), axis=0) / jnp.maximum(jnp.sum(fin, axis=0), 1.0)
    rho0 = 1.0 / jnp.maximum(scale0, tiny)
    z0 = jnp.where(finite, _soft(r0, 1.0 / rho0), r0)
    m = y.shape[1]
    state = _AdmmState(
        z=z0,
        u=jnp.zeros_like(y),
        rho=rho0,
        it=jnp.asarray(0, jnp.int32),
        iters=jnp.zeros((m,), jnp.int32),
        done=~active,
    )

    eps = tol.astype(dtype)

    def update(z: jax.Array, u: jax.Array, rho: jax.Array) -> _Update:
        c = matmul(Q.T, y - z - u)
        w = matmul(Q, c)
        w_hat = alpha * w + (1 - alpha) * (y - z)
        v = y - w_hat - u
        z_new = jnp.where(finite, _soft(v, 1.0 / rho), v)  # unusable rows carry no l1 cost
        return _Update(w=w, z=z_new, u=u + w_hat + z_new - y)

    def step(s: _AdmmState) -> _AdmmState:
        # CHECK_EVERY − 1 plain updates, then one that also measures the residuals: the norms and
        # the third product for the dual residual would otherwise cost as much as the update.
        # A column that has met its test is frozen, so its answer does not depend on how long the
        # other columns of the batch keep iterating (the polish can still move it by an ulp or two).
        def frozen(new: _Update, old: _Dual) -> _Dual:
            return _Dual(z=jnp.where(s.done, old.z, new.z), u=jnp.where(s.done, old.u, new.u))

        def plain(_: jax.Array, zu: _Dual) -> _Dual:
            return frozen(update(zu.z, zu.u, s.rho), zu)

        prev = lax.fori_loop(0, CHECK_EVERY - 1, plain, _Dual(z=s.z, u=s.u))
        new = update(prev.z, prev.u, s.rho)
        cur = frozen(new, prev)
        w = new.w
        r = (w + cur.z - y) * fin
        sd = s.rho * matmul(Q.T, cur.z - prev.z)
        prim_scale = jnp.maximum(jnp.maximum(_norm(w * fin), _norm(cur.z * fin)), _norm(y * fin))
        dual_scale = _norm(s.rho * cur.u * fin)  # |λ| = |ρ u| ≤ 1 at the optimum
        rn, sn = _norm(r), _norm(sd)
        ok = (rn <= eps * prim_scale) & (sn <= eps * jnp.maximum(dual_scale, 1.0))
        it = s.it + CHECK_EVERY
        iters = jnp.where(s.done, s.iters, it)
        done = s.done | ok

        # Residual balancing: move ρ towards equal relative primal and dual residuals.
        ratio = (rn / jnp.maximum(prim_scale, tiny)) / jnp.maximum(sn / jnp.maximum(dual_scale, tiny), tiny)
        ratio = jnp.where(rn > 0, ratio, 1.0)
        adapt = ((ratio > BALANCE) | (ratio < 1.0 / BALANCE)) & ~done
        factor = jnp.where(adapt, jnp.clip(jnp.sqrt(ratio), *STEP_CLIP), 1.0).astype(dtype)
        return _AdmmState(z=cur.z, u=cur.u / factor, rho=s.rho * factor, it=it, iters=iters, done=done)

    def cond(s: _AdmmState) -> jax.Array:
        return (s.it < max_iter) & ~jnp.all(s.done)

    s = lax.while_loop(cond, step, state)
    c = matmul(Q.T, y - s.z - s.u)
    return AdmmResult(c=c, z=s.z, iters=s.iters, done=s.done)
