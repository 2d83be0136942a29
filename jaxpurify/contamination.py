"""Contamination models for deployed weights: W_c = W + E + Z.

* :func:`gross_errors` — E: a fraction of the entries of every column replaced by large errors.
* :func:`bit_flips` — E from flipped exponent bits (huge, tiny, ±Inf or NaN values).
* :func:`erasures` — entries replaced by NaN or ±Inf (an exponent saturated by flips).
* :func:`dense_noise` — Z: small Gaussian noise on every entry.
* :func:`contaminate` — apply one of them to the encoded leaves of a parameter tree.

All take an explicit PRNG key.  "Columns" are as in the codebook: vectors along the encoded axis.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify._codebook import Codebook
from jaxpurify._tree import leaves_with_paths


def _rms(x):
    x = jnp.asarray(x)
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


@functools.partial(jax.jit, static_argnames=("rate", "axis"))
def _gross(key, x, rate, axis, low, high):
    moved = jnp.moveaxis(x, axis, -1)
    K = moved.shape[-1]
    k = int(round(rate * K))
    kp, km, ks = jax.random.split(key, 3)
    # the k smallest of K uniforms per column give a uniformly random k-subset
    scores = jax.random.uniform(kp, moved.shape)
    if k > 0:
        mask = scores <= jnp.sort(scores, axis=-1)[..., k - 1 : k]
    else:
        mask = jnp.zeros(moved.shape, bool)
    mag = jnp.exp(jax.random.uniform(km, moved.shape, minval=jnp.log(low), maxval=jnp.log(high)))
    sign = jnp.where(jax.random.bernoulli(ks, 0.5, moved.shape), 1.0, -1.0)
    err = (sign * mag * jnp.maximum(_rms(x), jnp.finfo(jnp.float32).tiny)).astype(x.dtype)
    return jnp.moveaxis(jnp.where(mask, moved + err, moved), -1, axis)


def gross_errors(key, x, rate: float, *, axis: int = -1, low: float = 1.0, high: float = 1e3):
    """Corrupt exactly round(rate·K) entries of every column along ``axis``.

    Each error has a random sign and a magnitude log-uniform in [low, high] times the rms of
    ``x`` (the weight scale), so errors span several decades.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    if not 0.0 < low <= high:
        raise ValueError(f"need 0 < low ≤ high, got low={low}, high={high}")
    x = jnp.asarray(x)
    return _gross(key, x, float(rate), int(axis) % max(x.ndim, 1), float(low), float(high))


_EXPONENT_BITS = {
    np.dtype("float16"): (10, 15, np.uint16),
    np.dtype(jnp.bfloat16): (7, 15, np.uint16),
    np.dtype("float32"): (23, 31, np.uint32),
    np.dtype("float64"): (52, 63, np.uint64),
}


def bit_flips(key, x, rate: float, *, bits: tuple[int, ...] | None = None):
    """Flip one random bit (default: an exponent bit) in a random ``rate`` fraction of entries.

    Flipping the top exponent bit of a value of magnitude ≥ 1 gives ±Inf or NaN; of a smaller
    value, a huge finite value; lower exponent bits scale the value by powers of two.
    """
    x = jnp.asarray(x)
    dt = np.dtype(x.dtype)
    if dt not in _EXPONENT_BITS:
        raise ValueError(f"bit_flips supports float16, bfloat16, float32, float64; got {dt}")
    lo, hi, ui = _EXPONENT_BITS[dt]
    bits = tuple(range(lo, hi)) if bits is None else tuple(bits)
    width = 8 * dt.itemsize
    if not bits or not all(0 <= b < width for b in bits):
        raise ValueError(f"bits must be a non-empty subset of 0..{width - 1}, got {bits}")
    return _flip(key, x, rate, bits, ui)


@functools.partial(jax.jit, static_argnames=("bits", "ui"))
def _flip(key, x, rate, bits, ui):
    ks, kb = jax.random.split(key)
    hit = jax.random.bernoulli(ks, rate, x.shape)
    which = jnp.asarray(bits)[jax.random.randint(kb, x.shape, 0, len(bits))]
    raw = jax.lax.bitcast_convert_type(x, ui)
    flipped = raw ^ (jnp.ones((), ui) << which.astype(ui))
    return jax.lax.bitcast_convert_type(jnp.where(hit, flipped, raw), x.dtype)


@jax.jit
def erasures(key, x, rate: float):
    """Replace a random ``rate`` fraction of entries by NaN, +Inf or −Inf (a saturated exponent)."""
    x = jnp.asarray(x)
    ks, kv = jax.random.split(key)
    hit = jax.random.bernoulli(ks, rate, x.shape)
    vals = jnp.asarray([jnp.nan, jnp.inf, -jnp.inf], x.dtype)[jax.random.randint(kv, x.shape, 0, 3)]
    return jnp.where(hit, vals, x)


@jax.jit
def dense_noise(key, x, sigma: float):
    """Add N(0, (sigma·rms(x))²) to every entry: the small dense part Z."""
    x = jnp.asarray(x)
    return (x + sigma * _rms(x) * jax.random.normal(key, x.shape)).astype(x.dtype)


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
