"""Salvage an Orbax checkpoint item array by array, chunk by chunk.

Each leaf is a zarr array named by its '.'-joined path (a directory of its own, or keys inside
the OCDBT database).  ``_METADATA`` (the tree) and each array's ``.zarray`` are metadata the
codebook can stand in for: a leaf's name, shape and dtype are known, and the rest of its zarr
metadata is what Orbax writes (one chunk per array on one device, ``order`` C, no filters, no
compression or Orbax's zstd).  So:

* the tree comes from ``_METADATA`` if it reads, else from the codebook (and, beside it, from the
  array directories on disk);
* an array opens with its own ``.zarray`` if that reads and matches the expected shape and dtype,
  else with the expected metadata assumed (tried uncompressed, then zstd);
* every chunk is read on its own: a chunk that fails (a damaged compressed chunk, a file cut short,
  a missing key) is an erasure of that chunk's entries, not a failed load;
* uncompressed chunk files outside OCDBT (what ``io.save`` writes) are read as raw bytes, so a
  truncated chunk loses only its missing tail.

An OCDBT checkpoint whose index (manifest, b-tree nodes) is damaged cannot be opened at all: its
leaves are lost — why ``io.save`` writes without OCDBT.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from jaxpurify import _orbax_read as R
from jaxpurify._salvage import Expect, Found, Piece

if TYPE_CHECKING:  # for annotations only: _orbax_read imports it when called
    import tensorstore as ts

ZSTD = {"id": "zstd", "level": 1}  # Orbax's compression


def _zarr_dtype(dtype: np.dtype) -> str:
    return "bfloat16" if dtype.name == "bfloat16" else dtype.str


def expected_meta(shape: tuple[int, ...], dtype: np.dtype, compressor: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "chunks": list(shape),
        "compressor": compressor,
        "dimension_separator": ".",
        "dtype": _zarr_dtype(dtype),
        "fill_value": None,
        "filters": None,
        "order": "C",
        "shape": list(shape),
        "zarr_format": 2,
    }


def _grid(shape: Sequence[int], chunks: Sequence[int]) -> Iterable[tuple[int, ...]]:
    if not shape:
        return [()]
    return itertools.product(*[range(max(1, math.ceil(s / c))) for s, c in zip(shape, chunks)])


def _region(idx: Sequence[int], shape: Sequence[int], chunks: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(i * c, min((i + 1) * c, s)) for i, s, c in zip(idx, shape, chunks))


def _raw(path: str, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Piece | None:
    """An uncompressed zarr2 array outside OCDBT, from its chunk files' bytes; None if the
    array is not stored so (a readable ``.zarray`` says otherwise)."""
    d = os.path.join(path, name)
    chunks, note = list(shape), ".zarray unreadable; one chunk of the whole array assumed (how Orbax writes it)"
    try:
        with open(os.path.join(d, ".zarray"), "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
        if meta.get("compressor") is not None or meta.get("filters") is not None:
            return None
        if meta.get("shape") == list(shape) and meta.get("dtype") == _zarr_dtype(dtype) and meta.get("order") == "C":
            chunks, note = [int(c) for c in meta["chunks"]], ""
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError, KeyError):
        pass
    values = np.zeros(shape, dtype)
    missing = np.zeros(shape, bool)
    why = []
    per_chunk = math.prod(chunks) * dtype.itemsize
    for idx in _grid(shape, chunks):
        key = ".".join(map(str, idx)) if idx else "0"
        region = _region(idx, shape, chunks)
        try:
            with open(os.path.join(d, key), "rb") as f:
                data = f.read(per_chunk)
        except OSError:
            missing[region] = True
            why.append(f"chunk {key} missing")
            continue
        have = len(data) // dtype.itemsize
        block = np.zeros(math.prod(chunks), dtype)
        block[:have] = np.frombuffer(data, dtype, count=have)
        gone = np.zeros(math.prod(chunks), bool)
        gone[have:] = True
        if have < block.size:
            why.append(f"chunk {key} cut short")
        sub = tuple(slice(0, r.stop - r.start) for r in region)
        values[region] = block.reshape(chunks)[sub]
        missing[region] = gone.reshape(chunks)[sub]
    reason = "; ".join(why + ([note] if note else []))
    return Piece(values.reshape(-1), missing.reshape(-1) if missing.any() else None, reason)


def _chunked(arr: ts.TensorStore, shape: tuple[int, ...], dtype: np.dtype) -> Piece:
    """Read an opened TensorStore array chunk by chunk; failed chunks are missing."""
    # an open array's read chunk is fixed in every dimension (a layout being built may leave some None)
    chunks = cast(list[int], list(arr.chunk_layout.read_chunk.shape or shape) if shape else [])
    values = np.zeros(shape, dtype)
    missing = np.zeros(shape, bool)
    why = []
    for idx in _grid(shape, chunks):
        region = _region(idx, shape, chunks)
        try:
            values[region] = np.asarray(arr[region].read().result() if region else arr.read().result())
        except Exception as e:  # one chunk's failure (decompression, I/O, a missing key) is that chunk's
            missing[region] = True
            why.append(f"chunk {'.'.join(map(str, idx)) or '0'} unreadable ({R._first_line(e)[:80]})")
    return Piece(values.reshape(-1), missing.reshape(-1) if missing.any() else None, "; ".join(why))


def read_leaf(
    path: str, name: str, shape: tuple[int, ...], dtype: np.dtype, ocdbt: bool, zarr3: bool
) -> tuple[Piece, str]:
    """(piece, container note) of one expected array."""
    if not ocdbt and not zarr3:  # uncompressed chunk files (io.save's layout): read at byte precision
        piece = _raw(path, name, shape, dtype)
        if piece is not None:
            return piece, piece.why if ".zarray" in piece.why else ""
    note = ""
    try:
        arr = R.open_array(path, name, ocdbt, zarr3)
        if tuple(arr.shape) == tuple(shape) and arr.dtype.numpy_dtype == dtype:
            return _chunked(arr, shape, dtype), ""
        note = f"array {name!r}: its metadata says {list(arr.shape)} {arr.dtype.numpy_dtype}, expected {list(shape)}"
    except Exception as e:  # damaged .zarray / zarr.json or OCDBT index
        note = f"array {name!r}: metadata unreadable ({R._first_line(e)[:120]})"
    if zarr3:
        return Piece.lost(note), note
    for compressor in (None, ZSTD):
        try:
            arr = R.open_array(path, name, ocdbt, False, expected_meta(shape, dtype, compressor))
        except Exception:
            continue
        piece = _chunked(arr, shape, dtype)
        if piece.missing is None or not piece.missing.all():
            return piece, note
    return Piece.lost(note or "cannot be opened"), note


def salvage(path: str, expect: Expect, partial: bool) -> Found:
    """The leaves of an Orbax item (``partial``: other arrays beside the expected ones too)."""
    notes: list[str] = []
    lost_extra: list[str] = []
    try:
        doc = R.metadata(path)
        names = R.arrays(doc)
    except ValueError as e:
        doc, names = None, {}
        why = str(e).replace(f"{path}: ", "")[:120]
        notes.append(f"{why}; the tree taken from the codebook")
    ocdbt, zarr3 = R.layout(path, doc)
    for p in expect:
        names.setdefault(p, p.replace("/", "."))
    listed = R.array_names(path, ocdbt) if partial and doc is None else set()
    if listed is None:
        lost_extra.append("_METADATA and the OCDBT index are unreadable: the leaves beside the codebook's are unknown")
    else:  # other leaves: from the storage itself (array directories, OCDBT keys)
        known = set(names.values())
        for d in sorted(listed - known):
            names[d.replace(".", "/")] = d
    pieces, extra = {}, {}
    for p, name in names.items():
        if p in expect:
            shape, dtype = expect[p]
            pieces[p], note = read_leaf(path, name, shape, dtype, ocdbt, zarr3)
            if note:
                notes.append(note)
        elif partial:
            try:
                extra[p] = R.read_array(path, name, ocdbt, zarr3)
            except Exception as e:
                lost_extra.append(f"array {name!r} unreadable ({R._first_line(e)[:80]})")
    return Found(pieces, extra, notes, lost_extra)
