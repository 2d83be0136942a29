"""Exact power-of-two units per column, read from the bits (XLA's CPU backend flushes subnormals
to zero in arithmetic and comparisons, so a column of values below 2^-126 would otherwise be
solved as a zero column and "certified" as x = 0).

``exponents`` gives every finite entry's binary exponent from its bit pattern; ``column_exponent``
picks, per column, the median one (the max when most entries are 0); ``scale`` multiplies by
2^-e exactly, subnormal inputs included, and ``unscale`` multiplies by 2^e, rounded to nearest
(ties to even) as IEEE arithmetic would, subnormal results included: what the solver computed in
the column's own units goes back to the caller's without a flush to zero.  Scaling a column by
2^k shifts e by k and leaves the scaled column bit for bit the same, which is what makes the
solver's answer independent of units.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import DTypeLike

from jaxpurify._numerics import bisect

ZERO = -(1 << 20)  # the exponent given to zeros and non-finite entries


def _layout(dtype: DTypeLike) -> tuple[Any, np.dtype[Any], int, int]:
    fi = jnp.finfo(dtype)
    ibits = np.dtype(np.int32 if np.dtype(dtype).itemsize == 4 else np.int64)
    return fi, ibits, int(fi.nmant), int(fi.minexp) - int(fi.nmant)  # lowest subnormal exponent


def _split(y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mantissa-as-float, exponent shift, subnormal?) with y = mant · 2^shift exactly."""
    fi, ibits, nmant, low = _layout(y.dtype)
    b = lax.bitcast_convert_type(y, ibits)
    mant_mask = (1 << nmant) - 1
    expo_field = (b >> nmant) & ((1 << (8 * ibits.itemsize - 1 - nmant)) - 1)
    sub = (expo_field == 0) & ((b & mant_mask) != 0)
    m = (b & mant_mask).astype(y.dtype)  # exact: fewer than nmant + 1 bits
    m = jnp.where(b < 0, -m, m)
    return jnp.where(sub, m, y), jnp.where(sub, low, 0), sub


def exponents(y: jax.Array, finite: jax.Array) -> jax.Array:
    """Per entry e with 2^(e−1) ≤ |y| < 2^e, subnormals included; ``ZERO`` for 0 and non-finite."""
    hi, shift, _ = _split(jnp.where(finite, y, 0.0))
    _, e = jnp.frexp(hi)
    return jnp.where(finite & (hi != 0), e + shift, ZERO)


def column_exponent(y: jax.Array, finite: jax.Array) -> jax.Array:
    """Per column the median entry exponent over finite nonzero entries (the max if most are 0)."""
    e = exponents(y, finite)
    live = e > ZERO
    cnt = jnp.sum(live, axis=0)
    half = (cnt + 1) // 2
    lo = jnp.full(e.shape[1:], -1 << 12, e.dtype)  # count(e ≤ lo) < half
    hi = jnp.full(e.shape[1:], 1 << 12, e.dtype)  # count(e ≤ hi) ≥ half
    _, hi = bisect(lambda mid: jnp.sum(live & (e <= mid), axis=0) >= half, lo, hi, 13)
    return jnp.where(cnt > 0, hi, 0)


def is_subnormal(y: jax.Array) -> jax.Array:
    """Per entry: a nonzero value below the normal range, read from the bits (the CPU backend's
    comparisons would read it as 0)."""
    return _split(y)[2]


def is_zero(y: jax.Array) -> jax.Array:
    """Per entry: ±0 from the bits (a subnormal is not zero here, as it is in the CPU's comparisons)."""
    return _split(y)[0] == 0


def scale(y: jax.Array, e: jax.Array) -> jax.Array:
    """y · 2^-e per column, exactly (subnormal inputs read from their bits)."""
    hi, shift, _ = _split(y)
    return jnp.ldexp(hi, shift - e)


def _unscale_bits(v: jax.Array, e: jax.Array | int) -> jax.Array:
    """v · 2^e (e per column, broadcast against v), correctly rounded (to nearest, ties to even)
    from the bits, so subnormal results are kept where XLA's CPU arithmetic would flush them to
    zero; past the largest float: ±inf.  NaN, ±inf and zeros pass through.  The inverse of
    ``scale`` wherever v · 2^e is a normal float (then exact)."""
    _, ibits, nmant, _ = _layout(v.dtype)
    it = ibits.type
    hi, shift, _ = _split(v)  # v = hi · 2^shift with hi normal (or 0, or not finite)
    b = lax.bitcast_convert_type(hi, ibits)
    sign = b & it(np.iinfo(ibits).min)
    mag = b & it(np.iinfo(ibits).max)
    top = (1 << (8 * ibits.itemsize - 1 - nmant)) - 1  # the exponent field of inf
    expo = (mag >> nmant) + (jnp.asarray(e).astype(ibits) + shift)  # the result's biased exponent
    frac = mag & it((1 << nmant) - 1)
    normal = sign | (expo << nmant) | frac
    # below the normal range: the significand with its implicit bit, shifted right, ties to even
    # (a carry out of the top bit makes the smallest normal, as the encoding intends)
    s = jnp.clip(1 - expo, 1, nmant + 2)
    m = frac | it(1 << nmant)
    q = m >> s
    rem = m & ((it(1) << s) - 1)
    half = it(1) << (s - 1)
    q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).astype(ibits)
    bits = jnp.where(expo >= top, sign | it(top << nmant), jnp.where(expo >= 1, normal, sign | q))
    out = lax.bitcast_convert_type(bits, v.dtype)
    return jnp.where(jnp.isfinite(hi) & (hi != 0), out, hi)


@jax.custom_jvp
def unscale(v: jax.Array, e: jax.Array | int) -> jax.Array:
    """v · 2^e (e per column, broadcast against v), correctly rounded (to nearest, ties to even)
    from the bits, so subnormal results are kept where XLA's CPU arithmetic would flush them to
    zero; past the largest float: ±inf.  NaN, ±inf and zeros pass through.  The inverse of
    ``scale`` wherever v · 2^e is a normal float (then exact).  Differentiable in v: the
    derivative is 2^e (the bit operations themselves have none)."""
    return _unscale_bits(v, e)


@unscale.defjvp
def _unscale_jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[jax.Array, jax.Array]:
    v, e = primals
    # linear in the tangent (a product), so reverse mode can transpose it
    return _unscale_bits(v, e), tangents[0] * jnp.exp2(jnp.asarray(e).astype(tangents[0].dtype))
