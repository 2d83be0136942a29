"""Pytree paths: every leaf of a tree gets a stable '/'-joined name, and a kind.

One place maps a tree with its paths (as Flax's ``traverse_util.path_aware_map``): the codebook,
contamination and purify all name leaves through :func:`leaves_with_paths` / :func:`map_with_path`.

**Names.**  Flax NNX is handled here: an ``nnx.Module`` (or any ``nnx.Pytree``, e.g. an
``nnx.Optimizer``) is read through ``nnx.state``; the ``.value`` of an ``nnx.Variable`` is not part
of its path, and neither is the ``value`` key of a one-entry ``{"value": array}`` dict below the
top (what Orbax gives back for a saved ``nnx.State`` restored without a target), so an
``nnx.State``, its pure dict (``nnx.to_pure_dict``) and its Orbax restore name their leaves alike.

**Kinds** (:data:`KINDS`), decided per leaf in this order:

1. an NNX variable's type: ``nnx.Param`` → ``"param"``; ``nnx.BatchStat``, ``nnx.Cache`` →
   ``"inference"``; ``nnx.RngState`` (``RngKey``, ``RngCount``) → ``"rng"``; ``nnx.OptState``
   (what ``nnx.Optimizer`` holds) → ``"training"``; any other variable → ``"other"``;
2. a typed PRNG key (``jax.random.key``) → ``"rng"``;
3. below an optax state or a key named ``opt_state``, or a leaf ``step`` beside ``opt_state``
   or ``params`` → ``"training"``;
4. by position against the *params root*: the tree's leading chain of ``params`` keys, as deep as
   some leaf continues below it (``""`` for a params dict or an NNX state, ``"params/"`` for a
   linen ``variables`` dict, a ``flax.training.train_state.TrainState`` or a dict with
   ``step``/``params``/``opt_state``; ``"params/params/"`` for a TrainState holding a variables
   dict).  Leaves under the root are ``"param"``; a leaf beside the chain is named by the key where
   it leaves it: ``batch_stats`` / ``cache`` (the linen collections ``model.apply`` reads) →
   ``"inference"``; anything else (``intermediates``, an ``ema_params`` field, …) → ``"other"``.

``"param"`` is trainable parameters (what a codebook encodes), ``"inference"`` the state the model
needs to run (restored exactly by a sealed codebook), ``"training"`` optimizer moments and step
counters, ``"rng"`` RNG streams.  A pure dict carries no variable types: rule 1 cannot see a
``BatchStat`` there, so a codebook records every leaf's kind when it is made and applies its own
record to the trees it meets (``jaxpurify._codebook``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
# `Codebook.create(select=...)`: called with a leaf's '/'-joined path and the leaf; False skips it,
# an int encodes it alone along that axis, "interleave" asks for the interleave, True/None the default
Select = Callable[[str, Any], "bool | int | str | None"]

__all__ = [
    "KINDS",
    "Leaf",
    "PyTree",
    "Select",
    "flatten",
    "leaves_with_paths",
    "map_with_path",
    "params_depth",
    "path_str",
    "relative",
]

KINDS = ("param", "inference", "training", "rng", "other")
PARAM, INFERENCE, TRAINING, RNG, OTHER = KINDS
ROOT_KEY = "params"
# linen collections model.apply reads beside params (Flax's BatchNorm and SpectralNorm: batch_stats;
# autoregressive decoding: cache); intermediates, losses and other siblings are "other"
INFERENCE_COLLECTIONS = frozenset({"batch_stats", "cache"})
OPT_STATE = "opt_state"
STEP = "step"


class Leaf(NamedTuple):
    path: str
    value: Any
    kind: str  # one of KINDS
    why: str = ""  # how the kind was decided, in words (reports and ``Codebook.unprotected``)


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _key_value(k: Any) -> Any:
    """The key itself (int for sequences and int-keyed dicts), for rebuilding nested dicts."""
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def path_str(path: tuple[Any, ...]) -> str:
    """('params', 'Conv_0', 'kernel') style key path → 'params/Conv_0/kernel'."""
    return "/".join(_key_name(k) for k in path)


def _nnx() -> ModuleType | None:
    # NNX objects exist only if flax.nnx was imported by the caller: no import cost otherwise
    return sys.modules.get("flax.nnx")


def as_tree(tree: PyTree) -> PyTree:
    """An ``nnx.Module`` (any ``nnx.Pytree``) becomes its ``nnx.State``; anything else is returned as is."""
    nnx = _nnx()
    if nnx is not None and isinstance(tree, getattr(nnx, "Pytree", nnx.Module)):
        return nnx.state(tree)
    return tree


def _is_variable(x: Any) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(x, nnx.Variable)


def _is_box(x: Any) -> bool:
    """``{"value": array}``: an NNX variable as Orbax restores it without a target."""
    if not (isinstance(x, Mapping) and len(x) == 1 and "value" in x):
        return False
    v = x["value"]
    return v is not None and not _is_variable(v) and jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(v))


def _is_optax_state(x: Any) -> bool:
    # optax's states are NamedTuples defined in optax's modules (ScaleByAdamState, EmptyState, …)
    return isinstance(x, tuple) and type(x).__module__.split(".")[0] == "optax"


def params_depth(keys: list[tuple[Any, ...]]) -> int:
    """How many leading ``params`` keys form the params root: the largest d such that some leaf's
    key path starts with d ``params`` keys and goes on below them."""
    d = 0
    while any(len(k) > d + 1 and all(str(c) == ROOT_KEY for c in k[: d + 1]) for k in keys):
        d += 1
    return d


def relative(keys: tuple[Any, ...], depth: int) -> tuple[int, tuple[Any, ...]]:
    """(offset, rest) of a leaf against a params root of ``depth`` keys: it follows the chain for
    ``depth − offset`` keys, then ``rest``.  Offset 0: under the root; offset j > 0: beside the
    chain, j levels above the root (a linen collection or a TrainState field has offset 1)."""
    i = 0
    while i < depth and i < len(keys) - 1 and str(keys[i]) == ROOT_KEY:
        i += 1
    return depth - i, tuple(keys[i:])


def name(offset: int, rest: tuple[Any, ...], depth: int) -> str:
    """The path of (offset, rest) in a tree whose params root has ``depth`` keys; where that
    tree's chain is not deep enough to hold it (state beside the params, for a codebook made from
    the params alone), a relative name: one ``..`` per missing level (``../batch_stats/…``)."""
    up = [".."] * max(offset - depth, 0)
    return "/".join(up + [ROOT_KEY] * max(depth - offset, 0) + [str(k) for k in rest])


def _variable_kind(variable: Any) -> tuple[str, str]:
    nnx = _nnx()
    assert nnx is not None  # only NNX variables reach here
    t = type(variable).__name__
    if isinstance(variable, nnx.Param):
        return PARAM, ""
    if isinstance(variable, (nnx.BatchStat, nnx.Cache)):
        return INFERENCE, f"inference state ({t})"
    if isinstance(variable, nnx.RngState):
        return RNG, f"RNG state ({t})"
    opt = getattr(nnx, "OptState", None)
    if opt is not None and isinstance(variable, opt):
        return TRAINING, f"training state ({t})"
    return OTHER, f"other state ({t})"


def _kind(
    keys: tuple[Any, ...],
    leaf: Any,
    variable: Any,
    depth: int,
    optax_paths: set[tuple[Any, ...]],
    opt_parents: set[tuple[Any, ...]],
) -> tuple[str, str]:
    if variable is not None:
        return _variable_kind(variable)
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return RNG, "RNG state (typed PRNG key)"
    if any(str(k) == OPT_STATE for k in keys) or any(keys[:j] in optax_paths for j in range(len(keys))):
        return TRAINING, "training state (optimizer state)"
    if str(keys[-1]) == STEP and keys[:-1] in opt_parents:
        return TRAINING, "training state (step counter)"
    offset, rest = relative(keys, depth)
    if offset == 0:
        return PARAM, ""
    where = str(rest[0])
    if where in INFERENCE_COLLECTIONS:
        return INFERENCE, f"inference state (linen collection {where!r})"
    return OTHER, f"other state ({where!r} beside params)"


def _optax_paths(tree: Any) -> set[tuple[Any, ...]]:
    if "optax" not in sys.modules:  # no optax state can exist
        return set()
    nodes = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_optax_state)[0]
    return {tuple(_key_value(p) for p in path) for path, node in nodes if _is_optax_state(node)}


def flatten(tree: PyTree, *, boxes: bool = True) -> tuple[list[Leaf], list[tuple[Any, ...]], Any]:
    """[Leaf(path, value, kind, why)], the key tuples, and the jax treedef of any pytree (NNX
    included): ``jax.tree_util.tree_unflatten(treedef, values)`` rebuilds it (NNX variables with
    their type).  ``boxes=False`` keeps the ``value`` key of ``{"value": array}`` dicts in paths
    (what a checkpoint writer needs to write the tree back as it came).

    Raises ``ValueError`` if two leaves share a path.
    """
    tree = as_tree(tree)
    try:
        values, treedef = jax.tree_util.tree_flatten(tree)
    except (TypeError, ValueError) as e:
        _explain_unsortable(tree, ())
        raise ValueError(f"cannot read the tree: {e}") from None

    def box(x: Any) -> bool:
        return boxes and x is not tree and _is_box(x)

    outer = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: _is_variable(x) or box(x))[0]
    if len(outer) != len(values):
        raise ValueError("an NNX variable holds more than one array; not supported")
    keys = [tuple(_key_value(p) for p in path) for path, _ in outer]
    depth = params_depth(keys)
    optax_paths = _optax_paths(tree)
    # a `step` leaf counts as training state beside opt_state or params
    opt_parents = {k[:j] for k in keys for j in range(len(k)) if str(k[j]) in (OPT_STATE, ROOT_KEY)}
    leaves = []
    for (path, node), value, k in zip(outer, values, keys):
        variable = node if _is_variable(node) else None
        kind, why = _kind(k, value, variable, depth, optax_paths, opt_parents)
        leaves.append(Leaf(path_str(path), value, kind, why))
    seen = set()
    for leaf in leaves:
        if leaf.path in seen:
            raise ValueError(f"two leaves share the path {leaf.path!r}; paths must be unique")
        seen.add(leaf.path)
    return leaves, keys, treedef


def _explain_unsortable(node: Any, at: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` naming the first dict whose keys JAX cannot sort (mixed types)."""
    if isinstance(node, Mapping):
        try:
            sorted(node)
        except TypeError:
            kinds = sorted({type(k).__name__ for k in node})
            where = f"the dict at {'/'.join(map(str, at))!r}" if at else "the top-level dict"
            raise ValueError(
                f"{where} of the tree mixes key types ({', '.join(kinds)}); a pytree's dict keys must "
                "sort against each other (use str keys)"
            ) from None
        for k, v in node.items():
            _explain_unsortable(v, at + (k,))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _explain_unsortable(v, at + (i,))


def leaves_with_paths(tree: PyTree, *, boxes: bool = True) -> tuple[list[tuple[str, Any]], Any]:
    """Flatten any pytree into [(path, leaf)] and its jax treedef."""
    leaves, _, treedef = flatten(tree, boxes=boxes)
    return [(leaf.path, leaf.value) for leaf in leaves], treedef


def map_with_path(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
    """``fn(path, leaf)`` on every leaf; the result has the structure of ``tree`` (an
    ``nnx.Module`` gives an ``nnx.State``).  The model: ``flax.traverse_util.path_aware_map``.

    Examples:
        >>> import numpy as np
        >>> from jaxpurify.tree import map_with_path
        >>> params = {"dense": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)}}
        >>> shapes = map_with_path(lambda path, leaf: f"{path} {leaf.shape}", params)
        >>> shapes["dense"]["kernel"], shapes["dense"]["bias"]
        ('dense/kernel (2, 3)', 'dense/bias (3,)')
    """
    leaves, _, treedef = flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [fn(leaf.path, leaf.value) for leaf in leaves])


def nest(items: list[tuple[tuple[Any, ...], Any]]) -> dict[Any, Any]:
    """Nested dicts from (key tuple, value) pairs: how ``decode`` rebuilds a params tree."""
    out: dict[Any, Any] = {}
    for keys, value in items:
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, Mapping):
                raise ValueError(f"path {'/'.join(map(str, keys))!r} runs through a leaf")
        node[keys[-1]] = value
    return out
