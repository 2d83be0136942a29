"""Generic pytree paths: every leaf of any pytree gets a stable '/'-joined name."""

from __future__ import annotations

from typing import Any

import jax


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(path) -> str:
    """('params', 'Conv_0', 'kernel') style key path → 'params/Conv_0/kernel'."""
    return "/".join(_key_name(k) for k in path)


def leaves_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Flatten any pytree into [(path, leaf)] and its treedef."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    named = [(path_str(p), leaf) for p, leaf in flat]
    seen = set()
    for name, _ in named:
        if name in seen:
            raise ValueError(f"two leaves share the path {name!r}; paths must be unique")
        seen.add(name)
    return named, treedef
