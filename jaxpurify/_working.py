"""purify's working copy of the code: one 64-byte-aligned buffer per leaf, each group a view of it.

purify copies every group's (K, m) code once, writes A x̂ into the copy and hands that copy over
as the purified leaves (``_purify._hand_over``), so that a leaf's bytes are held once more, not
twice: purify adds at most 3× a leaf's bytes (input excluded, output included).  That needs

* no concatenation on the way back: a leaf split over several groups (the row blocks of the
  default layout, interleaved leaves taller than ``MAX_ROWS``) gets one buffer in its layout
  order, with room for the last group's padding, and each group's (K, m) array is a view of it;
  ``_layout.unpack`` then returns the leaf as a view of that buffer (:func:`join`) instead of
  concatenating its pieces (one more copy of the leaf, measured 3.31× in all);
* a buffer that starts on a 64-byte boundary: XLA's CPU client aliases a host buffer in
  ``jax.device_put(may_alias=True)`` only then, and NumPy aligns large buffers to 16 bytes.

A group that holds several leaves (a pool of small leaves) has its own buffer, and each member
leaf is a view of it; a single-axis leaf is one group, the leaf a (transposed) view of it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

if TYPE_CHECKING:  # _layout imports this module
    from jaxpurify._layout import Group

ALIGN = 64  # bytes: XLA's CPU client aliases a host buffer in device_put only if it starts on this


def aligned_empty(size: int, dtype: DTypeLike) -> np.ndarray:
    """A writable 1-D array of ``size`` entries whose data starts on an ``ALIGN``-byte boundary."""
    dt = np.dtype(dtype)
    raw = np.empty(size * dt.itemsize + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + size * dt.itemsize].view(dt)


def _leaf_runs(groups: Iterable[Group]) -> dict[str, list[Group]]:
    """Leaves held by groups of their own (one segment each, no other member), by path: the groups
    in layout order, when each group's K·m entries, padding included, end before the next starts."""
    held: dict[str, list[Group]] = {}
    shared: set[str] = set()
    for g in groups:
        if len(g.segments) == 1:
            held.setdefault(g.segments[0].path, []).append(g)
        else:
            shared.update(s.path for s in g.segments)
    out: dict[str, list[Group]] = {}
    for path, gs in held.items():
        gs = sorted(gs, key=lambda g: g.segments[0].start)
        starts: list[int | None] = [g.segments[0].start for g in gs] + [None]
        fits = path not in shared and starts[0] == 0
        for g, nxt in zip(gs, starts[1:]):
            fits = fits and g.segments[0].stop == (nxt if nxt is not None else g.segments[0].stop)
            fits = fits and (nxt is None or g.segments[0].start + g.K * g.columns <= nxt)
        if fits and len(gs) > 1:
            out[path] = gs
    return out


def working_copies(groups: Collection[Group], cols: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """Per group, a writable aligned copy of its (K, m) code ``cols[name]``; the groups of a leaf
    split over several groups are consecutive views of one buffer (module docstring)."""
    out: dict[str, np.ndarray] = {}
    for gs in _leaf_runs(groups).values():
        end = max(g.segments[0].start + g.K * g.columns for g in gs)
        buf = aligned_empty(end, np.asarray(cols[gs[0].name]).dtype)
        for g in gs:
            start = g.segments[0].start
            view = buf[start : start + g.K * g.columns].reshape(g.K, g.columns)
            np.copyto(view, cols[g.name])
            out[g.name] = view
    for g in groups:
        if g.name not in out:
            a = np.asarray(cols[g.name])
            out[g.name] = aligned_empty(a.size, a.dtype).reshape(a.shape)
            np.copyto(out[g.name], a)
    return out


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def join(parts: Sequence[np.ndarray]) -> np.ndarray | None:
    """The 1-D arrays ``parts`` as one array without a copy, when they are consecutive runs of one
    C-contiguous buffer (what :func:`working_copies` gives a split leaf); else None."""
    first = parts[0]
    root = _root(first)
    if not (root.flags.c_contiguous and all(p.ndim == 1 and p.flags.c_contiguous for p in parts)):
        return None
    at = first.ctypes.data
    for p in parts:
        if p.dtype != first.dtype or _root(p) is not root or p.ctypes.data != at:
            return None
        at += p.nbytes
    lo = first.ctypes.data - root.ctypes.data
    if lo < 0 or lo + (at - first.ctypes.data) > root.nbytes:
        return None
    raw = root.reshape(-1).view(np.uint8)
    return raw[lo : lo + at - first.ctypes.data].view(first.dtype)
