"""The codebook: which leaves are encoded, along which axis, and the secret matrices.

A protected leaf W with K entries along its encoded axis is generated from a latent Θ with
n = ceil(K / redundancy) entries along that axis:  W = A Θ  (applied along the axis), with A a
K × n matrix of i.i.d. N(0, 1/n) entries.  A is a function of the secret and the leaf's path only,
derived with BLAKE2b in counter mode and a Box–Muller transform in float64 (``_keys``): it is the
same on any machine and under any JAX or NumPy version, and only the secret needs to be kept.
Keys are ``_keys``, the file and its key file ``_codebook_file``, the keyed seal ``_seal``.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify import _codebook_file, _keys, _layout, _seal
from jaxpurify._keys import gaussian_matrix  # noqa: F401  (re-exported: A's derivation lives with the keys)
from jaxpurify._layout import Group, LeafLayout, Segment
from jaxpurify._tree import leaves_with_paths

MIN_K = 8

Select = Callable[[str, Any], "bool | int | None"]


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    path: str
    shape: tuple[int, ...]
    dtype: str
    axis: int  # non-negative encoded axis
    K: int
    n: int

    @property
    def columns(self) -> int:
        return math.prod(self.shape) // self.K

    @property
    def max_outliers(self) -> int:
        """Most corrupted entries per column that a certificate can accept: ⌊(K − n)/2⌋."""
        return (self.K - self.n) // 2

    def latent_shape(self) -> tuple[int, ...]:
        s = list(self.shape)
        s[self.axis] = self.n
        return tuple(s)


class Codebook:
    """Encoded leaves of a parameter tree and their matrices.

    Create with :meth:`Codebook.create`; ``encode`` / ``decode`` map between parameters and latent;
    ``capacity`` tells how many corrupted entries per column can be certified; ``save`` / ``load``
    keep it as a small JSON file (the matrices are regenerated from the key, not stored).
    """

    def __init__(self, secret: bytes, redundancy: float, specs: list[LeafSpec], model=None, seal=None):
        self.secret = _keys.check_secret(secret)  # never printed: see __repr__
        self.model: _codebook_file.Fingerprint | None = model  # every leaf of the tree it was made for
        self.seal_record: _seal.Seal | None = seal
        self.redundancy = float(redundancy)
        self.specs: dict[str, LeafSpec] = {s.path: s for s in specs}
        self._cache: dict[str, np.ndarray] = {}
        # one group per encoded leaf, named by its path (so A is the leaf's matrix of version 1)
        self._leaves = {s.path: LeafLayout(s.path, s.shape, s.dtype, s.axis) for s in specs}
        self._groups = {
            s.path: Group(s.path, s.K, s.n, s.columns, s.dtype, (Segment(s.path, 0, math.prod(s.shape)),))
            for s in specs
        }

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def create(
        cls, params: Any, key: Any = None, *, redundancy: float = 4.0, select: Select | None = None
    ) -> "Codebook":
        """Choose the encoded leaves of ``params`` and bind them to a secret.

        ``key=None`` (the default) draws a 256-bit secret from ``os.urandom``; 16–64 ``bytes`` are
        used as given; a JAX key or a non-negative int seed is accepted for reproducible research
        with a ``WeakKeyWarning`` (it carries ≤ 64 bits; ``key(42)`` and ``42`` give the matrices
        they always gave).  See ``jaxpurify._keys``.

        By default every floating leaf whose last axis has K ≥ 8 entries is encoded along that
        axis (output features of Flax kernels, the only axis of biases), with n = ceil(K /
        redundancy).  ``select(path, leaf)`` may return False to skip a leaf, an int to choose its
        axis, or True / None for the default.
        """
        if not redundancy > 1.0:
            raise ValueError(f"redundancy must be > 1 (K/n), got {redundancy}")
        secret = _keys.secret_from_key(key)
        specs = []
        for path, leaf in leaves_with_paths(params)[0]:
            shape = _leaf_shape(leaf)
            dtype = _leaf_dtype(leaf)
            choice = select(path, leaf) if select is not None else None
            if choice is False:
                continue
            floating = jnp.issubdtype(dtype, jnp.floating)
            if isinstance(choice, bool) or choice is None:
                if not floating or len(shape) == 0:
                    if choice is True:
                        raise ValueError(f"leaf {path!r}: cannot encode a {dtype} leaf of shape {shape}")
                    continue
                if choice is None and shape[-1] < MIN_K:
                    continue
                axis = len(shape) - 1
            elif isinstance(choice, (int, np.integer)):
                if not floating or not -len(shape) <= int(choice) < len(shape):
                    raise ValueError(f"leaf {path!r}: select returned axis {choice} for shape {shape}, dtype {dtype}")
                axis = int(choice) % len(shape)
            else:
                raise TypeError(f"select({path!r}, leaf) must return bool, int or None, got {choice!r}")
            K = shape[axis]
            n = math.ceil(K / redundancy)
            if not n < K:
                raise ValueError(f"leaf {path!r}: K={K} along axis {axis} leaves no redundancy (n={n})")
            specs.append(LeafSpec(path, shape, dtype.name, axis, K, n))
        if not specs:
            raise ValueError("no leaf selected for encoding")
        return cls(secret, redundancy, specs, model=_codebook_file.fingerprint(params))

    # -- layout ------------------------------------------------------------------------------
    @property
    def groups(self) -> dict[str, Group]:
        """The codes, by name, in a fixed order: each a K × m array of columns y = A θ."""
        return dict(self._groups)

    @property
    def protected(self) -> tuple[str, ...]:
        """Paths of the protected leaves."""
        return tuple(self._leaves)

    def pack(self, params: Any) -> dict[str, np.ndarray]:
        """Per group, its entries of ``params`` as a (K, m) host array (column j = one code
        column y ∈ R^K; padding entries NaN).  Never writes to ``params``."""
        return _layout.pack(self._groups.values(), self._leaves, self._protected_values(params))

    def unpack(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inverse of :meth:`pack` for (K, m) arrays of any dtype (values, bool masks, …):
        per protected leaf path, an array of the leaf's shape."""
        return _layout.unpack(self._groups.values(), self._leaves, cols)

    def replace(self, params: Any, leaves: dict[str, Any]) -> Any:
        """A new tree: ``params`` with the given leaves (by path) replaced, each cast to the
        dtype of the leaf it replaces; other leaves are the same objects."""
        named, treedef = leaves_with_paths(params)
        present = {p for p, _ in named}
        unknown = [p for p in leaves if p not in present]
        if unknown:
            raise ValueError(f"leaf {unknown[0]!r} is not in params")
        out = []
        for path, leaf in named:
            if path in leaves:
                new = np.asarray(leaves[path])
                if new.shape != tuple(np.shape(leaf)):
                    raise ValueError(f"leaf {path!r}: replacement has shape {new.shape}, expected {np.shape(leaf)}")
                leaf = jnp.asarray(new, dtype=leaf.dtype) if isinstance(leaf, jax.Array) else new.astype(np.asarray(leaf).dtype)
            out.append(leaf)
        return jax.tree_util.tree_unflatten(treedef, out)

    def unprotected(self, params: Any) -> list[tuple[str, int, str]]:
        """``(path, size, reason)`` of every leaf of ``params`` that is not protected."""
        out = []
        for path, leaf in leaves_with_paths(params)[0]:
            if path in self._leaves:
                continue
            dtype = _leaf_dtype(leaf)
            reason = "not selected" if jnp.issubdtype(dtype, jnp.floating) else f"not floating ({dtype})"
            out.append((path, math.prod(_leaf_shape(leaf)), reason))
        return out

    def _protected_values(self, params: Any) -> dict[str, Any]:
        by_path = dict(leaves_with_paths(params)[0])
        for path, lay in self._leaves.items():
            if path not in by_path:
                raise ValueError(f"leaf {path!r} of the codebook is missing from params")
            if tuple(np.shape(by_path[path])) != lay.shape:
                raise ValueError(f"leaf {path!r} has shape {tuple(np.shape(by_path[path]))}, the codebook expects {lay.shape}")
        return {p: by_path[p] for p in self._leaves}

    # -- matrices ----------------------------------------------------------------------------
    def matrix(self, name: str, dtype=None) -> jax.Array:
        """The K × n matrix A of a group (for the one-group-per-leaf layout, the leaf's path)."""
        try:
            g = self._groups[name]
        except KeyError:
            raise ValueError(f"group {name!r} is not in the codebook") from None
        if name not in self._cache:
            self._cache[name] = gaussian_matrix(self.secret, name, g.K, g.n)
        return jnp.asarray(self._cache[name], dtype=dtype or g.dtype)

    def _pinv(self, path: str, dtype) -> jax.Array:
        self.matrix(path)
        return jnp.asarray(np.linalg.pinv(self._cache[path]), dtype=dtype)

    def _spec(self, path: str) -> LeafSpec:
        try:
            return self.specs[path]
        except KeyError:
            raise ValueError(f"leaf {path!r} is not in the codebook") from None

    # -- encode / decode ---------------------------------------------------------------------
    def _apply(self, tree: Any, want_latent: bool, fn) -> Any:
        named, treedef = leaves_with_paths(tree)
        present = {p for p, _ in named}
        missing = [p for p in self.specs if p not in present]
        if missing:
            raise ValueError(f"leaf {missing[0]!r} of the codebook is missing from the tree")
        out = []
        for path, leaf in named:
            spec = self.specs.get(path)
            if spec is None:
                out.append(leaf)
                continue
            want = spec.latent_shape() if want_latent else spec.shape
            if tuple(np.shape(leaf)) != want:
                raise ValueError(f"leaf {path!r} has shape {tuple(np.shape(leaf))}, expected {want}")
            out.append(fn(spec, leaf))
        return jax.tree_util.tree_unflatten(treedef, out)

    def encode(self, params: Any) -> Any:
        """Least-squares latent Θ = A⁺ W of every encoded leaf (exact for W in range(A))."""

        def enc(spec: LeafSpec, w):
            w = jnp.asarray(w)
            dt = jnp.promote_types(w.dtype, jnp.float32)
            return _along(w.astype(dt), self._pinv(spec.path, dt), spec.axis).astype(w.dtype)

        return self._apply(params, False, enc)

    def init_latent(self, params: Any) -> Any:
        """A latent to start training from, given freshly initialized ``params``.

        The projection ``encode(params)`` keeps only n/K of the initializer's variance (a random
        W has most of its energy outside range(A)), which makes the encoded network start too
        small and train slower.  This scales the projection by √(K/n), so ``decode`` of the result
        has the variance the initializer chose.
        """

        def init(spec: LeafSpec, w):
            w = jnp.asarray(w)
            dt = jnp.promote_types(w.dtype, jnp.float32)
            t = _along(w.astype(dt), self._pinv(spec.path, dt), spec.axis)
            return (t * math.sqrt(spec.K / spec.n)).astype(w.dtype)

        return self._apply(params, False, init)

    def decode(self, latent: Any) -> Any:
        """W = A Θ for every encoded leaf; structure, shapes and dtypes as the model's params."""

        def dec(spec: LeafSpec, t):
            t = jnp.asarray(t)
            return _along(t, self.matrix(spec.path, t.dtype), spec.axis).astype(spec.dtype)

        return self._apply(latent, True, dec)

    # -- reporting / storage -----------------------------------------------------------------
    def capacity(self) -> "Capacity":
        return Capacity(list(self.specs.values()))

    def to_json(self) -> dict:
        """The layout part of the file (no key: see ``save``)."""
        return {
            "redundancy": self.redundancy,
            "leaves": [
                {"path": s.path, "shape": list(s.shape), "dtype": s.dtype, "axis": s.axis, "K": s.K, "n": s.n}
                for s in self.specs.values()
            ],
        }

    @classmethod
    def from_json(cls, data: dict, secret: bytes) -> "Codebook":
        """A codebook from a document ``_codebook_file.read`` has authenticated and checked."""
        red, leaves, model = _codebook_file.check_layout(data)
        specs = [LeafSpec(d["path"], tuple(d["shape"]), d["dtype"], d["axis"], d["K"], d["n"]) for d in leaves]
        seal = None if data.get("seal") is None else _seal.Seal.from_json(data["seal"], secret)
        return cls(secret, red, specs, model=model, seal=seal)

    def save(self, path: str | os.PathLike, key_path: str | os.PathLike | None = None) -> None:
        """Write ``path`` (authenticated JSON, mode 0644, no key) and ``key_path`` (default
        ``path + ".key"``, mode 0600: the secret), each atomically."""
        seal = None if self.seal_record is None else self.seal_record.to_json()
        doc = _codebook_file.document(self.to_json(), self.secret, self.model, seal)
        _codebook_file.write(path, key_path, doc, self.secret)

    @classmethod
    def load(cls, path: str | os.PathLike, key_path: str | os.PathLike | None = None) -> "Codebook":
        """Read and authenticate a codebook; ``ValueError`` says what is wrong (wrong key, tampered,
        malformed field or leaf).  Version-1 files (key inside) load with a warning."""
        doc, secret = _codebook_file.read(path, key_path)
        return cls.from_json(doc, secret)

    # -- model binding and seal -------------------------------------------------------------
    def check(self, params: Any) -> None:
        """Raise ``ValueError`` naming the leaf if ``params`` is not the model this codebook was
        made for (paths, shapes and dtypes of all leaves; protected leaves only for a v1 file)."""
        if self.model is not None:
            _codebook_file.check_model(self.model, params)
            return
        have = {p: (shape, dtype) for p, shape, dtype in _codebook_file.fingerprint(params)}
        for s in self.specs.values():
            if have.get(s.path) != (s.shape, s.dtype):
                raise ValueError(f"other model: leaf {s.path!r} is missing or is not {s.dtype}{list(s.shape)}")

    def seal(self, params: Any, *, chunk: int = _seal.CHUNK, rows: int = _seal.ROWS) -> "_seal.Seal":
        """Record a keyed sketch of the deployed ``params`` (see ``jaxpurify._seal``); kept in the
        codebook and its file.  ``params`` must be the model the codebook was made for."""
        self.check(params)
        self.seal_record = _seal.Seal.create(self.secret, params, chunk=chunk, rows=rows)
        return self.seal_record

    def verify(self, params: Any, err: Any = None) -> dict[str, "_seal.LeafVerdict"]:
        """Check a (purified) tree against the seal: ``{path: LeafVerdict}``; ``err`` is the
        per-entry error bound of the purification (a number or per path)."""
        if self.seal_record is None:
            raise ValueError("the codebook has no seal: call codebook.seal(deployed_params) first")
        return _seal.verify(self.seal_record, params, err)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Codebook):
            return False
        mine = (self.to_json(), self.model, self.seal_record)
        return mine == (other.to_json(), other.model, other.seal_record) and hmac.compare_digest(self.secret, other.secret)

    __hash__ = None

    def __repr__(self) -> str:  # never the secret
        sealed = ", sealed" if self.seal_record is not None else ""
        return f"Codebook({len(self.specs)} leaves, redundancy={self.redundancy}{sealed})"


def _leaf_dtype(leaf) -> np.dtype:
    """A leaf's dtype without converting it (typed PRNG keys cannot become NumPy arrays)."""
    dtype = getattr(leaf, "dtype", None)
    return dtype if dtype is not None else np.asarray(leaf).dtype


def _leaf_shape(leaf) -> tuple[int, ...]:
    shape = getattr(leaf, "shape", None)
    return tuple(shape) if shape is not None else np.shape(leaf)


def _along(t, M, axis):
    """Apply M (rows × cols) along `axis` of t (which has `cols` entries there)."""
    moved = jnp.moveaxis(t, axis, -1)
    out = jnp.matmul(moved, M.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(out, -1, axis)


@dataclasses.dataclass
class Capacity:
    leaves: list[LeafSpec]

    def __str__(self) -> str:
        head = ("leaf", "K", "n", "columns", "max outliers/column")
        rows = [(s.path, s.K, s.n, s.columns, s.max_outliers) for s in self.leaves]
        return _table(head, rows)

    def as_dict(self) -> dict[str, dict]:
        return {
            s.path: {"K": s.K, "n": s.n, "columns": s.columns, "max_outliers": s.max_outliers}
            for s in self.leaves
        }


def _table(head, rows) -> str:
    cells = [tuple(str(c) for c in head)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])
