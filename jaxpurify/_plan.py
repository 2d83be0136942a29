"""The plan of :func:`jaxpurify.purify`: the columns of all groups laid into solver calls.

A call solves ``slots`` items at once, each item ``width`` columns of one group with the group's
A (K_g × n_g), padded to the call's (K, N): extra rows are erasures (NaN in y, zero in A, so the
certificate counts only the real rows) and extra columns of A are zero (the solver is told each
item's real n, ``recover_padded``).  A call's shape is (slots, K, N, width) and each distinct
shape compiles once, so groups are merged into (K, N) *buckets* while the padding costs less than
the compilation it saves, and within a bucket columns are cut into items of at most
``MAX_WIDTHS`` widths chosen from W, W/2, W/4, … by the same estimate of the work (padding, a
fixed cost per item, a compilation per shape), so a one-column group costs a narrow item, not a
whole block.  Each call holds at most ``max_entries`` entries.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Protocol

import jax.numpy as jnp
import numpy as np

from jaxpurify._options import RecoverOptions

WIDTH_STEP = 2  # ratio between item widths on the ladder W, W/2, W/4, …
MAX_WIDTHS = 3  # at most this many item widths (solver shapes) per bucket
MIN_WIDTH = 8  # narrowest item; below this the per-item overhead dominates
MAX_WIDTH = 1024  # wider items buy nothing: recover works through its columns in chunks of ≤ 1024
# Work is counted in K·(N + N_FIXED) per column: the products with Q cost K·N, the masks, medians
# and bisections a few dozen passes of K each.
N_FIXED = 16
# An item costs about as much as ITEM_COST more columns: its QR and the fixed cost of each of its
# solver iterations, which grows with the machine's load.  Measured (benchmarks.purify_plan): idle,
# K = 64, ≈ 36 columns; at load ~10 on 2 cores, K = 256, ≈ 900 (8 items of 128 took 7× one of
# 1024).  512 leans to wide items; narrow ones only where a group is narrow.
ITEM_COST = 512
# Each solver shape compiles once per process (3–5 s of CPU on this 2-core machine, whatever its
# size) or once per machine with JAX's persistent cache.  In the estimate it weighs as this much
# work — about a second of solving — less than its cost on a first call, because the solve is paid
# on every call and the compilation only once.
SHAPE_COST = 1 << 28
# float16 / bfloat16 leaves are solved in float32, but their values carry their own rounding
# (≤ eps/2 relative): unless the caller sets rtol, inliers are judged at that precision.
LOW_PRECISION_RTOL = 4.0  # × eps of the leaf's dtype


@dataclasses.dataclass(frozen=True)
class Item:
    """Columns [start, stop) of group ``group``, solved together with the group's A."""

    group: str
    start: int
    stop: int


@dataclasses.dataclass(frozen=True)
class Call:
    """One solver call of shape (slots, K, n, width); ``items`` fill the first slots.  K and n are
    the bucket's: an item's group may have fewer rows (erasures) and fewer latent rows (zero columns
    of A; the solver gets each item's own n)."""

    dtype: str  # the leaves' dtype; solved in at least float32
    K: int
    n: int
    width: int
    slots: int
    items: tuple[Item, ...]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.slots, self.K, self.n, self.width)

    @property
    def solve_dtype(self) -> str:
        return solve_dtype(self.dtype)


class Columns(Protocol):
    """What :func:`plan` reads of a group (``jaxpurify._layout.Group`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def K(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def columns(self) -> int: ...
    @property
    def dtype(self) -> str: ...


def solve_dtype(dtype: str) -> str:
    return np.dtype(jnp.promote_types(dtype, jnp.float32)).name


def options_for(dtype: str, options: RecoverOptions) -> RecoverOptions:
    """The solver options for leaves of ``dtype``: float16 / bfloat16 judged at their precision."""
    if options.rtol is not None or np.dtype(dtype).itemsize >= 4:
        return options
    return options.replace(rtol=LOW_PRECISION_RTOL * float(jnp.finfo(dtype).eps))


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _split(m: int, widths: Sequence[int]) -> list[tuple[int, int]]:
    """Cut m columns into (width, count) items, widest first: as many full items of each width
    as fit, and a remainder above half the width takes one padded item of it."""
    out, left = [], m
    for i, w in enumerate(widths):
        full, rem = divmod(left, w)
        last = i == len(widths) - 1
        extra = 1 if rem and (last or 2 * rem > w) else 0
        if full + extra:
            out.append((w, full + extra))
        left = 0 if extra else rem
        if not left:
            break
    return out


_KN = tuple[int, int]  # a bucket's (K, N)


def _work(K: int, N: int) -> int:
    return K * (N + N_FIXED)


def _widths(groups: Sequence[Columns], K: int, N: int, max_entries: int) -> tuple[tuple[int, ...], int]:
    """The item widths for ``groups`` solved at (K, N), and the estimated cost of the bucket:
    padding included, ITEM_COST columns per item, SHAPE_COST per width (a compilation)."""
    cap = 1 << max(0, (max(1, max_entries // K)).bit_length() - 1)  # a power of two ≤ budget
    ladder = [min(_pow2(max(g.columns for g in groups)), cap, MAX_WIDTH)]
    while ladder[-1] // WIDTH_STEP >= MIN_WIDTH:
        ladder.append(ladder[-1] // WIDTH_STEP)

    def cost(ws: Sequence[int]) -> int:
        cols = sum((w + ITEM_COST) * c for g in groups for w, c in _split(g.columns, ws))
        return _work(K, N) * cols + SHAPE_COST * len(ws)

    subsets = (ws for r in range(1, MAX_WIDTHS + 1) for ws in itertools.combinations(ladder, r))
    best = min(subsets, key=cost)
    return best, cost(best)


def _buckets(groups: Iterable[Columns], max_entries: int) -> list[tuple[int, int, list[Columns], tuple[int, ...]]]:
    """Groups of one dtype → (K, N, members, item widths) buckets.  Start from one bucket per (K, n); merge the
    pair, among buckets next to each other in work per column, that lowers the estimated cost the
    most (a merged bucket solves at the larger K and the larger N), until no merge does."""
    members: dict[tuple[int, int], list[Columns]] = {}
    for g in groups:
        members.setdefault((g.K, g.n), []).append(g)
    priced_alone = {kn: _widths(gs, *kn, max_entries) for kn, gs in members.items()}
    widths = {kn: w for kn, (w, _) in priced_alone.items()}
    cost = {kn: c for kn, (_, c) in priced_alone.items()}
    # a pair's merge, kept until one of the buckets it reads changes: each round then prices only
    # the pairs next to the last merge (a model with hundreds of distinct (K, n) plans in seconds)
    priced: dict[tuple[_KN, _KN], tuple[int, _KN, list[Columns], tuple[tuple[int, ...], int]]] = {}
    while len(members) > 1:
        order = sorted(members, key=lambda kn: (_work(*kn), kn))
        best = None
        for a, b in zip(order, order[1:]):
            if (a, b) not in priced:
                kn = (max(a[0], b[0]), max(a[1], b[1]))
                third = kn not in (a, b) and kn in members
                gs = members[a] + members[b] + (members[kn] if third else [])
                ws, merged = _widths(gs, *kn, max_entries)
                priced[a, b] = (cost[a] + cost[b] + (cost[kn] if third else 0) - merged, kn, gs, (ws, merged))
            gain, kn, gs, new = priced[a, b]
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, a, b, kn, gs, new)
        if best is None:
            break
        _, a, b, kn, gs, new = best
        for old in {a, b, kn} & members.keys():
            del members[old], cost[old], widths[old]
        members[kn], (widths[kn], cost[kn]) = gs, new
        changed = {a, b, kn}
        priced = {ab: v for ab, v in priced.items() if not changed & {ab[0], ab[1], v[1]}}
    return [(K, N, gs, widths[K, N]) for (K, N), gs in sorted(members.items())]


def plan(groups: Iterable[Columns], max_entries: int) -> tuple[Call, ...]:
    """Lay the columns of ``groups`` (objects with name, K, n, columns, dtype) into calls.

    Pure: the same groups give the same calls.  Every column of every group lies in exactly one
    item; a call holds at most ``max_entries`` entries (K × width × slots) unless a single column
    is larger.
    """
    nonempty = [g for g in groups if g.columns > 0]
    by_dtype: dict[str, list[Columns]] = {}
    for g in nonempty:
        by_dtype.setdefault(np.dtype(g.dtype).name, []).append(g)
    calls = []
    for dtype, gs_of_dtype in by_dtype.items():
        for K, N, gs, widths in _buckets(gs_of_dtype, max_entries):
            items: dict[int, list[Item]] = {}
            for g in gs:
                at = 0
                for w, count in _split(g.columns, widths):
                    for _ in range(count):
                        items.setdefault(w, []).append(Item(g.name, at, min(at + w, g.columns)))
                        at += w
            for w, its in sorted(items.items(), reverse=True):
                # as many calls as the budget needs, then as few slots as fill them: one shape,
                # fewer padding slots than calls
                most = max(1, max_entries // (K * w))
                slots = -(-len(its) // -(-len(its) // most))
                for i in range(0, len(its), slots):
                    calls.append(Call(dtype, K, N, w, slots, tuple(its[i : i + slots])))
    return tuple(calls)
