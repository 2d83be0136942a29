"""Certified batched least-absolute-deviations recovery: :func:`recover`.

For every column y of ``Y`` we look for

    x̂ = argmin_x ‖y − A x‖₁

and certify the answer (``_certify``).  The solver is four named pure pieces over named state:

1. **find** (``_admm``): a short ADMM run on ``z = y − Q c`` with ``A = QR`` (thin QR, once per
   ``A``).  ``Q`` is orthonormal, so the c-step is the projection ``c = Qᵀ(y − z − u)`` whatever
   the penalty, which therefore adapts per column at no cost.  Its only job is to find the
   outliers; on later passes the columns not yet certified are also *trimmed*: their
   ⌊(K'−n)/2⌋ largest residuals are set aside and the rest refit, which finds outliers where
   l1 itself fails (K/n = 2 at 20–25% errors).
2. **polish** (``_polish``): least squares on the inlier rows (CG on Qᵀ D Q), outlier mask
   re-read until stable; exact to float precision inside the threshold.
3. **pivot** (``_pivot``): on the columns the passes leave uncertified but within the count bound,
   simplex pivots of the l1 LP from the passes' estimate to an l1 optimum, a least-squares refit
   on the rows it fits and its mask read at τ: the polish can settle short of an answer the exact
   LP finds (many entries changed by about τ, or errors near the count bound).  A certified
   column is never touched.  Called eagerly, this stage is a program of its own (``Stage``),
   compiled and run only when some column needs it; under ``jit`` it follows the passes in the
   same program.
4. **certify** (``_certify``): result code, certificate and error bound per column.

Passes after the first run only on the columns not yet certified, gathered into blocks an
eighth as wide (``COMPACT``): a column that is done stops costing work.  Their ADMM is shorter
(``retry_iters``): those columns are mostly past the l1 boundary, where that certified far more
of them (measured; presumably a converged ADMM points at the l1 minimizer's wrong outliers).
(A problem narrower than 128 columns runs them at its own width: ``NARROW_MIN``.)

Every column is solved in its own units: it is scaled by a power of two near its median
magnitude before the solve and the answer scaled back, both exactly.  So scaling a column by any
power of two (within the float range) scales x̂ by the same power, bit for bit, with the same
certificate.  Non-finite entries (NaN, ±Inf: what a flipped exponent bit produces) are erasures:
no l1 cost, excluded from the fit, reported as outliers, never propagated into x.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike, DTypeLike

from jaxpurify import _exported
from jaxpurify._admm import admm
from jaxpurify._certify import Fit, _norm, certify
from jaxpurify._grad import differentiable
from jaxpurify._numerics import matmul
from jaxpurify._options import RecoverOptions, resolve
from jaxpurify._pivot import LPResult, certifiable, hopeful, lp_fit
from jaxpurify._polish import Block, far_above_median, largest, over_bound, polish, select, tolerance
from jaxpurify._solution import RESULTS, Recovery, throw_if_uncertified
from jaxpurify._threads import single_threaded_blas
from jaxpurify._units import column_exponent, is_subnormal, is_zero, scale, unscale

# A clean column A x has no entry 1e4 times its median (at most n − 1 entries of A x can vanish),
# so values that far out are gross errors: the first pass leaves them out of the ADMM, which keeps
# values near the float maximum (flipped exponent bits) from swamping it.
PRESCREEN = 1e4
# After ADMM, a residual 10× the median residual marks a first-guess outlier for the polish.
OUTLIER_FACTOR = 10.0
# Passes after the first gather the uncertified columns into blocks this many times narrower.
COMPACT = 8
# A block of fewer than NARROW_MIN · COMPACT columns (a whole problem that small: blocks are
# otherwise ≥ 128 wide) runs its later passes at its own width: narrower matmuls would run far
# below the peak anyway, and at the first pass's shapes XLA reuses its compiled kernels
# (−25% compilation for purify's small buckets).
NARROW_MIN = 16
# Polish rounds of the first (full-width) pass.
FIRST_ROUNDS = 3
# Later passes polish with the greedy read as well (``_polish.polish``): small outliers the
# finder's first guess misses (flipped mantissa bits, errors of 1% of the weights).
GREEDY = True


# The traced options that are loop bounds (the rest are tolerances).
INT_OPTIONS = ("finder_iters", "passes", "retry_iters", "polish_rounds", "max_cg")


def far_limit(dtype: DTypeLike) -> int:
    """log2 of the magnitude, in a column's own units (median entry ~ 1), past which an entry is an
    outlier by fiat: 2^32 in float32, 2^256 in float64.  Far below the overflow of the solver's
    sums of squares (K · 2^64 ≪ 2^128), far above any clean entry of a column whose median is
    clean (more than half its nonzero entries are, inside the count bound; clean columns A θ have
    max/median ≈ 5)."""
    return int(jnp.finfo(dtype).maxexp) // 4


class Traced(NamedTuple):
    """The traced options (``RecoverOptions.TRACED``, in its order): the iteration caps as int32
    scalars, the tolerances as float32 ones.  Changing one does not recompile."""

    finder_iters: jax.Array
    passes: jax.Array
    retry_iters: jax.Array
    admm_tol: jax.Array
    relax: jax.Array
    polish_rounds: jax.Array
    max_cg: jax.Array
    rtol: jax.Array
    atol: jax.Array

    @classmethod
    def of(cls, opts: RecoverOptions, dtype: DTypeLike) -> Traced:
        values = opts.traced(dtype)
        caps = {name: jnp.asarray(values.pop(name), jnp.int32) for name in INT_OPTIONS}
        return cls(**caps, **{name: jnp.asarray(v, jnp.float32) for name, v in values.items()})


class _Pass(NamedTuple):
    """What one finder pass gives a block of columns."""

    fit: Fit  # the polished fit (the trimmed one where only it is exact)
    x_admm: jax.Array  # (n, m) the finder's own estimate
    outl0: jax.Array  # (K, m) the finder's first-guess outliers (left out of the next pass)
    iters: jax.Array  # (m,) finder iterations
    done: jax.Array  # (m,) the finder met its stopping test


class _Best(NamedTuple):
    """Per column: the answer kept so far (a settled exact fit, else the best l1 estimate)."""

    x: jax.Array  # (n, m)
    outliers: jax.Array  # (K, m)
    settled: jax.Array  # (m,) an exact fit on a settled mask (``_settled``): ``certify`` decides the rest
    stable: jax.Array  # (m,) the mask did not change in the last polish round
    solved: jax.Array  # (m,) the last refit's CG converged
    x_est: jax.Array  # (n, m) best l1 estimate, for columns never fitted exactly
    f_est: jax.Array  # (m,) its l1 objective
    ignore: jax.Array  # (K, m) rows the next finder pass leaves out
    iters: jax.Array  # (m,)
    done: jax.Array  # (m,) finder met its test in the column's last pass
    over: jax.Array  # (m,) in the last pass the mask settled past the count bound or was given up there


class _Passes(NamedTuple):
    """The later passes' loop state (``lax.while_loop`` in ``_recover_block``)."""

    best: _Best
    tries: jax.Array  # (m,) int32 passes each column has had


class _QR(NamedTuple):
    Q: jax.Array  # (K, N)
    R: jax.Array  # (N, N)


def _find_and_polish(block: Block, ignore: jax.Array, *, tols: Traced, opts: RecoverOptions, first: bool) -> _Pass:
    """One pass on a block: ADMM finder and polish; after the first pass also a trimmed refit.

    The first pass runs on every column, so its polish stops after ``FIRST_ROUNDS`` rounds: most
    masks settle in two, and the few that do not go on in the narrow later passes.  ``ignore``:
    rows the finder leaves out.
    """
    Q, R, n, y, finite = block.Q, block.R, block.n, block.y, block.finite
    rounds = jnp.minimum(tols.polish_rounds, FIRST_ROUNDS) if first else tols.polish_rounds
    iters_cap = tols.finder_iters if first else tols.retry_iters
    found = admm(Q, y, ~ignore, jnp.ones(y.shape[1], bool), max_iter=iters_cap, tol=tols.admm_tol, relax=tols.relax)
    r_admm = y - matmul(Q, found.c)
    outl0 = far_above_median(r_admm, ~ignore, OUTLIER_FACTOR)
    fit = polish(block, outl0, found.c, rounds=rounds, max_cg=tols.max_cg, greedy=GREEDY and not first)
    if opts.trim and not first:
        h = (jnp.sum(finite, axis=0) - n) // 2
        cut = ~finite | largest(jnp.abs(r_admm), finite, h)
        trimmed = polish(block, cut, found.c, rounds=rounds, max_cg=tols.max_cg)
        take = _settled(trimmed, finite, n) & ~_settled(fit, finite, n)
        fit = select(take, trimmed, fit)
    x_admm = jax.scipy.linalg.solve_triangular(R, found.c, lower=False)
    return _Pass(fit=fit, x_admm=x_admm, outl0=outl0, iters=found.iters, done=found.done)


def _settled(fit: Fit, finite: jax.Array, n: jax.Array) -> jax.Array:
    """A column needs no more passes: exact on a settled mask that leaves a redundant row.  With n
    inliers or fewer any column fits exactly, so such a fit is no answer, and a later pass may
    still find a mask that can be certified.  (An exact fit with redundancy but past the count
    bound is kept as done: going on doubled the time of cells past the bound for nothing.)"""
    slack = jnp.sum(finite & ~fit.outliers, axis=0) >= n + 1
    return fit.exact & fit.stable & ~(fit.over & ~slack)


def _l1(A: jax.Array, y: jax.Array, finite: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(finite, jnp.abs(y - matmul(A, x)), 0.0), axis=0)


def _update(best: _Best, block: Block, active: jax.Array, result: _Pass) -> _Best:
    """Fold one pass's results into the kept answer of the ``active`` columns."""
    A, n, y, finite = block.A, block.n, block.y, block.finite
    fit = result.fit
    x, outl, settled = fit.x, fit.outliers, _settled(fit, finite, n)
    take = active & settled & ~best.settled
    f_pol, f_admm = _l1(A, y, finite, x), _l1(A, y, finite, result.x_admm)
    x_est = jnp.where(f_pol <= f_admm, x, result.x_admm)
    better = active & (jnp.minimum(f_pol, f_admm) < best.f_est)

    def pick(new: jax.Array, old: jax.Array, when: jax.Array) -> jax.Array:
        return jnp.where(when, new, old)

    return _Best(
        x=pick(x, best.x, take),
        outliers=pick(outl, best.outliers, take | (active & ~best.settled)),
        settled=best.settled | take,
        stable=pick(fit.stable, best.stable, active),
        solved=pick(fit.solved, best.solved, active),
        x_est=pick(x_est, best.x_est, better),
        f_est=pick(jnp.minimum(f_pol, f_admm), best.f_est, better),
        ignore=pick(best.ignore | result.outl0, best.ignore, active),
        iters=pick(best.iters + result.iters, best.iters, active),
        done=pick(result.done, best.done, active),
        over=pick(fit.over, best.over, active),
    )


def _full_pass(block: Block, state: _Passes, *, tols: Traced, opts: RecoverOptions) -> _Passes:
    """One more pass on every column not certified with passes left, at the block's own width."""
    best, tries = state.best, state.tries
    want = ~best.settled & (tries < tols.passes)
    sub = _find_and_polish(block, best.ignore, tols=tols, opts=opts, first=False)
    return _Passes(best=_update(best, block, want, sub), tries=tries + want)


class _Slots(NamedTuple):
    """Up to w wanted columns of a block gathered into a narrow one: both directions are gathers
    (no scatter, and no jnp.nonzero, which scatters): XLA's CPU backend took ~0.4 s longer to
    compile the scatters."""

    idx: jax.Array  # (w,) slot → its column; m if unused
    slot: jax.Array  # (m,) column → its slot; w if it has none

    @classmethod
    def of(cls, want: jax.Array, w: int) -> _Slots:
        """The first w columns with ``want``, in order."""
        rank = jnp.cumsum(want)  # column j is the rank[j]-th wanted one
        idx = jnp.sum(rank[None, :] <= jnp.arange(w)[:, None], axis=1)
        return cls(idx=idx, slot=jnp.where(want & (rank <= w), rank - 1, w))

    @property
    def taken(self) -> jax.Array:
        """(m,) the column has a slot."""
        return self.slot < self.idx.shape[0]

    @property
    def valid(self) -> jax.Array:
        """(w,) the slot has a column."""
        return self.idx < self.slot.shape[0]

    def gather(self, a: jax.Array) -> jax.Array:  # block column → narrow slot
        return jnp.take(a, self.idx, axis=-1, mode="clip")

    def back(self, new: jax.Array, old: jax.Array) -> jax.Array:  # narrow slot → block column
        return jnp.where(self.taken, jnp.take(new, self.slot, axis=-1, mode="clip"), old)

    def narrow(self, block: Block) -> Block:
        return block._replace(y=self.gather(block.y), finite=self.gather(block.finite), atol=self.gather(block.atol))


def _narrow_pass(block: Block, state: _Passes, *, tols: Traced, opts: RecoverOptions) -> _Passes:
    """One more pass for up to m / COMPACT columns that are not certified and have passes left,
    gathered into a narrow block: a column that is done stops costing work."""
    best, tries = state.best, state.tries
    m = block.y.shape[1]
    sl = _Slots.of(~best.settled & (tries < tols.passes), max(1, m // COMPACT))
    narrow = sl.narrow(block)
    sub = _find_and_polish(narrow, sl.gather(best.ignore), tols=tols, opts=opts, first=False)
    sub_best = _update(jax.tree.map(sl.gather, best), narrow, sl.valid, sub)
    return _Passes(best=jax.tree.map(sl.back, sub_best, best), tries=tries + sl.taken)


class _Pivoting(NamedTuple):
    """The simplex stage's loop state (``_pivot_stage``)."""

    best: _Best
    tried: jax.Array  # (m,) the column has had its pivots, or is not worth any (``_pivot.hopeful``)


def _lp_update(best: _Best, block: Block, active: jax.Array, res: LPResult) -> _Best:
    """Fold the simplex's answer into the kept one of the ``active`` columns: its certifiable fit
    where the column had none, its vertex as the l1 estimate where that is lower."""
    take = active & ~best.settled & certifiable(res.fit, block)
    better = active & (res.f < best.f_est)
    fit = res.fit
    return best._replace(
        x=jnp.where(take, fit.x, best.x),
        outliers=jnp.where(take, fit.outliers, best.outliers),
        settled=best.settled | take,
        stable=jnp.where(take, fit.stable, best.stable),
        solved=jnp.where(take, fit.solved, best.solved),
        over=jnp.where(take, fit.over, best.over),
        x_est=jnp.where(better, res.x, best.x_est),
        f_est=jnp.where(better, res.f, best.f_est),
    )


def _wanted(block: Block, best: _Best) -> jax.Array:
    """(m,) the columns the simplex stage pivots: not settled, not past the count bound, and near
    enough to an answer (``_pivot.hopeful``).  The stage and the eager screen (``_wanted_block``)
    both read it here."""
    return ~best.settled & ~best.over & hopeful(block, best.x_est)


def _pivot_stage(block: Block, best: _Best, *, tols: Traced, opts: RecoverOptions) -> _Best:
    """Simplex pivots (``_pivot``) on the columns the passes left uncertified but within the count
    bound and near enough to an answer (``_pivot.hopeful``), up to m / COMPACT at a time (a problem
    narrower than ``NARROW_MIN · COMPACT``: all at its own width): a certified column is never
    touched, and a block without such columns pays one test."""
    m = block.y.shape[1]
    w = m if m < NARROW_MIN * COMPACT else max(1, m // COMPACT)
    cap = opts.pivots * block.A.shape[1]

    def pending(st: _Pivoting) -> jax.Array:
        return ~st.best.settled & ~st.best.over & ~st.tried

    def todo(st: _Pivoting) -> jax.Array:
        return jnp.any(pending(st))

    def more(st: _Pivoting) -> _Pivoting:
        sl = _Slots.of(pending(st), w)
        narrow = sl.narrow(block)
        sub = jax.tree.map(sl.gather, st.best)
        res = lp_fit(narrow, sub.x_est, sl.valid, max_pivots=cap, max_cg=tols.max_cg)
        sub = _lp_update(sub, narrow, sl.valid, res)
        return _Pivoting(best=jax.tree.map(sl.back, sub, st.best), tried=st.tried | sl.taken)

    # a column far from any answer the LP could certify is left as it is (``_wanted``)
    tried = ~_wanted(block, best)
    return lax.while_loop(todo, more, _Pivoting(best=best, tried=tried)).best


class _Problem(NamedTuple):
    """A chunk of columns as the solver sees them (``_problem``): the block in the columns' own
    units, and what ``_finish`` needs to take the answer back to the caller's."""

    block: Block
    Y: jax.Array  # (K, m) the caller's columns
    e: jax.Array  # (m,) each column's power-of-two unit (``_units.column_exponent``)
    usable: jax.Array  # (K, m) the finite entries
    far: jax.Array  # (K, m) entries set aside as far above the column's median


def _problem(A: jax.Array, Q: jax.Array, R: jax.Array, n: jax.Array, Y: jax.Array, *, tols: Traced) -> _Problem:
    """A: (K, N) with thin QR ``Q, R`` and ``n`` ≤ N real columns (the rest zero, Q's too);
    Y: (K, m) → the chunk in its columns' own units."""
    m = Y.shape[1]
    dtype = Y.dtype
    usable = jnp.isfinite(Y)
    e = column_exponent(Y, usable)
    y = scale(jnp.where(usable, Y, 0.0), e)
    # entries this far above the column's median (e.g. stuck near the largest float) would overflow
    # the solver's arithmetic (the certificate once read inf/inf as an exact fit): the solve treats
    # them as erasures, the certificate counts them as outliers (2 rows each, not 1), which it may:
    # no inlier is dropped, and x̂'s inliers alone carry the uniqueness argument (_certify)
    far = usable & (jnp.abs(y) > jnp.ldexp(jnp.ones((), dtype), far_limit(dtype)))
    finite = usable & ~far
    y = jnp.where(finite, y, 0.0)
    atol = jnp.ldexp(jnp.broadcast_to(tols.atol.astype(dtype), (m,)), -e)
    block = Block(A=A, Q=Q, R=R, n=n, y=y, finite=finite, rtol=tols.rtol.astype(dtype), atol=atol)
    return _Problem(block=block, Y=Y, e=e, usable=usable, far=far)


def _passes(prob: _Problem, *, tols: Traced, opts: RecoverOptions) -> _Best:
    """The finder and polish passes (``find``, ``polish``): the first on every column, later ones
    on the columns not yet certified, up to ``passes`` per column."""
    block = prob.block
    K, N = block.A.shape
    m = block.y.shape[1]
    dtype = block.y.dtype
    ignore = far_above_median(block.y, block.finite, PRESCREEN)
    best = _Best(
        x=jnp.zeros((N, m), dtype),
        outliers=~block.finite,
        settled=jnp.zeros((m,), bool),
        stable=jnp.zeros((m,), bool),
        solved=jnp.zeros((m,), bool),
        x_est=jnp.zeros((N, m), dtype),
        f_est=jnp.full((m,), jnp.inf, dtype),
        ignore=ignore,
        iters=jnp.zeros((m,), jnp.int32),
        done=jnp.zeros((m,), bool),
        over=jnp.zeros((m,), bool),
    )
    first = _find_and_polish(block, ignore, tols=tols, opts=opts, first=True)
    best = _update(best, block, jnp.ones((m,), bool), first)

    def todo(state: _Passes) -> jax.Array:
        return jnp.any(~state.best.settled & (state.tries < tols.passes))

    def more(state: _Passes) -> _Passes:
        if m < NARROW_MIN * COMPACT:  # see NARROW_MIN
            return _full_pass(block, state, tols=tols, opts=opts)
        return _narrow_pass(block, state, tols=tols, opts=opts)

    return lax.while_loop(todo, more, _Passes(best=best, tries=jnp.ones((m,), jnp.int32))).best


def _finish(prob: _Problem, best: _Best, one_corrupted: jax.Array | None = None) -> Recovery:
    """The kept answers certified (``_certify``; ``one_corrupted`` as there) and taken back to the
    caller's units."""
    block, e = prob.block, prob.e
    A, Q, R, n, y, finite, atol = block.A, block.Q, block.R, block.n, block.y, block.finite, block.atol
    dtype = y.dtype
    x = jnp.where(best.settled, best.x, best.x_est)
    r = y - matmul(A, x)
    tol = tolerance(y, ~best.outliers, block.rtol, atol)
    # an uncertified column reports the rows its estimate does not explain
    outl = jnp.where(best.settled, best.outliers, ~finite | (jnp.abs(r) > tol))
    # the far entries alone past the count bound: that is why, whatever the fit's state
    over = (best.over & ~best.settled) | over_bound(prob.far, prob.usable, n)
    fit = Fit(x=x, r=r, outliers=outl, exact=best.settled, stable=best.stable, solved=best.solved, over=over)
    code, certified, bound = certify(Q, R, n, fit, prob.usable, tol, one_corrupted)
    # back to the caller's units, correctly rounded (unscale: the CPU backend would flush subnormal
    # results to zero); a subnormal entry is off by at most half the smallest subnormal, which the
    # bound takes in (2^(low−1) in the caller's units is 2^(low−1−e) in the column's)
    x_n, x = x, unscale(x, e)
    low = int(jnp.finfo(dtype).minexp) - int(jnp.finfo(dtype).nmant)
    sub = jnp.sum(is_subnormal(x), axis=0)
    xn = _norm(x_n)
    rounding = jnp.sqrt(sub.astype(dtype)) * jnp.ldexp(jnp.ones((), dtype), low - 1 - e) / jnp.where(xn > 0, xn, 1.0)
    bound = bound + jnp.where(sub > 0, rounding, 0.0)
    # past the top of the float range, or nothing left of x̂: not what was certified
    lost = jnp.any(~jnp.isfinite(x), axis=0) | (jnp.any(x_n != 0, axis=0) & jnp.all(is_zero(x), axis=0))
    code = jnp.where(certified & lost, jnp.int8(RESULTS.out_of_range), code)
    bound = jnp.where(lost, jnp.inf, bound)
    certified = certified & ~lost
    # the residual in the column's units too, where the entry was not set aside (non-finite, far)
    residual = jnp.where(finite, unscale(y - matmul(A, x_n), e), prob.Y - matmul(A, x))
    return Recovery(
        x=x,
        residual=residual,
        outliers=outl,
        certified=certified,
        result=code,
        bound=bound,
        iterations=best.iters,
        converged=best.done,
    )


# Results of the passes that the simplex stage may still turn into a certificate: the mask did not
# settle into an exact fit.  (Past the count bound, rank-deficient, out of range: no pivot helps.)
PIVOTABLE = (RESULTS.iteration_cap, RESULTS.unstable_mask, RESULTS.inexact_fit)


def _resume(prob: _Problem, out: Recovery) -> _Best:
    """The passes' answer (``out``, from ``_finish``) as the simplex stage's start: the certified
    columns as they are, the others from their l1 estimate."""
    block = prob.block
    m = block.y.shape[1]
    x = scale(jnp.where(jnp.isfinite(out.x), out.x, 0.0), prob.e)  # exact: powers of two
    none = jnp.zeros((m,), bool)
    return _Best(
        x=x,
        outliers=out.outliers,
        settled=out.certified,
        stable=none,
        solved=none,
        x_est=x,
        f_est=_l1(block.A, block.y, block.finite, x),
        ignore=jnp.zeros_like(out.outliers),
        iters=out.iterations,
        done=out.converged,
        over=~out.certified & ~jnp.isin(out.result, jnp.asarray(PIVOTABLE, jnp.int8)),
    )


def _recover_block(
    A: jax.Array, Q: jax.Array, R: jax.Array, n: jax.Array, Y: jax.Array, *, opts: RecoverOptions, tols: Traced
) -> Recovery:
    """A: (K, N) with thin QR ``Q, R`` and ``n`` ≤ N real columns (the rest zero, Q's too);
    Y: (K, m) → Recovery with the column axis last: find, polish, certify."""
    prob = _problem(A, Q, R, n, Y, tols=tols)
    return _finish(prob, _passes(prob, tols=tols, opts=opts))


def _pivot_block(
    A: jax.Array,
    Q: jax.Array,
    R: jax.Array,
    n: jax.Array,
    Y: jax.Array,
    out: Recovery,
    *,
    opts: RecoverOptions,
    tols: Traced,
) -> Recovery:
    """The simplex stage after ``_recover_block``'s answer ``out`` on the same chunk: the columns it
    certifies take its answer, every other column keeps ``out``'s."""
    prob = _problem(A, Q, R, n, Y, tols=tols)
    # an l1 vertex may fit a small corrupted entry and flag a clean row instead where that costs
    # less (K' = 15, n = 12: error 4.8e-4 against the c = 0 bound's 2.8e-4), so the stage's
    # certificates cover one corrupted inlier at any |I| (``_certify``)
    new = _finish(prob, _pivot_stage(prob.block, _resume(prob, out), tols=tols, opts=opts), ~out.certified)
    take = new.certified & ~out.certified

    def pick(a: jax.Array, b: jax.Array) -> jax.Array:  # the column axis is last in every field
        return jnp.where(take, a, b)

    return out._replace(
        x=pick(new.x, out.x),
        residual=pick(new.residual, out.residual),
        outliers=pick(new.outliers, out.outliers),
        certified=out.certified | take,
        result=pick(new.result, out.result),
        bound=pick(new.bound, out.bound),
    )


def _wanted_block(A: jax.Array, Y: jax.Array, n: jax.Array, out: Recovery, *, tols: Traced) -> jax.Array:
    """(m,) ``_wanted`` on ``_recover_block``'s answer: the columns the simplex stage would take up
    (no QR needed: the test reads only the residuals)."""
    prob = _problem(A, A, jnp.eye(A.shape[1], dtype=A.dtype), n, Y, tols=tols)  # Q, R unused here
    return _wanted(prob.block, _resume(prob, out))


def _chunk(K: int, M: int) -> int:
    """Columns per solve: 4K clipped to [128, 1024] (benchmarks/README: smaller chunks exit earlier
    and keep their (K, chunk) working set in cache; too small and the products lose efficiency)."""
    return min(M, max(128, min(1024, 4 * K)))


def _factor(A: jax.Array, n: jax.Array) -> _QR:
    """Thin QR of A (K, N) whose columns from ``n`` on are zero: Q's columns from n on are zeroed
    (so the projector Q Qᵀ is that of the n real columns) and R gets an identity block there (so
    x̂'s padding entries solve to 0).  Householder QR works left to right, so the first n columns
    of Q and R are exactly those of the real A."""
    Q, R = jnp.linalg.qr(A)
    N = A.shape[1]
    real = jnp.arange(N) < n
    Q = jnp.where(real, Q, 0.0)
    R = jnp.where(real[:, None] & real, R, jnp.eye(N, dtype=R.dtype))
    return _QR(Q=Q, R=R)


# What one solver program runs (``_recover_jit``'s static ``stage``): "passes" find, polish and
# certify; "pivots" the simplex stage after a "passes" answer; "all" both in one program (traced
# callers: under jit there is no host in between); "wanted" whether "pivots" would pivot any column.
Stage = Literal["passes", "pivots", "all", "wanted"]


def _solve_items(
    A: jax.Array,
    Y: jax.Array,
    ncols: jax.Array,
    *,
    opts: RecoverOptions,
    tols: Traced,
    stage: Stage,
    prev: Recovery | None = None,
) -> Any:
    """A: (B, K, N), Y: (B, K, M), ncols: (B,) real columns of each A → the stage's answer with
    leading B (a Recovery; for "wanted" a (B, M) mask).  ``prev``: the "passes" answer, for
    "pivots" and "wanted".  Each matrix is factorized once; its columns are solved in chunks one
    after another (``lax.map``)."""
    B, K, M = Y.shape
    chunk = _chunk(K, M)
    nc = -(-M // chunk)

    def chunked(a: jax.Array) -> jax.Array:  # (B, [rows,] M) → (B·nc, [rows,] chunk)
        if nc * chunk != M:  # zero columns are solved exactly at once
            a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, nc * chunk - M)])
        a = jnp.moveaxis(a.reshape(a.shape[:-1] + (nc, chunk)), -2, 1)
        return a.reshape((B * nc,) + a.shape[2:])

    def unchunk(a: jax.Array) -> jax.Array:
        a = a.reshape((B, nc) + a.shape[1:])  # (B, nc, [rows,] chunk)
        a = jnp.moveaxis(a, 1, -2)  # (B, [rows,] nc, chunk)
        return a.reshape(a.shape[:-2] + (nc * chunk,))[..., :M]

    items = chunked(Y)
    owner = jnp.arange(B * nc) // nc
    before = jax.tree.map(chunked, prev) if prev is not None else None
    if stage == "wanted":
        return unchunk(
            lax.map(
                lambda i: _wanted_block(A[owner[i]], items[i], ncols[owner[i]], _at(before, i), tols=tols),
                jnp.arange(B * nc),
            )
        )
    # one QR at a time: a batched QR on the CPU runs its batch on a thread pool that deadlocked
    # when several solver shapes ran in one program (the device path, benchmarks.gpt2 --path device)
    qr = lax.map(lambda a_n: _factor(a_n[0], a_n[1]), (A, ncols))

    def solve(i: jax.Array) -> Recovery:
        o = owner[i]
        a, q, r, n, y = A[o], qr.Q[o], qr.R[o], ncols[o], items[i]
        if stage == "pivots":
            return _pivot_block(a, q, r, n, y, _at(before, i), opts=opts, tols=tols)
        out = _recover_block(a, q, r, n, y, opts=opts, tols=tols)
        if stage == "all" and opts.pivots:
            out = _pivot_block(a, q, r, n, y, out, opts=opts, tols=tols)
        return out

    return jax.tree.map(unchunk, lax.map(solve, jnp.arange(B * nc)))


def _at(tree: Any, i: jax.Array) -> Any:
    """Entry ``i`` of every leaf's leading axis."""
    return jax.tree.map(lambda a: a[i], tree)


@functools.partial(jax.jit, static_argnames=("opts", "vector", "stage"))
def _recover_jit(
    A: jax.Array,
    Y: jax.Array,
    ncols: jax.Array,
    tols: Traced,
    opts: RecoverOptions,
    vector: bool,
    stage: Stage = "all",
    prev: Recovery | None = None,
) -> Any:
    """``ncols``: per matrix of the batch (broadcast like A's batch), its real columns.  ``stage``
    and ``prev`` as in ``_solve_items``; "wanted" answers one bool for the whole batch."""
    if vector:
        Y = Y[..., None]
        prev = jax.tree.map(lambda a: a[..., None], prev)
    batch = jnp.broadcast_shapes(A.shape[:-2], Y.shape[:-2])
    K, n = A.shape[-2:]
    m = Y.shape[-1]
    run = functools.partial(_solve_items, opts=opts, tols=tols, stage=stage)
    if A.ndim == 2:
        # One A for the whole batch: fold the batch into columns so all share one factorization.
        def fold(a: jax.Array) -> jax.Array:  # batch + ([rows,] m) → ([rows,] batch·m), then a leading 1
            if a.ndim == len(batch) + 1:
                return a.reshape(1, -1)
            rows = a.shape[-2]
            return jnp.moveaxis(a.reshape((-1, rows, m)), 0, 1).reshape(1, rows, -1)

        def unfold(a: jax.Array) -> jax.Array:
            a = a[0]
            if a.ndim == 1:
                return a.reshape(batch + (m,))
            rows = a.shape[0]
            return jnp.moveaxis(a.reshape((rows, -1, m)), 1, 0).reshape(batch + (rows, m))

        out = run(A[None], fold(Y), jnp.reshape(ncols, (1,)), prev=jax.tree.map(fold, prev))
    else:
        Ab = jnp.broadcast_to(A, batch + (K, n)).reshape((-1, K, n))
        Yb = jnp.broadcast_to(Y, batch + (K, m)).reshape((-1, K, m))

        def flat(a: jax.Array) -> jax.Array:  # batch + ([rows,] m) → (B, [rows,] m)
            return a.reshape((-1,) + a.shape[len(batch) :])

        def unfold(a: jax.Array) -> jax.Array:
            return a.reshape(batch + a.shape[1:])

        out = run(Ab, Yb, jnp.broadcast_to(ncols, batch).reshape(-1), prev=jax.tree.map(flat, prev))
    if stage == "wanted":
        return jnp.any(out)
    out = jax.tree.map(unfold, out)
    if vector:
        out = jax.tree.map(lambda a: a[..., 0], out)
    return out


def _as_real(a: Any, name: str) -> jax.Array:
    if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) and a.is_deleted():
        raise ValueError(f"{name} has been deleted (its buffer was freed or donated); pass a live array")
    try:
        arr = jnp.asarray(a)
    except (TypeError, ValueError) as e:  # None, ragged lists, objects: name the argument
        raise TypeError(f"{name} must be a real floating array: {e}") from None
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        kind = "complex" if jnp.issubdtype(arr.dtype, jnp.complexfloating) else str(arr.dtype)
        raise TypeError(
            f"{name} must be a real floating array, got dtype {arr.dtype}: {kind} values have no l1 "
            f"recovery here (integers would be rounded on the way; cast {name} to float32 or float64 first)"
        )
    return arr


def _empty(A: jax.Array, Y: jax.Array, vector: bool, dtype: DTypeLike) -> Recovery:
    batch = np.broadcast_shapes(A.shape[:-2], Y.shape[: -1 if vector else -2])
    K, n = A.shape[-2:]
    tail = () if vector else (Y.shape[-1],)

    def z(rows: tuple[int, ...], dt: DTypeLike, fill: float = 0) -> jax.Array:
        return jnp.full(batch + rows + tail, fill, dt)

    return Recovery(
        x=z((n,), dtype),
        residual=z((K,), dtype),
        outliers=z((K,), bool),
        certified=z((), bool),
        result=z((), jnp.int8),
        bound=z((), dtype, np.inf),
        iterations=z((), jnp.int32),
        converged=z((), bool),
    )


def recover(
    A: ArrayLike, Y: ArrayLike, options: RecoverOptions | None = None, *, throw: bool = False, **overrides: Any
) -> Recovery:
    """Recover x̂ = argmin_x ‖y − A x‖₁ for every column y of ``Y``, with a certificate.

    Args:
      A: (..., K, n) real floating, n < K, finite.
      Y: (..., K) — one column per batch entry — when ``Y.ndim < A.ndim``, else (..., K, m).
        Leading batch dimensions broadcast against those of ``A``.  Non-finite entries are
        erasures.
      options: a :class:`RecoverOptions`; keyword ``overrides`` (its field names, e.g.
        ``atol=1e-3``) replace single fields.
      throw: raise ``RuntimeError`` if any column is not certified (also under ``jax.jit``).

    A column is certified (``result == RESULTS.successful``) iff A has full rank, the fit is exact
    on its inliers with a stable mask, a redundant row is left (K' − k̂ ≥ n + 1) and
    2·k̂ < K' − n + 1; then x̂ is the unique sparsest explanation of the column and equals the
    clean column whenever at most K' − n − k̂ entries were corrupted; ``bound`` bounds its
    relative error from the inlier tolerance (``jaxpurify._certify``).  The computation runs in
    ``result_type(A, Y)`` promoted to at least float32.

    Differentiable in ``A`` and ``Y`` (``jax.grad``, ``jax.vjp``, ``jax.jvp``): the derivative is
    that of the least-squares fit on the column's inlier rows with the outlier mask held fixed
    (one-sided at a mask boundary); see ``jaxpurify._grad``.
    """
    opts = resolve(options, overrides)
    A = _as_real(A, "A")
    Y = _as_real(Y, "Y")
    if A.ndim < 2:
        raise ValueError(f"A must have shape (..., K, n), got {A.shape}")
    K, n = A.shape[-2:]
    if not 1 <= n < K:
        raise ValueError(f"A must have 1 ≤ n < K columns (fewer columns than rows), got A.shape={A.shape}")
    vector = Y.ndim < A.ndim
    krow = (Y.shape[-1] if Y.ndim else None) if vector else (Y.shape[-2] if Y.ndim >= 2 else None)
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
    # NumPy on a concrete A: under jit a closed-over array is concrete, but jnp ops on it are staged
    if not isinstance(A, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(A))):
        raise ValueError("A has non-finite entries (NaN or ±Inf); the code matrix must be finite")
    dtype = jnp.promote_types(jnp.result_type(A, Y), jnp.float32)
    A, Y = A.astype(dtype), Y.astype(dtype)
    if A.size == 0 or Y.size == 0:
        return _empty(A, Y, vector, dtype)
    out = _run(A, Y, jnp.full(A.shape[:-2], n, jnp.int32), opts, vector)
    if throw:
        if isinstance(out.result, jax.core.Tracer):
            throw_if_uncertified(out.result)
        else:
            out.raise_if_uncertified()
    return out


def _run(A: jax.Array, Y: jax.Array, ncols: jax.Array, opts: RecoverOptions, vector: bool) -> Recovery:
    """The solve behind :func:`recover` and :func:`recover_padded`: A and Y already checked and cast."""
    # the traced options travel as scalars, so only the static ones key the compilation
    tols = Traced.of(opts, A.dtype)
    static = opts.compile_key()
    if isinstance(Y, jax.core.Tracer) or isinstance(A, jax.core.Tracer):
        # the solve is not differentiated; x and residual get the implicit derivative (_grad)
        out: Recovery = _recover_jit(lax.stop_gradient(A), lax.stop_gradient(Y), ncols, tols, static, vector)
        return differentiable(A, Y, out, vector)
    with single_threaded_blas():  # eager: run to completion with the BLAS held to one thread (_threads)
        if _exported.enabled():  # a later process reloads the lowered program (_exported)
            flat = _recover_flat(static, vector)
            arrays = _exported.call(flat, f"recover {static!r} {vector}", len(Recovery._fields), A, Y, ncols, *tols)
            out = Recovery(**dict(zip(Recovery._fields, arrays, strict=True)))
        else:
            out = _recover_jit(A, Y, ncols, tols, static, vector, "passes")
        # the simplex stage is its own program, compiled and run only where a column needs it
        # (under jit it is part of the one program: "all"); the answer is the same either way
        if static.pivots and _pivotable(out) and bool(_recover_jit(A, Y, ncols, tols, static, vector, "wanted", out)):
            out = _recover_jit(A, Y, ncols, tols, static, vector, "pivots", out)
        for a in out:  # jax.block_until_ready, typed
            a.block_until_ready()
        return out


def _pivotable(out: Recovery) -> bool:
    """Some column's result is one the simplex stage may still turn into a certificate (read on the
    host: where every column is certified, as within capacity, not even the test is compiled)."""
    return bool(np.isin(np.asarray(out.result), PIVOTABLE).any())


@functools.cache
def _recover_flat(opts: RecoverOptions, vector: bool) -> Callable[..., tuple[jax.Array, ...]]:
    """:func:`_recover_jit`'s "passes" for these static arguments, jitted once, with arrays only in and out
    (as ``jax.export`` serializes them): the traced options in ``Traced``' field order, the
    results in ``Recovery``'s."""

    def flat(A: jax.Array, Y: jax.Array, ncols: jax.Array, *tols: jax.Array) -> tuple[jax.Array, ...]:
        out = _recover_jit(A, Y, ncols, Traced(**dict(zip(Traced._fields, tols, strict=True))), opts, vector, "passes")
        return tuple(out)

    return jax.jit(flat)


def recover_padded(A: jax.Array, Y: jax.Array, ncols: ArrayLike, options: RecoverOptions) -> Recovery:
    """:func:`recover` for a batch of matrices padded to one shape, so that differently sized codes
    share one compiled solver (``purify``'s shape buckets).

    A: (B, K, N) floating, finite; its columns from ``ncols[b]`` on are zero, and so are the
    returned x̂'s rows from there.  Y: (B, K, m); rows a code does not have are erasures (NaN).  The
    certificate of batch entry b is that of its real (K'_b, ncols[b]) problem: 2k̂ < K' − n_b + 1.
    Inputs are not checked (the caller built them); ``options`` as in :func:`recover`.
    """
    dtype = jnp.promote_types(jnp.result_type(A, Y), jnp.float32)
    return _run(A.astype(dtype), Y.astype(dtype), jnp.asarray(ncols, jnp.int32), options, vector=False)


__all__ = ["RESULTS", "Recovery", "RecoverOptions", "recover"]
