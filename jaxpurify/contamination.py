"""Contamination models for deployed weights: W_c = W + E + Z.

* :func:`gross_errors` — E: a fraction of the entries of every column replaced by large errors.
* :func:`bit_flips` — E from flipped exponent bits (huge, tiny, ±Inf or NaN values).
* :func:`erasures` — entries replaced by NaN or ±Inf (an exponent saturated by flips).
* :func:`dense_noise` — Z: small Gaussian noise on every entry.
* :func:`contaminate` — apply one of them to the encoded leaves of a parameter tree.

All take an explicit PRNG key (a NumPy generator is seeded from its bits, so no XLA
compilation happens per leaf shape); results are JAX arrays of the input's dtype.  "Columns" are as in the codebook: vectors along the encoded axis.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify._codebook import Codebook
from jaxpurify._tree import leaves_with_paths


def _rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key: explicit keys, no XLA compilation per shape."""
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    data = jax.random.key_data(key) if jnp.issubdtype(getattr(key, "dtype", np.float32), jax.dtypes.prng_key) else key
    return np.random.default_rng([int(w) for w in np.asarray(data, np.uint32).ravel()])


def _rms(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        v = float(np.sqrt(np.mean(np.square(x[np.isfinite(x)])))) if np.isfinite(x).any() else 0.0
    return v


def gross_errors(key, x, rate: float, *, axis: int = -1, low: float = 1.0, high: float = 1e3) -> jax.Array:
    """Corrupt exactly round(rate·K) entries of every column along ``axis``.

    Each error has a random sign and a magnitude log-uniform in [low, high] times the rms of
    ``x`` (the weight scale), so errors span several decades.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    if not 0.0 < low <= high:
        raise ValueError(f"need 0 < low ≤ high, got low={low}, high={high}")
    rng = _rng(key)
    arr = np.asarray(x)
    moved = np.moveaxis(arr, axis, -1)
    K = moved.shape[-1]
    k = int(round(rate * K))
    # the k smallest of K uniforms per column give a uniformly random k-subset
    ranks = np.argsort(np.argsort(rng.random(moved.shape), axis=-1), axis=-1)
    mask = ranks < k
    mag = np.exp(rng.uniform(np.log(low), np.log(high), moved.shape))
    sign = np.where(rng.random(moved.shape) < 0.5, -1.0, 1.0)
    err = sign * mag * max(_rms(arr), np.finfo(np.float32).tiny)
    out = np.where(mask, moved + err.astype(moved.dtype), moved)
    return jnp.asarray(np.moveaxis(out, -1, axis), dtype=arr.dtype)


_EXPONENT_BITS = {
    np.dtype("float16"): (10, 15, np.uint16),
    np.dtype(jnp.bfloat16): (7, 15, np.uint16),
    np.dtype("float32"): (23, 31, np.uint32),
    np.dtype("float64"): (52, 63, np.uint64),
}


def bit_flips(key, x, rate: float, *, bits: tuple[int, ...] | None = None) -> jax.Array:
    """Flip one random bit (default: an exponent bit) in a random ``rate`` fraction of entries.

    Flipping the top exponent bit of a value of magnitude ≥ 1 gives ±Inf or NaN; of a smaller
    value, a huge finite value; lower exponent bits scale the value by powers of two.
    """
    arr = np.asarray(x)
    dt = arr.dtype
    if dt not in _EXPONENT_BITS:
        raise ValueError(f"bit_flips supports float16, bfloat16, float32, float64; got {dt}")
    lo, hi, ui = _EXPONENT_BITS[dt]
    bits = tuple(range(lo, hi)) if bits is None else tuple(bits)
    width = 8 * dt.itemsize
    if not bits or not all(0 <= b < width for b in bits):
        raise ValueError(f"bits must be a non-empty subset of 0..{width - 1}, got {bits}")
    rng = _rng(key)
    hit = rng.random(arr.shape) < rate
    which = np.asarray(bits, dtype=ui)[rng.integers(0, len(bits), arr.shape)]
    raw = np.ascontiguousarray(arr).view(ui)
    flipped = np.where(hit, raw ^ (ui(1) << which), raw)
    return jnp.asarray(flipped.view(dt))


def erasures(key, x, rate: float) -> jax.Array:
    """Replace a random ``rate`` fraction of entries by NaN, +Inf or −Inf (a saturated exponent)."""
    arr = np.asarray(x)
    rng = _rng(key)
    hit = rng.random(arr.shape) < rate
    vals = np.array([np.nan, np.inf, -np.inf], arr.dtype)[rng.integers(0, 3, arr.shape)]
    return jnp.asarray(np.where(hit, vals, arr))


def dense_noise(key, x, sigma: float) -> jax.Array:
    """Add N(0, (sigma·rms(x))²) to every entry: the small dense part Z."""
    arr = np.asarray(x)
    rng = _rng(key)
    return jnp.asarray((arr + sigma * _rms(arr) * rng.standard_normal(arr.shape)).astype(arr.dtype))


def _leaf_key(key, path: str):
    h = int.from_bytes(hashlib.blake2b(path.encode(), digest_size=4).digest(), "little")
    return jax.random.fold_in(key, h)


def _takes_axis(fn) -> bool:
    try:
        return "axis" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def contaminate(key, params: Any, codebook: Codebook, fn: Callable[..., jax.Array], **kwargs) -> Any:
    """Apply ``fn(key, leaf, **kwargs)`` to every encoded leaf (other leaves unchanged).

    ``fn`` is one of :func:`gross_errors`, :func:`bit_flips`, :func:`erasures`,
    :func:`dense_noise` or your own.  A ``fn`` with an ``axis`` parameter gets each leaf's encoded
    axis, so column-wise models such as :func:`gross_errors` act on the codebook's columns.
    """
    named, treedef = leaves_with_paths(params)
    out = []
    for path, leaf in named:
        spec = codebook.specs.get(path)
        if spec is None:
            out.append(leaf)
            continue
        kw = dict(kwargs)
        if _takes_axis(fn):
            kw.setdefault("axis", spec.axis)
        out.append(fn(_leaf_key(key, path), leaf, **kw))
    return jax.tree_util.tree_unflatten(treedef, out)
