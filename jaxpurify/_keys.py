"""Codebook secrets: where they come from, how strong they are, and what is derived from them.

A codebook's secret is a byte string, ``codebook.secret``.  Everything secret is a keyed BLAKE2b
function of it, each under its own label, so knowing one derived value tells nothing about another:

    A of a group        gaussian_matrix(secret, name, K, n)    (BLAKE2b counter mode, Box–Muller)
    file MAC key        derive(secret, "codebook-mac")
    seal keys           derive(secret, "seal-signs"), derive(secret, "seal-encrypt")

Where a secret comes from (:func:`secret_from_key`):

* ``None`` (the default): 32 bytes (256 bits) from ``os.urandom``.
* ``bytes``: used as given, 16–64 bytes (BLAKE2b takes keys of at most 64 bytes; fewer than 16
  bytes, 128 bits, is refused as guessable).
* a JAX key (typed ``jax.random.key`` or raw uint32 ``PRNGKey``) or a non-negative ``int`` seed,
  for reproducible research, with a :class:`WeakKeyWarning` stating how many bits it carries:
  its uint32 key words, little-endian, are the secret, so ``jax.random.key(42)`` and ``42`` give
  exactly the bytes (and so the matrices) they always gave.  An int seed below 2**64 is read as the
  two words (seed >> 32, seed & 0xffffffff), which is what ``jax.random.key`` gives for seeds
  below 2**63 under ``jax_enable_x64``; seeds below 2**32 are unchanged, but seeds in [2**32, 2**64)
  are no longer truncated to their low 32 bits (before, ``2**32 + 42`` silently named the same key
  as ``42``; to reopen a codebook made that way pass ``seed % 2**32``).  Seeds in [2**64, 2**512) become their
  little-endian bytes (at least 16); larger ones are refused.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterable
from typing import Any, SupportsInt

import numpy as np

MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64  # BLAKE2b's largest key
DEFAULT_SECRET_BYTES = 32


class WeakKeyWarning(UserWarning):
    """A codebook key with fewer bits than a fresh 256-bit secret (a JAX key or an int seed)."""


def new_secret() -> bytes:
    """256 bits from the operating system's generator."""
    return os.urandom(DEFAULT_SECRET_BYTES)


def words_to_bytes(words: Iterable[SupportsInt]) -> bytes:
    """uint32 key words → the little-endian byte string every older codebook used as its secret."""
    return b"".join(int(w).to_bytes(4, "little") for w in words)


def _is_typed_key(key: object) -> bool:
    import jax

    dtype = getattr(key, "dtype", None)
    # jax.dtypes imports issubdtype without the `as` form that marks a re-export
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)  # type: ignore[attr-defined]


def _warn_weak(what: str, bits: int) -> None:
    warnings.warn(
        f"codebook key from {what} carries at most {bits} bits: fine for reproducible research, "
        "guessable by anyone holding the deployed weights if the seed is small (a seed like 42 is "
        "found in a few dozen tries); use key=None (256 bits from the OS) to protect a deployment",
        WeakKeyWarning,
        stacklevel=4,
    )


def _int_secret(seed: int) -> tuple[bytes, int]:
    if seed < 0:
        raise ValueError(f"key: an int seed must be non-negative, got {seed}")
    if seed < 2**64:  # the two words jax.random.key(seed) has for a 64-bit seed
        return words_to_bytes((seed >> 32, seed & 0xFFFFFFFF)), 32 if seed < 2**32 else 64
    size = max(MIN_SECRET_BYTES, -(-seed.bit_length() // 8))
    if size > MAX_SECRET_BYTES:
        raise ValueError(
            f"key: an int seed of {seed.bit_length()} bits is longer than the {8 * MAX_SECRET_BYTES}-bit "
            "BLAKE2b key; pass at most 64 bytes"
        )
    return seed.to_bytes(size, "little"), 8 * size


def secret_from_key(key: Any = None) -> bytes:
    """The secret bytes a ``Codebook.create(params, key)`` call binds to (see the module doc)."""
    if key is None:
        return new_secret()
    if isinstance(key, (bytes, bytearray, memoryview)):
        secret = bytes(key)
        if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
            raise ValueError(
                f"key: a byte key must have {MIN_SECRET_BYTES}–{MAX_SECRET_BYTES} bytes "
                f"(≥ 128 bits), got {len(secret)}; key=None draws 32 from the OS"
            )
        return secret
    if isinstance(key, (bool, np.bool_)):
        raise TypeError("key: a bool is not a key")
    if isinstance(key, (int, np.integer)):
        secret, bits = _int_secret(int(key))
        _warn_weak("an int seed", bits)  # the bound of its size class: the seed itself is the key, never logged
        return secret
    if isinstance(key, (float, complex, np.floating, np.complexfloating, str)):
        raise TypeError(
            f"key must be None, bytes (16–64), a JAX key or a non-negative int seed; got {type(key).__name__} "
            "(floats are not truncated into keys, strings are not hashed into keys)"
        )
    words: np.ndarray | None
    if _is_typed_key(key):
        import jax

        words = np.asarray(jax.random.key_data(key))
    else:
        words = np.asarray(key) if hasattr(key, "dtype") or isinstance(key, (list, tuple)) else None
    if words is None or words.dtype != np.uint32 or words.ndim != 1 or words.size == 0:
        desc = f"an array of dtype {words.dtype} and shape {words.shape}" if words is not None else type(key).__name__
        raise TypeError(
            "key must be None, bytes (16–64), a single jax.random.key, a raw uint32 PRNGKey or a "
            f"non-negative int seed; got {desc}"
        )
    # a leading zero word is what key(seed) gives for seed < 2**32: count it as carrying nothing
    nonzero = np.flatnonzero(words)
    bits = 32 * (words.size - (int(nonzero[0]) if nonzero.size else words.size))
    _warn_weak("a JAX key", max(bits, 32))
    return words_to_bytes(words)


def check_secret(secret: Any, what: str = "secret") -> bytes:
    """A stored secret: bytes of 1–64 bytes (legacy JAX-key secrets have 8, fresh ones 32)."""
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"{what} must be bytes, got {type(secret).__name__}")
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"{what} must have 1–{MAX_SECRET_BYTES} bytes, got {len(secret)} (an empty key would make A public)"
        )
    return bytes(secret)


def derive(secret: bytes, label: str, size: int = 32) -> bytes:
    """An independent subkey: BLAKE2b keyed by the secret over a label."""
    return hashlib.blake2b(b"jaxpurify/" + label.encode(), digest_size=size, key=check_secret(secret)).digest()


def key_id(secret: bytes) -> str:
    """A short public name of a secret (so a file can say "wrong key" rather than "tampered")."""
    return derive(secret, "key-id", 8).hex()


def gaussian_matrix(secret: bytes | tuple[int, ...], name: str, K: int, n: int) -> np.ndarray:
    """K × n i.i.d. N(0, 1/n) in float64, a pure function of (secret, name).

    BLAKE2b keyed by the secret in counter mode over ``"jaxpurify/A/v1/" + name + "/" + i`` gives
    uint64 words; their top 53 bits are uniforms u in (0, 1], paired by Box–Muller into normals
    (all cosines first, then all sines), filled into A row-major.  A tuple of uint32 words is taken
    as the secret of an older codebook (its little-endian bytes).
    """
    if not isinstance(secret, (bytes, bytearray)):
        secret = words_to_bytes(secret)
    secret = check_secret(secret)
    count = K * n
    nwords = 2 * (-(-count // 2))  # one uint64 per uniform, uniforms in pairs
    prefix = b"jaxpurify/A/v1/" + name.encode() + b"/"
    buf = bytearray()
    for i in range(-(-nwords // 8)):  # a 64-byte digest holds 8 uint64
        buf += hashlib.blake2b(prefix + i.to_bytes(8, "little"), digest_size=64, key=secret).digest()
    words = np.frombuffer(bytes(buf), dtype="<u8")[:nwords]
    u = ((words >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53
    u1, u2 = u[0::2], u[1::2]
    rad = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([rad * np.cos(2 * np.pi * u2), rad * np.sin(2 * np.pi * u2)])[:count]
    return z.reshape(K, n) / math.sqrt(n)
