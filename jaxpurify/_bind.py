"""How a codebook meets a tree: every leaf's name in the codebook, and its kind.

A codebook names leaves as the tree it was made from did, whose params root (``jaxpurify.tree``)
has ``depth`` ``params`` keys.  A leaf of another tree, at (offset, rest) against that tree's own
root (:func:`jaxpurify.tree.relative`), has the codebook name ``tree.name(offset, rest, depth)``:
so a codebook made from a linen ``variables`` dict or a ``TrainState`` (``params/Dense_0/kernel``,
``batch_stats/…``) reads the params dict alone (``Dense_0/kernel``), the full variables and the
train state, and one made from the params reads them all too (it names the state beside the
params root ``../batch_stats/…``, so it can seal and restore it).

A leaf's kind is the codebook's record of it where the codebook has one (the kinds of the tree it
was made from, variable types included: a pure dict or an Orbax restore carries none), else the
tree's own (:func:`jaxpurify.tree.flatten`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jaxpurify import tree as _tree

_RECORD_WHY = {
    _tree.INFERENCE: "inference state (the codebook's record)",
    _tree.TRAINING: "training state (the codebook's record)",
    _tree.RNG: "RNG state (the codebook's record)",
    _tree.OTHER: "other state (the codebook's record)",
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One leaf of a tree as a codebook sees it."""

    path: str  # in the tree
    name: str  # in the codebook
    value: Any
    kind: str  # one of jaxpurify.tree.KINDS
    why: str  # the kind in words ("" for a parameter)


def bind(params: Any, depth: int, kinds: Mapping[str, str] | None) -> list[Entry]:
    """The entries of ``params`` for a codebook whose root has ``depth`` keys and whose record of
    kinds is ``kinds`` (None: a file written before kinds were recorded; the tree decides).

    Raises ``ValueError`` if two leaves would get one name."""
    leaves, keys, _ = _tree.flatten(params)
    own = _tree.params_depth(keys)
    out: list[Entry] = []
    seen: dict[str, str] = {}
    for leaf, k in zip(leaves, keys):
        name = _tree.name(*_tree.relative(k, own), depth)
        kind, why = leaf.kind, leaf.why
        if kinds is not None and name in kinds and kinds[name] != kind:
            kind = kinds[name]
            why = _RECORD_WHY.get(kind, "")
        if name in seen:
            raise ValueError(f"leaves {seen[name]!r} and {leaf.path!r} both read as the codebook's {name!r}")
        seen[name] = leaf.path
        out.append(Entry(leaf.path, name, leaf.value, kind, why))
    return out


def tree_path(name: str, codebook_depth: int, params: Any) -> str:
    """Where the codebook's ``name`` sits in ``params`` (for messages about a missing leaf)."""
    keys = _tree.flatten(params)[1]
    parts = name.split("/")
    up = next(i for i, k in enumerate(parts + [""]) if k != "..")
    offset, rest = _tree.relative(tuple(parts[up:]), codebook_depth)
    return _tree.name(offset + up, rest, _tree.params_depth(keys))
