"""The codebook: which parameter entries are encoded, how they are laid out, the secret matrices.

The protected entries are arranged into *groups* (see :mod:`jaxpurify._layout`): each a K × m
array Y generated from a latent Θ (n × m, n = ⌈K / redundancy⌉) as Y = A Θ, with A a K × n matrix
of i.i.d. N(0, 1/n) entries.  A is a function of the secret and the group's name only, derived
with BLAKE2b in counter mode and a Box–Muller transform in float64 (``_keys``): it is the same on
any machine and under any JAX or NumPy version, and only the secret needs to be kept.  Keys are
``_keys``, the file and its key file ``_codebook_file``, the keyed seal ``_seal``.

By default every floating parameter is protected and every leaf is interleaved: its entries fill
rows of m columns, m > its output channels and free of small prime factors, so a burst, a
rewritten channel or row, or a regular pattern (every s-th entry, s ≤ 16) spreads over the
columns instead of filling a few (``_layout``); rows split into several groups above
``MAX_ROWS``, and leaves with fewer than ``MIN_ROWS`` such rows (biases, norm scales, 1-D leaves)
are pooled per dtype into one shared group.  ``select`` may instead choose the single-axis layout
of a leaf (the paper's).

Parameters and state: only trainable parameters are encoded (``jaxpurify.tree`` sorts every leaf
into parameters, inference state, training state, RNG state and other).  The codebook records the
kind of every leaf of the tree it was made from, and that tree's params root, so one codebook reads
the params alone, a linen ``variables`` dict, a ``TrainState`` or an NNX state and its pure dict
(``jaxpurify._bind``).  Inference state (BatchNorm statistics) rides in the latent as it is,
``seal`` keeps an exact copy of it, and ``restore_state`` puts that copy back.
"""

from __future__ import annotations

import copy
import dataclasses
import hmac
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jaxpurify import _bind, _codebook_file, _keys, _layout, _seal
from jaxpurify import tree as _tree
from jaxpurify._keys import gaussian_matrix  # noqa: F401  (re-exported: A's derivation lives with the keys)
from jaxpurify._layout import Group, LeafLayout, Segment
from jaxpurify._numerics import leaf_dtype as _leaf_dtype
from jaxpurify._numerics import leaf_shape as _leaf_shape
from jaxpurify._numerics import matmul
from jaxpurify._threads import single_threaded_blas
from jaxpurify.tree import PyTree, Select

TreeKey = tuple[str | int, ...]  # the keys from the root to a leaf


class UnsealedCodebookWarning(UserWarning):
    """``Codebook.save`` of a codebook without a keyed seal: ``purify`` will not detect changes
    inside range(A) with it, and the command line refuses it unless told ``--unsealed``."""


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """A leaf encoded alone along one axis (the single-axis layout; see ``Codebook.specs``)."""

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
    """Protected entries of a parameter tree, their layout into groups, and the groups' matrices.

    Create with :meth:`Codebook.create`.  ``encode`` / ``init_latent`` give a latent, ``decode``
    the parameters; ``pack`` / ``unpack`` / ``replace`` move between a tree and its groups'
    K × m arrays (what purify solves); ``capacity`` tells how many corrupted entries per column
    can be certified; ``save`` / ``load`` keep it as an authenticated JSON file and a 0600 key
    file (the matrices are regenerated from the secret, not stored); ``check`` refuses another
    model; ``seal`` (a sealed copy: ``codebook = codebook.seal(deployed)``) / ``verify`` detect what
    l1 cannot see (docs/security.md).

    The latent is a flat dict: one entry per group name (Θ of shape (n, m), or for a leaf in the
    single-axis layout the leaf's shape with n on that axis), one per parameter leaf left
    unprotected and one per inference-state leaf (by path, as is).  ``decode`` returns the
    parameters and the inference state as nested dicts keyed as the tree's paths (Flax linen
    variables, params and NNX pure dicts have exactly this form).

    Paths: the codebook names leaves as the tree it was made from; ``protected``, ``unpack`` and
    the latent use those names.  Every method also takes a tree with another params root (the
    params alone, the full variables, a ``TrainState``): see :meth:`classify`.
    """

    def __init__(
        self,
        secret: bytes,
        redundancy: float,
        leaves: list[LeafLayout],
        groups: list[Group],
        tree: list[TreeKey] | None = None,
        skipped: Iterable[tuple[str, int, str]] = (),
        *,
        model: _codebook_file.Fingerprint | None = None,
        seal: _seal.Seal | None = None,
        kinds: Mapping[str, str] | None = None,
        root: str | None = None,
        legacy: bool = False,
    ):
        self.secret = _keys.check_secret(secret)  # never printed: see __repr__
        self.legacy = bool(legacy)  # loaded from an unauthenticated version-1 file (allow_legacy=True)
        self.model = model  # (path, shape, dtype) of every leaf of the tree it was made for
        self.seal_record = seal
        self.redundancy = float(redundancy)
        self._leaves = {lay.path: lay for lay in leaves}
        self._groups = {g.name: g for g in groups}
        # key tuples of every parameter leaf (protected or not), in tree order: decode's structure
        self._tree = [tuple(k) for k in tree] if tree is not None else [tuple(p.split("/")) for p in self._leaves]
        self._skipped = [(str(p), int(z), str(r)) for p, z, r in skipped]
        # kind of every leaf of the model, by path (None: a file from before kinds were recorded)
        self.kinds = None if kinds is None else {str(p): str(k) for p, k in kinds.items()}
        if root is None:  # older files: the root of the tree they were made from, by the same rule
            paths = [p for p, _, _ in model] if model is not None else [_path(k) for k in self._tree]
            root = (_tree.ROOT_KEY + "/") * _tree.params_depth([tuple(p.split("/")) for p in paths])
        self._depth = root.count("/")
        if root != (_tree.ROOT_KEY + "/") * self._depth:
            raise ValueError(f"root must be a chain of {_tree.ROOT_KEY!r} keys, got {root!r}")
        self.root = root  # the params root of the tree it was made from: "", "params/", …
        self._cache: dict[str, np.ndarray] = {}
        self._pinvs: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        _layout.check(self._leaves, self._groups)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def create(
        cls, params: PyTree, key: Any = None, *, redundancy: float = 4.0, select: Select | None = None
    ) -> Codebook:
        """Protect every floating parameter of ``params`` and bind the layout to a secret.

        ``key=None`` (the default) draws a 256-bit secret from ``os.urandom``; 16–64 ``bytes`` are
        used as given; a JAX key or a non-negative int seed is accepted for reproducible research
        with a ``WeakKeyWarning`` (≤ 64 bits; ``key(42)`` and ``42`` name the secret they always
        named).  See ``jaxpurify._keys``.

        ``params``: a pytree — Flax linen params or ``variables``, a
        ``flax.training.train_state.TrainState`` or a dict with ``step``/``params``/``opt_state``,
        an ``nnx.Module``, ``nnx.State`` (of a model, or with an ``nnx.Optimizer``'s), or their
        pure dicts.  Only trainable parameters are encoded (the kinds of ``jaxpurify.tree``):
        inference state (BatchNorm statistics), training state (optimizer moments, step
        counters), RNG state and other leaves never are; :meth:`unprotected` lists them and
        :meth:`capacity` counts them apart.  The codebook records every leaf's kind, so the
        pure dict or an Orbax restore of the same tree is read right later; a pure dict carries no
        variable types, so make the codebook from the module or its state to leave BatchNorm
        statistics out of the code.

        Default layout (see the module docstring): every floating leaf interleaved, tall leaves
        split at ``MAX_ROWS`` rows, small ones pooled.  ``select(path, leaf)`` may return False
        to skip a parameter, an int to encode the leaf alone along that axis (K = its length
        there, A named by the path), ``"interleave"`` to ask for the interleave by name (an error
        if the leaf is too small for it; ``_layout.interleave_groups``), or True / None for the
        default.
        """
        if isinstance(redundancy, bool) or not isinstance(redundancy, (int, float)) or not 1.0 < redundancy < math.inf:
            raise ValueError(f"redundancy must be a finite number > 1 (K/n), got {redundancy!r}")
        if select is not None and not callable(select):
            raise TypeError(
                f"select must be a callable (path, leaf) -> bool | int | str | None, got {type(select).__name__}"
            )
        secret = _keys.secret_from_key(key)
        flat, keys, _ = _tree.flatten(params)
        tree, chosen, skipped = [], [], []
        for leaf, k in zip(flat, keys):
            if leaf.kind == _tree.INFERENCE:
                tree.append(k)  # decode gives it back (from the latent), so the model can apply
            if leaf.kind != _tree.PARAM:
                continue
            tree.append(k)
            choice = select(leaf.path, leaf.value) if select is not None else None
            axis = _axis_of(leaf.path, leaf.value, choice, redundancy)
            if isinstance(axis, str) and axis != _layout.INTERLEAVE:
                skipped.append((leaf.path, math.prod(_leaf_shape(leaf.value)), axis))
            else:
                chosen.append((leaf.path, _leaf_shape(leaf.value), np.dtype(_leaf_dtype(leaf.value)).name, axis))
        leaves, groups, too_small = _layout.plan(chosen, redundancy)
        skipped += too_small
        if not groups:
            state = sum(leaf.kind != _tree.PARAM for leaf in flat)
            raise ValueError(
                "no parameter leaf selected for encoding"
                + (f" (params has {state} leaves of state and no trainable parameter to encode)" if state else "")
            )
        all_paths = {leaf.path for leaf in flat}
        for g in groups:
            if g.name in all_paths and g.members != (g.name,):
                raise ValueError(f"group name {g.name!r} is also the path of another leaf; rename that leaf")
        depth = _tree.params_depth(keys)
        return cls(
            secret,
            redundancy,
            leaves,
            groups,
            tree,
            skipped,
            model=_codebook_file.fingerprint(params),
            kinds={leaf.path: leaf.kind for leaf in flat},
            root=(_tree.ROOT_KEY + "/") * depth,
        )

    # -- layout ------------------------------------------------------------------------------
    @property
    def groups(self) -> dict[str, Group]:
        """The codes, by name, in a fixed order: each a K × m array of columns y = A θ."""
        return dict(self._groups)

    @property
    def protected(self) -> tuple[str, ...]:
        """Paths of the protected leaves, in tree order."""
        return tuple(self._leaves)

    @property
    def specs(self) -> dict[str, LeafSpec]:
        """The leaves in the single-axis layout (``select`` returned an axis), as before v2."""
        out = {}
        for g in self._groups.values():
            lay = self._leaves[g.segments[0].path]
            if lay.axis is not None:
                out[lay.path] = LeafSpec(lay.path, lay.shape, lay.dtype, lay.axis, g.K, g.n)
        return out

    def pack(self, params: PyTree) -> dict[str, np.ndarray]:
        """Per group, its entries of ``params`` as a read-only (K, m) host array (column j = one
        code column y ∈ R^K; padding entries NaN, i.e. erasures).  Never writes to ``params``."""
        return cast(dict[str, np.ndarray], _layout.pack(self._groups.values(), self._leaves, self._values(params)))

    def unpack(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inverse of :meth:`pack` for (K, m) arrays of any dtype (values, bool masks, …):
        per protected leaf path, an array of the leaf's shape.  Padding entries are ignored."""
        return cast(dict[str, np.ndarray], _layout.unpack(self._groups.values(), self._leaves, cols))  # xp=np

    def replace(self, params: PyTree, leaves: dict[str, Any]) -> PyTree:
        """A new tree: ``params`` with the given leaves (by the codebook's name, as ``unpack``
        gives them, or by their path in ``params``) replaced, each cast to the dtype of the leaf
        it replaces; other leaves are the same objects.  An ``nnx.Module`` gives an
        ``nnx.State`` (load it with ``nnx.update``); nothing passed in is modified."""
        entries = self.classify(params)
        to_path = {e.name: e.path for e in entries}
        present = {e.path for e in entries}
        unknown = [p for p in leaves if p not in to_path and p not in present]
        if unknown:
            raise ValueError(f"leaf {unknown[0]!r} is not in params")
        leaves = {to_path.get(p, p): v for p, v in leaves.items()}

        def put(path: str, leaf: Any) -> Any:
            if path not in leaves:
                return leaf
            if isinstance(leaf, jax.Array) and isinstance(leaves[path], jax.Array) and leaves[path].dtype == leaf.dtype:
                if leaves[path].shape != leaf.shape:
                    raise ValueError(
                        f"leaf {path!r}: replacement has shape {leaves[path].shape}, expected {leaf.shape}"
                    )
                return leaves[path]  # immutable: kept as it is (purify hands its working copy over this way)
            new = np.asarray(leaves[path])
            if new.shape != _leaf_shape(leaf):
                raise ValueError(f"leaf {path!r}: replacement has shape {new.shape}, expected {_leaf_shape(leaf)}")
            if isinstance(leaf, jax.Array):
                return jnp.asarray(new, dtype=leaf.dtype)
            return new.astype(np.asarray(leaf).dtype)

        return _tree.map_with_path(put, params)

    def unprotected(self, params: PyTree) -> list[tuple[str, int, str]]:
        """``(path, size, reason)`` of every leaf of ``params`` that is not protected: parameters
        left out (skipped by ``select``, not floating, too small) and state (the reason says
        which kind: inference, training, RNG or other state)."""
        out = []
        for e in self.classify(params):
            if e.name in self._leaves:
                continue
            size = math.prod(_leaf_shape(e.value))
            if e.kind != _tree.PARAM:
                reason = e.why
            elif not jnp.issubdtype(_leaf_dtype(e.value), jnp.floating):
                reason = f"not floating ({_leaf_dtype(e.value)})"
            else:
                reason = next((r for p, _, r in self._skipped if p == e.name), "not in the codebook")
            out.append((e.path, size, reason))
        return out

    def classify(self, params: PyTree) -> list[_bind.Entry]:
        """Every leaf of ``params`` as this codebook sees it: ``Entry(path, name, value, kind,
        why)`` — its path in ``params``, its name in the codebook, and its kind (one of
        ``jaxpurify.tree.KINDS``: the codebook's record where it has one, else the tree's own).

        Names: a leaf at (offset, rest) against ``params``'s params root (``jaxpurify.tree``) is
        named as it would be in the tree the codebook was made from (``../`` per level that tree
        did not have); so a codebook made from linen ``variables`` or a ``TrainState`` reads the
        params alone, and one made from the params reads (and seals) the variables."""
        return _bind.bind(params, self._depth, self.kinds)

    def _named(self, params: PyTree) -> dict[str, Any]:
        """The leaves of ``params`` the codebook can name, by name."""
        return {e.name: e.value for e in self.classify(params)}

    def _values(self, params: PyTree) -> dict[str, Any]:
        """The protected leaves of ``params`` by name, checked against the codebook."""
        by_name = self._named(params)
        for path, lay in self._leaves.items():
            if path not in by_name:
                raise ValueError(f"leaf {self._where(path, params)!r} of the codebook is missing from params")
            if _leaf_shape(by_name[path]) != lay.shape:
                raise ValueError(
                    f"leaf {path!r} has shape {_leaf_shape(by_name[path])}, the codebook expects {lay.shape}"
                )
            if not jnp.issubdtype(_leaf_dtype(by_name[path]), jnp.floating):
                raise ValueError(f"leaf {path!r} has dtype {_leaf_dtype(by_name[path])}, expected floating")
        return {p: by_name[p] for p in self._leaves}

    def _where(self, name: str, params: PyTree) -> str:
        """The path where ``params`` would hold the codebook's ``name`` (for messages)."""
        return _bind.tree_path(name, self._depth, params)

    # -- matrices ----------------------------------------------------------------------------
    def matrix(self, name: str, dtype: DTypeLike | None = None) -> jax.Array:
        """The K × n matrix A of a group."""
        try:
            g = self._groups[name]
        except KeyError:
            raise ValueError(f"group {name!r} is not in the codebook") from None
        if name not in self._cache:
            self._cache[name] = gaussian_matrix(self.secret, name, g.K, g.n)
        a, dtype = self._cache[name], jnp.dtype(dtype or g.dtype)
        if dtype in (np.float32, np.float64):  # rounded by NumPy, as JAX itself would: no XLA program
            a = a.astype(dtype)
        return jnp.asarray(a, dtype=dtype)

    # -- encode / decode ---------------------------------------------------------------------
    def _theta_shape(self, g: Group) -> tuple[int, ...]:
        lay = self._leaves[g.segments[0].path]
        if lay.axis is None:
            return (g.n, g.columns)
        s = list(lay.shape)
        s[lay.axis] = g.n
        return tuple(s)

    def _theta_to_nm(self, g: Group, t: jax.Array) -> jax.Array:
        lay = self._leaves[g.segments[0].path]
        return t if lay.axis is None else cast(jax.Array, lay.order(t, jnp)).reshape(g.n, g.columns)

    def _nm_to_theta(self, g: Group, t: jax.Array) -> jax.Array:
        lay = self._leaves[g.segments[0].path]
        return t if lay.axis is None else cast(jax.Array, lay.unorder(t.reshape(-1), jnp, first=g.n))

    def _rest(self, params: PyTree) -> dict[str, Any]:
        """The unprotected parameter leaves and the inference state, by name: the latent holds
        them as they are."""
        by_name = self._named(params)
        return {p: by_name[p] for p in map(_path, self._tree) if p not in self._leaves and p in by_name}

    def encode(self, params: PyTree, scale: bool = False) -> dict[str, Any]:
        """Least-squares latent Θ = A⁺ Y of every group (exact for Y in range(A)); padding
        entries are left out of the fit.  Unprotected parameters are copied into the latent.

        Concrete inputs are fitted on the host in float64 (one small pinv per group, no XLA
        compilation per shape) with the BLAS held to one thread, as purify holds it (its threads
        fought XLA's for the cores: ResNet-18's first ``init_latent`` took 9.5× as long without,
        ``jaxpurify._threads``); traced inputs (under ``jit``/``grad``) with jnp.
        """
        values = self._values(params)
        if any(isinstance(v, jax.core.Tracer) for v in values.values()):
            return self._fit(params, values, jnp, scale)
        with single_threaded_blas():
            return self._fit(params, values, np, scale)

    def _fit(self, params: PyTree, values: dict[str, Any], xp: ModuleType, scale: bool) -> dict[str, Any]:
        Ys = _layout.pack(self._groups.values(), self._leaves, values, xp=xp, fill=0.0)
        latent: dict[str, Any] = {}
        for name, g in self._groups.items():
            y = Ys[name]
            dt = np.float64 if xp is np else jnp.promote_types(y.dtype, jnp.float32)
            P, u, denom = self._pinv(name)
            t = _matmul(xp, P.astype(dt), y.astype(dt))
            full = g.entries - (g.K - 1) * g.columns  # columns whose last row is real
            if full < g.columns:
                # the padded columns (last entry 0) are fitted on their K − 1 real rows: with a the
                # last row of A and G = (AᵀA)⁻¹, Sherman–Morrison gives (AᵀA − aaᵀ)⁻¹Aᵀy =
                # t + G a (aᵀt) / (1 − aᵀGa) from the full fit t = A⁺y: no second factorization
                a = self._cache[name][-1]
                tp = t[:, full:]
                t_pad = tp + u.astype(dt)[:, None] * (_matmul(xp, a.astype(dt)[None, :], tp) / denom)
                t = xp.concatenate([t[:, :full], t_pad], axis=1)
            if scale:
                t = t * math.sqrt(g.K / g.n)
            latent[name] = self._nm_to_theta(g, jnp.asarray(t, y.dtype))
        latent.update(self._rest(params))
        return latent

    def init_latent(self, params: PyTree) -> dict[str, Any]:
        """A latent to start training from, given freshly initialized ``params``.

        The projection ``encode(params)`` keeps only n/K of the initializer's variance (a random
        W has most of its energy outside range(A)), which makes the encoded network start too
        small and train slower.  This scales the projection by √(K/n), so ``decode`` of the result
        has the variance the initializer chose.
        """
        return self.encode(params, scale=True)

    def decode(self, latent: dict[str, Any]) -> dict[str, Any]:
        """Y = A Θ for every group, laid back into the parameter leaves (shapes and dtypes as
        the model's), plus the latent's unprotected parameters and inference state: nested dicts
        the model applies as it was created (``{"params": …, "batch_stats": …}`` for a codebook
        made from linen variables or a TrainState; an NNX pure dict for ``nnx.update``).
        Inference state is optional in the latent (left out of the result if absent) and passes
        through without gradient.  Differentiable and traceable (train the latent through it)."""
        if not isinstance(latent, Mapping):
            raise TypeError(f"latent must be the dict that encode / init_latent return, got {type(latent).__name__}")
        Ys: dict[str, jax.Array] = {}
        for name, g in self._groups.items():
            if name not in latent:
                raise ValueError(f"group {name!r} is missing from the latent")
            try:
                t = jnp.asarray(latent[name])
            except TypeError as e:
                raise TypeError(f"latent of group {name!r} is not a floating array: {e}") from None
            if t.shape != self._theta_shape(g):
                raise ValueError(f"latent of group {name!r} has shape {t.shape}, expected {self._theta_shape(g)}")
            if not jnp.issubdtype(t.dtype, jnp.floating):
                raise ValueError(f"latent of group {name!r} has dtype {t.dtype}, expected floating")
            Ys[name] = matmul(self.matrix(name, t.dtype), self._theta_to_nm(g, t))
        values = _layout.unpack(self._groups.values(), self._leaves, Ys, xp=jnp)
        items = []
        for keys in self._tree:
            path = _path(keys)
            if path in values:
                items.append((keys, values[path].astype(self._leaves[path].dtype)))
            elif self._kind(path) == _tree.INFERENCE:
                if path in latent:  # state, not a parameter: no gradient reaches it through decode
                    items.append((keys, jax.lax.stop_gradient(latent[path])))
            elif path in latent:
                items.append((keys, latent[path]))
            else:
                raise ValueError(f"unprotected parameter {path!r} is missing from the latent")
        return _tree.nest(items)

    def _kind(self, name: str) -> str:
        """The recorded kind of one of the model's leaves ("param" for files without a record)."""
        return (self.kinds or {}).get(name, _tree.PARAM)

    def _pinv(self, name: str) -> tuple[np.ndarray, np.ndarray, float]:
        """A⁺ of the group's matrix, G a and 1 − aᵀG a for its last row a (G = (AᵀA)⁻¹ = A⁺A⁺ᵀ),
        cached: what ``encode`` needs, padded columns included."""
        if name not in self._pinvs:
            self.matrix(name)
            P = _pinv(self._cache[name])
            v = P.T @ self._cache[name][-1]  # A⁺ᵀa, so G a = A⁺v and aᵀG a = ‖v‖²
            self._pinvs[name] = (P, P @ v, float(1.0 - v @ v))
        return self._pinvs[name]

    # -- reporting / storage -----------------------------------------------------------------
    def capacity(self) -> _layout.Capacity:
        """Coverage of the floating parameters and, per group, K, n, columns and max outliers;
        the model's state leaves (inference, training, RNG, other) are listed apart and are not
        part of the coverage."""
        covered = sum(lay.size for lay in self._leaves.values())
        floating = covered + sum(size for _, size, r in self._skipped if not r.startswith("not floating"))
        return _layout.Capacity(list(self._groups.values()), covered, floating, list(self._skipped), self._state())

    def _state(self) -> list[tuple[str, int, str]]:
        """(path, size, kind) of the model's leaves that are not parameters (files without a
        record of kinds: the leaves outside the parameter record, kind "state")."""
        if self.model is None:
            return []
        params = {_path(k) for k in self._tree}
        out = []
        for path, shape, _ in self.model:
            kind = (
                self.kinds.get(path, _tree.PARAM) if self.kinds is not None else "param" if path in params else "state"
            )
            if kind != _tree.PARAM:
                out.append((path, math.prod(shape), kind))
        return out

    def to_json(self) -> dict[str, Any]:
        """The layout part of the file (no key: see ``save``)."""
        out = {"redundancy": self.redundancy, **_layout_to_json(self)}
        if self.kinds is not None:  # written since kinds are recorded; older files have neither
            out.update(root=self.root, kinds=dict(self.kinds))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], secret: bytes) -> Codebook:
        """A codebook from a document that ``_codebook_file.read`` has authenticated and checked."""
        red, model = _codebook_file.check_layout(data)
        try:
            layout = _layout_from_json(data)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"malformed codebook file: {e}") from None
        seal = None if data.get("seal") is None else _seal.Seal.from_json(data["seal"], secret)
        return cls(
            secret,
            red,
            *layout,
            model=model,
            seal=seal,
            kinds=data.get("kinds"),
            root=data.get("root"),
            legacy=data.get("version") == 1,
        )

    def save(self, path: str | os.PathLike[str], key_path: str | os.PathLike[str] | None = None) -> None:
        """Write ``path`` (authenticated JSON, mode 0644, no key) and ``key_path`` (default
        ``path + ".key"``, mode 0600: the secret), each atomically.

        A codebook without a seal is saved with an :class:`UnsealedCodebookWarning`: ``seal``
        returns the sealed codebook and leaves this one as it is (``codebook = codebook.seal(deployed)``)."""
        if self.seal_record is None:
            warnings.warn(
                f"{path}: saving a codebook without a keyed seal: purify will not detect changes "
                "inside range(A) with it, and `jaxpurify purify` refuses it unless told --unsealed. "
                "Codebook.seal returns the sealed codebook and leaves the one it is called on unsealed: "
                "codebook = codebook.seal(deployed), then save",
                UnsealedCodebookWarning,
                stacklevel=2,
            )
        seal = None if self.seal_record is None else self.seal_record.to_json()
        doc = _codebook_file.document(self.to_json(), self.secret, self.model, seal)
        _codebook_file.write(path, key_path, doc, self.secret)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        key_path: str | os.PathLike[str] | None = None,
        *,
        allow_legacy: bool = False,
        min_seal_counter: int | None = None,
    ) -> Codebook:
        """Read and authenticate a codebook; ``ValueError`` says what is wrong (wrong key, tampered,
        malformed field or leaf, stale seal).

        Version-1 files (key inside, no MAC: anyone can write one) are refused unless
        ``allow_legacy=True``; then they load with a ``LegacyCodebookWarning`` and ``legacy`` set.
        ``min_seal_counter``: refuse a file whose seal is missing or older (``Seal.counter``) than
        this, so that an older, validly sealed file cannot be replayed with older weights."""
        for what, p in (("path", path), ("key_path", key_path)):
            if not isinstance(p, (str, os.PathLike)) and (what == "path" or p is not None):
                raise TypeError(f"{what} must be a str or os.PathLike, got {type(p).__name__}")
        if not isinstance(allow_legacy, bool):
            raise TypeError(f"allow_legacy must be a bool, got {type(allow_legacy).__name__}")
        if min_seal_counter is not None:
            _seal.check_counter(min_seal_counter, "min_seal_counter")
        doc, secret = _codebook_file.read(path, key_path, allow_legacy=allow_legacy)
        cb = cls.from_json(doc, secret)
        if min_seal_counter is not None:
            have = None if cb.seal_record is None else cb.seal_record.counter
            if have is None or have < min_seal_counter:
                raise ValueError(
                    f"{os.fspath(path)}: stale codebook: "
                    + ("it has no seal" if have is None else f"its seal has counter {have}")
                    + f", below min_seal_counter={min_seal_counter} (an older file replayed?)"
                )
        return cb

    # -- model binding and seal -------------------------------------------------------------
    def check(self, params: PyTree) -> None:
        """Raise ``ValueError`` naming the leaf if ``params`` is not (part of) the model this
        codebook was made for: every parameter of the model is there, every leaf of the model
        that is there has its shape and dtype, and there is no parameter the model did not have.
        State may be left out (the params alone) or added (a train state's optimizer moments);
        a version-1 file knows only its protected leaves."""
        entries = self.classify(params)
        if self.model is None:
            have = {e.name: _signature(e.value) for e in entries}
            for lay in self._leaves.values():
                if have.get(lay.path) != (lay.shape, lay.dtype):
                    raise ValueError(
                        f"other model: leaf {self._where(lay.path, params)!r} is missing or is not "
                        f"{lay.dtype}{list(lay.shape)}"
                    )
            return
        named = {e.name: e for e in entries}
        for path, shape, dtype in self.model:
            if path not in named:
                if self._is_param(path):
                    where = self._where(path, params)
                    raise ValueError(f"other model: leaf {where!r} of the codebook's model is missing from params")
                continue
            s, d = _signature(named[path].value)
            if s != tuple(shape) or d != dtype:
                raise ValueError(
                    f"other model: leaf {named[path].path!r} differs: params has {d}{list(s)}, "
                    f"the codebook was made for {dtype}{list(shape)}"
                )
        known = {p for p, _, _ in self.model}
        for e in entries:
            if e.kind == _tree.PARAM and e.name not in known:
                raise ValueError(f"other model: params has leaf {e.path!r}, which the codebook's model does not")

    def _is_param(self, name: str) -> bool:
        """Was the model's leaf ``name`` a parameter (files without kinds: in the parameter record)?"""
        if self.kinds is not None:
            return self.kinds.get(name) == _tree.PARAM
        return name in {_path(k) for k in self._tree}

    def seal(
        self, params: PyTree, *, chunk: int = _seal.CHUNK, rows: int = _seal.ROWS, counter: int | None = None
    ) -> Codebook:
        """A sealed copy of this codebook: the same key and layout, with a keyed sketch of the
        deployed parameters and an exact copy of the deployed inference state (see
        ``jaxpurify._seal``) as its ``seal_record``, which its file keeps.  ``self`` is left as it
        is: write ``codebook = codebook.seal(deployed)``.

        ``params``: the model the codebook was made for, whole (linen variables, a TrainState, an
        NNX state or module) or the params alone.  Parameters (protected or not) and other state
        get a sketch (what ``verify`` checks); inference state (BatchNorm statistics) gets a
        copy, which ``purify`` / :meth:`restore_state` put back exactly; training and RNG state
        are not sealed.  Sealing only the params leaves the inference state unchecked later.

        ``counter`` (default: this codebook's seal's + 1, or 1) and the creation time are stored
        under the file's MAC; ``Codebook.load(..., min_seal_counter=N)`` refuses older seals."""
        self.check(params)
        if counter is None:
            counter = 1 if self.seal_record is None else self.seal_record.counter + 1
        sketch: dict[str, Any] = {}
        state: dict[str, Any] = {}
        for e in self.classify(params):
            if e.kind in (_tree.TRAINING, _tree.RNG):
                continue
            (state if e.kind == _tree.INFERENCE else sketch)[e.name] = e.value
        record = _seal.Seal.create(self.secret, sketch, chunk=chunk, rows=rows, state=state, counter=counter)
        sealed = copy.copy(self)
        # the layout is never changed after __init__, but kinds is public: neither copy may alias
        # the other's containers.  The matrix caches stay shared: they are functions of the secret
        # and the group's name alone, so the sealed copy reuses what this one has derived.
        sealed._leaves, sealed._groups = dict(self._leaves), dict(self._groups)
        sealed._tree, sealed._skipped = list(self._tree), list(self._skipped)
        sealed.kinds = None if self.kinds is None else dict(self.kinds)
        sealed.seal_record = record
        return sealed

    def verify(self, params: PyTree, err: Any = None) -> dict[str, _seal.LeafVerdict]:
        """Check a (purified) tree against the seal's sketches: ``{name: LeafVerdict}``.

        ``err`` is the per-entry error bound ε of the purification (‖e‖₂ ≤ √c·ε on each seal chunk
        of c entries): one number for every leaf, or per leaf path a number or an array of one ε
        per seal chunk (what ``purify`` passes, from ``jaxpurify._seal_bound``); None or a missing
        path: the leaf's rounding-level default.  See ``jaxpurify._seal.verify``.  Sealed state
        that ``params`` leaves out (the params alone) is not checked."""
        if self.seal_record is None:
            raise ValueError("the codebook has no seal: codebook = codebook.seal(deployed_params) makes a sealed one")
        optional = {p for p in self.seal_record.leaves if not self._is_param(p)}
        return _seal.verify(self.seal_record, self._named(params), err, optional=optional)

    def restore_state(self, params: PyTree) -> tuple[PyTree, dict[str, int | None]]:
        """``params`` with every inference-state leaf the seal holds a copy of set to that copy,
        exactly, and per such leaf (by its path in ``params``) how many entries differed from the
        copy (None for traced or multi-process leaves, which the host cannot compare).  Leaves
        that match are kept as the same objects; nothing passed in is modified; an
        ``nnx.Module`` gives an ``nnx.State``.  Without a seal or copies: ``(params, {})``."""
        copies = self.seal_record.state if self.seal_record is not None else {}
        if not copies:
            return params, {}
        new, counts = {}, {}
        for e in self.classify(params):
            if e.kind == _tree.INFERENCE and e.name in copies:
                value, counts[e.path] = _seal.restore(copies[e.name], e.value, e.path)
                if value is not e.value:
                    new[e.path] = value
        if not new:
            return params, counts
        return _tree.map_with_path(lambda p, leaf: new.get(p, leaf), params), counts

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codebook):
            return False
        mine = (self.to_json(), self.model, self.seal_record)
        return mine == (other.to_json(), other.model, other.seal_record) and hmac.compare_digest(
            self.secret, other.secret
        )

    __hash__ = None  # type: ignore[assignment]  # unhashable; typeshed declares object.__hash__ a method

    def __repr__(self) -> str:  # never the secret
        sealed = ""
        if self.seal_record is not None:
            sealed = ", sealed" + (
                f" with {len(self.seal_record.state)} state copies" if self.seal_record.state else ""
            )
        return (
            f"Codebook({len(self._leaves)} leaves in {len(self._groups)} groups, redundancy={self.redundancy}{sealed})"
        )


# -- layout fields of the codebook file (version 2; version 1 had one single-axis group per leaf)
def _layout_to_json(cb: Codebook) -> dict[str, Any]:
    return {
        "leaves": [
            {"path": lay.path, "shape": list(lay.shape), "dtype": lay.dtype, "axis": lay.axis}
            for lay in cb._leaves.values()
        ],
        "groups": [
            {
                "name": g.name,
                "K": g.K,
                "n": g.n,
                "columns": g.columns,
                "dtype": g.dtype,
                "segments": [[sg.path, sg.start, sg.stop] for sg in g.segments],
            }
            for g in cb._groups.values()
        ],
        "tree": [list(k) for k in cb._tree],
        "skipped": [list(x) for x in cb._skipped],
    }


def _layout_from_json(
    data: dict[str, Any],
) -> tuple[list[LeafLayout], list[Group], list[TreeKey] | None, list[tuple[str, int, str]]]:
    """(leaves, groups, tree, skipped) for ``Codebook(key, redundancy, ...)``; raises on bad types."""

    def axis(d: dict[str, Any]) -> int | None:
        return None if d["axis"] is None else int(d["axis"])

    def key(k: object) -> str | int:
        if not isinstance(k, (str, int)) or isinstance(k, bool):
            raise TypeError(f"tree key {k!r} is not a str or int")
        return k

    leaves = [
        LeafLayout(str(d["path"]), tuple(int(v) for v in d["shape"]), str(d["dtype"]), axis(d)) for d in data["leaves"]
    ]
    for lay in leaves:
        if lay.axis is not None and not 0 <= lay.axis < len(lay.shape):
            raise ValueError(f"leaf {lay.path!r}: axis {lay.axis} out of range")
        np.dtype(lay.dtype)  # a name NumPy knows
    if data.get("version") == 1:
        groups = [
            Group(
                lay.path,
                int(d["K"]),
                int(d["n"]),
                lay.size // max(int(d["K"]), 1),
                lay.dtype,
                (Segment(lay.path, 0, lay.size),),
            )
            for lay, d in zip(leaves, data["leaves"])
        ]
        return leaves, groups, None, []
    groups = [
        Group(
            str(d["name"]),
            int(d["K"]),
            int(d["n"]),
            int(d["columns"]),
            str(d["dtype"]),
            tuple(Segment(str(p), int(a), int(b)) for p, a, b in d["segments"]),
        )
        for d in data["groups"]
    ]
    tree = [tuple(key(k) for k in ks) for ks in data["tree"]]
    skipped = [(str(p), int(z), str(r)) for p, z, r in data["skipped"]]
    return leaves, groups, tree, skipped


def _pinv(A: np.ndarray) -> np.ndarray:
    """A⁺ = R⁻¹ Qᵀ of a full-column-rank A (a Gaussian A is, with probability 1): a QR instead
    of the SVD np.linalg.pinv uses, several times cheaper at these shapes."""
    Q, R = np.linalg.qr(A)
    return np.linalg.solve(R, Q.T)


def _matmul(xp: ModuleType, a: _layout.Array, b: _layout.Array) -> _layout.Array:
    return a @ b if xp is np else matmul(a, b)


def _axis_of(path: str, leaf: Any, choice: bool | int | np.integer | str | None, redundancy: float) -> int | None | str:
    """What ``select``'s answer means for one parameter leaf: an axis (the single-axis layout),
    None (the default layout), ``_layout.INTERLEAVE``, or the reason it is not protected.
    Raises on impossible asks."""
    shape, dtype = _leaf_shape(leaf), _leaf_dtype(leaf)
    if choice is False:
        return "skipped by select"
    if choice is not None and not isinstance(choice, (bool, int, np.integer)) and not _interleave(choice):
        raise TypeError(f"select({path!r}, leaf) must return bool, int, {_layout.INTERLEAVE!r} or None, got {choice!r}")
    if not jnp.issubdtype(dtype, jnp.floating) or math.prod(shape) == 0:
        if choice is not None:
            raise ValueError(f"leaf {path!r}: cannot encode a {dtype} leaf of shape {shape}")
        return f"not floating ({dtype})" if math.prod(shape) else "empty"
    if choice is None or choice is True:
        return None
    if _interleave(choice):
        return _layout.INTERLEAVE
    if not -len(shape) <= int(choice) < len(shape):
        raise ValueError(f"leaf {path!r}: select returned axis {choice} for shape {shape}")
    axis = int(choice) % len(shape)
    if not math.ceil(shape[axis] / redundancy) < shape[axis]:
        raise ValueError(f"leaf {path!r}: K={shape[axis]} along axis {axis} leaves no redundancy")
    return axis


def _interleave(choice: object) -> bool:
    return isinstance(choice, str) and choice == _layout.INTERLEAVE


def _path(keys: TreeKey) -> str:
    return "/".join(str(k) for k in keys)


def _signature(leaf: Any) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) as the model fingerprint records a leaf."""
    return _leaf_shape(leaf), str(_leaf_dtype(leaf))
