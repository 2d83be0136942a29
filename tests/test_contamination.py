"""Contamination models checked by NumPy counts; chunking, keys, inputs untouched; the code's
columns of any layout (the pooled codebook double)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pooled import PooledCodebook, clean_params

import jaxpurify as jp
from jaxpurify import contamination as C


def _per_column(changed, axis):
    """Changed entries per column along ``axis`` (NumPy reference)."""
    moved = np.moveaxis(np.asarray(changed), axis, 0)
    return moved.reshape(moved.shape[0], -1).sum(0)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(C, "CHUNK", 64)  # many blocks even for small arrays


def test_gross_errors_exact_count_per_column(small_chunks):
    x = np.asarray(jax.random.normal(jax.random.key(0), (5, 7, 40)))
    for rate, axis in [(0.1, -1), (0.25, 1), (0.0, 0), (1.0, 0), (0.5, 2)]:
        y = np.asarray(C.gross_errors(jax.random.key(1), x, rate, axis=axis))
        K = x.shape[axis]
        np.testing.assert_array_equal(_per_column(y != x, axis), round(rate * K))
    y = np.asarray(C.gross_errors(jax.random.key(1), x, 0.2, low=10.0, high=20.0))
    d = np.abs(y - x)[y != x] / np.sqrt(np.mean(x.astype(np.float64) ** 2))
    assert d.min() >= 10.0 * (1 - 1e-5) and d.max() <= 20.0 * (1 + 1e-5)
    with pytest.raises(ValueError, match="rate"):
        C.gross_errors(jax.random.key(1), x, 1.5)
    with pytest.raises(ValueError, match="low"):
        C.gross_errors(jax.random.key(1), x, 0.1, low=5.0, high=1.0)


def test_same_key_same_result_other_key_other_result_input_untouched(small_chunks):
    x = np.random.default_rng(0).standard_normal((33, 17)).astype(np.float32)
    before = x.copy()
    for fn, kw in [
        (C.gross_errors, dict(rate=0.2)),
        (C.bit_flips, dict(rate=0.2)),
        (C.erasures, dict(rate=0.2)),
        (C.dense_noise, dict(sigma=0.1)),
        (C.stuck_at, dict(rate=0.3)),
        (C.zero_columns, dict(rate=0.3)),
        (C.copy_columns, dict(rate=0.3)),
    ]:
        a, b = fn(jax.random.key(1), x, **kw), fn(jax.random.key(1), x, **kw)
        c = fn(jax.random.key(2), x, **kw)
        assert isinstance(a, jax.Array) and a.dtype == x.dtype and a.shape == x.shape, fn.__name__
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(np.asarray(a), np.asarray(c), equal_nan=True), fn.__name__
        np.testing.assert_array_equal(x, before)


def test_bit_flips_flip_one_exponent_bit(small_chunks):
    x = jax.random.normal(jax.random.key(0), (40, 100), jnp.float32)
    y = C.bit_flips(jax.random.key(1), x, 0.1)
    diff = np.asarray(x).view(np.uint32) ^ np.asarray(y).view(np.uint32)
    hit = diff != 0
    assert 0.08 < hit.mean() < 0.12
    bits = np.log2(diff[hit]).astype(int)
    assert np.all(2.0**bits == diff[hit])  # exactly one bit
    assert bits.min() >= 23 and bits.max() <= 30  # exponent bits of float32
    h = C.bit_flips(jax.random.key(1), x.astype(jnp.bfloat16), 0.1)
    assert h.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="bits"):
        C.bit_flips(jax.random.key(1), x, 0.1, bits=(40,))


def test_erasures_and_dense_noise(small_chunks):
    y = np.asarray(C.erasures(jax.random.key(0), jnp.ones((1000,)), 0.2))
    bad = ~np.isfinite(y)
    assert 0.15 < bad.mean() < 0.25 and np.all(y[~bad] == 1.0)
    assert np.isnan(y).any() and np.isposinf(y).any() and np.isneginf(y).any()
    w = np.asarray(jax.random.normal(jax.random.key(2), (200, 100)))
    z = np.asarray(C.dense_noise(jax.random.key(1), w, 1e-2))
    assert abs(np.std(z - w) / np.std(w) - 1e-2) < 1e-3


def test_stuck_at_zero_and_whole_column_faults(small_chunks):
    x = np.random.default_rng(1).standard_normal((3, 16, 10)).astype(np.float32) + 5.0  # no zeros
    y = np.asarray(C.stuck_at(jax.random.key(0), x, 0.75, axis=1))
    np.testing.assert_array_equal(_per_column(y == 0, 1), 12)
    np.testing.assert_array_equal(y[y != 0], x[y != 0])

    cols = lambda a: np.moveaxis(a, 1, 0).reshape(16, -1)  # 30 columns along axis 1
    z = np.asarray(C.zero_columns(jax.random.key(0), x, 0.2, axis=1))
    zeroed = np.all(cols(z) == 0, axis=0)
    assert zeroed.sum() == 6
    np.testing.assert_array_equal(cols(z)[:, ~zeroed], cols(x)[:, ~zeroed])

    c = np.asarray(C.copy_columns(jax.random.key(0), x, 0.2, axis=1))
    changed = np.any(cols(c) != cols(x), axis=0)
    assert changed.sum() == 6
    for j in np.flatnonzero(changed):  # each a copy of another original column
        assert any(np.array_equal(cols(c)[:, j], cols(x)[:, i]) for i in range(30) if i != j)
    with pytest.raises(ValueError, match="two columns"):
        C.copy_columns(jax.random.key(0), np.ones((5, 1)), 1.0, axis=0)


def test_contaminate_hits_the_codes_columns_of_any_layout():
    """Pooled layout: exactly round(rate·K) entries per code column, padding untouched."""
    cb = PooledCodebook()
    clean = clean_params(cb)
    bad = C.contaminate(jax.random.key(3), clean, cb, C.gross_errors, rate=0.25)
    assert bad["free"] is clean["free"] and bad["step"] is clean["step"]
    before, after = cb.pack(clean), cb.pack(bad)
    for name, g in cb.groups.items():
        changed = (before[name] != after[name]) & ~np.isnan(before[name])
        padded = np.isnan(before[name]).sum(0)
        # padding rows are entries too for the model; real changes are at most round(rate·K)
        assert np.all(changed.sum(0) <= round(0.25 * g.K)) and np.all(changed.sum(0) >= round(0.25 * g.K) - padded)
        assert np.array_equal(np.isnan(after[name]), np.isnan(before[name]))
    z = C.contaminate(jax.random.key(3), clean, cb, C.zero_columns, rate=0.5)
    zc = cb.pack(z)["g0"]
    assert np.sum(np.all(zc == 0, axis=0)) == 4  # 4 of g0's 8 columns, spread over a, b and c


def test_contaminate_follows_the_codebook_axis():
    params = {"k": jax.random.normal(jax.random.key(0), (12, 40)), "step": jnp.asarray(1, jnp.int32)}
    cb = jp.Codebook.create(params, jax.random.key(1), select=lambda p, leaf: 0 if p == "k" else False)
    bad = C.contaminate(jax.random.key(2), params, cb, C.gross_errors, rate=0.25)
    np.testing.assert_array_equal(_per_column(bad["k"] != params["k"], 0), 3)  # K = 12 along axis 0
    with pytest.raises(ValueError, match="shape"):
        C.contaminate(jax.random.key(2), params, cb, lambda k, y: y[:1])
