"""Never worse than the exact LP (issue 25, item 3): on fixed, seeded columns that HiGHS (float64, on
the same stored float32 values) recovers exactly, ``recover`` in float32 returns the clean latent,
certified.  Damage per column: 1 to ⌊(K − n)/2⌋ entries (the uniqueness bound) of one kind: a
flipped mantissa bit, a flipped bit anywhere, gross errors of 0.01–1000× the weights, zeroed or
negated entries (``benchmarks.lp_check.small_set``, the benchmark's generator); weights at 10^±3.
The benchmark (``python -m benchmarks.lp_check``) runs the same on larger sets."""

import numpy as np
import pytest

import jaxpurify as jp
from benchmarks.lp_check import EXACT, KINDS, LP_EXACT, lad_lp, rel, small_set

# LP-exact columns recover may leave uncertified or inexact (slow test): measured with
# ``python -m benchmarks.lp_check --sets small --small 250 --shapes 64x16,32x16,128x32 --seed 1``
# 7 of 234 at K = 64, n = 16 (6 bit flips) and 8 of 198 at 32/16 (2 of them certified within
# their bound but above 1e-5); these seeds and sizes not yet run to the end: a 5% ceiling
MAX_MISS_FRACTION = 0.05


def _misses(K, n, columns, seed):
    """(LP-exact columns, of them not certified-exact, per kind {kind: (lp, miss)}, certified wrong)."""
    A, Y, X, kinds = small_set(np.random.default_rng(seed), columns, K, n)
    x_lp = np.stack([lad_lp(A, Y[:, j]) for j in range(columns)], axis=1)
    lp = rel(x_lp, X) <= LP_EXACT
    out = jp.recover(A, Y)
    err, cert = rel(out.x, X), np.asarray(out.certified)
    miss = lp & ~(cert & (err <= EXACT))
    per = {k: (int((lp & (kinds == k)).sum()), int((miss & (kinds == k)).sum())) for k in KINDS}
    wrong = int((cert & (err > np.maximum(EXACT, np.asarray(out.bound)))).sum())
    return int(lp.sum()), int(miss.sum()), per, wrong


def test_every_lp_exact_column_comes_back_exact_and_certified():
    """256 columns at K = 64, n = 16 (≤ 24 changes each): HiGHS recovers 239; recover misses
    none of those (before the greedy polish of the later passes: 66 of 239, most of them
    mantissa and single-bit flips and errors of 1% of the weights, as inexact_fit)."""
    lp, miss, per, wrong = _misses(64, 16, 256, seed=25)
    assert lp >= 230, per
    assert miss == 0, per
    assert wrong == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "K, n",
    [
        (64, 16),
        # measured: 768 LP-exact of 1000 at K/n = 2 (the test wants 900) and 54 misses of 944 at
        # 128/32 (the target is ≤ 5%): the goal "never worse than the exact LP" is not met there yet
        pytest.param(32, 16, marks=pytest.mark.xfail(reason="768 LP-exact columns of 1000, 900 expected")),
        pytest.param(128, 32, marks=pytest.mark.xfail(reason="54 misses of 944 LP-exact columns (> 5%)")),
    ],
)
def test_lp_exact_columns_at_more_shapes(K, n):
    """1000 columns per shape (K/n = 4, 2, 4); see ``MAX_MISS_FRACTION``."""
    lp, miss, per, wrong = _misses(K, n, 1000, seed=K + n)
    assert lp >= 900, per
    assert miss <= MAX_MISS_FRACTION * lp, per
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
# 2500 columns exactly; recover leaves 22 of those uncertified (18 flipped bits, 3 gross errors,
# 1 flipped mantissa bit; per kind LP-exact/uncertified: mantissa 498/1, bit 494/18, gross 482/3,
# zeroed 417/0, negated 421/0) and certifies none beyond its own bound.  A regression guard, not a
# target (the goal is 0 uncertified).
UNCERTIFIED_2500 = 22


def _uncertified_lp_exact(columns, seed, K=64, n=16):
    """On ``small_set``'s columns: (LP-exact, of them uncertified by recover, certified with an error
    above their own bound, per kind {kind: (LP-exact, uncertified)})."""
    A, Y, X, kinds = small_set(np.random.default_rng(seed), columns, K, n)
    lp = rel(np.stack([lad_lp(A, Y[:, j]) for j in range(columns)], axis=1), X) <= LP_EXACT
    out = jp.recover(A, Y)
    cert, bound = np.asarray(out.certified), np.asarray(out.bound, np.float64)
    left = lp & ~cert
    wrong = cert & (rel(out.x, X) > bound)
    per = {k: (int((lp & (kinds == k)).sum()), int((left & (kinds == k)).sum())) for k in KINDS}
    return int(lp.sum()), int(left.sum()), int(wrong.sum()), per


@pytest.mark.slow
def test_2500_lp_checked_columns_none_certified_wrong():
    """2500 columns at K = 64, n = 16 against HiGHS (float64 on the same stored values), 500 of each
    kind (flipped mantissa bit, flipped bit anywhere, gross errors 0.01–1000×, zeroed, negated):
    no certified column is outside its own bound of the clean latent, and no more LP-exact
    columns are left uncertified than measured."""
    lp, left, wrong, per = _uncertified_lp_exact(2500, seed=2500)
    assert wrong == 0, per
    assert lp >= 2300, per  # not vacuous: 2312 measured
    assert left <= UNCERTIFIED_2500, per
