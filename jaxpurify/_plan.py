"""The plan of :func:`jaxpurify.purify`: the columns of all groups laid into solver calls.

A call solves ``slots`` items at once, each item ``width`` columns of one group with the group's
A (K × n), so a call's shape is (slots, K, n, width) and each distinct shape compiles once.
Groups with the same n whose K are within ``ROW_SLACK`` share a row count (the extra rows are
erasures: NaN in y, zero in A, so the certificate counts only the real rows).  Columns are cut
into items of at most ``MAX_WIDTHS`` widths per row count, chosen from W, W/2, W/4, … by an
estimate of the work — padding, a fixed cost per item, a compilation per width — so a one-column
group costs a narrow item, not a whole block.  Each call holds at most ``max_entries`` entries.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Sequence

import jax.numpy as jnp
import numpy as np

from jaxpurify._options import RecoverOptions

ROW_SLACK = 0.125  # groups of one n share a row count if it adds at most 12.5% rows: fewer compiles
WIDTH_STEP = 2  # ratio between item widths on the ladder W, W/2, W/4, …
MAX_WIDTHS = 3  # at most this many item widths (solver shapes) per row count
MIN_WIDTH = 8  # narrowest item; below this the per-item overhead dominates
MAX_WIDTH = 1024  # wider items buy nothing: recover works through its columns in chunks of ≤ 1024
# An item costs about as much as ITEM_COST more columns: its QR and the fixed cost of each of its
# solver iterations, which grows with the machine's load.  Measured (benchmarks.purify_plan): idle,
# K = 64, ≈ 36 columns; at load ~10 on 2 cores, K = 256, ≈ 900 (8 items of 128 took 7× one of
# 1024).  512 leans to wide items; narrow ones only where a group is narrow.
ITEM_COST = 512
# Each width compiles one more solver shape (1–3 s once per process, or once per machine with
# JAX's persistent cache); in the estimate it weighs as this many entries (K × columns) of work,
# about half a second of solving on an idle machine.
WIDTH_COST = 1 << 22
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
    """One solver call of shape (slots, K, n, width); ``items`` fill the first slots."""

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


def solve_dtype(dtype: str) -> str:
    return np.dtype(jnp.promote_types(dtype, jnp.float32)).name


def options_for(dtype: str, options: RecoverOptions) -> RecoverOptions:
    """The solver options for leaves of ``dtype``: float16 / bfloat16 judged at their precision."""
    if options.rtol is not None or np.dtype(dtype).itemsize >= 4:
        return options
    return options.replace(rtol=LOW_PRECISION_RTOL * float(jnp.finfo(dtype).eps))


def _row_buckets(Ks: Iterable[int]) -> dict[int, int]:
    """K → the row count it is solved at: the largest K of its bucket, at most ROW_SLACK above."""
    out, top = {}, None
    for K in sorted(set(Ks), reverse=True):
        if top is None or top > K * (1 + ROW_SLACK):
            top = K
        out[K] = top
    return out


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


def _cost(groups, widths: Sequence[int], K: int) -> int:
    """Estimated work, in entries, of solving ``groups`` in items of ``widths``: padding included,
    ITEM_COST columns per item, WIDTH_COST per width (a compilation)."""
    cols = sum((w + ITEM_COST) * c for g in groups for w, c in _split(g.columns, widths))
    return K * cols + WIDTH_COST * len(widths)


def plan(groups: Iterable, max_entries: int) -> tuple[Call, ...]:
    """Lay the columns of ``groups`` (objects with name, K, n, columns, dtype) into calls.

    Pure: the same groups give the same calls.  Every column of every group lies in exactly one
    item; a call holds at most ``max_entries`` entries (K × width × slots) unless a single column
    is larger.
    """
    groups = [g for g in groups if g.columns > 0]
    classes: dict[tuple[str, int], list] = {}
    for g in groups:
        classes.setdefault((np.dtype(g.dtype).name, g.n), []).append(g)
    calls = []
    for (dtype, n), members in classes.items():
        rows = _row_buckets(g.K for g in members)
        by_rows: dict[int, list] = {}
        for g in members:
            by_rows.setdefault(rows[g.K], []).append(g)
        for K, gs in sorted(by_rows.items()):
            cap = 1 << max(0, (max(1, max_entries // K)).bit_length() - 1)  # a power of two ≤ budget
            ladder = [min(_pow2(max(g.columns for g in gs)), cap, MAX_WIDTH)]
            while ladder[-1] // WIDTH_STEP >= MIN_WIDTH:
                ladder.append(ladder[-1] // WIDTH_STEP)
            subsets = (ws for r in range(1, MAX_WIDTHS + 1) for ws in itertools.combinations(ladder, r))
            widths = min(subsets, key=lambda ws: _cost(gs, ws, K))
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
                    calls.append(Call(dtype, K, n, w, slots, tuple(its[i : i + slots])))
    return tuple(calls)
