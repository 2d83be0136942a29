"""Layout: how the entries of protected leaves are arranged into the codebook's (K, m) codes.

A *group* is one code: a K × m array Y whose every column y ∈ R^K is generated as y = A θ by the
group's own K × n matrix A.  Its entries come from one or more *segments*, each a run
[start, stop) of one leaf's entries in that leaf's *layout order*; the segments, concatenated in
order, fill Y row by row (C order), and the last row is padded with erasures (NaN) if needed:

    flat = concat(segment entries);   Y[i // m, i % m] = flat[i]

A leaf's layout order is its C order after moving its ``axis`` to the front (``axis=None``: C
order as stored).  With ``axis=a`` and one segment holding the whole leaf, column j of Y is the
vector of the leaf along axis a (the single-axis layout, the paper's).

The default layout interleaves (:func:`interleave_groups`): a leaf of C output channels and fan-in
F = N / C fills rows of m columns, m = :func:`coprime_width` (C, F) the smallest integer > C with
gcd(m, C) = gcd(m, F) = 1 and no prime factor ≤ 13.  Entry (i, c) lands in column (i·C + c) mod m:

* a burst of b consecutive entries puts ⌈b/m⌉ or fewer in any column;
* one output channel's F entries (stride C) spread ⌈F/m⌉ or fewer per column, and one input's C
  entries lie in C distinct columns: a rewritten channel or row fills no column;
* every s-th entry, for every s ≤ 16 (a stuck address line, one byte lane of a wider word, one
  float in s of a page), lands in every column at the same rate 1/s, since m has no factor
  in common with s: a regular pattern fills no column either, and a column's share of any
  pattern is the pattern's own rate.

Leaves too small for ``MIN_ROWS`` interleaved rows (biases, norm scales, 1-D leaves) are pooled
per dtype (:func:`pool_group`), laid the same way into a width free of small prime factors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any, TypeAlias, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxpurify import _working
from jaxpurify._table import table

# what the functions below return: host arrays with ``xp=np``, JAX arrays (traced) with ``xp=jnp``
Array: TypeAlias = np.ndarray | jax.Array


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

    def order(self, leaf: ArrayLike, xp: ModuleType = np) -> Array:
        """The leaf's entries as a flat array in layout order (a view when possible)."""
        arr: Array = xp.asarray(leaf)
        if self.axis is not None:
            arr = xp.moveaxis(arr, self.axis, 0)
        return arr.reshape(-1)

    def unorder(self, flat: Array, xp: ModuleType = np, first: int | None = None) -> Array:
        """Inverse of :meth:`order`: a flat array in layout order back to the leaf's shape
        (with ``first`` entries instead of ``shape[axis]`` on the moved axis if given)."""
        if self.axis is None:
            return flat.reshape(self.shape)
        rest = tuple(d for i, d in enumerate(self.shape) if i != self.axis)
        lead = self.shape[self.axis] if first is None else first
        moved: Array = xp.moveaxis(flat.reshape((lead,) + rest), 0, self.axis)
        return moved


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

    @property
    def weakest(self) -> int:
        """The same for its weakest column (a padded column has one row less)."""
        return (self.K - self.n - (self.entries < self.K * self.columns)) // 2


def pack(
    groups: Iterable[Group],
    leaves: Mapping[str, LeafLayout],
    values: Mapping[str, ArrayLike],
    xp: ModuleType = np,
    fill: float = np.nan,
) -> dict[str, Array]:
    """Per group, its (K, m) array of the leaves' ``values``; padding entries are ``fill``.

    With ``xp=np`` (host) the arrays are read-only (a group that is one whole leaf is a view of
    it when the layout allows, so no copy is made): copy one to modify it.  ``xp=jnp`` traces.
    """
    out: dict[str, Array] = {}
    for g in groups:
        parts = [leaves[s.path].order(values[s.path], xp)[s.start : s.stop] for s in g.segments]
        pad = g.K * g.columns - g.entries
        if pad:
            parts.append(xp.full((pad,), fill, parts[0].dtype))
        y = (parts[0] if len(parts) == 1 else xp.concatenate(parts)).reshape(g.K, g.columns)
        if xp is np:
            y = cast(np.ndarray, y).view()
            y.flags.writeable = False
        out[g.name] = y
    return out


def unpack(
    groups: Iterable[Group], leaves: Mapping[str, LeafLayout], cols: Mapping[str, ArrayLike], xp: ModuleType = np
) -> dict[str, Array]:
    """Inverse of :func:`pack`: per leaf path, an array of the leaf's shape (any dtype).

    Padding entries of ``cols`` are ignored.  Raises ``ValueError`` naming the group if a code is
    missing or has the wrong shape.
    """
    pieces: dict[str, list[tuple[int, Array]]] = {}
    for g in groups:
        if g.name not in cols:
            raise ValueError(f"group {g.name!r} is missing")
        y = xp.asarray(cols[g.name])
        if y.shape != (g.K, g.columns):
            raise ValueError(f"group {g.name!r} has shape {y.shape}, expected {(g.K, g.columns)}")
        flat, at = y.reshape(-1), 0
        for s in g.segments:
            pieces.setdefault(s.path, []).append((s.start, flat[at : at + s.size]))
            at += s.size
    out: dict[str, Array] = {}
    for path, parts in pieces.items():
        lay = leaves[path]
        parts.sort(key=lambda p: p[0])
        flat = parts[0][1] if len(parts) == 1 else _concatenate(xp, [p for _, p in parts])
        if flat.size != lay.size:
            raise ValueError(f"leaf {path!r}: the groups hold {flat.size} of its {lay.size} entries")
        out[path] = lay.unorder(flat, xp)
    return out


def _concatenate(xp: ModuleType, parts: list[Array]) -> Array:
    """One flat array of a leaf's pieces: a view, not a copy, when they are consecutive runs of one
    host buffer (purify's working copy, ``_working.join``)."""
    host = xp is np and all(isinstance(p, np.ndarray) for p in parts)
    joined = _working.join(cast(list[np.ndarray], parts)) if host else None
    return xp.concatenate(parts) if joined is None else joined


def check(leaves: dict[str, LeafLayout], groups: dict[str, Group]) -> None:
    """Every protected entry in exactly one group; shapes consistent (also for loaded files)."""
    held: dict[str, list[tuple[int, int]]] = {p: [] for p in leaves}
    for lay in leaves.values():
        if not jnp.issubdtype(np.dtype(lay.dtype), jnp.floating) or lay.size == 0:
            raise ValueError(f"leaf {lay.path!r}: cannot encode a {lay.dtype} leaf of shape {lay.shape}")
    for g in groups.values():
        if not (0 < g.n < g.K and g.columns > 0):
            raise ValueError(
                f"group {g.name!r}: need 0 < n < K and columns > 0, got K={g.K}, n={g.n}, columns={g.columns}"
            )
        if not (g.K - 1) * g.columns < g.entries <= g.K * g.columns:
            raise ValueError(
                f"group {g.name!r}: {g.entries} entries do not fill {g.K} × {g.columns} (at most one padded row)"
            )
        for s in g.segments:
            if s.path not in leaves or leaves[s.path].dtype != g.dtype:
                raise ValueError(f"group {g.name!r}: segment of unknown leaf {s.path!r} or of another dtype")
            held[s.path].append((s.start, s.stop))
        lay = leaves[g.segments[0].path]
        if lay.axis is not None and not (len(g.segments) == 1 and g.K == lay.shape[lay.axis]):
            raise ValueError(f"group {g.name!r}: a single-axis leaf must be one whole group")
    for path, spans in held.items():
        spans.sort()
        ends = [0] + [hi for _, hi in spans]
        if any(lo != e or hi <= lo for (lo, hi), e in zip(spans, ends)) or ends[-1] != leaves[path].size:
            raise ValueError(f"leaf {path!r}: the groups do not hold each of its entries exactly once")


# -- the default layout --------------------------------------------------------------------------

MIN_ROWS = 16  # a leaf with fewer rows (K) than this is pooled with others
MAX_ROWS = 512  # K cap: the solve costs ∝ K per entry, so taller leaves split
INTERLEAVE = "interleave"  # what ``select`` may return: the default layout, asked for by name
# Column widths share no factor with any stride s ≤ STRIDES (no prime factor ≤ 13): a pattern of
# every s-th entry then meets every column at the same rate 1/s.
STRIDES = 16
_SMALL_PRIMES = tuple(p for p in range(2, STRIDES + 1) if all(p % q for q in range(2, p)))


def stride_free(m: int) -> bool:
    """m shares no factor with any integer 2…``STRIDES``."""
    return all(m % p for p in _SMALL_PRIMES)


def plan(
    chosen: Sequence[tuple[str, tuple[int, ...], str, int | str | None]], redundancy: float, max_rows: int = MAX_ROWS
) -> tuple[list[LeafLayout], list[Group], list[tuple[str, int, str]]]:
    """The layout of the chosen leaves [(path, shape, dtype, axis)], in tree order.

    ``axis`` an int: the leaf alone along that axis (one group named by its path).  ``axis`` None
    (the default) or ``INTERLEAVE``: :func:`interleave_groups` for a leaf of two or more axes
    that fills at least ``MIN_ROWS`` rows that way; the others are pooled per dtype
    (:func:`pool_group`).  ``INTERLEAVE`` asks for the interleave by name and raises if the leaf
    is too small for it.  Returns (leaves, groups, skipped), ``skipped`` being [(path, size,
    reason)] for pools of a single entry (nothing to spare).
    """
    leaves: list[LeafLayout] = []
    groups: list[Group] = []
    skipped: list[tuple[str, int, str]] = []
    pools: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for path, shape, dtype, axis in chosen:
        size = math.prod(shape)
        if axis is not None and axis != INTERLEAVE:
            axis = cast(int, axis)  # the one str it may be is INTERLEAVE
            leaves.append(LeafLayout(path, shape, dtype, axis))
            groups.append(_group(path, shape[axis], size // shape[axis], dtype, redundancy, (Segment(path, 0, size),)))
        elif axis == INTERLEAVE or (len(shape) >= 2 and _interleaved_rows(shape) >= MIN_ROWS):
            leaves.append(LeafLayout(path, shape, dtype, None))
            groups += interleave_groups(path, shape, dtype, redundancy, max_rows)
        else:
            pools.setdefault(dtype, []).append((path, shape))
    for dtype, members in pools.items():
        sizes = [(p, math.prod(shape)) for p, shape in members]
        if sum(size for _, size in sizes) < 2:
            skipped += [(p, size, "too small to protect") for p, size in sizes]
            continue
        leaves += [LeafLayout(p, shape, dtype, None) for p, shape in members]
        groups.append(pool_group(sizes, dtype, redundancy, max_rows))
    order = {c[0]: i for i, c in enumerate(chosen)}
    leaves.sort(key=lambda lay: order[lay.path])
    return leaves, groups, skipped


def _interleaved_rows(shape: tuple[int, ...]) -> int:
    size, C = math.prod(shape), shape[-1]
    return -(-size // coprime_width(C, size // C))


def coprime_width(channels: int, fan_in: int) -> int:
    """m: the smallest integer > ``channels`` coprime to ``channels``, to ``fan_in`` and to every
    stride 2…``STRIDES`` (:func:`stride_free`).

    With entry (i, c) of an (F, C) leaf in column (i·C + c) mod m: gcd(m, C) = 1 makes one
    channel's entries i·C + c, i = 0…F−1, step by C (mod m) through every column before any
    repeats, and m > C puts one input's C consecutive entries in C distinct columns.
    gcd(m, F) = 1 likewise makes any stride-F run of entries cycle through every column, and
    :func:`stride_free` every stride-s run for s ≤ ``STRIDES``.
    """
    m = channels + 1
    while math.gcd(m, channels) != 1 or math.gcd(m, fan_in) != 1 or not stride_free(m):
        m += 1
    return m


def interleave_groups(
    path: str, shape: tuple[int, ...], dtype: str, redundancy: float, max_rows: int = MAX_ROWS
) -> list[Group]:
    """Groups for one leaf laid out by a coprime interleave (the default layout).

    The N entries in C order fill rows of m = :func:`coprime_width`(C, N / C) columns (C = the
    last axis, the output channels): entry (i, c) at flat index i·C + c lies in row (i·C + c) // m
    and column (i·C + c) mod m, K = ⌈N / m⌉ rows, the last one padded with erasures as in
    :func:`pool_group`.  A rewritten output channel (F entries) puts at most ⌈F / m⌉ changes in
    a column (gcd(m, C) = 1: any m consecutive i hit every column once).  Rows split at
    ``max_rows`` (:func:`row_groups`).  Raises ``ValueError`` naming the leaf if it has too few
    entries to give K / n any redundancy.
    """
    size, C = math.prod(shape), (shape[-1] if shape else 1)
    m = coprime_width(C, size // C)
    K = -(-size // m)
    if not math.ceil(K / redundancy) < K:
        raise ValueError(
            f"leaf {path!r}: the interleave lays its {size} entries into {K} row(s) of {m} "
            f"columns, which leaves no redundancy (need n = ⌈K/{redundancy}⌉ < K)"
        )
    return row_groups(path, size, m, dtype, redundancy, max_rows)


def row_groups(path: str, size: int, m: int, dtype: str, redundancy: float, max_rows: int = MAX_ROWS) -> list[Group]:
    """One leaf's ``size`` entries, in layout order, row by row in m columns: K = ⌈size / m⌉ rows,
    the last padded with erasures if m does not divide ``size``.

    When K > ``max_rows`` the rows are split into ``p`` contiguous blocks, one group each (named
    ``path#i``; only the last can be padded); ``p`` is the smallest count ≥ ⌈K / max_rows⌉ that
    divides K when one does up to twice that, so the blocks share a shape.
    """
    K = -(-size // m)
    p = -(-K // max_rows)
    p = next((q for q in range(p, 2 * p + 1) if K % q == 0), p)
    bounds = [K * i // p for i in range(p + 1)]
    if p == 1:
        return [_group(path, K, m, dtype, redundancy, (Segment(path, 0, size),))]
    return [
        _group(f"{path}#{i}", hi - lo, m, dtype, redundancy, (Segment(path, lo * m, min(hi * m, size)),))
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]


def pool_group(members: list[tuple[str, int]], dtype: str, redundancy: float, max_rows: int = MAX_ROWS) -> Group:
    """One group holding every entry of small leaves [(path, size)], in the order given.

    The N entries are laid row by row into m columns of K = ⌈N / m⌉ rows (entry i at row i // m,
    column i % m), the last row padded with erasures; m is the smallest width ≥ ⌈N / max_rows⌉
    that is 1 or :func:`stride_free`, so K ≤ max_rows and a regular pattern meets every column
    alike.  Its name is derived from its members, so it does not depend on the rest of the tree.
    """
    N = sum(size for _, size in members)
    m = -(-N // max_rows)
    while m > 1 and not stride_free(m):
        m += 1
    K = -(-N // m)
    digest = hashlib.blake2b("\n".join(p for p, _ in members).encode(), digest_size=4).hexdigest()
    segments = tuple(Segment(p, 0, size) for p, size in members)
    return _group(f"pool/{dtype}/{digest}", K, m, dtype, redundancy, segments)


def _group(name: str, K: int, m: int, dtype: str, redundancy: float, segments: tuple[Segment, ...]) -> Group:
    return Group(name, K, math.ceil(K / redundancy), m, dtype, segments)


@dataclasses.dataclass
class Capacity:
    """What a codebook protects: coverage, and per group how many errors a column can take."""

    groups: list[Group]
    covered: int  # floating parameter entries protected
    floating: int  # floating parameter entries in the tree the codebook was made from
    skipped: list[tuple[str, int, str]]
    state: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)  # (path, size, kind): not encoded

    @property
    def fraction(self) -> float:
        return self.covered / self.floating if self.floating else 1.0

    @property
    def weakest(self) -> Group:
        """The group whose weakest column accepts the fewest outliers."""
        return min(self.groups, key=lambda g: (g.weakest, g.K))

    def __str__(self) -> str:
        head = ("group", "leaves", "K", "n", "columns", "max outliers/column")
        rows = [(g.name, len(g.members), g.K, g.n, g.columns, g.max_outliers) for g in self.groups]
        w = self.weakest
        lines = [
            f"protected {self.covered:,} of {self.floating:,} floating parameters ({100 * self.fraction:.1f}%)",
            table(head, rows),
            f"weakest column: group {w.name!r}, at most {w.weakest} outliers of K={w.K}",
        ]
        lines += [f"unprotected: {p} ({size:,}): {reason}" for p, size, reason in self.skipped]
        for kind, (leaves, size) in self._state_by_kind().items():
            lines.append(f"{_STATE_WORDS.get(kind, kind)} (not encoded): {leaves} leaves, {size:,} values")
        return "\n".join(lines)

    def _state_by_kind(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for _, size, kind in self.state:
            n, v = out.get(kind, (0, 0))
            out[kind] = (n + 1, v + size)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "covered": self.covered,
            "floating": self.floating,
            "fraction": self.fraction,
            "groups": {
                g.name: {
                    "members": list(g.members),
                    "K": g.K,
                    "n": g.n,
                    "columns": g.columns,
                    "max_outliers": g.max_outliers,
                    "weakest": g.weakest,
                }
                for g in self.groups
            },
            "weakest": {"group": self.weakest.name, "max_outliers": self.weakest.weakest},
            "unprotected": [{"path": p, "size": z, "reason": r} for p, z, r in self.skipped],
            "state": {
                kind: {"leaves": [p for p, _, k in self.state if k == kind], "values": size}
                for kind, (_, size) in self._state_by_kind().items()
            },
        }


_STATE_WORDS = {
    "inference": "inference state",
    "training": "training state",
    "rng": "RNG state",
    "other": "other state",
}
