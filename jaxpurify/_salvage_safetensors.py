"""Salvage a ``.safetensors`` file by its expected layout.

The file is an 8-byte little-endian header length N, N bytes of JSON (``{"key": {"dtype",
"shape", "data_offsets": [a, b]}, …}``, padded with spaces) and the tensors' bytes, contiguous.
A damaged header no longer parses as JSON, but most of its entries are intact: each is found on
its own (a regular expression over the header's bytes), and kept only if it names an expected
leaf with the expected dtype and shape and spans exactly its bytes.  A damaged length N is
replaced by the one the payload implies.  A leaf whose entry is destroyed is placed where the
writer puts it — ``safetensors`` orders tensors by dtype, then key, and lays them out back to back,
which is checked against every entry that was read — or, failing that, in the one gap of the
payload its size fits.  Keys are the '/'-joined leaf paths or '.'-joined ones (``flatten_dict(…,
sep=".")``, as transformers writes them).
"""

from __future__ import annotations

import json
import re
import struct

import numpy as np

from jaxpurify._salvage import Expect, Found, Piece

_Entry = tuple[str, tuple[int, ...], int, int]  # a header entry: (dtype, shape, start, stop)

_ENTRY = re.compile(rb'"((?:[^"\\]|\\.){1,1000})"\s*:\s*\{([^{}]{0,4000})\}')

NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
}


def _entries(header: bytes) -> dict[str, _Entry]:
    """Every entry of the header that still reads as one: {key: (dtype, shape, start, stop)}."""
    out: dict[str, _Entry] = {}
    for m in _ENTRY.finditer(header):
        try:
            key = json.loads(b'"' + m.group(1) + b'"')
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        try:  # the whole body must be an entry: damage that merged two entries must not pass
            body = json.loads(b"{" + m.group(2) + b"}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not _is_entry(body):
            continue
        a, b = body["data_offsets"]
        out.setdefault(key, (body["dtype"], tuple(body["shape"]), a, b))
    return out


def _is_entry(body: object) -> bool:
    def ints(v: object, n: int | None = None) -> bool:
        return (
            isinstance(v, list)
            and (n is None or len(v) == n)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
        )

    return (
        isinstance(body, dict)
        and set(body) == {"dtype", "shape", "data_offsets"}
        and isinstance(body["dtype"], str)
        and ints(body["shape"])
        and ints(body["data_offsets"], 2)
        and body["data_offsets"][0] <= body["data_offsets"][1]
    )


def _similar(a: str, b: str) -> bool:
    """The same key with some characters overwritten (a burst across it)?"""
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) * 2 <= len(b)


def _writer_order(keys: dict[str, np.dtype]) -> list[str]:
    """The order ``safetensors`` lays tensors out in (it depends on dtypes and keys only)."""
    import safetensors.numpy

    probe = safetensors.numpy.save({k: np.zeros(1, dt) for k, dt in keys.items()})
    (n,) = struct.unpack("<Q", probe[:8])
    header = json.loads(probe[8 : 8 + n])
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def salvage(buf: bytes, expect: Expect, partial: bool) -> Found:
    """The leaves of a safetensors file's bytes (``Found.sep``: the keys' separator).

    ``partial``: the expectation is a subtree; other entries of the file are read as they are
    (``extra``, by '/'-joined path), and payload no intact entry accounts for loses them."""
    size = len(buf)
    notes: list[str] = []
    (stored,) = struct.unpack("<Q", buf[:8]) if size >= 8 else (0,)
    plausible = 2 <= stored <= size - 8
    region = buf[8 : 8 + stored] if plausible else buf[8 : 8 + min(size - 8, 64 * 1024 + 200 * len(expect) * 4)]
    found = _entries(region)
    sep = "." if any(p.replace("/", ".") in found and "/" in p for p in expect) else "/"
    key = {p: p.replace("/", sep) for p in expect}
    pieces: dict[str, Piece] = {}
    placed: dict[str, tuple[int, int]] = {}
    dtype: np.dtype | None  # an expected leaf's; below, an extra entry's (None: not a known dtype)
    for p, (shape, dtype) in expect.items():
        e = found.get(key[p])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if e and e[0] == NAMES.get(dtype.name) and e[1] == shape and e[3] - e[2] == nbytes:
            placed[p] = (e[2], e[3])
    wanted = set(key.values())
    # outside the expectation: other leaves (``partial``), else keys damage turned into other keys
    extra_entries = {k: e for k, e in found.items() if k not in wanted and k != "__metadata__"} if partial else {}
    for p in [p for p in expect if p not in placed]:  # a key damage left readable, the entry intact
        shape, dtype = expect[p]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        like = [
            k
            for k, e in extra_entries.items()
            if e[0] == NAMES.get(dtype.name) and e[1] == shape and e[3] - e[2] == nbytes and _similar(k, key[p])
        ]
        if len(like) == 1:
            placed[p] = extra_entries.pop(like[0])[2:]
            notes.append(f"entry of {key[p]!r}: its key reads {like[0]!r}")
    missing = [p for p in expect if p not in placed]
    if missing:
        notes.append(f"header: {len(missing)} of {len(expect)} expected entries unreadable")
    total = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for s, d in expect.values())
    total += sum(e[3] - e[2] for e in extra_entries.values())
    text = buf[8 : 8 + stored].rstrip(b" ") if plausible else b""
    if plausible and (text.endswith(b"}") or stored == size - 8 - total):
        start = 8 + stored
    else:
        start = size - total
        notes.append(f"header length: the stored value {stored} is damaged; {start - 8} taken from the payload's size")
        if start < 8:
            lost = Piece.lost("the header length is damaged and the file truncated")
            return Found({p: lost for p in expect}, container=notes, sep=sep)
    _place_missing(missing, placed, expect, key, extra_entries, notes)
    why = "past the end of the file (truncated)"
    for p, (_, dtype) in expect.items():
        if p in placed:
            a, b = placed[p]
            pieces[p] = Piece.from_bytes(memoryview(buf)[start + a : start + b], b - a, dtype, why)
        else:
            pieces[p] = Piece.lost("its header entry is damaged and its place in the payload is ambiguous")
    extra, lost_extra = {}, []
    spans = [placed[p] for p in placed]
    for k, (dt, shape, a, b) in list(extra_entries.items()):
        if any(a < y and x < b for x, y in spans):  # an expected leaf's bytes under a damaged key
            notes.append(f"entry {k!r}: a damaged key of an expected leaf")
            del extra_entries[k]
            continue
        dtype = next((np.dtype(n) for n, s in NAMES.items() if s == dt and n != "bfloat16"), None)
        if dt == "BF16":
            import ml_dtypes

            dtype = np.dtype(ml_dtypes.bfloat16)
        if dtype is None or start + b > size or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != b - a:
            lost_extra.append(f"entry {k!r} cannot be read")
            continue
        arr = np.frombuffer(buf, dtype, count=(b - a) // dtype.itemsize, offset=start + a)
        extra[k.replace(sep, "/")] = arr.reshape(shape).copy()
    covered = sum(b - a for a, b in placed.values()) + sum(e[3] - e[2] for e in extra_entries.values())
    if partial and size - start > covered:
        lost_extra.append(f"{size - start - covered} payload bytes belong to header entries that are destroyed")
    return Found(pieces, extra, notes, lost_extra, sep)


def _place_missing(
    missing: list[str],
    placed: dict[str, tuple[int, int]],
    expect: Expect,
    key: dict[str, str],
    extra_entries: dict[str, _Entry],
    notes: list[str],
) -> None:
    """Place leaves whose entries are destroyed: by the writer's order if every readable entry
    sits where that order puts it, else in a gap that only one of them fits."""
    if not missing:
        return
    dtypes = {key[p]: expect[p][1] for p in expect}
    sizes = {key[p]: int(np.prod(expect[p][0], dtype=np.int64)) * expect[p][1].itemsize for p in expect}
    for k, (_, _, a, b) in extra_entries.items():
        dtypes[k] = np.dtype(np.uint8)  # unknown dtype names only matter for order, see below
        sizes[k] = b - a
    known = {key[p]: placed[p] for p in placed} | {k: (e[2], e[3]) for k, e in extra_entries.items()}
    if not extra_entries:  # the writer's order needs every key's dtype
        at, layout = 0, {}
        for k in _writer_order(dtypes):
            layout[k] = (at, at + sizes[k])
            at += sizes[k]
        if all(layout[k] == v for k, v in known.items()):
            for p in missing:
                placed[p] = layout[key[p]]
            notes.append(f"placed {len(missing)} leaves by the writer's layout")
            return
    spans = sorted(known.values())
    gaps, at = [], 0
    for a, b in spans:
        if a > at:
            gaps.append((at, a))
        at = max(at, b)
    end = at + sum(sizes[key[p]] for p in missing)
    if end > at:
        gaps.append((at, end))
    for g0, g1 in gaps:
        fits = [p for p in missing if sizes[key[p]] == g1 - g0]
        if len(fits) == 1:
            placed[fits[0]] = (g0, g1)
            missing.remove(fits[0])
