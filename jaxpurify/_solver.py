"""Certified batched least-absolute-deviations recovery.

For every column y of ``Y`` we solve

    x̂ = argmin_x ‖y − A x‖₁

and then certify the answer.  The method has three pure pieces, in the manner of optimistix:

1. **ADMM** (``_admm.py``) on the splitting ``z = y − Q c`` with ``A = Q R`` (thin QR, computed once
   per ``A`` and shared by every column).  Because ``Q`` is orthonormal the c-update is the exact
   projection ``c = Qᵀ(y − z − u)``: it does not depend on the penalty ρ.  So ρ can be adapted per
   column (residual balancing) at no cost, with no refactorization, and every iteration is two
   matrix–matrix products ``Qᵀ V`` and ``Q C`` over all columns at once.  We prefer this to a
   primal–dual method because its only linear algebra is that projection, it is invariant to the
   scale of ``A`` (``R`` absorbs it) and, with the per-column adaptive ρ, to the scale of ``y``.
2. **Polish** (``_polish.py``): ADMM only has to find the outliers.  The answer is then refit by least
   squares on the inlier rows, ``x = argmin ‖D (y − A x)‖₂`` with ``D`` the inlier mask, and the mask
   is re-read from the residual until it no longer changes.  Inside the l1 threshold this makes
   ``x`` exact to float precision, not the ~1e-3 at which ADMM itself would stop.
3. **Certificate**: with k̂ outliers among K' usable rows (K minus erasures), a column is certified
   iff the fit is exact on its inliers (to ``rtol·max|y_inlier| + atol``), the mask is stable, ``A``
   has full column rank, and ``2 k̂ < K' − n + 1``.

Why the certificate means something: if another x' explained the column with k' gross errors and
k̂ + k' ≤ K' − n, then A(x̂ − x') would vanish on at least n usable rows; for A in general position
(probability 1 for Gaussian A) any n rows are independent, so x' = x̂.  With 2k̂ ≤ K' − n this makes
x̂ the unique sparsest explanation, and it equals the clean column whenever that column had at most
K' − n − k̂ corrupted entries.

Non-finite entries of ``Y`` (NaN, ±Inf: what a flipped exponent bit produces) are erasures: they
carry no l1 cost, are excluded from the fit, and are reported as outliers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxpurify._admm import _mm, admm
from jaxpurify._polish import far_above_median, polish, tolerance



class Recovery(NamedTuple):
    """Result of :func:`recover`; batch dimensions as the broadcast inputs.

    Attributes:
      x: (..., n[, m]) the recovered latent.
      residual: (..., K[, m]) ``Y − A x`` (non-finite where ``Y`` was).
      outliers: (..., K[, m]) entries judged corrupted, erasures included.
      certified: (...[, m]) the column is exact on its inliers and ``2 k̂ < K' − n + 1``.
      iterations: (...[, m]) ADMM iterations until the column met its stopping test.
      converged: (...[, m]) ADMM met its stopping test within ``max_iter``.
    """

    x: jax.Array
    residual: jax.Array
    outliers: jax.Array
    certified: jax.Array
    iterations: jax.Array
    converged: jax.Array

    def raise_if_uncertified(self) -> "Recovery":
        """Opt-in throw: raise ``RuntimeError`` if any column is not certified."""
        bad = int(jnp.size(self.certified) - jnp.sum(self.certified))
        if bad:
            raise RuntimeError(
                f"{bad} of {jnp.size(self.certified)} columns are not certified; "
                "their x is an l1 estimate, not a recovery"
            )
        return self


class Options(NamedTuple):
    """Static options (shapes of the computation); changing one recompiles."""

    max_iter: int = 2000
    polish_rounds: int = 6
    passes: int = 3  # ADMM passes for columns not yet certified
    max_cg: int = 100  # conjugate-gradient steps per polish round


class Tolerances(NamedTuple):
    """Traced scalars; changing one does not recompile."""

    tol: jax.Array  # ADMM stopping, relative; the polish supplies the exactness
    rtol: jax.Array  # exactness on inliers, relative to max |y_inlier|
    atol: jax.Array  # absolute inlier tolerance, e.g. a known dense-noise level
    relax: jax.Array  # over-relaxation in (0, 2)


def default_rtol(dtype) -> float:
    """Relative exactness tolerance on inlier residuals: 64·eps (7.6e-6 in float32, 1.4e-14 in float64)."""
    eps = float(jnp.finfo(dtype).eps)
    return 64.0 * eps


class _Pass(NamedTuple):
    x: jax.Array
    r: jax.Array
    outl: jax.Array
    ok: jax.Array
    ignore: jax.Array  # rows the next ADMM pass leaves out: erasures and gross errors found
    iters: jax.Array
    done: jax.Array
    x_est: jax.Array  # best l1 estimate so far, for columns never certified
    f_est: jax.Array  # its l1 objective
    k: jax.Array


def _recover_single(A, Q, R, Y, opts: Options, tols: Tolerances):
    """A: (K, n) with thin QR ``Q, R``; Y: (K, m) → Recovery with the column axis last.

    Pass 1 runs ADMM and the polish on every column.  A column that is not certified gets
    another pass in which the gross errors found so far are left out of the ADMM: errors many
    decades larger than the column's values limit ADMM's accuracy through cancellation in
    float32, and removing them lets the next pass resolve the smaller ones.
    """
    K, n = A.shape
    dtype = Y.dtype
    finite = jnp.isfinite(Y)
    y = jnp.where(finite, Y, 0.0)
    diag = jnp.abs(jnp.diagonal(R))
    full_rank = jnp.min(diag) > K * jnp.finfo(dtype).eps * jnp.max(diag)

    def l1(x):
        return jnp.sum(jnp.where(finite, jnp.abs(y - _mm(A, x)), 0.0), axis=0)

    def one_pass(ignore, active):
        c, _, iters, done = admm(Q, y, ~ignore, active, opts.max_iter, tols.tol, tols.relax)
        r_admm = y - _mm(Q, c)
        outl0 = far_above_median(r_admm, ~ignore, 10.0)
        # every finite row is judged again on its residual in the polish, ignored ones included
        x, r, outl, ok = polish(A, Q, R, y, finite, outl0, c, tols.rtol.astype(dtype), tols.atol.astype(dtype),
                                 opts.polish_rounds, opts.max_cg)
        # the l1 estimate reported for columns that no pass certifies: the better of the two
        x_admm = jax.scipy.linalg.solve_triangular(R, c, lower=False)
        f_pol, f_admm = l1(x), l1(x_admm)
        x_est = jnp.where(f_pol <= f_admm, x, x_admm)
        return x, r, outl, ok, outl0, iters, done, x_est, jnp.minimum(f_pol, f_admm)

    # A clean column of A x has no entry 1e4 times its median (at most n − 1 entries of A x can
    # vanish), so values that far out are gross errors; leaving them out of the first ADMM pass
    # keeps values near the float maximum (flipped exponent bits) from swamping it.
    m = Y.shape[1]
    state = _Pass(
        x=jnp.zeros((n, m), dtype),
        r=y,
        outl=~finite,
        ok=jnp.zeros((m,), bool),
        ignore=far_above_median(y, finite, 1e4),
        iters=jnp.zeros((m,), jnp.int32),
        done=jnp.zeros((m,), bool),
        x_est=jnp.zeros((n, m), dtype),
        f_est=jnp.full((m,), jnp.inf, dtype),
        k=jnp.asarray(0, jnp.int32),
    )

    def cond(s: _Pass):
        return (s.k < opts.passes) & jnp.any(~s.ok)

    def body(s: _Pass):
        active = ~s.ok
        x, r, outl, ok, outl0, iters, done, x_est, f_est = one_pass(s.ignore, active)
        take = active & ok
        pick = lambda new, old: jnp.where(take, new, old)
        better = active & (f_est < s.f_est)
        return _Pass(
            pick(x, s.x),
            pick(r, s.r),
            pick(outl, s.outl),
            s.ok | take,
            jnp.where(active, s.ignore | outl0, s.ignore),
            jnp.where(active, s.iters + iters, s.iters),
            jnp.where(active, done, s.done),
            jnp.where(better, x_est, s.x_est),
            jnp.where(better, f_est, s.f_est),
            s.k + 1,
        )

    s = lax.while_loop(cond, body, state)
    x = jnp.where(s.ok, s.x, s.x_est)
    residual = Y - _mm(A, x)
    tol = tolerance(y, ~s.outl, tols.rtol.astype(dtype), tols.atol.astype(dtype))
    outl = jnp.where(s.ok, s.outl, ~finite | (jnp.abs(residual) > tol))
    usable = jnp.sum(finite, axis=0)
    k_hat = jnp.sum(outl & finite, axis=0)
    certified = s.ok & full_rank & (2 * k_hat < usable - n + 1)
    return Recovery(x, residual, outl, certified, s.iters, s.done)


def _as_float(a, name):
    a = jnp.asarray(a)
    if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real floating array, got dtype {a.dtype}")
    return a


def _chunk(K: int, M: int) -> int:
    """Columns per solve: a while loop runs until its slowest column converges, so smaller chunks
    exit earlier and keep their (K, chunk) working set in cache; too small and the products lose
    efficiency.  4K clipped to [128, 1024] was best measured on K = 64…1024 (benchmarks/README)."""
    return min(M, max(128, min(1024, 4 * K)))


def _solve_items(A, Y, opts: Options, tols: Tolerances) -> Recovery:
    """A: (B, K, n), Y: (B, K, M) → Recovery with leading B.  Each matrix is factorized once;
    its columns are solved in chunks, one after another (``lax.map``), each chunk with its own
    early exit."""
    B, K, M = Y.shape
    chunk = _chunk(K, M)
    nc = -(-M // chunk)
    if nc * chunk != M:  # zero columns are solved exactly at once
        Y = jnp.pad(Y, ((0, 0), (0, 0), (0, nc * chunk - M)))
    Q, R = jax.vmap(jnp.linalg.qr)(A)
    items = jnp.moveaxis(Y.reshape(B, K, nc, chunk), 2, 1).reshape(B * nc, K, chunk)
    owner = jnp.arange(B * nc) // nc

    def solve(item):
        i, y = item
        return _recover_single(A[i], Q[i], R[i], y, opts, tols)

    out = lax.map(solve, (owner, items))

    def unchunk(a):
        a = a.reshape((B, nc) + a.shape[1:])  # (B, nc, [rows,] chunk)
        a = jnp.moveaxis(a, 1, -2)  # (B, [rows,] nc, chunk)
        return a.reshape(a.shape[:-2] + (nc * chunk,))[..., :M]

    return Recovery(*(unchunk(o) for o in out))


@functools.partial(jax.jit, static_argnames=("opts", "vector"))
def _recover_jit(A, Y, tols: Tolerances, opts: Options, vector: bool):
    if vector:
        Y = Y[..., None]
    batch = jnp.broadcast_shapes(A.shape[:-2], Y.shape[:-2])
    K, n = A.shape[-2:]
    m = Y.shape[-1]
    if A.ndim == 2:
        # One A for the whole batch: fold the batch into columns so all share one factorization.
        Yf = jnp.moveaxis(Y.reshape((-1, K, m)), 0, 1).reshape(K, -1)
        out = Recovery(*(o[0] for o in _solve_items(A[None], Yf[None], opts, tols)))

        def unfold(a, rows):
            if rows is None:
                return a.reshape(batch + (m,))
            return jnp.moveaxis(a.reshape((rows, -1, m)), 1, 0).reshape(batch + (rows, m))

        out = Recovery(
            unfold(out.x, n),
            unfold(out.residual, K),
            unfold(out.outliers, K),
            unfold(out.certified, None),
            unfold(out.iterations, None),
            unfold(out.converged, None),
        )
    else:
        Ab = jnp.broadcast_to(A, batch + (K, n)).reshape((-1, K, n))
        Yb = jnp.broadcast_to(Y, batch + (K, m)).reshape((-1, K, m))
        out = _solve_items(Ab, Yb, opts, tols)
        out = Recovery(*(o.reshape(batch + o.shape[1:]) for o in out))
    if vector:
        out = Recovery(*(o[..., 0] for o in out))
    return out


def recover(
    A,
    Y,
    *,
    max_iter: int = 2000,
    tol: float = 1e-3,
    rtol: float | None = None,
    atol: float = 0.0,
    relax: float = 1.6,
    polish_rounds: int = 6,
    passes: int = 3,
    max_cg: int = 100,
    throw: bool = False,
) -> Recovery:
    """Recover x̂ = argmin_x ‖y − A x‖₁ for every column y of ``Y``, with a certificate.

    Args:
      A: (..., K, n) with n < K.
      Y: (..., K) — one column per batch entry — when ``Y.ndim < A.ndim``, else (..., K, m).
        Leading batch dimensions broadcast against those of ``A``.  Non-finite entries are
        erasures.
      max_iter: ADMM iteration cap.
      tol: relative ADMM stopping tolerance on primal and dual residuals.
      rtol, atol: an inlier is a row with ``|y − A x| ≤ rtol·max|y_inlier| + atol``; ``rtol``
        defaults to ``64·eps`` of the dtype.  Set ``atol`` to a known dense-noise bound to
        certify the inexact regime.
      relax: ADMM over-relaxation in (0, 2).
      polish_rounds: cap on refit / re-read-mask rounds.
      passes: cap on ADMM passes; a column not certified after a pass is solved again with the
        gross errors found so far left out.
      max_cg: cap on conjugate-gradient steps per polish round.
      throw: raise ``RuntimeError`` if any column is not certified.

    The computation runs in ``result_type(A, Y)`` promoted to at least float32 (float64 when x64
    is enabled and an input is float64).  See the module docstring for the certificate.
    """
    A = _as_float(A, "A")
    Y = _as_float(Y, "Y")
    if A.ndim < 2:
        raise ValueError(f"A must have shape (..., K, n), got {A.shape}")
    K, n = A.shape[-2:]
    if not n < K:
        raise ValueError(f"A must have fewer columns than rows (n < K), got A.shape={A.shape}")
    vector = Y.ndim < A.ndim
    krow = Y.shape[-1] if vector else (Y.shape[-2] if Y.ndim >= 2 else None)
    if Y.ndim < 1 or krow != K:
        raise ValueError(
            f"Y must have shape (..., K) or (..., K, m) with K={K} from A.shape={A.shape}; "
            f"got Y.shape={Y.shape} (read as {'(..., K)' if vector else '(..., K, m)'} "
            "because Y.ndim " + ("<" if vector else ">=") + " A.ndim)"
        )
    try:
        jnp.broadcast_shapes(A.shape[:-2], Y.shape[: -1 if vector else -2])
    except ValueError as e:
        raise ValueError(f"batch shapes of A {A.shape} and Y {Y.shape} do not broadcast") from e
    if not 0.0 < relax < 2.0:
        raise ValueError(f"relax must lie in (0, 2), got {relax}")
    if min(max_iter, polish_rounds, passes, max_cg) < 1:
        raise ValueError("max_iter, polish_rounds, passes and max_cg must be positive")
    dtype = jnp.promote_types(jnp.result_type(A, Y), jnp.float32)
    A, Y = A.astype(dtype), Y.astype(dtype)
    rt = default_rtol(dtype) if rtol is None else float(rtol)
    if not (tol > 0 and rt >= 0 and atol >= 0):
        raise ValueError(f"need tol > 0, rtol ≥ 0, atol ≥ 0; got tol={tol}, rtol={rt}, atol={atol}")
    opts = Options(int(max_iter), int(polish_rounds), int(passes), int(max_cg))
    f = lambda v: jnp.asarray(v, jnp.float32)
    tols = Tolerances(f(tol), f(rt), f(atol), f(relax))
    out = _recover_jit(A, Y, tols, opts, vector)
    if throw:
        out.raise_if_uncertified()
    return out
