"""A codebook with a pooled layout written out by hand (``purify`` takes only a ``jaxpurify.Codebook``,
so this is one, built from its layout): two leaves share a group, a leaf is split over two groups of
different K (one padded with NaN), and a column holds entries of two leaves.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxpurify._codebook import Codebook
from jaxpurify._layout import Group, LeafLayout, Segment

SECRET = bytes(range(7, 39))


def tree_shapes() -> dict:
    return {"a": (2, 20), "b": (5,), "c": (3, 16), "free": (4,), "step": ()}


class PooledCodebook(Codebook):
    def __init__(self, dtype: str = "float32"):
        f32 = dtype
        leaves = [
            LeafLayout("a", (2, 20), f32, None),
            LeafLayout("b", (5,), f32, None),
            LeafLayout("c", (3, 16), f32, None),
        ]
        # g0: 8 × 8 = 64 entries ← a (40) + b (5) + c[0:19];  g1: 10 × 3 ← c[19:48] and 1 NaN
        groups = [
            Group("g0", 8, 2, 8, f32, (Segment("a", 0, 40), Segment("b", 0, 5), Segment("c", 0, 19))),
            Group("g1", 10, 2, 3, f32, (Segment("c", 19, 48),)),
        ]
        super().__init__(SECRET, 4.0, leaves, groups)


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
