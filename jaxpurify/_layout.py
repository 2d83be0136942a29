"""Layout: how the entries of protected leaves are arranged into the codebook's (K, m) codes.

A *group* is one code: a K × m array Y whose every column y ∈ R^K is generated as y = A θ by the
group's own K × n matrix A.  Its entries come from one or more *segments*, each a run
[start, stop) of one leaf's entries in that leaf's *layout order*; the segments, concatenated in
order, fill Y row by row (C order), and the last row is padded with erasures (NaN) if needed:

    flat = concat(segment entries);   Y[i // m, i % m] = flat[i]

A leaf's layout order is its C order after moving its ``axis`` to the front (``axis=None``: C
order as stored).  With ``axis=a`` and one segment holding the whole leaf, column j of Y is the
vector of the leaf along axis a (the single-axis layout); with ``axis=None`` column j is
W[..., j]: consecutive entries in memory land in consecutive columns.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Segment:
    """Entries [start, stop) of leaf ``path`` in its layout order."""

    path: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class LeafLayout:
    """A protected leaf: its shape and dtype, and the axis moved to the front (None: none)."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    axis: int | None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def order(self, leaf) -> np.ndarray:
        """The leaf's entries as a flat host array in layout order (a view when possible)."""
        arr = np.asarray(leaf)
        if self.axis is not None:
            arr = np.moveaxis(arr, self.axis, 0)
        return arr.reshape(-1)

    def unorder(self, flat: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`order`: a flat array in layout order back to the leaf's shape."""
        if self.axis is None:
            return flat.reshape(self.shape)
        moved = (self.shape[self.axis],) + tuple(d for i, d in enumerate(self.shape) if i != self.axis)
        return np.moveaxis(flat.reshape(moved), 0, self.axis)


@dataclasses.dataclass(frozen=True)
class Group:
    """One code: K rows, n latent rows, ``columns`` (m) columns, filled from ``segments``."""

    name: str  # unique; the group's matrix A is derived from it
    K: int
    n: int
    columns: int
    dtype: str  # dtype of its member leaves (a group never mixes dtypes)
    segments: tuple[Segment, ...]

    @property
    def members(self) -> tuple[str, ...]:
        """Paths of the leaves whose entries it holds, in order, each once."""
        return tuple(dict.fromkeys(s.path for s in self.segments))

    @property
    def entries(self) -> int:
        """Real (non-padding) entries."""
        return sum(s.size for s in self.segments)

    @property
    def max_outliers(self) -> int:
        """Most corrupted entries per column that a certificate can accept: ⌊(K − n)/2⌋."""
        return (self.K - self.n) // 2


def pack(groups, leaves: dict[str, LeafLayout], values: dict[str, object]) -> dict[str, np.ndarray]:
    """Per group, its (K, m) host array of the leaves' ``values``; padding entries are NaN.

    The arrays are read-only (a group that is one whole leaf is a view of it when the layout
    allows, so no copy is made); copy one to modify it.
    """
    out = {}
    for g in groups:
        parts = [leaves[s.path].order(values[s.path])[s.start : s.stop] for s in g.segments]
        if len(parts) == 1 and parts[0].size == g.K * g.columns:
            y = parts[0].reshape(g.K, g.columns).view()
        else:
            y = np.full(g.K * g.columns, np.nan, np.dtype(g.dtype))
            if parts:
                np.concatenate(parts, out=y[: g.entries])
            y = y.reshape(g.K, g.columns)
        y.flags.writeable = False
        out[g.name] = y
    return out


def unpack(groups, leaves: dict[str, LeafLayout], cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack`: per leaf path, an array of the leaf's shape (any dtype).

    Padding entries of ``cols`` are ignored.  Raises ``ValueError`` naming the group if a code is
    missing or has the wrong shape.
    """
    pieces: dict[str, list] = {}
    for g in groups:
        if g.name not in cols:
            raise ValueError(f"group {g.name!r} is missing")
        y = np.asarray(cols[g.name])
        if y.shape != (g.K, g.columns):
            raise ValueError(f"group {g.name!r} has shape {y.shape}, expected {(g.K, g.columns)}")
        flat, at = y.reshape(-1), 0
        for s in g.segments:
            pieces.setdefault(s.path, []).append((s.start, flat[at : at + s.size]))
            at += s.size
    out = {}
    for path, parts in pieces.items():
        lay = leaves[path]
        parts.sort(key=lambda p: p[0])
        flat = parts[0][1] if len(parts) == 1 else np.concatenate([p for _, p in parts])
        if flat.size != lay.size:
            raise ValueError(f"leaf {path!r}: the groups hold {flat.size} of its {lay.size} entries")
        out[path] = lay.unorder(flat)
    return out
