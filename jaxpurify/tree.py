"""Pytree paths: every leaf of a parameter tree gets a stable '/'-joined name, and a kind.

One place maps a tree with its paths (as Flax's ``traverse_util.path_aware_map``): the codebook,
contamination and purify all name leaves through :func:`leaves_with_paths` / :func:`map_with_path`.

Flax NNX is handled here: an ``nnx.Module`` is read through ``nnx.state``; the ``.value`` of an
``nnx.Variable`` is not part of its path, so an ``nnx.State`` and its pure dict
(``nnx.to_pure_dict``) name their leaves alike.  A leaf's *kind* is ``"param"`` or the reason it is
not a trainable parameter (a non-``Param`` NNX variable such as ``BatchStat`` or ``RngCount``, a
typed PRNG key, or a linen collection other than ``params`` such as ``batch_stats``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["Leaf", "PyTree", "flatten", "leaves_with_paths", "map_with_path", "path_str"]

# linen variable collections that hold state, not parameters (the first key of a variables dict)
STATE_COLLECTIONS = frozenset({"batch_stats", "cache", "intermediates", "losses"})


class Leaf(NamedTuple):
    path: str
    value: Any
    kind: str  # "param", or why the leaf is not a parameter


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _key_value(k):
    """The key itself (int for sequences and int-keyed dicts), for rebuilding nested dicts."""
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def path_str(path) -> str:
    """('params', 'Conv_0', 'kernel') style key path → 'params/Conv_0/kernel'."""
    return "/".join(_key_name(k) for k in path)


def _nnx():
    # NNX objects exist only if flax.nnx was imported by the caller: no import cost otherwise
    return sys.modules.get("flax.nnx")


def as_tree(tree: PyTree) -> PyTree:
    """An ``nnx.Module`` becomes its ``nnx.State``; anything else is returned as is."""
    nnx = _nnx()
    if nnx is not None and isinstance(tree, nnx.Module):
        return nnx.state(tree)
    return tree


def _is_variable(x) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(x, nnx.Variable)


def _kind(keys: tuple, leaf, variable) -> str:
    nnx = _nnx()
    if variable is not None and not isinstance(variable, nnx.Param):
        return f"not a Param ({type(variable).__name__})"
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return "PRNG key"
    if len(keys) > 1 and keys[0] in STATE_COLLECTIONS:  # a linen variables dict: collection first
        return f"state collection {keys[0]!r}"
    return "param"


def flatten(tree: PyTree) -> tuple[list[Leaf], list[tuple], Any]:
    """[(path, value, kind)], the key tuples, and the jax treedef of any pytree (NNX included):
    ``jax.tree_util.tree_unflatten(treedef, values)`` rebuilds it (NNX variables with their type).

    Raises ``ValueError`` if two leaves share a path.
    """
    tree = as_tree(tree)
    try:
        values, treedef = jax.tree_util.tree_flatten(tree)
    except (TypeError, ValueError) as e:
        _explain_unsortable(tree, ())
        raise ValueError(f"cannot read the tree: {e}") from None
    outer = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)[0]
    if len(outer) != len(values):
        raise ValueError("an NNX variable holds more than one array; not supported")
    leaves, keys = [], []
    for (path, node), value in zip(outer, values):
        k = tuple(_key_value(p) for p in path)
        leaves.append(Leaf(path_str(path), value, _kind(k, value, node if _is_variable(node) else None)))
        keys.append(k)
    seen = set()
    for leaf in leaves:
        if leaf.path in seen:
            raise ValueError(f"two leaves share the path {leaf.path!r}; paths must be unique")
        seen.add(leaf.path)
    return leaves, keys, treedef


def _explain_unsortable(node, at: tuple) -> None:
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


def leaves_with_paths(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    """Flatten any pytree into [(path, leaf)] and its jax treedef."""
    leaves, _, treedef = flatten(tree)
    return [(leaf.path, leaf.value) for leaf in leaves], treedef


def map_with_path(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
    """``fn(path, leaf)`` on every leaf; the result has the structure of ``tree`` (an
    ``nnx.Module`` gives an ``nnx.State``).  The model: ``flax.traverse_util.path_aware_map``."""
    leaves, _, treedef = flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [fn(leaf.path, leaf.value) for leaf in leaves])


def nest(items: list[tuple[tuple, Any]]) -> dict:
    """Nested dicts from (key tuple, value) pairs: how ``decode`` rebuilds a params tree."""
    out: dict = {}
    for keys, value in items:
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, Mapping):
                raise ValueError(f"path {'/'.join(map(str, keys))!r} runs through a leaf")
        node[keys[-1]] = value
    return out
