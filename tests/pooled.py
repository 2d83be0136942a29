"""A codebook double with a pooled layout, built on ``_layout``'s own pack / unpack.

It implements only the layout interface (TEAM contract 1), so a test that passes with it shows that
purify and contaminate rely on nothing else: two leaves share a group, a leaf is split over two
groups of different K (one padded with NaN), and a column holds entries of two leaves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify import _layout
from jaxpurify._codebook import gaussian_matrix
from jaxpurify._layout import Group, LeafLayout, Segment
from jaxpurify.tree import leaves_with_paths

WORDS = (7, 11)


def tree_shapes() -> dict:
    return {"a": (2, 20), "b": (5,), "c": (3, 16), "free": (4,), "step": ()}


class PooledCodebook:
    def __init__(self, dtype: str = "float32"):
        f32 = dtype
        self._leaves = {
            "a": LeafLayout("a", (2, 20), f32, None),
            "b": LeafLayout("b", (5,), f32, None),
            "c": LeafLayout("c", (3, 16), f32, 1),
        }
        # g0: 8 × 8 = 64 entries ← a (40) + b (5) + c[0:19];  g1: 9 × 4 ← c[19:48] and 7 NaN
        self._groups = {
            "g0": Group("g0", 8, 2, 8, f32, (Segment("a", 0, 40), Segment("b", 0, 5), Segment("c", 0, 19))),
            "g1": Group("g1", 9, 2, 4, f32, (Segment("c", 19, 48),)),
        }

    @property
    def groups(self):
        return dict(self._groups)

    @property
    def protected(self):
        return tuple(self._leaves)

    def matrix(self, name, dtype=None):
        g = self._groups[name]
        return jnp.asarray(gaussian_matrix(WORDS, name, g.K, g.n), dtype=dtype or g.dtype)

    def pack(self, params):
        by_path = dict(leaves_with_paths(params)[0])
        return _layout.pack(self._groups.values(), self._leaves, {p: by_path[p] for p in self._leaves})

    def unpack(self, cols):
        return _layout.unpack(self._groups.values(), self._leaves, cols)

    def replace(self, params, leaves):
        named, treedef = leaves_with_paths(params)
        out = [jnp.asarray(leaves[p], dtype=leaf.dtype) if p in leaves else leaf for p, leaf in named]
        return jax.tree_util.tree_unflatten(treedef, out)

    def unprotected(self, params):
        return [
            (p, int(np.size(leaf)), "not selected" if jnp.issubdtype(leaf.dtype, jnp.floating) else "not floating")
            for p, leaf in leaves_with_paths(params)[0]
            if p not in self._leaves
        ]


def columns_of(cb: PooledCodebook, path: str) -> list[tuple[str, int]]:
    """(group, column) pairs holding entries of ``path``, from the segments (row-major fill)."""
    out = set()
    for g in cb.groups.values():
        at = 0
        for s in g.segments:
            if s.path == path:
                out |= {(g.name, i % g.columns) for i in range(at, at + s.size)}
            at += s.size
    return sorted(out)


def clean_params(cb: PooledCodebook, seed: int = 0) -> dict:
    """Params whose every code column lies in range(A), plus an unprotected float and an int leaf."""
    rng = np.random.default_rng(seed)
    cols = {
        name: np.asarray(cb.matrix(name), np.float64) @ rng.standard_normal((g.n, g.columns))
        for name, g in cb.groups.items()
    }
    leaves = cb.unpack(cols)
    out = {k: jnp.asarray(v, cb.groups["g0"].dtype) for k, v in leaves.items()}
    out["free"] = jnp.asarray(rng.standard_normal(4), jnp.float32)
    out["step"] = jnp.asarray(3, jnp.int32)
    return out
