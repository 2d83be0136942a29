import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpurify import contamination as C


def test_gross_errors_exact_count_per_column():
    x = jax.random.normal(jax.random.key(0), (5, 7, 40))
    for rate, axis in [(0.1, -1), (0.25, 1), (0.0, 0)]:
        y = C.gross_errors(jax.random.key(1), x, rate, axis=axis)
        changed = np.moveaxis(np.asarray(y != x), axis, -1)
        K = changed.shape[-1]
        assert np.all(changed.sum(-1) == round(rate * K))
    y = C.gross_errors(jax.random.key(1), x, 0.2, low=10.0, high=20.0)
    d = np.abs(np.asarray(y - x))[np.asarray(y != x)] / float(jnp.sqrt(jnp.mean(x**2)))
    assert d.min() >= 10.0 * (1 - 1e-5) and d.max() <= 20.0 * (1 + 1e-5)
    with pytest.raises(ValueError, match="rate"):
        C.gross_errors(jax.random.key(1), x, 1.5)


def test_bit_flips_flip_one_exponent_bit():
    x = jax.random.normal(jax.random.key(0), (4000,), jnp.float32)
    y = C.bit_flips(jax.random.key(1), x, 0.1)
    xb = np.asarray(x).view(np.uint32)
    yb = np.asarray(y).view(np.uint32)
    diff = xb ^ yb
    hit = diff != 0
    assert 0.07 < hit.mean() < 0.13
    bits = np.log2(diff[hit]).astype(int)
    assert np.all(2.0 ** bits == diff[hit])  # exactly one bit
    assert bits.min() >= 23 and bits.max() <= 30  # exponent bits of float32
    with pytest.raises(ValueError, match="bits"):
        C.bit_flips(jax.random.key(1), x, 0.1, bits=(40,))


def test_erasures_and_dense_noise():
    x = jnp.ones((1000,))
    y = np.asarray(C.erasures(jax.random.key(0), x, 0.2))
    bad = ~np.isfinite(y)
    assert 0.15 < bad.mean() < 0.25 and np.all(y[~bad] == 1.0)
    assert np.isnan(y).any() and np.isposinf(y).any() and np.isneginf(y).any()
    z = np.asarray(C.dense_noise(jax.random.key(1), jax.random.normal(jax.random.key(2), (20000,)), 1e-2))
    w = np.asarray(jax.random.normal(jax.random.key(2), (20000,)))
    assert abs(np.std(z - w) / np.std(w) - 1e-2) < 1e-3
