"""Keyed seal: a secret random sketch of the deployed weights, checked after purification.

l1 purification cannot see a change that lies in range(A), and range(A) is public: the columns of
any leaf with ≥ n columns span it.  The seal closes that gap with the one thing the attacker lacks,
the key.  Per leaf, the flat entries (C order) are cut into chunks of ``chunk`` (≤ 4096)
consecutive entries, and each chunk w ∈ R^c gets ``rows`` (32) Rademacher sketch values r_j·w.
The signs r_j ∈ {±1}^c are SHAKE-256 of BLAKE2b(seal key, path, chunk index): numpy only, float64
accumulation, the same bits on every machine.  The sketch values are stored encrypted (XOR with a
keystream under a second derived key), so the codebook file reveals nothing about the signs.

Verification of a purified leaf P against the sealed W, with e = P − W − δ the purification error
(|e_i| ≤ ε per entry) and δ a tampering: a chunk passes iff every |r_j·(P − W)| ≤ τ, where
τ = t·√c·ε and t = √(2 ln(2·rows·chunks / 2⁻⁴⁰)).

* No false alarm: for signs independent of e, Hoeffding gives P(|r·e| > t‖e‖₂) ≤ 2e^(−t²/2) and
  ‖e‖₂ ≤ √c·ε, so an honest leaf fails with probability ≤ 2⁻⁴⁰ (union over its rows and chunks).
* Detection: let |δ_i| > τ + ε for one entry i, δ chosen without the key.  Fix every sign but
  r_i: the two values of r_i give statistics s ± a with |a| = |δ_i + e_i| > τ, and |s + a|, |s − a|
  cannot both be ≤ τ.  So each row detects with probability ≥ 1/2, independently: P(miss) ≤ 2⁻³².

ε defaults to (64·eps(solve dtype) + eps(leaf dtype))·max|W| (``default_err``; pass the
purification's error bound instead when known, one number or one per chunk: ``purify`` derives
it per chunk from the certificates, see ``jaxpurify._seal_bound``).  Then a float32 leaf's smallest single-entry change
guaranteed detected is (t·√c + 1)·ε ≈ 550·ε ≈ 0.4% of max|W| (t ≈ 8–9, √4096 = 64), a float64
leaf's ≈ 8e-12·max|W|; a 16-bit leaf's rounding noise alone makes it ≈ 4·max|W| at c = 4096, so
seal bfloat16/float16 trees with a small ``chunk`` (c = 16: ≈ 0.3·max|W| bfloat16, 0.04 float16).
``LeafVerdict.detectable`` states it per leaf.

Freshness: a seal carries a ``counter`` and its creation time (``created``, Unix seconds), both
under the codebook file's MAC.  A seal says the weights are those sealed, not that they are the
latest: an older sealed file with its older weights verifies.  A deployment that keeps the lowest
counter it accepts refuses such a replay (``Codebook.load(..., min_seal_counter=N)``).

Why chunks and signs: the threshold grows as √c, so chunks keep it small and say where a change is
(a failed chunk is an entry range); ±1 signs are plain hash bits and make the detection bound hold
for every δ, with no assumption on its distribution.  Storage is rows/c = 1/128 of the entries.

Inference state (BatchNorm statistics) is not purified, so a sketch could only say that it
changed.  The seal keeps an exact copy of it instead (``state``: its bytes, little-endian, base64
in the file), and :func:`restore` puts the copy back: exact whatever the damage, for 4/3 of the
state's bytes in the file (Flax's ResNet-18: 9,600 batch statistics, 56 KB).  The copy is not
secret (the deployed checkpoint holds the same values); the codebook file's MAC authenticates it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify import _keys
from jaxpurify._numerics import is_numpy_dtype, leaf_shape, widen
from jaxpurify._threads import single_threaded_blas
from jaxpurify.tree import leaves_with_paths

CHUNK = 4096
ROWS = 32
FALSE_ALARM = 2.0**-40
ERR_ULPS = 64


@dataclasses.dataclass(frozen=True)
class LeafVerdict:
    """Seal verification of one leaf.  ``statistic`` and ``tolerance`` are per-entry errors in the
    leaf's units: the largest |r·(P − W)| / (t·√c) over the leaf's rows and chunks, and ε."""

    path: str
    verified: bool
    statistic: float
    tolerance: float
    detectable: float  # smallest single-entry change guaranteed detected (P(miss) ≤ 2^-rows)
    failed_chunks: tuple[tuple[int, int], ...]  # flat entry ranges [start, stop) that failed

    def as_dict(self) -> dict[str, Any]:
        """The fields, JSON-ready (``failed_chunks`` as [start, stop] lists)."""
        d = dataclasses.asdict(self)
        d["failed_chunks"] = [list(c) for c in self.failed_chunks]
        return d


@dataclasses.dataclass(frozen=True)
class _Sealed:
    shape: tuple[int, ...]
    dtype: str
    max_abs: float
    sketch: np.ndarray = dataclasses.field(repr=False)  # (chunks, rows) float64; secret like the signs


def _signs(sign_key: bytes, path: str, index: int, rows: int, size: int) -> np.ndarray:
    """(rows, size) sign bits b (the sign is 1 − 2b) of one chunk."""
    seed = hashlib.blake2b(path.encode() + b"\0" + index.to_bytes(8, "little"), digest_size=32, key=sign_key).digest()
    raw = np.frombuffer(hashlib.shake_256(seed).digest(-(-rows * size // 8)), np.uint8)
    return np.unpackbits(raw)[: rows * size].reshape(rows, size).astype(np.float64)


def _sketch(sign_key: bytes, path: str, leaf: Any, rows: int, chunk: int) -> tuple[np.ndarray, float]:
    """(chunks, rows) sketch values and max|w| (NaN if any entry is not finite).  Chunk by chunk,
    so the working memory is a few chunks whatever the leaf's size."""
    flat = np.asarray(leaf).reshape(-1)
    out = np.empty((-(-flat.size // chunk), rows))
    top, finite = 0.0, True
    with single_threaded_blas():  # one small product per chunk: BLAS threads only fight XLA's
        for k, start in enumerate(range(0, flat.size, chunk)):
            w = widen(flat[start : start + chunk])
            out[k] = w.sum() - 2.0 * (_signs(sign_key, path, k, rows, w.size) @ w)  # Σ (1 − 2b) w
            finite = finite and bool(np.all(np.isfinite(w)))
            top = max(top, float(np.max(np.abs(w))))
    return out, top if finite else math.nan


def _keystream(enc_key: bytes, nonce: bytes, path: str, size: int) -> np.ndarray:
    seed = hashlib.blake2b(nonce + path.encode(), digest_size=32, key=enc_key).digest()
    return np.frombuffer(hashlib.shake_256(seed).digest(size), np.uint8)


def _crypt(enc_key: bytes, nonce: bytes, path: str, data: bytes) -> bytes:
    out: bytes = (np.frombuffer(data, np.uint8) ^ _keystream(enc_key, nonce, path, len(data))).tobytes()
    return out


def check_counter(counter: Any, what: str = "counter") -> int:
    """A seal counter: an int in [0, 2**63)."""
    if isinstance(counter, bool) or not isinstance(counter, (int, np.integer)) or not 0 <= counter < 2**63:
        raise ValueError(f"{what} must be an int in [0, 2**63), got {counter!r}")
    return int(counter)


class Seal:
    """Per-leaf keyed sketches of a parameter tree (make one with ``Codebook.seal``); ``counter``
    and ``created`` (Unix seconds, None for files written before they existed) say how fresh."""

    def __init__(
        self,
        secret: bytes,
        leaves: dict[str, _Sealed],
        *,
        chunk: int,
        rows: int,
        nonce: bytes,
        state: Mapping[str, np.ndarray] | None = None,
        counter: int = 0,
        created: int | None = None,
    ):
        self._sign_key = _keys.derive(secret, "seal-signs")
        self._enc_key = _keys.derive(secret, "seal-encrypt")
        self.leaves = leaves
        self.state = dict(state or {})  # exact read-only copies of the inference state, by path
        self.chunk, self.rows, self.nonce = chunk, rows, nonce
        self.counter, self.created = counter, created

    @classmethod
    def create(
        cls,
        secret: bytes,
        params: Any,
        *,
        chunk: int = CHUNK,
        rows: int = ROWS,
        state: Mapping[str, Any] | None = None,
        counter: int = 1,
    ) -> Seal:
        """Seal every floating leaf of ``params`` (protected or not: a leaf purify leaves alone is
        then checked to be unchanged), and keep an exact copy of every leaf of ``state`` (by
        path: the inference state)."""
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        if isinstance(rows, bool) or not isinstance(rows, int) or not 8 <= rows <= 256:
            raise ValueError(f"rows must be an int in [8, 256], got {rows!r}")
        counter = check_counter(counter)
        seal = cls(secret, {}, chunk=chunk, rows=rows, nonce=os.urandom(16), counter=counter, created=int(time.time()))
        for path, leaf in leaves_with_paths(params)[0]:
            dtype = getattr(leaf, "dtype", None)  # checked first: typed PRNG keys have no NumPy form
            if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
                continue
            a = np.asarray(leaf)
            if not jnp.issubdtype(a.dtype, jnp.floating) or a.size == 0:
                continue
            sketch, top = _sketch(seal._sign_key, path, a, rows, chunk)
            if math.isnan(top):
                raise ValueError(f"leaf {path!r}: cannot seal non-finite weights")
            seal.leaves[path] = _Sealed(a.shape, a.dtype.name, top, sketch)
        for path, leaf in (state or {}).items():
            seal.state[path] = _copy(path, leaf)
        if not seal.leaves and not seal.state:
            raise ValueError("params has no floating leaf to seal")
        return seal

    # -- storage (inside the authenticated codebook file) ----------------------------------
    def to_json(self) -> dict[str, Any]:
        """The seal as JSON for the codebook file: chunk, rows, nonce; per leaf its shape, dtype,
        max |entry| and sketch encrypted under the secret (base64); state copies (base64 bits) if
        any; counter and creation time.  :meth:`from_json` reads it back."""
        leaves = {}
        for path, s in self.leaves.items():
            blob = _crypt(self._enc_key, self.nonce, path, s.sketch.astype("<f8").tobytes())
            leaves[path] = {
                "shape": list(s.shape),
                "dtype": s.dtype,
                "max_abs": s.max_abs,
                "sketch": base64.b64encode(blob).decode(),
            }
        out = {"chunk": self.chunk, "rows": self.rows, "nonce": self.nonce.hex(), "leaves": leaves}
        if self.state:  # files without copies stay as they were
            out["state"] = {
                path: {
                    "shape": list(a.shape),
                    "dtype": a.dtype.name,
                    "data": base64.b64encode(_bits(a).astype(_bits(a).dtype.newbyteorder("<")).tobytes()).decode(),
                }
                for path, a in self.state.items()
            }
        out.update(counter=self.counter, created=self.created)
        return out

    @classmethod
    def from_json(cls, data: Any, secret: bytes) -> Seal:
        """The seal :meth:`to_json` wrote, its sketches decrypted with ``secret``; ValueError
        ("malformed codebook file: bad seal ...") if ``data`` is not one."""
        try:
            chunk, rows, nonce = int(data["chunk"]), int(data["rows"]), bytes.fromhex(data["nonce"])
            if chunk < 1 or not 8 <= rows <= 256:
                raise ValueError(f"chunk {chunk}, rows {rows} out of range")
            counter = check_counter(data.get("counter", 0), "seal counter")  # 0: sealed before counters
            created = data.get("created")
            if created is not None and (isinstance(created, bool) or not isinstance(created, int)):
                raise ValueError(f"seal creation time must be an int or null, got {created!r}")
            seal = cls(secret, {}, chunk=chunk, rows=rows, nonce=nonce, counter=counter, created=created)
            for path, d in data["leaves"].items():
                shape = tuple(int(v) for v in d["shape"])
                blob = _crypt(seal._enc_key, nonce, path, base64.b64decode(d["sketch"], validate=True))
                sketch = np.frombuffer(blob, "<f8").reshape(-(-math.prod(shape) // chunk), rows)
                seal.leaves[path] = _Sealed(shape, str(d["dtype"]), float(d["max_abs"]), sketch.copy())
            for path, d in data.get("state", {}).items():
                shape, dtype = tuple(int(v) for v in d["shape"]), np.dtype(jnp.dtype(str(d["dtype"])))
                bits = np.dtype(f"u{dtype.itemsize}")
                raw = np.frombuffer(base64.b64decode(d["data"], validate=True), bits.newbyteorder("<"))
                a = raw.astype(bits).view(dtype).reshape(shape)
                a.flags.writeable = False
                seal.state[str(path)] = a
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed codebook file: bad seal ({type(e).__name__}: {e})") from None
        return seal

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Seal) and self.to_json() == other.to_json() and self._sign_key == other._sign_key

    def __repr__(self) -> str:
        copies = f", {len(self.state)} state copies" if self.state else ""
        return f"Seal({len(self.leaves)} leaves, chunk={self.chunk}, rows={self.rows}, counter={self.counter}{copies})"


def _copy(path: str, leaf: Any) -> np.ndarray:
    """A read-only host copy of an inference-state leaf, refused if it has no NumPy form."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and not is_numpy_dtype(dtype):
        raise ValueError(f"leaf {path!r}: cannot keep a copy of a {dtype} leaf")
    a = np.array(leaf, copy=True)
    if a.dtype == object or a.dtype.itemsize not in (1, 2, 4, 8):
        raise ValueError(f"leaf {path!r} ({a.dtype}) is not a numeric array the seal can copy")
    a.flags.writeable = False
    return a


def _bits(a: np.ndarray) -> np.ndarray:
    """The entries' bit patterns as unsigned ints of their size (compared and stored as such)."""
    return np.ascontiguousarray(a).view(np.dtype(f"u{a.dtype.itemsize}"))


def restore(copy: np.ndarray, leaf: Any, path: str) -> tuple[Any, int | None]:
    """(``copy`` in the form of ``leaf``, entries of ``leaf`` whose bits differ from it).

    The leaf itself comes back when nothing differs.  A NumPy leaf gets a NumPy copy, a JAX leaf
    a JAX array on the leaf's sharding; a traced or multi-process leaf is replaced without
    comparing (count None)."""
    shape, dtype = leaf_shape(leaf), getattr(leaf, "dtype", None)
    if shape != copy.shape or (dtype is not None and (not is_numpy_dtype(dtype) or np.dtype(dtype) != copy.dtype)):
        raise ValueError(f"leaf {path!r} is {dtype}{list(shape)}, the seal's copy is {copy.dtype}{list(copy.shape)}")
    if isinstance(leaf, jax.core.Tracer):
        return jnp.asarray(copy), None
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.make_array_from_callback(copy.shape, leaf.sharding, lambda idx: copy[idx]), None
    have = np.asarray(leaf)
    differ = int(np.count_nonzero(_bits(have) != _bits(copy)))
    if differ == 0:
        return leaf, 0
    if isinstance(leaf, jax.Array):
        return jax.device_put(copy, leaf.sharding), differ
    return np.array(copy, dtype=have.dtype), differ


def default_err(dtype: str, max_abs: float) -> float:
    """ε when no bound is given: 64 ulps of the solve dtype (float32 at least) plus one ulp of the
    leaf's dtype (the cast back), relative to the sealed leaf's max|W|."""
    solve = jnp.promote_types(dtype, jnp.float32)
    return (ERR_ULPS * float(jnp.finfo(solve).eps) + float(jnp.finfo(dtype).eps)) * max_abs


def _errors(seal: Seal, err: float | Mapping[str, float | np.ndarray] | None) -> dict[str, np.ndarray]:
    """Per sealed leaf, ε per chunk (float64, one value per chunk) from ``err`` (see :func:`verify`)."""
    out: dict[str, np.ndarray] = {}
    for path, s in seal.leaves.items():
        e = err.get(path, None) if isinstance(err, Mapping) else err
        if e is None:
            e = default_err(s.dtype, s.max_abs)
        chunks = -(-math.prod(s.shape) // seal.chunk)
        if isinstance(e, bool) or not isinstance(e, (int, float, np.floating, np.integer, np.ndarray)):
            raise ValueError(f"err for leaf {path!r} must be a finite number ≥ 0 or one per chunk, got {e!r}")
        a = np.asarray(e, np.float64)
        if a.ndim == 0:
            a = np.full(chunks, float(a))
        if a.shape != (chunks,) or not np.all((a >= 0) & (a < math.inf)):
            raise ValueError(
                f"err for leaf {path!r} must be a finite number ≥ 0 or {chunks} of them (one per chunk), got {e!r}"
            )
        out[path] = a
    return out


def verify(
    seal: Seal,
    params: Any,
    err: float | Mapping[str, float | np.ndarray] | None = None,
    *,
    optional: frozenset[str] | set[str] = frozenset(),
) -> dict[str, LeafVerdict]:
    """Check every sealed leaf of ``params`` (a purified tree) against the seal.

    ``err``: the per-entry absolute error bound ε of the purification (‖e‖₂ ≤ √c·ε on every chunk
    of c entries), one number or per leaf path, each a number or an array of one ε per chunk (a
    missing path or None: ``default_err`` of the sealed leaf).  Returns ``{path: LeafVerdict}``;
    with ε per chunk, its ``statistic`` and ``tolerance`` are those of the chunk with the largest
    statistic / ε (so ``verified`` iff statistic ≤ tolerance), and ``detectable`` the largest
    over the chunks.
    Raises ``ValueError`` naming the leaf if a sealed leaf is missing (unless it is in
    ``optional``: it is then not checked) or has another shape.
    """
    have = dict(leaves_with_paths(params)[0])
    errs = _errors(seal, err)
    out = {}
    for path, s in seal.leaves.items():
        if path not in have:
            if path in optional:
                continue
            raise ValueError(f"leaf {path!r} of the seal is missing from params")
        leaf = np.asarray(have[path])
        if leaf.shape != s.shape:
            raise ValueError(f"leaf {path!r} has shape {leaf.shape}, the seal has {s.shape}")
        diff = np.abs(_sketch(seal._sign_key, path, leaf, seal.rows, seal.chunk)[0] - s.sketch).max(axis=1)
        sizes = np.minimum(seal.chunk, leaf.size - seal.chunk * np.arange(diff.size))
        t = math.sqrt(2.0 * math.log(2.0 * seal.rows * diff.size / FALSE_ALARM))
        per_entry = diff / (t * np.sqrt(sizes))  # NaN where the leaf is not finite
        eps = errs[path]
        ok = per_entry <= eps
        bad = np.flatnonzero(~ok)
        with np.errstate(divide="ignore", invalid="ignore"):  # ε = 0 (an all-zero leaf): any change is infinitely far
            ratio = np.where(per_entry > 0, per_entry / eps, 0.0)
        worst = int(np.argmax(np.where(np.isnan(per_entry), np.inf, ratio)))
        out[path] = LeafVerdict(
            path=path,
            verified=bool(ok.all()),
            statistic=float(per_entry[worst]) if np.isfinite(per_entry[worst]) else math.inf,
            tolerance=float(eps[worst]),
            detectable=float(np.max((t * np.sqrt(sizes) + 1.0) * eps)),
            failed_chunks=tuple((int(k) * seal.chunk, int(k) * seal.chunk + int(sizes[k])) for k in bad),
        )
    return out
