"""The certificate clause by clause: every way to fail it, its result code, its error bound, and
its invariance to the units of a column.  References: the known clean X, HiGHS, SVD in float64."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pooled import SECRET
from reference import instance, lad_highs, rel_err

import jaxpurify as jp
from jaxpurify import RESULTS
from jaxpurify._codebook import Codebook
from jaxpurify._layout import Group, LeafLayout, Segment


def _codes(out):
    return np.asarray(out.result)


def test_rank_deficient_matrix_certifies_nothing():
    rng = np.random.default_rng(0)
    A, X, Y, _ = instance(rng, 32, 8, 6, 2)
    A[:, 1] = A[:, 0]  # two equal columns: rank 7 < n
    out = jp.recover(A.astype(np.float32), Y.astype(np.float32))
    assert (_codes(out) == RESULTS.rank_deficient).all()
    assert not np.asarray(out.certified).any()


def test_count_bound_blocks_certificate_even_when_exact():
    """45% huge errors at K/n = 8: the solver finds them (x exact) but 2k̂ ≥ K − n + 1."""
    rng = np.random.default_rng(1)
    A, X, Y, E = instance(rng, 64, 8, 20, 29, low=1e3, high=1e6)
    out = jp.recover(A.astype(np.float32), Y.astype(np.float32))
    assert 2 * 29 >= 64 - 8 + 1
    assert (_codes(out) == RESULTS.count_bound).all()
    assert rel_err(out.x, X).max() < 1e-4  # right, and still not certified
    assert np.isinf(np.asarray(out.bound)).all()


def test_a_mask_past_the_count_bound_reports_too_many_outliers():
    """K/n = 2 with 20 errors of 64 rows (2·20 ≥ 64 − 32 + 1): the polish stops refitting a mask
    past the bound, and the column says so (before, it said iteration_cap or inexact_fit in every
    column).  Checked with ``retry_iters=30``, where every column reaches a mask past the bound;
    with the default short retries a few columns end on a last pass whose fit never became exact
    (2 ``inexact_fit`` and 1 ``unstable_mask`` of 40 here: the README says so), and none is
    certified either way."""
    rng = np.random.default_rng(10)
    A, X, Y, _ = instance(rng, 64, 32, 40, 20)
    assert 2 * 20 >= 64 - 32 + 1
    A32, Y32 = A.astype(np.float32), Y.astype(np.float32)
    out = jp.recover(A32, Y32, retry_iters=30)
    # no_slack: the reported mask leaves no redundant row at all, the same failure one step further
    assert np.isin(_codes(out), [RESULTS.count_bound, RESULTS.no_slack]).all()
    assert not np.asarray(out.certified).any()
    out = jp.recover(A32, Y32)
    assert not np.asarray(out.certified).any()
    assert not np.isin(_codes(out), [RESULTS.successful, RESULTS.iteration_cap, RESULTS.rank_deficient]).any()
    # one error fewer per column and the same solver certifies most columns, each exact
    A, X, Y, _ = instance(rng, 64, 32, 40, 12)
    out = jp.recover(A.astype(np.float32), Y.astype(np.float32))
    cert = np.asarray(out.certified)
    assert cert.sum() >= 30
    assert rel_err(out.x, X)[cert].max() < 1e-5


@pytest.mark.parametrize("erased,errors", [(24, 0), (22, 2)])
def test_no_slack_never_certifies(erased, errors):
    """K' − k̂ = n: every column fits exactly, so the fit checks nothing (issue: 'vacuous certificate')."""
    rng = np.random.default_rng(2)
    A, X, Y, _ = instance(rng, 32, 8, 6, 0)
    Y = Y.astype(np.float32)
    Y[:erased] = np.nan
    Y[erased : erased + errors] += 1e3
    out = jp.recover(A.astype(np.float32), Y)
    assert (_codes(out) == RESULTS.no_slack).all()
    # one more usable row and no error: certified, within its (here wide: 9 rows for 8 unknowns) bound
    Y2 = Y.copy()
    Y2[erased - 1] = (A @ X)[erased - 1]
    Y2[erased : erased + errors] -= 1e3
    out2 = jp.recover(A.astype(np.float32), Y2)
    assert np.asarray(out2.certified).all()
    assert (rel_err(out2.x, X) <= np.asarray(out2.bound)).all()


def test_one_error_with_n_plus_one_inliers_left_is_certified_within_its_bound():
    """K' = 10 usable rows, n = 8, one error: the |I| = n + 1 edge (one redundant row checks the
    fit), certified and within its bound of the known x."""
    rng = np.random.default_rng(2)
    A, X, Y, _ = instance(rng, 32, 8, 6, 0)
    Y = Y.astype(np.float32)
    Y[:22] = np.nan
    Y[22] += 1e3
    out = jp.recover(A.astype(np.float32), Y)
    assert np.asarray(out.certified).all()
    assert (rel_err(out.x, X) <= np.asarray(out.bound)).all()


def test_dense_noise_is_an_inexact_fit():
    rng = np.random.default_rng(3)
    A, X, Y, _ = instance(rng, 64, 16, 10, 0)
    Yn = (Y + 1e-2 * rng.standard_normal(Y.shape)).astype(np.float32)
    out = jp.recover(A.astype(np.float32), Yn)
    assert (_codes(out) == RESULTS.inexact_fit).all()


def test_polish_round_cap_gives_unstable_mask():
    rng = np.random.default_rng(4)
    A, X, Y, _ = instance(rng, 64, 16, 40, 10)
    # without the simplex stage, which certifies these columns from the polish's estimate
    out = jp.recover(A.astype(np.float32), Y.astype(np.float32), polish_rounds=1, passes=1, pivots=0)
    c = _codes(out)
    assert (c == RESULTS.unstable_mask).sum() >= 1
    assert not np.asarray(out.certified)[c != RESULTS.successful].any()
    assert rel_err(out.x, X)[c == RESULTS.successful].max() < 1e-5


def test_refit_step_cap_is_an_iteration_cap():
    rng = np.random.default_rng(5)
    A, X, Y, _ = instance(rng, 128, 32, 40, 20)
    # without the simplex stage: from an exact vertex its refit converges at once, certified
    out = jp.recover(A.astype(np.float32), Y.astype(np.float32), max_cg=1, passes=1, pivots=0)
    c = _codes(out)
    assert (c == RESULTS.iteration_cap).sum() >= 30
    assert np.asarray(out.certified).sum() == (c == RESULTS.successful).sum()


def _named_codes() -> dict[str, int]:
    """Every result code by name, read from RESULTS itself (its int attributes, or its members if
    it is an enum), not from a list kept here."""
    members = getattr(RESULTS, "__members__", None) or {
        k: v for k, v in vars(RESULTS).items() if not k.startswith("_") and type(v) is int
    }
    return {name: int(code) for name, code in members.items()}


def test_messages_name_every_code():
    codes = _named_codes()
    assert codes["successful"] == 0 and len(codes) >= 8
    # codes are dense from 0 (stored as int8) and each has its own message, distinct from the others
    assert sorted(codes.values()) == list(range(len(codes)))
    unknown = RESULTS.message(len(codes))  # the first integer that names no code
    messages = [RESULTS.message(c) for c in codes.values()]
    assert unknown.startswith("unknown result code") and unknown not in messages
    assert len(set(messages)) == len(codes)
    rng = np.random.default_rng(6)
    A, X, Y, _ = instance(rng, 32, 8, 3, 0)
    Y = Y.astype(np.float32)
    Y[:24] = np.nan
    out = jp.recover(A.astype(np.float32), Y)
    assert out.messages() == {RESULTS.message(RESULTS.no_slack): 3}
    with pytest.raises(RuntimeError, match="redundant row"):
        out.raise_if_uncertified()


def test_error_bound_holds_against_float64_truth():
    """bound ≥ the true relative error of every certified column, and finite; checked against the
    float64 clean X, at K/n = 1.5 where A is worst conditioned on its inliers."""
    rng = np.random.default_rng(7)
    for K, n, k in [(16, 10, 2), (64, 16, 10), (96, 64, 10)]:
        A, X, Y, _ = instance(rng, K, n, 40, k)
        out = jp.recover(A.astype(np.float32), Y.astype(np.float32))
        cert = np.asarray(out.certified)
        assert cert.sum() >= 20
        err = rel_err(out.x, X)
        bound = np.asarray(out.bound)
        # a certificate always carries a finite bound (issue 25: inf where ‖Q_O‖²'s estimate reached 1)
        assert np.isfinite(bound[cert]).all() and np.isinf(bound[~cert]).all()
        assert (err[cert] <= bound[cert]).all(), (K, n, (err / bound)[cert].max())
        assert np.median(bound[cert]) < 1e-3  # and not vacuous


def test_error_bound_holds_where_slack_is_least():
    """At k̂ = ⌊(K−n)/2⌋ outliers (A worst conditioned on its inliers) every certified column's
    true error (against the float64 clean X) is within its bound.  Note: the bound is an estimate;
    against 2τ√|I| / (σ_min(A_I)·‖x̂‖) with σ_min(A_I) from an SVD it was measured as low as 0.80×
    of that expression here (jaxpurify/_certify.py says so)."""
    rng = np.random.default_rng(15)
    for K, n in [(20, 9), (32, 15), (48, 23), (64, 30)]:
        A = rng.standard_normal((K, n))
        X = rng.standard_normal((n, 48))
        Y = A @ X
        for j in range(48):
            idx = rng.choice(K, (K - n) // 2, replace=False)
            Y[idx, j] += 10 + rng.standard_normal(idx.size)
        out = jp.recover(A.astype(np.float32), Y.astype(np.float32))
        cert = np.asarray(out.certified)
        assert cert.sum() >= 5, (K, n)
        err = rel_err(out.x, X)
        assert (err[cert] <= np.asarray(out.bound)[cert]).all(), (K, n)


def test_power_of_two_scaling_gives_the_same_bits():
    """A column scaled by 2^e is solved in its own units: x scales by 2^e exactly, the certificate
    and the other columns do not change (issue 10: 'the answer should not depend on the units')."""
    rng = np.random.default_rng(8)
    A, X, Y, _ = instance(rng, 64, 16, 8, 6)
    A, Y = A.astype(np.float32), Y.astype(np.float32)
    base = jp.recover(A, Y)
    assert np.asarray(base.certified).all()
    for e in (-100, -62, -30, 30, 62, 100):
        Ys = Y.copy()
        Ys[:, 3] = np.ldexp(Y[:, 3], e)
        out = jp.recover(A, Ys)
        np.testing.assert_array_equal(np.asarray(out.x)[:, 3], np.ldexp(np.asarray(base.x)[:, 3], e))
        others = [j for j in range(8) if j != 3]
        np.testing.assert_array_equal(np.asarray(out.x)[:, others], np.asarray(base.x)[:, others])
        np.testing.assert_array_equal(np.asarray(out.certified), np.asarray(base.certified))
        np.testing.assert_array_equal(np.asarray(out.outliers), np.asarray(base.outliers))


def test_tiny_and_huge_clean_columns_are_certified_not_zeroed():
    """Clean float32 columns from 2^-100 to 2^110 are certified and exact (issue 10: a column near
    1e-38 was certified as x = 0).  Below 2^-126 the stored column itself is rounded to subnormals,
    so it may go uncertified, but what is certified stays within its bound."""
    rng = np.random.default_rng(9)
    A, X, Y, _ = instance(rng, 64, 16, 4, 5)
    for scale in (2.0**-100, 2.0**-70, 2.0**70, 2.0**110):
        out = jp.recover(A.astype(np.float32), (Y * scale).astype(np.float32))
        assert np.asarray(out.certified).all(), scale
        assert rel_err(np.asarray(out.x, np.float64) / scale, X).max() < 1e-5
    for scale in (2.0**-125, 2.0**-135):
        out = jp.recover(A.astype(np.float32), (Y * scale).astype(np.float32))
        cert = np.asarray(out.certified)
        err = rel_err(np.asarray(out.x, np.float64) / scale, X)
        assert (err[cert] <= np.asarray(out.bound)[cert]).all(), scale


def test_certified_columns_agree_with_highs_at_k_over_n_2():
    """Past the l1 boundary (K/n = 2, 20% errors) the trimmed passes certify columns the LP misses;
    every certified column is the clean one, and where the LP succeeds we certify too."""
    rng = np.random.default_rng(10)
    K, n, m, k = 64, 32, 24, 13
    A, X, Y, _ = instance(rng, K, n, m, k)
    out = jp.recover(A.astype(np.float32), Y.astype(np.float32))
    cert = np.asarray(out.certified)
    assert (rel_err(out.x, X)[cert] <= 1e-5).all()
    lp = np.stack([lad_highs(A, Y[:, j]) for j in range(m)], axis=1)
    lp_ok = rel_err(lp, X) <= 1e-6
    assert cert[lp_ok].all()
    assert cert.sum() > lp_ok.sum()


class JitVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_same_answer_with_and_without_jit(self):
        rng = np.random.default_rng(11)
        A, X, Y, _ = instance(rng, 48, 12, 10, 5)
        A, Y = jnp.asarray(A, jnp.float32), jnp.asarray(Y, jnp.float32)
        out = self.variant(lambda a, y: jp.recover(a, y))(A, Y)
        assert np.asarray(out.certified).all()
        assert rel_err(out.x, X).max() < 1e-5


def test_throw_works_under_jit():
    rng = np.random.default_rng(12)
    A, X, Y, _ = instance(rng, 32, 8, 4, 0)
    Yn = (Y + 1e-2 * rng.standard_normal(Y.shape)).astype(np.float32)
    f = jax.jit(lambda a, y: jp.recover(a, y, throw=True).x)
    with pytest.raises(Exception, match="not certified"):
        jax.block_until_ready(f(A.astype(np.float32), Yn))
    ok = jax.block_until_ready(f(A.astype(np.float32), Y.astype(np.float32)))  # clean: no raise
    assert rel_err(ok, X).max() < 1e-5


@pytest.mark.parametrize(
    "A,Y,exc,match",
    [
        (np.ones((8, 2), np.int32), np.ones(8, np.float32), TypeError, "A must be a real floating"),
        (np.ones((8, 2), np.float32), np.ones(8, np.int32), TypeError, "Y must be a real floating"),
        (np.ones((8, 2), np.complex64), np.ones(8, np.float32), TypeError, "complex"),
        (np.full((8, 2), np.nan, np.float32), np.ones(8, np.float32), ValueError, "non-finite"),
        (np.ones((8, 0), np.float32), np.ones(8, np.float32), ValueError, "1 ≤ n < K"),
    ],
)
def test_refused_inputs(A, Y, exc, match):
    with pytest.raises(exc, match=match):
        jp.recover(A, Y)


def test_empty_batches_and_columns():
    A = np.random.default_rng(13).standard_normal((16, 4)).astype(np.float32)
    out = jp.recover(A, np.zeros((16, 0), np.float32))
    assert out.x.shape == (4, 0) and out.certified.shape == (0,)
    out = jp.recover(np.zeros((0, 16, 4), np.float32), np.zeros((0, 16, 3), np.float32))
    assert out.x.shape == (0, 4, 3)


@pytest.mark.parametrize(
    "name,value",
    [
        ("finder_iters", 0),
        ("relax", 2.0),
        ("rtol", -1.0),
        ("atol", float("inf")),
        ("admm_tol", 0.0),
        ("trim", 1),
        ("passes", 1.5),
        ("retry_iters", 0),
        ("retry_iters", True),
    ],
)
def test_options_are_validated(name, value):
    with pytest.raises(ValueError, match=name):
        jp.RecoverOptions(**{name: value})
    with pytest.raises(TypeError, match="tol"):
        jp.recover(np.ones((8, 2), np.float32), np.ones(8, np.float32), tol=1e-3)


def test_later_passes_run_retry_iters_of_admm():
    """The first pass runs ``finder_iters`` ADMM iterations, each later one at most ``retry_iters``:
    ``Recovery.iterations`` (summed over a column's passes) is bounded by 30 + 10 with two passes,
    and a column that needed the second pass exceeds that bound once ``retry_iters=30``."""
    rng = np.random.default_rng(14)
    A, X, Y, _ = instance(rng, 64, 32, 24, 13)  # K/n = 2 at 20%: most need the later passes
    A, Y = A.astype(np.float32), Y.astype(np.float32)
    short = jp.recover(A, Y, passes=2)
    long = jp.recover(A, Y, passes=2, retry_iters=30)
    assert np.asarray(short.iterations).max() <= 30 + 10
    assert np.asarray(long.iterations).max() > 30 + 10


def test_a_column_beside_zero_columns_is_solved_as_alone():
    """Batch independence: a hard column (certified only after the first pass) beside 31 zero
    columns gets the certificate and, to rounding, the x it gets alone (a plain loop is the
    reference).  Regression: the narrow later passes once let padding slots overwrite it."""
    rng = np.random.default_rng(14)
    A, X, Y, _ = instance(rng, 64, 32, 24, 13)  # K/n = 2 at 20%: most need the later passes
    A, Y = A.astype(np.float32), Y.astype(np.float32)
    for j in range(24):
        alone = jp.recover(A, Y[:, j])
        Z = np.zeros((64, 32), np.float32)
        Z[:, 0] = Y[:, j]
        padded = jp.recover(A, Z)
        assert int(padded.result[0]) == int(alone.result), j
        np.testing.assert_allclose(padded.x[:, 0], alone.x, rtol=1e-4, atol=1e-4 * float(np.abs(alone.x).max()))
        assert np.asarray(padded.certified)[1:].all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K, n", [(16, 8), (32, 22), (256, 171)])
def test_entries_stuck_near_the_largest_float_are_not_certified(K, n, dtype):
    """Issue 25: small weights (|w| ≤ 1e-2) with K − n entries stuck near FLT_MAX / DBL_MAX were
    certified with x̂ = 0 and bound = inf (the column's units overflowed).  Past the count bound,
    so not certified, and the code says why (no redundant row / too many outliers)."""
    rng = np.random.default_rng(K)
    m = 8
    A = (rng.standard_normal((K, n)) / np.sqrt(n)).astype(dtype)
    X = rng.standard_normal((n, m)) * 1e-3
    Y = (A.astype(np.float64) @ X).astype(dtype)
    big = np.finfo(dtype).max
    for j in range(m):
        rows = rng.choice(K, K - n, replace=False)
        Y[rows, j] = (big * rng.uniform(0.5, 1.0, rows.size) * rng.choice([-1, 1], rows.size)).astype(dtype)
    assert np.abs(Y[np.abs(Y) < 1]).max() <= 1e-2
    with jax.enable_x64(dtype == np.float64):
        out = jp.recover(A, Y)
    assert not np.asarray(out.certified).any()
    assert np.isin(_codes(out), [RESULTS.no_slack, RESULTS.count_bound]).all()
    assert np.isinf(np.asarray(out.bound)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_few_entries_stuck_near_the_largest_float_are_outliers(dtype):
    """Within the count bound the same stuck entries are outliers: certified, exact, finite bound."""
    rng = np.random.default_rng(3)
    K, n, m = 64, 16, 8
    A = (rng.standard_normal((K, n)) / np.sqrt(n)).astype(dtype)
    X = rng.standard_normal((n, m)) * 1e-3
    Y = (A.astype(np.float64) @ X).astype(dtype)
    big = np.finfo(dtype).max
    for j in range(m):
        rows = rng.choice(K, 20, replace=False)  # 2·20 < K − n + 1
        Y[rows, j] = (big * rng.uniform(0.5, 1.0, rows.size)).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        out = jp.recover(A, Y)
    assert np.asarray(out.certified).all()
    bound = np.asarray(out.bound)
    assert np.isfinite(bound).all()
    assert (rel_err(out.x, X) <= np.maximum(bound, 1e-12)).all()


def _damaged(rng, A, X, kind, dtype):
    """Columns A X in ``dtype`` with one kind of damage per column, within the count bound or past it."""
    K, n = A.shape
    Y = (A.astype(np.float64) @ X).astype(dtype)
    clean = Y.copy()
    ui = np.uint32 if np.dtype(dtype).itemsize == 4 else np.uint64
    bits = 8 * np.dtype(dtype).itemsize
    for j in range(Y.shape[1]):
        k = int(rng.integers(1, (K - n) // 2 + 3))
        rows = rng.choice(K, k, replace=False)
        if kind[j] == "block":
            rows = (int(rng.integers(K)) + np.arange(k)) % K
        if kind[j] in ("gross", "block"):
            mag = 10.0 ** rng.uniform(-7, 30, k) * np.abs(Y[:, j]).max()
            with np.errstate(over="ignore"):
                Y[rows, j] = (Y[rows, j] + rng.choice([-1, 1], k) * mag).astype(dtype)
        elif kind[j] == "bits":
            Y[rows, j] = (Y[rows, j].view(ui) ^ (ui(1) << rng.integers(0, bits, k).astype(ui))).view(dtype)
        elif kind[j] == "erased":
            Y[rows[: k // 2 + 1], j] = np.nan
            Y[rows[k // 2 + 1 :], j] *= -3
        elif kind[j] == "stuck_max":
            Y[rows, j] = np.finfo(dtype).max * rng.choice([-1, 1], k)
        else:  # zeroed
            Y[rows, j] = 0
    return clean, Y


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
def test_every_certificate_carries_a_finite_bound_that_holds(dtype):
    """Issue 25: 2–3% of certified columns carried bound = inf (most with erasures or blocks).
    Over 6 × 96 damaged columns per shape (K/n = 2 and 1.5, where the inlier rows are worst
    conditioned; scales 10^±30): every certified column has a finite bound, and within the
    guarantee (k ≤ K' − n − k̂, the clean latent explaining the inliers) its true error is within it."""
    rng = np.random.default_rng(25)
    kinds = np.repeat(["gross", "block", "bits", "erased", "stuck_max", "zeroed"], 96)
    for K, n in [(32, 16), (24, 16)]:
        A = (rng.standard_normal((K, n)) / np.sqrt(n)).astype(dtype)
        X = rng.standard_normal((n, kinds.size)) * 10.0 ** rng.uniform(-30, 30, kinds.size)
        clean, Y = _damaged(rng, A, X, kinds, dtype)
        with jax.enable_x64(dtype == np.float64):
            out = jp.recover(A, Y)
        cert, bound = np.asarray(out.certified), np.asarray(out.bound, np.float64)
        assert cert.sum() >= kinds.size // 4, (K, n)  # not vacuous
        assert np.isfinite(bound[cert]).all() and np.isinf(bound[~cert]).all()
        fin = np.isfinite(Y)
        outl = np.asarray(out.outliers)
        k = (fin & (Y != clean)).sum(0)
        within = k <= fin.sum(0) - n - (outl & fin).sum(0)
        inl = fin & ~outl
        y = np.where(inl, Y, 0).astype(np.float64)
        tau = 64 * np.finfo(dtype).eps * np.abs(y).max(0)
        explains = (np.where(inl, np.abs(y - A.astype(np.float64) @ X), 0) <= tau).all(0)
        x = np.asarray(out.x, np.float64)
        err = np.linalg.norm(x - X, axis=0) / np.maximum(np.linalg.norm(x, axis=0), 1e-300)
        claimed = cert & within & explains
        assert claimed.sum() >= kinds.size // 4, (K, n)
        assert (err[claimed] <= bound[claimed]).all(), (K, n, (err / bound)[claimed].max())


class _OneMatrixCodebook(Codebook):
    """A codebook (built from its layout, as ``pooled``'s) with one group whose matrix the test
    chooses: leaf "w" (K·m entries, row-major) is the group's (K, m) code."""

    def __init__(self, A: np.ndarray, m: int):
        K, n = A.shape
        leaves = [LeafLayout("w", (K * m,), "float32", None)]
        super().__init__(SECRET, 4.0, leaves, [Group("w", K, n, m, "float32", (Segment("w", 0, K * m),))])
        self._A = A.astype(np.float32)

    def matrix(self, name, dtype=None):
        return jnp.asarray(self._A, dtype=dtype or "float32")


def _erased_where_a_column_lives(scale: float, m: int = 6):
    """K = 32, n = 8: A's last column is ``scale`` × Gaussian on rows 8… and Gaussian on rows 0–7,
    which are erased in every column (clean otherwise).  A has full rank; A on the usable rows
    has σ_min ∝ scale."""
    rng = np.random.default_rng(26)
    K, n = 32, 8
    A = rng.standard_normal((K, n)) / np.sqrt(n)
    A[8:, -1] *= scale
    A = A.astype(np.float32).astype(np.float64)  # the stored matrix, exactly
    X = rng.standard_normal((n, m))
    Y = (A @ X).astype(np.float32)
    Y[:8] = np.nan
    return A, X, Y


@pytest.mark.parametrize("scale", [0.0, 1e-9])
def test_a_certificate_without_a_finite_bound_is_no_bound(scale):
    """The bound divides by σ_min(A_I), A on the inlier rows.  Here every usable row is an inlier
    and A_I is singular (scale 0) or singular to float32 (σ_min(A_I)/‖A‖ below float32's eps, by a
    float64 SVD), while A itself has full rank and the fit is exact: the rest of the certificate
    holds, so the only honest code is ``no_bound``: not certified, bound inf.  And purify neither
    counts such a column as certified nor writes over it."""
    A, X, Y = _erased_where_a_column_lives(scale)
    s_all = np.linalg.svd(A, compute_uv=False)
    s_inl = np.linalg.svd(A[8:], compute_uv=False)
    assert np.linalg.matrix_rank(A) == A.shape[1]
    assert s_inl[-1] < np.finfo(np.float32).eps * s_all[0]  # no bound a float32 solve can state
    out = jp.recover(A.astype(np.float32), Y)
    assert (_codes(out) == RESULTS.no_bound).all(), _codes(out)
    assert not np.asarray(out.certified).any()
    assert np.isinf(np.asarray(out.bound)).all()

    cb = _OneMatrixCodebook(A, Y.shape[1])
    params = {"w": jnp.asarray(Y.reshape(-1))}
    purified, report = jp.purify(params, cb)
    assert report.columns == Y.shape[1] and report.certified == 0 and not report.ok
    np.testing.assert_array_equal(np.asarray(purified["w"]), Y.reshape(-1))  # kept as it came


def test_the_same_erasures_with_a_well_conditioned_column_are_certified():
    """The control of the test above: the same erasures, A's last column Gaussian on every row
    (σ_min(A_I) of the order of ‖A‖): certified, finite bound, within it of the float64 X; purify
    counts every column."""
    A, X, Y = _erased_where_a_column_lives(1.0)
    s_all = np.linalg.svd(A, compute_uv=False)
    assert np.linalg.svd(A[8:], compute_uv=False)[-1] > 0.1 * s_all[0]
    out = jp.recover(A.astype(np.float32), Y)
    cert, bound = np.asarray(out.certified), np.asarray(out.bound, np.float64)
    assert cert.all() and np.isfinite(bound).all()
    assert (rel_err(out.x, X) <= bound).all()
    _, report = jp.purify({"w": jnp.asarray(Y.reshape(-1))}, _OneMatrixCodebook(A, Y.shape[1]))
    assert report.certified == Y.shape[1]


def test_one_corrupted_inlier_margin_is_a_lower_bound_on_the_leave_one_out_sigma():
    """``_certify._null_margin``'s third output lower-bounds min_{j∈I} σ_min(Ũ_{I∖j})², Ũ an
    orthonormal basis of range(A_I) (the factor that covers one corrupted inlier), and is close to
    it; reference: an SVD of every leave-one-out submatrix in float64."""
    from jaxpurify._certify import _null_margin

    rng = np.random.default_rng(7)
    K, n, s = 24, 12, 16
    A = rng.standard_normal((K, n)).astype(np.float32)
    A[5] = A[3]  # a duplicated row: its twin checks it
    Q = np.linalg.qr(A.astype(np.float64))[0].astype(np.float32)
    inl = np.zeros((K, s), bool)
    for j in range(s):
        inl[rng.choice(K, int(rng.integers(n + 2, K + 1)), replace=False), j] = True
    _, smin2, rest = (np.asarray(a) for a in _null_margin(jnp.asarray(Q), jnp.asarray(inl), n, jnp.asarray(K)))
    checked = 0
    for j in range(s):
        U = np.linalg.svd(A[inl[:, j]].astype(np.float64), full_matrices=False)[0]
        true = min(np.linalg.svd(np.delete(U, i, 0), compute_uv=False)[-1] ** 2 for i in range(len(U)))
        smin2_true = np.linalg.svd(Q[inl[:, j]].astype(np.float64), compute_uv=False)[-1] ** 2
        assert smin2[j] <= smin2_true
        # the rounding margin taken off: 2·n·K·eps / σ_min(Q_I)²
        margin = 2 * n * K * np.finfo(np.float32).eps / (smin2_true - n * K * np.finfo(np.float32).eps)
        assert rest[j] <= true, (j, rest[j], true)
        assert rest[j] >= true - 1.5 * margin, (j, rest[j], true, margin)
        checked += rest[j] > 0
    assert checked >= s // 2  # not vacuous


def test_a_stage_certificate_with_an_unchecked_inlier_is_no_slack():
    """n+2 inliers of which n+1 span only n−1 dimensions: the fit is exact and within the count
    bound, so with clean inliers assumed it is certified; a column whose bound must cover one
    corrupted inlier (``one_corrupted``, the simplex stage's) is ``no_slack``, since the one row
    that fixes the last dimension is checked by no other."""
    from jaxpurify._certify import Fit, certify

    rng = np.random.default_rng(8)
    K, n = 16, 6
    A = rng.standard_normal((K, n))
    A[1 : n + 2, -1] = 0.0  # rows 1..n+1 leave the last coordinate free: only row 0 fixes it
    Q, R = (jnp.asarray(a, jnp.float32) for a in np.linalg.qr(A))
    x = rng.standard_normal((n, 1))
    y = jnp.asarray(A @ x, jnp.float32)
    usable = jnp.zeros((K, 1), bool).at[: n + 2].set(True)
    outl = ~usable
    fit = Fit(
        x=jnp.asarray(x, jnp.float32),
        r=jnp.zeros_like(y),
        outliers=outl,
        exact=jnp.ones((1,), bool),
        stable=jnp.ones((1,), bool),
        solved=jnp.ones((1,), bool),
        over=jnp.zeros((1,), bool),
    )
    tol = jnp.full((1,), 1e-6, jnp.float32)
    plain = certify(Q, R, jnp.asarray(n), fit, usable, tol)
    # n+2 usable rows, none flagged: without the clause it is certified
    assert bool(plain.certified[0])
    one = certify(Q, R, jnp.asarray(n), fit, usable, tol, jnp.ones((1,), bool))
    assert int(one.code[0]) == RESULTS.no_slack and np.isinf(np.asarray(one.bound[0]))
