"""Salvage: read what can be read of a damaged checkpoint, and say exactly what could not be.

A checkpoint is metadata (a msgpack stream's maps and array headers, a safetensors JSON header,
Orbax's ``_METADATA``, ``.zarray`` files and OCDBT index) around payload (the arrays' bytes).
Storage faults overwrite bytes; when they land in metadata, the format's own reader fails and the
whole file is lost although almost every payload byte is intact.  The codebook records every
leaf's path, shape and dtype (``Codebook.model``): from that the metadata a writer produces is
known, so each leaf's payload can be found where that metadata puts it (``_salvage_msgpack``,
``_salvage_safetensors``, ``_salvage_orbax``).  Metadata that differs from the expectation is
damage to the container, not to the values: it is reported and bypassed.  Payload bytes that
cannot be read (past the end of a truncated file, in a chunk that fails to decompress, in a leaf
that cannot be located) are *erasures*: NaN entries, which purify solves for like any other
erasure — in protected leaves only.  An unreadable entry of any other leaf (unprotected, or not
floating: it cannot hold NaN) is an :class:`Unreadable` error naming the leaves: salvage never
makes up a value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

Expect = dict[str, tuple[tuple[int, ...], np.dtype]]  # leaf path -> (shape, dtype), in tree order


class Unreadable(ValueError):
    """Part of the checkpoint cannot be read and cannot be handed to purify as erasures.
    ``located``: how many of the codebook's leaves were found (when salvage got that far)."""

    def __init__(self, message: str, located: int = -1):
        super().__init__(message)
        self.located = located


@dataclasses.dataclass(frozen=True)
class LeafDamage:
    """A leaf with ``erased`` of its ``size`` entries unreadable, made erasures (NaN)."""

    path: str
    erased: int
    size: int
    why: str

    def as_dict(self) -> dict[str, Any]:
        """The fields, JSON-ready."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Salvage:
    """What salvage did: container damage bypassed (no entry lost) and leaves given erasures."""

    source: str
    format: str
    reason: str  # why the format's own reader was not enough
    container: tuple[str, ...]
    leaves: tuple[LeafDamage, ...]
    sep: str = "/"  # how the file joins path components (safetensors keys)

    @property
    def erased(self) -> int:
        return sum(d.erased for d in self.leaves)

    def summary(self) -> str:
        """One line."""
        parts = [f"{self.source}: damaged {self.format} container ({self.reason}); salvaged by the codebook's layout"]
        if self.container:
            parts.append(f"{len(self.container)} metadata defects bypassed")
        if self.leaves:
            parts.append(f"{self.erased} unreadable entries in {len(self.leaves)} protected leaves made erasures")
        else:
            parts.append("every entry read")
        return "; ".join(parts)

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  container: {c}" for c in self.container]
        lines += [f"  {d.path}: {d.erased} of {d.size} entries erased ({d.why})" for d in self.leaves]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: source, format, reason, the container defects, the damaged leaves and the
        total of erased entries."""
        return {
            "source": self.source,
            "format": self.format,
            "reason": self.reason,
            "container": list(self.container),
            "leaves": [d.as_dict() for d in self.leaves],
            "erased": self.erased,
        }


@dataclasses.dataclass
class Piece:
    """One leaf as read: flat ``values`` (the leaf's dtype; unread entries hold anything) and
    ``missing`` (True where the entry could not be read), or ``values is None`` if not found."""

    values: np.ndarray | None
    missing: np.ndarray | None
    why: str = ""

    @classmethod
    def lost(cls, why: str) -> Piece:
        return cls(None, None, why)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, nbytes: int, dtype: np.dtype, why: str = "") -> Piece:
        """Entries from the first ``nbytes`` bytes that should be there; fewer bytes (a
        truncated file) leave the entries they do not cover missing."""
        count = nbytes // dtype.itemsize if dtype.itemsize else 0
        have = min(len(data), nbytes) // dtype.itemsize if dtype.itemsize else 0
        values = np.zeros(count, dtype)
        values[:have] = np.frombuffer(data, dtype, count=have)
        missing = None
        if have < count:
            missing = np.zeros(count, bool)
            missing[have:] = True
        return cls(values, missing, why if have < count else "")


@dataclasses.dataclass
class Found:
    """What a format's salvage found: expected leaves (``pieces``), other leaves read whole
    (``extra``, by path; only for a subtree's expectation), container defects bypassed, and
    problems outside the expectation that lose other leaves (``lost_extra``)."""

    pieces: dict[str, Piece]
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    container: list[str] = dataclasses.field(default_factory=list)
    lost_extra: list[str] = dataclasses.field(default_factory=list)
    sep: str = "/"


def expectation(fingerprint: Iterable[tuple[str, Iterable[int], str]], prefix: str = "") -> Expect:
    """{file path: (shape, dtype)} from a codebook's model fingerprint, under ``prefix``."""
    import jax.numpy as jnp

    pre = prefix.strip("/") + "/" if prefix.strip("/") else ""
    out = {}
    for p, s, dt in fingerprint:
        try:
            dtype = np.dtype(jnp.dtype(dt))
        except TypeError:  # a typed PRNG key (key<fry>): stored as key data, never located by layout
            continue
        out[pre + p] = (tuple(int(d) for d in s), dtype)
    return out


def floating(dtype: np.dtype) -> bool:
    import jax.numpy as jnp

    return bool(jnp.issubdtype(dtype, jnp.floating))


def finish(
    expect: Expect, found: Found, erasable: set[str], *, source: str, format: str, reason: str
) -> tuple[dict[str, np.ndarray], Salvage]:
    """The flat tree (expected leaves in order, then the other leaves found beside them) with
    unread entries of erasable leaves NaN, and the record; ``Unreadable`` for anything else."""
    pieces = found.pieces
    located = sum(1 for p in expect if pieces.get(p) is not None and pieces[p].values is not None)
    if located * 2 < len(expect):
        why = next((f"; {p!r}: {pieces[p].why}" for p in expect if pieces.get(p) and pieces[p].why), "")
        raise Unreadable(
            f"{source}: cannot read as {format} ({reason}), and only {located} of the codebook's {len(expect)} "
            f"leaves can be located in it: not the codebook's model, or damaged beyond salvage{why}",
            located,
        )
    if found.lost_extra:
        raise Unreadable(
            f"{source}: damaged {format} container ({reason}); outside the codebook's leaves: "
            + "; ".join(found.lost_extra[:3]),
            located,
        )
    flat: dict[str, np.ndarray] = {}
    damage: list[LeafDamage] = []
    bad: list[str] = []
    for path, (shape, dtype) in expect.items():
        size = math.prod(shape)
        piece = pieces.get(path) or Piece.lost("not found in the container")
        missing: np.ndarray | None
        if piece.values is None:
            values, missing = np.zeros(size, dtype), np.ones(size, bool)
        else:
            values, missing = piece.values, piece.missing
        if missing is not None and missing.any():
            if path not in erasable or not floating(dtype):
                kind = "not floating" if not floating(dtype) else "not protected"
                bad.append(f"{path!r} ({kind}; {int(missing.sum())} of {size} entries unreadable: {piece.why})")
                continue
            values = values.copy()
            values[missing] = np.nan
            damage.append(LeafDamage(path, int(missing.sum()), size, piece.why))
        flat[path] = values.reshape(shape)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise Unreadable(
            f"{source}: damaged {format} container ({reason}); salvage cannot hand these leaves to purify: "
            + "; ".join(bad[:3])
            + more,
            len(expect),
        )
    for path, arr in found.extra.items():
        if path not in flat:
            flat[path] = arr
    record = Salvage(source, format, reason, tuple(found.container), tuple(damage), found.sep)
    return flat, record


# -- reading: the format's own reader first, salvage when it fails ------------------------------


def _renamed(flat: dict[str, np.ndarray], expect: Expect) -> bool:
    """Does ``flat`` differ from the expectation only in the names of a few leaves (a key's
    bytes overwritten with other valid text), the shapes and dtypes all there?"""
    gone = [p for p in expect if p not in flat]
    new = [p for p in flat if p not in expect and any(p.startswith(q) for q in _roots(expect))]
    if not gone or len(gone) != len(new) or len(gone) > 4:
        return False
    same = all(flat[p].shape == expect[p][0] and flat[p].dtype == expect[p][1] for p in expect if p in flat)
    sig = sorted((str(s), str(d)) for s, d in (expect[p] for p in gone))
    return same and sig == sorted((str(flat[p].shape), str(flat[p].dtype)) for p in new)


def _roots(expect: Expect) -> set[str]:
    return {p.split("/", 1)[0] for p in expect}


def matches(flat: dict[str, np.ndarray], expect: Expect, select: str) -> bool:
    """Every expected leaf there with its shape and dtype (and nothing else, unless a subtree)."""
    if any(p not in flat or flat[p].shape != s or flat[p].dtype != d for p, (s, d) in expect.items()):
        return False
    return bool(select) or len(flat) == len(expect)


def read(
    path: str, fmt: str, expect: Expect, erasable: set[str], *, select: str = "", step: int | None = None
) -> tuple[dict[str, np.ndarray], Salvage | None]:
    """The flat tree of a checkpoint: as its format's own reader gives it when that reads it (then
    no :class:`Salvage`; a tree of another model is returned as read, for the caller's check to
    name the leaf), else salvaged by the expected layout."""
    from jaxpurify import io

    try:
        flat = io.flatten(io.load(path, format=fmt, step=step), prng_keys=True)
    except (FileNotFoundError, PermissionError):
        raise
    except (ValueError, TypeError) as e:
        reason = " ".join(str(e).replace(f"{path}: ", "").replace(f"cannot read as {fmt}: ", "").split())[:160]
    else:
        if matches(flat, expect, select) or not _renamed(flat, expect):
            return flat, None
        reason = "leaf names damaged"
    try:
        found = _by_layout(path, fmt, expect, select, step)
    except (OSError, MemoryError):
        raise
    except Exception as e:  # damage salvage did not foresee: a failure to name, not a traceback
        raise Unreadable(f"{path}: cannot read as {fmt} ({reason}); salvage failed: {type(e).__name__}: {e}") from None
    return finish(expect, found, erasable, source=path, format=fmt, reason=reason)


def _by_layout(path: str, fmt: str, expect: Expect, select: str, step: int | None) -> Found:
    if fmt == "orbax":
        return _orbax(path, expect, select, step)
    with open(path, "rb") as f:
        buf = f.read()
    if fmt == "msgpack":
        from jaxpurify import _salvage_msgpack

        return _salvage_msgpack.salvage(buf, expect, select)
    from jaxpurify import _salvage_safetensors

    return _salvage_safetensors.salvage(buf, expect, True)


def _orbax(path: str, expect: Expect, select: str, step: int | None) -> Found:
    """Salvage the item that holds the expected leaves; the step's other items must read."""
    from jaxpurify import _orbax_read, _salvage_orbax, io

    _, _, items = _orbax_read.resolve(path, step)
    if len(items) == 1:
        return _salvage_orbax.salvage(next(iter(items.values())), expect, True)
    name = select.strip("/").split("/", 1)[0]
    if name not in items:
        return Found({}, lost_extra=[f"the selected item {name!r} is not among the step's items {sorted(items)}"])
    inner = {p[len(name) + 1 :]: v for p, v in expect.items()}
    found = _salvage_orbax.salvage(items[name], inner, True)
    found.pieces = {f"{name}/{p}": v for p, v in found.pieces.items()}
    found.extra = {f"{name}/{p}": v for p, v in found.extra.items()}
    for other, item in items.items():
        if other == name:
            continue
        try:
            found.extra.update(
                {f"{other}/{p}": v for p, v in io.flatten(io._load_orbax_item(item), prng_keys=True).items()}
            )
        except (ValueError, TypeError) as e:
            found.lost_extra.append(f"item {other!r} unreadable ({str(e)[:100]})")
    return found
