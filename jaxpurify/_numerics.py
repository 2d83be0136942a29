"""Small numerical helpers the solver, the certificate, the codebook and purify share.

* :func:`matmul` / :func:`einsum` at ``Precision.HIGHEST``: the default precision lets an
  accelerator multiply float32 in bfloat16 or TF32 passes (about 3 significant digits), far
  coarser than the certificate's error bounds assume; on CPU HIGHEST is the default anyway.
* :func:`bisect`: per column, where a monotone compare-and-count predicate turns true, in a fixed
  number of halvings (a few dozen passes over a block instead of a per-column sort, which XLA's
  CPU backend runs ~10× slower).
* :func:`leaf_dtype` / :func:`leaf_shape` / :func:`is_numpy_dtype`: a leaf's dtype and shape
  without converting it (a typed PRNG key cannot become a NumPy array).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

HIGHEST = lax.Precision.HIGHEST


def matmul(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """a @ b at full float precision on every backend."""
    return jnp.matmul(a, b, precision=HIGHEST)


def einsum(spec: str, *operands: jax.Array) -> jax.Array:
    """``jnp.einsum`` at full float precision on every backend."""
    return jnp.einsum(spec, *operands, precision=HIGHEST)


def bisect(
    ok: Callable[[jax.Array], jax.Array], lo: jax.Array, hi: jax.Array, steps: int
) -> tuple[jax.Array, jax.Array]:
    """Narrow integer brackets (lo, hi] with ``ok(lo)`` false and ``ok(hi)`` true, elementwise,
    for a predicate monotone in its argument (false below a threshold, true from it on).

    Each of the ``steps`` halvings evaluates ``ok`` once at mid = lo + ⌊(hi − lo)/2⌋ (no
    overflow near the integer's limits); after ⌈log₂(hi − lo)⌉ steps hi is the threshold."""

    def body(_: Any, lh: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = lh
        mid = lo + (hi - lo) // 2
        good = ok(mid)
        return jnp.where(good, lo, mid), jnp.where(good, mid, hi)

    lo, hi = lax.fori_loop(0, steps, body, (lo, hi))
    return lo, hi


def widen(a: np.ndarray) -> np.ndarray:
    """``a`` as float64, quietly: damaged weights may hold signaling NaNs (an exponent flipped to
    all ones over a mantissa without its top bit), whose cast raises NumPy's "invalid value"
    warning although the NaN it gives is the one wanted."""
    with np.errstate(invalid="ignore"):
        return np.asarray(a).astype(np.float64)


def leaf_dtype(leaf: Any) -> Any:
    """A leaf's dtype without converting it (typed PRNG keys cannot become NumPy arrays)."""
    dtype = getattr(leaf, "dtype", None)
    return dtype if dtype is not None else np.asarray(leaf).dtype


def leaf_shape(leaf: Any) -> tuple[int, ...]:
    """A leaf's shape as plain ints, without converting it."""
    shape = getattr(leaf, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else np.shape(leaf)


def is_numpy_dtype(dtype: Any) -> bool:
    """Does NumPy know this dtype (not, e.g., a typed PRNG key's)?"""
    try:
        np.dtype(dtype)
    except TypeError:
        return False
    return True
