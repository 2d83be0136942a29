"""Salvage a Flax msgpack checkpoint (``flax.serialization.msgpack_serialize``) by its expected layout.

The stream is nested maps; a leaf is its key (a msgpack str) and an ext value of type 1 holding
``packb((shape, dtype name, raw bytes))``.  Given the tree's paths, shapes and dtypes, every byte
except the payload is known: map headers, keys, ext and bin headers (msgpack always uses the
shortest encoding).  Only the order of the keys inside each map is the writer's (``io.save``
writes JAX's sorted order; ``flax.serialization.to_bytes`` the dict's insertion order), so it is
read from the file: at each position the remaining siblings are tried, the one whose key and
header match exactly is taken; where damage has hit that metadata, the sibling whose record ends
where an intact sibling's record begins (or, last in its map, by elimination).  Siblings that stay
ambiguous (same size, key destroyed) and leaves past the end of a truncated file are unreadable;
so is a map whose order cannot be followed (its leaves, not the rest of the file: a map's size
is known, so reading resumes after it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np

from jaxpurify._salvage import Expect, Found, Piece

_NDARRAY = 1


def _packb(x: object) -> bytes:
    packed: bytes = msgpack.packb(x, use_bin_type=True)
    return packed


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    if n < 1 << 16:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + bytes([n])
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _ext_header(n: int, code: int) -> bytes:
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if n in fixed:
        return bytes([fixed[n], code])
    if n < 1 << 8:
        return bytes([0xC7, n, code])
    if n < 1 << 16:
        return b"\xc8" + n.to_bytes(2, "big") + bytes([code])
    return b"\xc9" + n.to_bytes(4, "big") + bytes([code])


class _Leaf:
    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.shape, self.dtype = path, shape, dtype
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        inner = b"\x93" + _packb(list(shape)) + _packb(dtype.name) + _bin_header(self.nbytes)
        self.head = _ext_header(len(inner) + self.nbytes, _NDARRAY) + inner
        self.size: int = len(self.head) + self.nbytes

    def leaves(self) -> Iterator[_Leaf]:
        yield self


class _Map:
    def __init__(self, path: str, children: dict[str, _Leaf | _Map]):
        self.path = path
        self.children = children  # name -> _Leaf | _Map, in the expected order
        self.head = _map_header(len(children))
        self.size: int = len(self.head) + sum(len(_packb(k)) + c.size for k, c in children.items())

    def leaves(self) -> Iterator[_Leaf]:
        for c in self.children.values():
            yield from c.leaves()


def _tree(expect: Expect) -> _Map:
    root: dict[str, Any] = {}  # nested dicts of _Leaf
    for path, (shape, dtype) in expect.items():
        *parents, last = path.split("/")
        node = root
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = _Leaf(path, shape, dtype)

    def build(d: dict[str, Any], path: str) -> _Map:
        return _Map(path, {k: build(v, f"{path}/{k}".lstrip("/")) if isinstance(v, dict) else v for k, v in d.items()})

    return build(root, "")


class _Walk:
    def __init__(self, buf: bytes, open_maps: frozenset[str] = frozenset()):
        self.buf = buf
        self.open_maps = open_maps  # maps that may hold keys besides the expected ones
        self.pieces: dict[str, Piece] = {}
        self.container: list[str] = []
        self.extra: dict[str, np.ndarray] = {}
        self.lost_extra: list[str] = []

    # -- bytes ---------------------------------------------------------------------------------
    def diff(self, pos: int, want: bytes) -> int:
        """Bytes of ``want`` that the file does not hold at ``pos`` (missing bytes count)."""
        got = self.buf[pos : pos + len(want)]
        n = len(got)
        if got == want[:n]:
            return len(want) - n
        a = np.frombuffer(got, np.uint8)
        b = np.frombuffer(want[:n], np.uint8)
        return int(np.count_nonzero(a != b)) + len(want) - n

    def note(self, pos: int, want: bytes, what: str) -> None:
        present = want[: max(0, len(self.buf) - pos)]  # past the end: counted as truncation, not here
        bad = self.diff(pos, present) if present else 0
        if bad:
            self.container.append(f"{what}: {bad} of {len(want)} bytes at offset {pos} differ from the expected layout")

    # -- records -------------------------------------------------------------------------------
    def lose(self, node: _Leaf | _Map, why: str) -> None:
        for leaf in node.leaves():
            self.pieces[leaf.path] = Piece.lost(why)

    def leaf(self, pos: int, leaf: _Leaf, name: str) -> None:
        key = _packb(name)
        self.note(pos, key + leaf.head, f"key and header of {leaf.path!r}")
        at = pos + len(key) + len(leaf.head)
        data = memoryview(self.buf)[at : at + leaf.nbytes]
        self.pieces[leaf.path] = Piece.from_bytes(data, leaf.nbytes, leaf.dtype, "past the end of the file (truncated)")

    def record(self, pos: int, name: str, node: _Leaf | _Map) -> None:
        if isinstance(node, _Leaf):
            self.leaf(pos, node, name)
        else:
            key = _packb(name)
            self.note(pos, key, f"key {name!r}")
            self.map(pos + len(key), node, node.path)

    def map(self, pos: int, node: _Map, path: str = "") -> int:
        """Read a map whose expected content is ``node`` starting at ``pos``; returns its end."""
        if path in self.open_maps:
            return self.open_map(pos, node, path)
        return self.closed_map(pos, node, path)

    def closed_map(self, pos: int, node: _Map, path: str) -> int:
        """A map that holds exactly the expected keys, in an order read from the file."""
        end = pos + node.size
        where = repr(path) if path else "the root"
        self.note(pos, node.head, f"map header of {where}")
        pos += len(node.head)
        unassigned = list(node.children)
        deferred: list[tuple[int, list[str]]] = []
        for slot in range(len(node.children)):
            last = slot == len(node.children) - 1
            sig = {n: _packb(n) + node.children[n].head for n in unassigned}
            if all(pos + len(sig[n]) >= len(self.buf) for n in unassigned):
                # truncated before any remaining payload: all of it is missing, whichever leaf is where
                ambiguous = {n for _, names in deferred for n in names}
                for name in unassigned:
                    if name in ambiguous:
                        self.lose(node.children[name], "its key is damaged and the file truncated")
                    else:
                        self.record(len(self.buf), name, node.children[name])
                return end
            exact = [n for n in unassigned if self.diff(pos, sig[n]) == 0]
            chosen = exact if len(exact) == 1 else self._continuing(pos, unassigned, sig, node, last, end)
            sizes = {_record_size(n, node.children[n]) for n in chosen}
            if len(chosen) == 1:
                name = chosen[0]
                unassigned.remove(name)
                self.record(pos, name, node.children[name])
            elif len(sizes) == 1:  # same size, key destroyed: decided by elimination below
                deferred.append((pos, chosen))
            else:
                self.container.append(f"map {where}: its order cannot be followed past offset {pos}")
                for name in unassigned:
                    self.lose(node.children[name], f"cannot be located: metadata around offset {pos} is damaged")
                return end
            pos += sizes.pop()
        self._resolve(deferred, unassigned, node)
        return end

    def open_map(self, pos: int, node: _Map, path: str) -> int:
        """A map on the way to the selected subtree: its other keys are read as they are (intact)."""
        count, after = _read_map_header(self.buf, pos)
        if count is None or count == len(node.children):  # no other keys (or cannot tell): the strict walk
            return self.closed_map(pos, node, path)
        pos = after
        unassigned = dict(node.children)
        for _ in range(count):
            exact = [n for n, c in unassigned.items() if self.diff(pos, _packb(n) + c.head) == 0]
            if exact:
                name = exact[0]
                self.record(pos, name, unassigned.pop(name))
                pos = self.end_of_record(pos, name, node.children[name])
                continue
            try:
                key, value, used = _decode_pair(self.buf, pos)
            except Exception:
                self.lost_extra.append(f"keys besides the selected subtree cannot be read at offset {pos}")
                break
            if key in unassigned:  # a selected subtree whose header is damaged, the key intact
                self.record(pos, key, unassigned.pop(key))
                pos = self.end_of_record(pos, key, node.children[key])
                continue
            for p, arr in _flat(value, f"{path}/{key}".lstrip("/")).items():
                self.extra[p] = arr
            pos += used
        for child in unassigned.values():
            self.lose(child, "not found in the container")
        return pos

    def end_of_record(self, pos: int, name: str, node: _Leaf | _Map) -> int:
        return pos + _record_size(name, node)

    def _continuing(
        self, pos: int, names: list[str], sig: dict[str, bytes], node: _Map, last: bool, end: int
    ) -> list[str]:
        """Siblings whose record, placed at ``pos``, ends where the map ends (last slot) or
        where another sibling's record begins intact."""
        out = []
        for name in names:
            nxt = pos + _record_size(name, node.children[name])
            if (nxt == end) if last else any(self.diff(nxt, sig[o]) == 0 for o in names if o != name):
                out.append(name)
        return out

    def _resolve(self, deferred: list[tuple[int, list[str]]], unassigned: list[str], node: _Map) -> None:
        """Assign the deferred slots by elimination: only names read nowhere else are candidates."""
        slots = [(pos, [n for n in names if n in unassigned]) for pos, names in deferred]
        while True:
            single = next((i for i, (_, names) in enumerate(slots) if len(names) == 1), None)
            if single is None:
                break
            pos, (name,) = slots.pop(single)
            self.record(pos, name, node.children[name])
            slots = [(p, [n for n in names if n != name]) for p, names in slots]
        for pos, names in slots:
            for n in names:
                self.lose(node.children[n], f"its key at offset {pos} is damaged, as is a same-sized sibling's")


def _record_size(name: str, node: _Leaf | _Map) -> int:
    return len(_packb(name)) + node.size


def _read_map_header(buf: bytes, pos: int) -> tuple[int | None, int]:
    b = buf[pos] if pos < len(buf) else None
    if b is None:
        return None, pos
    if 0x80 <= b <= 0x8F:
        return b & 0x0F, pos + 1
    if b == 0xDE and pos + 3 <= len(buf):
        return int.from_bytes(buf[pos + 1 : pos + 3], "big"), pos + 3
    if b == 0xDF and pos + 5 <= len(buf):
        return int.from_bytes(buf[pos + 1 : pos + 5], "big"), pos + 5
    return None, pos


def _ext(code: int, data: bytes) -> np.ndarray:
    if code in (1, 3):  # flax: ndarray, numpy scalar (as a 0-d array)
        shape, name, raw = msgpack.unpackb(data, raw=True)
        import jax.numpy as jnp

        return np.frombuffer(raw, jnp.dtype(name.decode())).reshape(shape).copy()
    raise ValueError(f"msgpack ext type {code} is not an array")


def _decode_pair(buf: bytes, pos: int) -> tuple[str, Any, int]:
    """(key, value, bytes used) of one intact key/value pair at ``pos``."""
    u = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_ext, max_buffer_size=len(buf))
    u.feed(memoryview(buf)[pos:])
    key = u.unpack()
    value = u.unpack()
    if not isinstance(key, str):
        raise ValueError("not a str key")
    return key, value, u.tell()


def _flat(value: Any, path: str) -> dict[str, np.ndarray]:
    if isinstance(value, dict):
        out: dict[str, np.ndarray] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{path}/{k}"))
        return out
    if isinstance(value, (list, tuple)):
        return _flat(dict(enumerate(value)), path)
    return {path: np.asarray(value)}


def salvage(buf: bytes, expect: Expect, prefix: str = "") -> Found:
    """The leaves of a msgpack file's bytes.  ``prefix``: where the expected leaves sit; the maps
    from the root down to it may hold other keys (read as they are, into ``Found.extra``)."""
    root = _tree(expect)
    parts = [p for p in prefix.strip("/").split("/") if p]
    walk = _Walk(buf, frozenset("/".join(parts[:i]) for i in range(len(parts) + 1)))
    walk.map(0, root)
    if not walk.extra:
        if len(buf) > root.size:
            walk.container.append(f"{len(buf) - root.size} bytes after the expected end of the file")
        elif len(buf) < root.size:
            walk.container.append(f"the file ends {root.size - len(buf)} bytes early (truncated)")
    return Found(walk.pieces, walk.extra, walk.container, walk.lost_extra)


def payload_offsets(expect: Expect) -> dict[str, tuple[int, int]]:
    """Where each leaf's bytes sit in a file written in the expectation's key order (as
    ``io.save`` writes it): {path: (start, stop)}."""
    out: dict[str, tuple[int, int]] = {}

    def walk(node: _Map, pos: int) -> int:
        pos += len(node.head)
        for name, child in node.children.items():
            pos += len(_packb(name))
            if isinstance(child, _Leaf):
                start = pos + len(child.head)
                out[child.path] = (start, start + child.nbytes)
                pos += child.size
            else:
                pos = walk(child, pos)
        return pos

    walk(_tree(expect), 0)
    return out
