"""Contamination models for deployed weights: W_c = W + E + Z, and whole-column faults.

Entry models (``E`` and ``Z``):

* :func:`gross_errors` — exactly round(rate·K) entries of every column get a large error added.
* :func:`stuck_at` — exactly round(rate·K) entries of every column replaced by one value.
* :func:`bit_flips` — one flipped bit (an exponent bit by default) in a fraction of the entries.
* :func:`erasures` — a fraction of the entries replaced by NaN or ±Inf.
* :func:`dense_noise` — Z: small Gaussian noise on every entry.

Whole-column faults (what l1 cannot see when they land in range(A); used by the trust tests):

* :func:`zero_columns` — round(rate·m) columns set to zero.
* :func:`copy_columns` — round(rate·m) columns overwritten by copies of other columns.

:func:`contaminate` applies any of them to the code's columns of a parameter tree: each group of
the codebook is packed into its (K, m) column matrix (``codebook.pack``), contaminated along
axis 0, and unpacked into the leaves, so column-wise models hit the code's columns for any
layout.  Used on an array directly, "columns" are the vectors along ``axis``.

Every function takes an explicit PRNG key (a NumPy generator is seeded from its bits, so nothing
compiles per shape), never modifies its input, returns a JAX array of the input's dtype, and works
in chunks of about ``CHUNK`` entries, so its working memory beyond the input and the output is
bounded whatever the array's size.  The chunks are a fixed function of the shape, so a key gives
the same result on any machine.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxpurify.tree import PyTree

if TYPE_CHECKING:
    from jaxpurify._codebook import Codebook

CHUNK = 1 << 20  # entries per working block: float64 temporaries of ~8 MB each

Key = ArrayLike  # a jax.random.key, a raw uint32 PRNGKey or an int seed


# -- keys ----------------------------------------------------------------------------------------
def _key_words(key: Key) -> list[int]:
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    if jnp.issubdtype(getattr(key, "dtype", np.float32), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    data = np.asarray(key)
    if data.dtype != np.uint32:
        raise TypeError(f"key must be a jax.random.key, a uint32 PRNGKey or an int; got dtype {data.dtype}")
    return [int(w) for w in data.ravel()]


def _rng(key: Key, *tags: str) -> np.random.Generator:
    """A NumPy generator from a JAX key and optional tags (no XLA compilation per shape)."""
    salt = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4).digest(), "little") for t in tags]
    return np.random.default_rng(_key_words(key) + salt)


# -- column blocks -------------------------------------------------------------------------------
def _columns(x: np.ndarray, axis: int) -> np.ndarray:
    """(K, *rest) view of x with the column axis first (no copy)."""
    if x.ndim == 0:
        raise ValueError("cannot take columns of a 0-d array")
    return np.moveaxis(x, axis, 0)


def _blocks(moved_shape: tuple[int, ...]) -> Iterator[tuple[Any, ...]]:
    """Index tuples selecting chunks of whole columns of a (K, *rest) array, in a fixed order."""
    K, rest = moved_shape[0], moved_shape[1:]
    m = int(np.prod(rest, dtype=np.int64))
    step = max(1, CHUNK // max(K, 1))
    for j in range(0, m, step):
        cols = np.arange(j, min(j + step, m))
        yield (slice(None),) + (np.unravel_index(cols, rest) if rest else ())


def _map_blocks(x: ArrayLike, axis: int, block_fn: Callable[[np.ndarray], np.ndarray]) -> jax.Array:
    """Apply ``block_fn`` to (K, c) blocks of columns of x into a new array of x's dtype."""
    arr = np.asarray(x)
    out = np.empty_like(arr)
    src, dst = _columns(arr, axis), _columns(out, axis)
    for idx in _blocks(src.shape):
        blk = src[idx]
        dst[idx] = block_fn(blk.reshape(blk.shape[0], -1)).reshape(blk.shape)
    result: jax.Array = jax.device_put(out)  # zero-copy on CPU: `out` is not kept
    return result


def _rms(arr: np.ndarray) -> float:
    """Root mean square of the finite entries (the weight scale), a block at a time."""
    arr = np.atleast_1d(arr)
    total, count = 0.0, 0
    for idx in _blocks(arr.shape):
        p = np.asarray(arr[idx], np.float64)
        fin = np.isfinite(p)
        with np.errstate(over="ignore"):
            total += float(np.sum(np.square(np.where(fin, p, 0.0))))
        count += int(fin.sum())
    return float(np.sqrt(total / count)) if count and np.isfinite(total) else 0.0


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")


def _pick_rows(rng: np.random.Generator, K: int, c: int, k: int) -> np.ndarray:
    """(k, c): for each of c columns a uniformly random k-subset of its K rows."""
    if k == 0:
        return np.zeros((0, c), np.intp)
    if k == K:
        return np.broadcast_to(np.arange(K)[:, None], (K, c))
    # the k smallest of K uniforms form a uniformly random k-subset
    return np.argpartition(rng.random((K, c)), k - 1, axis=0)[:k]


def error_values(
    rng: np.random.Generator, shape: int | tuple[int, ...], scale: float, low: float, high: float
) -> np.ndarray:
    """The one error generator: random sign times a magnitude log-uniform in [low, high]·scale."""
    if not 0.0 < low <= high:
        raise ValueError(f"need 0 < low ≤ high, got low={low}, high={high}")
    mag = np.exp(rng.uniform(np.log(low), np.log(high), shape))
    return np.where(rng.random(shape) < 0.5, -mag, mag) * scale


# -- entry models --------------------------------------------------------------------------------
def gross_errors(
    key: Key, x: ArrayLike, rate: float, *, axis: int = -1, low: float = 1.0, high: float = 1e3
) -> jax.Array:
    """Add a gross error to exactly round(rate·K) entries of every column along ``axis``.

    Each error has a random sign and a magnitude log-uniform in [low, high] times the rms of
    ``x`` (the weight scale), so errors span several decades.
    """
    _check_rate(rate)
    arr = np.asarray(x)
    K = _columns(arr, axis).shape[0]
    k = int(round(rate * K))
    rng = _rng(key)
    scale = max(_rms(arr), float(np.finfo(np.float32).tiny))
    error_values(rng, (0,), scale, low, high)  # validate low/high before any work

    def block(b: np.ndarray) -> np.ndarray:
        rows = _pick_rows(rng, K, b.shape[1], k)
        out = b.copy()
        hit = np.take_along_axis(b, rows, axis=0)
        np.put_along_axis(out, rows, hit + error_values(rng, rows.shape, scale, low, high).astype(b.dtype), axis=0)
        return out

    return _map_blocks(arr, axis, block)


def stuck_at(key: Key, x: ArrayLike, rate: float, *, value: float = 0.0, axis: int = -1) -> jax.Array:
    """Replace exactly round(rate·K) entries of every column along ``axis`` by ``value``.

    A stuck memory cell; with more than (K + n)/2 entries of a column stuck at 0, that column is
    closer to the zero column than to the clean one, and l1 recovery certifies the wrong answer.
    """
    _check_rate(rate)
    arr = np.asarray(x)
    K = _columns(arr, axis).shape[0]
    k = int(round(rate * K))
    rng = _rng(key)

    def block(b: np.ndarray) -> np.ndarray:
        out = b.copy()
        np.put_along_axis(out, _pick_rows(rng, K, b.shape[1], k), np.asarray(value, b.dtype), axis=0)
        return out

    return _map_blocks(arr, axis, block)


_EXPONENT_BITS = {
    np.dtype("float16"): (10, 15, np.uint16),
    np.dtype(jnp.bfloat16): (7, 15, np.uint16),
    np.dtype("float32"): (23, 31, np.uint32),
    np.dtype("float64"): (52, 63, np.uint64),
}


def bit_flips(key: Key, x: ArrayLike, rate: float, *, bits: tuple[int, ...] | None = None) -> jax.Array:
    """Flip one random bit (default: an exponent bit) in a random ``rate`` fraction of entries.

    Flipping the top exponent bit of a value of magnitude ≥ 1 gives ±Inf or NaN; of a smaller
    value, a huge finite value; lower exponent bits scale the value by powers of two.
    """
    _check_rate(rate)
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
    choice = np.asarray(bits, dtype=ui)

    def block(b: np.ndarray) -> np.ndarray:
        hit = rng.random(b.shape) < rate
        which = choice[rng.integers(0, len(bits), b.shape)]
        raw = np.ascontiguousarray(b).view(ui)
        return np.where(hit, raw ^ (ui(1) << which), raw).view(dt)

    return _map_blocks(np.atleast_1d(arr), -1, block).reshape(arr.shape)


def erasures(key: Key, x: ArrayLike, rate: float) -> jax.Array:
    """Replace a random ``rate`` fraction of entries by NaN, +Inf or −Inf (a saturated exponent)."""
    _check_rate(rate)
    arr = np.asarray(x)
    rng = _rng(key)

    def block(b: np.ndarray) -> np.ndarray:
        hit = rng.random(b.shape) < rate
        vals = np.array([np.nan, np.inf, -np.inf], b.dtype)[rng.integers(0, 3, b.shape)]
        return np.where(hit, vals, b)

    return _map_blocks(np.atleast_1d(arr), -1, block).reshape(arr.shape)


def dense_noise(key: Key, x: ArrayLike, sigma: float) -> jax.Array:
    """Add N(0, (sigma·rms(x))²) to every entry: the small dense part Z."""
    if not sigma >= 0:
        raise ValueError(f"sigma must be ≥ 0, got {sigma}")
    arr = np.asarray(x)
    rng = _rng(key)
    s = sigma * _rms(np.atleast_1d(arr))
    return _map_blocks(
        np.atleast_1d(arr), -1, lambda b: (b + s * rng.standard_normal(b.shape)).astype(b.dtype)
    ).reshape(arr.shape)


# -- whole-column faults -------------------------------------------------------------------------
def _pick_columns(rng: np.random.Generator, m: int, rate: float) -> np.ndarray:
    _check_rate(rate)
    return np.sort(rng.choice(m, int(round(rate * m)), replace=False))


def _overwrite_columns(
    x: ArrayLike, axis: int, targets: np.ndarray, values: Callable[[np.ndarray], np.ndarray]
) -> jax.Array:
    """Copy x, then set the ``targets`` columns (flat indices over the non-column axes) to
    ``values(chunk_of_targets)`` (K, c), a chunk at a time."""
    arr = np.asarray(x)
    out = np.array(arr, copy=True)
    dst = _columns(out, axis)
    rest = dst.shape[1:]
    step = max(1, CHUNK // max(dst.shape[0], 1))
    for i in range(0, targets.size, step):
        t = targets[i : i + step]
        dst[(slice(None),) + np.unravel_index(t, rest)] = values(t)
    result: jax.Array = jax.device_put(out)
    return result


def zero_columns(key: Key, x: ArrayLike, rate: float, *, axis: int = -1) -> jax.Array:
    """Set round(rate·m) random columns along ``axis`` to zero (m = number of columns)."""
    arr = np.asarray(x)
    m = arr.size // max(_columns(arr, axis).shape[0], 1)
    targets = _pick_columns(_rng(key), m, rate)
    return _overwrite_columns(arr, axis, targets, lambda t: np.zeros((), arr.dtype))


def copy_columns(key: Key, x: ArrayLike, rate: float, *, axis: int = -1) -> jax.Array:
    """Overwrite round(rate·m) random columns along ``axis`` with copies of other columns.

    Each target gets a uniformly random source column different from itself (read from the input,
    so a copied column is always a clean one).  Needs at least two columns.
    """
    arr = np.asarray(x)
    src = _columns(arr, axis)
    rest = src.shape[1:]
    m = arr.size // max(src.shape[0], 1)
    if m < 2 and rate > 0:
        raise ValueError(f"copy_columns needs at least two columns along axis {axis}, got {m}")
    rng = _rng(key)
    targets = _pick_columns(rng, m, rate)
    # a source uniform over the other m − 1 columns
    sources = rng.integers(0, max(m - 1, 1), targets.size)
    sources = sources + (sources >= targets)
    lookup = dict(zip(targets.tolist(), sources.tolist()))
    return _overwrite_columns(
        arr,
        axis,
        targets,
        lambda t: src[(slice(None),) + np.unravel_index(np.array([lookup[int(j)] for j in t], np.intp), rest)],
    )


# -- trees ---------------------------------------------------------------------------------------
def _takes_axis(fn: Callable[..., Any]) -> bool:
    try:
        return "axis" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def contaminate(key: Key, params: PyTree, codebook: Codebook, fn: Callable[..., Any], **kwargs: Any) -> PyTree:
    """Apply ``fn(key, columns, **kwargs)`` to the code's columns of every protected leaf.

    Each group of the codebook is packed into its (K, m) column matrix, ``fn`` gets it with a key
    derived from ``key`` and the group's name (and ``axis=0`` if ``fn`` has an ``axis``
    parameter), and the results are unpacked into the leaves; unprotected leaves are returned as
    they are.  ``fn`` is one of this module's models or your own (it must keep the shape).
    Scales such as :func:`gross_errors`' rms are per group.  ``params`` is not modified.
    """
    cols = codebook.pack(params)
    out: dict[str, np.ndarray] = {}
    for name in list(cols):
        kw = dict(kwargs)
        if _takes_axis(fn):
            kw.setdefault("axis", 0)
        y = cols.pop(name)  # released as soon as its group is done: bounded memory
        res = np.asarray(fn(jax.random.fold_in(_as_key(key), _name_hash(name)), y, **kw))
        if res.shape != y.shape:
            raise ValueError(f"fn changed the shape of group {name!r}'s columns: {y.shape} → {res.shape}")
        out[name] = res
        del y, res
    leaves = codebook.unpack(out)
    del out
    return codebook.replace(params, leaves)


def _as_key(key: Key) -> ArrayLike:
    return jax.random.key(int(key)) if isinstance(key, (int, np.integer)) else key


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little") >> 1
