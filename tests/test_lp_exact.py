"""Never worse than the exact LP (issue 25, item 3): on fixed, seeded columns that HiGHS (float64, on
the same stored float32 values) recovers exactly, ``recover`` in float32 with the simplex stage
(``pivots=1``) returns the clean latent, certified.  Damage per column: 1 to ⌊(K − n)/2⌋ entries
(the uniqueness bound) of one kind: a flipped mantissa bit, a flipped bit anywhere, gross errors
of 0.01–1000× the weights, zeroed or negated entries (``benchmarks.lp_check.small_set``, the
benchmark's generator); weights at 10^±3.  The benchmark (``python -m benchmarks.lp_check``)
runs the same on larger sets."""

import numpy as np
import pytest

import jaxpurify as jp
from benchmarks.lp_check import EXACT, KINDS, LP_EXACT, lad_lp, rel, small_set

# LP-exact columns that ``recover`` certifies but not to 1e-5 (slow test; measured with
# ``python -m benchmarks.lp_check --sets small --small 250 --shapes 64x16,32x16,128x32 --seed 1``:
# 2 of 198 at 32/16, none at 64/16 and 128/32; 4 of 768 on the slow test's set at 32/16).  They are
# certified by the passes, within their bound (a small change of ~τ/(1 − h) read as an inlier at
# K/n = 2), and a certified column is never revisited; every LP-exact column is certified.
MAX_INEXACT_FRACTION = 0.01
# the simplex stage is opt-in (RecoverOptions.pivots, default 0: with little slack it certified a
# column beyond its bound, tests/test_campaign_properties.py); these tests check what it gives
PIVOTS = 1


def _misses(K, n, columns, seed):
    """(LP-exact columns, of them not certified, certified but not exact, per kind {kind: (lp, miss)},
    certified wrong)."""
    A, Y, X, kinds = small_set(np.random.default_rng(seed), columns, K, n)
    x_lp = np.stack([lad_lp(A, Y[:, j]) for j in range(columns)], axis=1)
    lp = rel(x_lp, X) <= LP_EXACT
    out = jp.recover(A, Y, pivots=PIVOTS)
    err, cert = rel(out.x, X), np.asarray(out.certified)
    miss = lp & ~(cert & (err <= EXACT))
    per = {k: (int((lp & (kinds == k)).sum()), int((miss & (kinds == k)).sum())) for k in KINDS}
    wrong = int((cert & (err > np.maximum(EXACT, np.asarray(out.bound)))).sum())
    return int(lp.sum()), int((lp & ~cert).sum()), int((lp & cert & (err > EXACT)).sum()), per, wrong


def test_every_lp_exact_column_comes_back_exact_and_certified():
    """256 columns at K = 64, n = 16 (≤ 24 changes each): HiGHS recovers 239; recover misses
    none of those (before the greedy polish of the later passes: 66 of 239, most of them
    mantissa and single-bit flips and errors of 1% of the weights, as inexact_fit)."""
    lp, uncertified, inexact, per, wrong = _misses(64, 16, 256, seed=25)
    assert lp >= 230, per
    assert uncertified == 0 and inexact == 0, per
    assert wrong == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "K, n, min_lp",
    # HiGHS recovers 938, 768 and 944 of the 1000 columns (K/n = 2 is near the l1 boundary); before
    # the simplex pivots (``jaxpurify._pivot``) recover left 10, 27 and 58 of those uncertified
    [(64, 16, 900), (32, 16, 750), (128, 32, 900)],
)
def test_lp_exact_columns_at_more_shapes(K, n, min_lp):
    """1000 columns per shape (K/n = 4, 2, 4): every LP-exact column certified, at most
    ``MAX_INEXACT_FRACTION`` of them above 1e-5 (within their bound)."""
    lp, uncertified, inexact, per, wrong = _misses(K, n, 1000, seed=K + n)
    assert lp >= min_lp, per
    assert uncertified == 0, per
    assert inexact <= MAX_INEXACT_FRACTION * lp, per
    assert wrong == 0


def _single_outlier(c, seed=3, K=64, n=16, m=256):
    """Columns with one entry changed by c·τ/(1 − h_ii): τ the certificate's tolerance of the column
    (64·eps·max|y|), h_ii that row's leverage in A (its residual after a fit that keeps it is
    (1 − h_ii)·δ).  Returns (flagged, certified, error vs the float64 latent, bound)."""
    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((K, n)) / np.sqrt(n)).astype(np.float32)
    X = rng.standard_normal((n, m)) * 10.0 ** rng.uniform(-3, 3, m)
    Y = (A.astype(np.float64) @ X).astype(np.float32)
    A64 = A.astype(np.float64)
    h = np.einsum("ij,ji->i", A64, np.linalg.pinv(A64))
    rows, cols = rng.integers(0, K, m), np.arange(m)
    tau = 64 * np.finfo(np.float32).eps * np.abs(Y).max(0)
    Y[rows, cols] = (Y[rows, cols] + c * tau / (1 - h[rows]) * rng.choice([-1, 1], m)).astype(np.float32)
    out = jp.recover(A, Y)
    return np.asarray(out.outliers)[rows, cols], np.asarray(out.certified), rel(out.x, X), np.asarray(out.bound)


def test_detection_threshold_of_a_small_outlier():
    """The float32 certificate sees an outlier δ at row i once (1 − h_ii)·|δ| exceeds its tolerance
    τ = rtol·max|y_inlier| + atol (rtol = 64·eps: 7.6e-6 × the column's largest entry): at 1.5× that
    every one is flagged and the column exact; at half of it the change is inside the tolerance,
    not flagged, and the column certified within its bound (RecoverOptions' docstring)."""
    flagged, cert, err, bound = _single_outlier(1.5)
    assert flagged.all() and cert.all() and (err <= EXACT).all()
    flagged, cert, err, bound = _single_outlier(0.5)
    assert flagged.mean() < 0.1 and cert.all() and (err <= bound).all()


# Measured on this set (``_uncertified_lp_exact(2500, seed=2500)``): HiGHS recovers 2312 of the
# 2500 columns exactly; recover certifies all of them and none beyond its own bound (before the
# simplex pivots of ``jaxpurify._pivot`` it left 22-23 uncertified: 18-19 flipped bits, 3 gross
# errors, 1 flipped mantissa bit, as inexact_fit).
UNCERTIFIED_2500 = 0


def _uncertified_lp_exact(columns, seed, K=64, n=16):
    """On ``small_set``'s columns: (LP-exact, of them uncertified by recover, certified with an error
    above their own bound, per kind {kind: (LP-exact, uncertified)})."""
    A, Y, X, kinds = small_set(np.random.default_rng(seed), columns, K, n)
    lp = rel(np.stack([lad_lp(A, Y[:, j]) for j in range(columns)], axis=1), X) <= LP_EXACT
    out = jp.recover(A, Y, pivots=PIVOTS)
    cert, bound = np.asarray(out.certified), np.asarray(out.bound, np.float64)
    left = lp & ~cert
    wrong = cert & (rel(out.x, X) > bound)
    per = {k: (int((lp & (kinds == k)).sum()), int((left & (kinds == k)).sum())) for k in KINDS}
    return int(lp.sum()), int(left.sum()), int(wrong.sum()), per


@pytest.mark.slow
def test_2500_lp_checked_columns_none_certified_wrong():
    """2500 columns at K = 64, n = 16 against HiGHS (float64 on the same stored values), 500 of each
    kind (flipped mantissa bit, flipped bit anywhere, gross errors 0.01–1000×, zeroed, negated):
    no certified column is outside its own bound of the clean latent, and every LP-exact column
    is certified."""
    lp, left, wrong, per = _uncertified_lp_exact(2500, seed=2500)
    assert wrong == 0, per
    assert lp >= 2300, per  # not vacuous: 2312 measured
    assert left <= UNCERTIFIED_2500, per


def _block(A, Y):
    """The solver's Block of (A, Y) in the columns' own units, and their exponents."""
    import jax.numpy as jnp

    from jaxpurify._polish import Block
    from jaxpurify._solver import _factor
    from jaxpurify._units import column_exponent, scale

    finite = jnp.isfinite(Y)
    e = column_exponent(jnp.asarray(Y), finite)
    y = jnp.where(finite, scale(jnp.where(finite, Y, 0.0), e), 0.0)
    qr = _factor(jnp.asarray(A), A.shape[1])
    rtol = jnp.float32(64 * np.finfo(np.float32).eps)
    atol = jnp.zeros(Y.shape[1], jnp.float32)
    return Block(A=jnp.asarray(A), Q=qr.Q, R=qr.R, n=jnp.int32(A.shape[1]), y=y, finite=finite, rtol=rtol, atol=atol), e


def test_simplex_pivots_reach_the_lp_optimum_from_least_squares():
    """``_pivot.lp_fit`` from the least-squares fit (far from the l1 optimum): every column ends at
    HiGHS's l1 objective (up to the zero level ε of each row), and every column HiGHS recovers is
    certifiable and exact."""
    import jax
    import jax.numpy as jnp

    from jaxpurify._pivot import certifiable, lp_fit
    from jaxpurify._units import unscale

    K, n, m = 32, 8, 24
    A, Y, X, kinds = small_set(np.random.default_rng(7), m, K, n)
    b, e = _block(A, Y)
    x0 = jnp.linalg.lstsq(b.A, b.y)[0]
    res = jax.jit(lambda b, x0: lp_fit(b, x0, jnp.ones(m, bool), max_pivots=4 * n, max_cg=100))(b, x0)
    x_lp = np.stack([lad_lp(A, Y[:, j]) for j in range(m)], axis=1)
    f_lp = np.abs(Y.astype(np.float64) - A.astype(np.float64) @ x_lp).sum(0)
    f = np.abs(Y.astype(np.float64) - A.astype(np.float64) @ np.asarray(unscale(res.x, e), np.float64)).sum(0)
    # optimal up to the zero level: rows within ε = τ/8 of their fit count as fitted (_pivot)
    eps = 64 * np.finfo(np.float32).eps / 8 * np.abs(A.astype(np.float64) @ X).max(0)
    assert (f <= f_lp * (1 + 1e-5) + K * eps).all(), (f - f_lp) / eps
    lp = rel(x_lp, X) <= LP_EXACT
    assert lp.sum() >= m // 2
    ok = np.asarray(certifiable(res.fit, b))
    assert ok[lp].all() and (rel(unscale(res.fit.x, e), X)[lp] <= EXACT).all()


@pytest.mark.slow
def test_simplex_pivots_never_change_a_certified_column():
    """``recover`` with and without the simplex stage (``pivots=0``) at K/n = 2 and 4: every column
    certified without it comes back bit for bit the same; with it, more are certified."""
    import jax

    for K, n in ((32, 16), (64, 16)):
        A, Y, X, _ = small_set(np.random.default_rng(K), 600, K, n)
        before, after = (jax.tree.map(np.asarray, jp.recover(A, Y, pivots=p)) for p in (0, 1))
        kept = before.certified
        for name, a, b in zip(before._fields, before, after):
            same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
            assert same.reshape(-1, Y.shape[1])[:, kept].all(), name
        assert after.certified.sum() > before.certified.sum()


@pytest.mark.slow
def test_simplex_pivots_leave_dense_noise_alone():
    """Columns of dense noise (no LP recovers them) are not pivoted: ``recover`` returns them bit
    for bit as without the simplex stage (all but 1 of 200 measured: the filter is a count of rows
    near the estimate, and noise can pass it by chance), while columns with gross errors in the same
    block still gain from it.  (Pivoting every one to the cap took 22–52× the passes' time.)"""
    import jax

    K, n = 64, 16
    A, Y, X, _ = small_set(np.random.default_rng(7), 400, K, n)
    noise = np.random.default_rng(8).standard_normal((K, 200)).astype(np.float32)
    Y = np.concatenate([Y, noise], axis=1)
    before, after = (jax.tree.map(np.asarray, jp.recover(A, Y, pivots=p)) for p in (0, 1))
    dense = np.arange(Y.shape[1]) >= 400
    assert not before.certified[dense].any() and not after.certified[dense].any()
    changed = np.zeros(Y.shape[1], bool)
    for a, b in zip(before, after):
        same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
        changed |= ~same.reshape(-1, Y.shape[1]).all(axis=0)
    assert changed[dense].sum() <= 4  # pivoted noise columns: 1 of 200 measured (every one before)
    assert after.certified[~dense].sum() > before.certified[~dense].sum()


def test_simplex_stage_is_its_own_program_only_where_needed(monkeypatch):
    """Called eagerly, ``recover(pivots=1)`` compiles and runs the simplex stage only when a column needs it:
    not on columns the passes certify, and on columns HiGHS recovers exactly that the passes leave
    (K/n = 2), which it certifies: every LP-exact column comes back certified.  (The same answer
    under ``jax.jit``, where the stage is part of the one program: the slow test below and
    tests/test_shard.py's device path against the host path.)"""
    from jaxpurify import _solver

    traced = []
    real = _solver._pivot_block

    def counting(*args, **kwargs):
        traced.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_solver, "_pivot_block", counting)
    K, n, m = 36, 18, 160  # a shape no other test compiles, so each program is traced here
    A, Y, X, _ = small_set(np.random.default_rng(36), m, K, n)
    clean = jp.recover(A, (A @ X).astype(np.float32), pivots=PIVOTS)
    assert np.asarray(clean.certified).all() and not traced  # nothing to pivot: never compiled
    out = jp.recover(A, Y, pivots=PIVOTS)
    assert traced  # compiled for this Y
    cert, err, bound = np.asarray(out.certified), rel(out.x, X), np.asarray(out.bound)
    lp = rel(np.stack([lad_lp(A, Y[:, j]) for j in range(m)], axis=1), X) <= LP_EXACT
    assert lp.sum() >= m // 2 and cert[lp].all()
    # within 1e-5, or (2 of 116 measured, K/n = 2: a change of ~τ read as an inlier) within the bound
    assert (err <= np.maximum(EXACT, bound))[lp].all()


@pytest.mark.slow
def test_simplex_stage_gains_columns_and_is_the_same_under_jit():
    """At K/n = 2 the stage certifies columns the passes leave, exact to the clean latent (3
    measured; HiGHS's own l1 optimum misses 2 of them), changes no other column, and its answer is
    the one program's under ``jax.jit`` bit for bit."""
    import jax

    K, n, m = 36, 18, 160
    A, Y, X, _ = small_set(np.random.default_rng(36), m, K, n)
    eager = jax.tree.map(np.asarray, jp.recover(A, Y, pivots=PIVOTS))
    without = jax.tree.map(np.asarray, jp.recover(A, Y, pivots=0))
    gained = eager.certified & ~without.certified
    assert gained.sum() >= 1 and (rel(eager.x, X)[gained] <= EXACT).all()  # 3 measured, exact
    for name, a, b in zip(eager._fields, eager, without):
        same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
        assert same.reshape(-1, m)[:, ~gained].all(), name
    jitted = jax.tree.map(np.asarray, jax.jit(lambda a, y: jp.recover(a, y, pivots=PIVOTS))(A, Y))
    for name, a, b in zip(eager._fields, eager, jitted):
        assert a.tobytes() == b.tobytes(), name
