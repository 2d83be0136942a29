"""Codebook keys: strength, refusal of weak or malformed keys, and the matrices they name (pinned)."""

import hashlib
import math
import struct
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify._keys import WeakKeyWarning, gaussian_matrix, secret_from_key

KEY42 = b"\x00\x00\x00\x00\x2a\x00\x00\x00"  # the little-endian key words (0, 42) of jax.random.key(42)

# gaussian_matrix(key(42), "hidden/kernel", 6, 2), computed once with the code as it was before this
# change (commit 5c2499e) and written down; pins A for every existing key(42) codebook.
GOLDEN = np.array(
    [
        [float.fromhex("0x1.b2c4ba1fd237fp-1"), float.fromhex("0x1.cd61d52a4f39bp-3")],
        [float.fromhex("0x1.2f94edb0ef3a2p-3"), float.fromhex("0x1.5da020efa03d5p-2")],
        [float.fromhex("-0x1.06d58f31978c3p-3"), float.fromhex("0x1.bfbfe2b9797bfp-5")],
        [float.fromhex("0x1.0b5513995f295p-1"), float.fromhex("0x1.21e5364d396e0p-2")],
        [float.fromhex("-0x1.a83b0866ef2fep-1"), float.fromhex("0x1.b15c021d232ecp-4")],
        [float.fromhex("-0x1.0e4078e47a578p+0"), float.fromhex("0x1.af907f61aeeddp-2")],
    ]
)


def _one_entry(secret: bytes, name: str, K: int, n: int, i: int, j: int) -> float:
    """A[i, j] re-derived in plain Python (hashlib, struct, math): the documented construction."""
    count = K * n
    half = (count + 1) // 2
    flat = i * n + j
    pair, use_sin = (flat, False) if flat < half else (flat - half, True)

    def uniform(idx):  # idx-th uint64 of the BLAKE2b counter stream, top 53 bits, in (0, 1]
        block, off = divmod(idx, 8)
        digest = hashlib.blake2b(
            b"jaxpurify/A/v1/" + name.encode() + b"/" + struct.pack("<Q", block), digest_size=64, key=secret
        ).digest()
        (word,) = struct.unpack_from("<Q", digest, 8 * off)
        return ((word >> 11) + 1) / 2.0**53

    u1, u2 = uniform(2 * pair), uniform(2 * pair + 1)
    trig = math.sin if use_sin else math.cos
    return math.sqrt(-2.0 * math.log(u1)) * trig(2.0 * math.pi * u2) / math.sqrt(n)


def test_golden_matrix_for_key_42():
    A = gaussian_matrix(KEY42, "hidden/kernel", 6, 2)
    np.testing.assert_allclose(A, GOLDEN, rtol=1e-14, atol=0)
    # the literal is not self-referential: an independent re-derivation agrees, cosine and sine halves
    for i, j in [(0, 0), (2, 1), (5, 1), (3, 0)]:
        assert _one_entry(KEY42, "hidden/kernel", 6, 2, i, j) == pytest.approx(GOLDEN[i, j], rel=1e-13)
    # a larger odd-sized matrix (a pair split across the halves), against the same re-derivation
    B = gaussian_matrix(KEY42, "conv1/kernel", 17, 5)
    for i, j in [(0, 0), (8, 2), (16, 4), (9, 1)]:
        assert _one_entry(KEY42, "conv1/kernel", 17, 5, i, j) == pytest.approx(B[i, j], rel=1e-13)


def test_jax_key_raw_key_and_int_seed_keep_todays_secret():
    tree = {"w": jnp.zeros((4, 16))}
    for key in (jax.random.key(42), jax.random.PRNGKey(42), 42, np.int64(42)):
        with pytest.warns(WeakKeyWarning, match="32 bits"):
            cb = jp.Codebook.create(tree, key, select=lambda p, l: 1)  # one group named "w", K = 16
        assert cb.secret == KEY42
    np.testing.assert_allclose(np.asarray(cb.matrix("w"), np.float64), gaussian_matrix(KEY42, "w", 16, 4), rtol=1e-7)


def test_default_key_is_256_bits_from_the_os_without_warning():
    tree = {"w": jnp.zeros((4, 16))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b = jp.Codebook.create(tree), jp.Codebook.create(tree)
        c = jp.Codebook.create(tree, bytes(range(16)))
    assert len(a.secret) == 32 and a.secret != b.secret
    name = next(iter(a.groups))
    assert not np.allclose(a.matrix(name), b.matrix(name))
    assert c.secret == bytes(range(16))


def test_large_int_seeds_are_not_truncated():
    with pytest.warns(WeakKeyWarning, match="64 bits"):
        big = secret_from_key(2**32 + 42)
    assert big == b"\x01\x00\x00\x00\x2a\x00\x00\x00" != KEY42  # words (1, 42), as key(2**32+42) under x64
    with pytest.warns(WeakKeyWarning):
        huge = secret_from_key(2**70 + 5)
    assert huge == (2**70 + 5).to_bytes(16, "little")  # no OverflowError
    with pytest.raises(ValueError, match="512-bit"):
        secret_from_key(2**600)


@pytest.mark.parametrize(
    "key, error, match",
    [
        (b"", ValueError, "16–64 bytes"),
        (b"x" * 15, ValueError, "got 15"),
        (b"x" * 65, ValueError, "got 65"),
        (-1, ValueError, "non-negative"),
        (42.0, TypeError, "float"),
        (np.float32(42.0), TypeError, "float32"),
        ("secret", TypeError, "str"),
        (True, TypeError, "bool"),
        (np.zeros(2, np.int32), TypeError, "int32"),
        (np.zeros((2, 2), np.uint32), TypeError, r"\(2, 2\)"),
    ],
)
def test_weak_or_malformed_keys_are_refused(key, error, match):
    with pytest.raises(error, match=match):
        jp.Codebook.create({"w": jnp.zeros((4, 16))}, key)


def test_empty_secret_never_reaches_blake2b():
    with pytest.raises(ValueError, match="empty key"):
        gaussian_matrix(b"", "w", 8, 2)


def test_secret_is_not_in_repr_str_or_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb = jp.Codebook.create({"w": jnp.zeros((4, 16))}, 1234567)
    text = repr(cb) + str(cb) + str(cb.capacity()) + " ".join(str(w.message) for w in caught)
    assert "1234567" not in text and cb.secret.hex() not in text and repr(cb.secret) not in text
    strong = jp.Codebook.create({"w": jnp.zeros((4, 16))})
    assert strong.secret.hex() not in repr(strong) + str(strong)
