"""The solver's exact power-of-two units (``jaxpurify._units``) against NumPy's ``ldexp``, which
rounds subnormal results correctly where XLA's CPU arithmetic flushes them to zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpurify import _units


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unscale_rounds_like_ldexp_subnormals_and_overflow_included(dtype):
    rng = np.random.default_rng(0)
    fi = np.finfo(dtype)
    v = (rng.standard_normal(4000) * 2.0 ** rng.integers(-8, 8, 4000)).astype(dtype)
    v[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.5, fi.smallest_subnormal]
    # results from deep below the subnormal range, through it, the normal range and past the top
    lo, hi = int(fi.minexp) - int(fi.nmant) - 10, int(fi.maxexp) + 4
    e = rng.integers(lo, hi, v.size).astype(np.int32)
    e[:2000] = rng.integers(int(fi.minexp) - int(fi.nmant) - 2, int(fi.minexp) + 2, 2000)  # mostly subnormal
    with np.errstate(over="ignore", under="ignore"):
        want = np.ldexp(v, e)
    with jax.enable_x64(dtype == np.float64):
        got = np.asarray(_units.unscale(jnp.asarray(v), jnp.asarray(e)))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)  # bit for bit, NaN where NaN
    assert (np.signbit(got) == np.signbit(want)).all()
    sub = (want != 0) & (np.abs(want) < fi.tiny)
    assert sub.sum() > 1000  # the subnormal results were exercised


def test_scale_then_unscale_is_the_identity_on_subnormals():
    """``scale`` reads subnormal inputs from their bits, ``unscale`` writes them back."""
    rng = np.random.default_rng(1)
    y = (rng.standard_normal((16, 8)) * 1e-40).astype(np.float32)  # mostly subnormal
    assert (np.abs(y[y != 0]) < np.finfo(np.float32).tiny).all()
    e = np.asarray(_units.column_exponent(jnp.asarray(y), jnp.isfinite(y)))
    back = np.asarray(_units.unscale(_units.scale(jnp.asarray(y), e), e))
    np.testing.assert_array_equal(back, y)
