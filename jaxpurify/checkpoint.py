"""A checkpoint on disk as ``jaxpurify purify`` reads and writes it: open a file, an Orbax
checkpoint or a ``CheckpointManager`` step (:func:`open_source`), read the part a codebook protects
(:func:`read`, :func:`part`), merge the purified part back (:func:`merge`) and write it in the
input's format and layout (:func:`write`).

    source = open_source("ckpt")                        # a file, an Orbax item, step or manager
    tree, select, salvaged = read(source, codebook, None)
    purified, report = jp.purify(part(tree, select, codebook), codebook)
    write(source, "purified", merge(tree, select, purified))

* Files (``.safetensors``, ``.msgpack``) and Orbax checkpoints are read with ``io.salvage``: the
  format's own reader, or, for a damaged container, the codebook's layout.
* An Orbax ``CheckpointManager`` directory gives its latest step (or ``step``); a step directory
  its items.  One item: the tree is the item's; several: ``{item: tree}``.
* Where the codebook's model sits (``select``, '/'-joined) is given, or found by this rule: at the
  root if the tree holds the codebook's model (every leaf, shape and dtype; other leaves beside
  them, such as a train state's ``step``, are allowed), else in the one subtree that holds it
  (e.g. ``params`` of a linen variables dict); a damaged container, whose tree cannot be listed,
  is tried as the whole tree, then as its ``params`` (with several Orbax items: each item, then
  its ``params``).  Everything outside the subtree is written back as it was read.
* The output keeps the input's format (and a safetensors file its key separator).  A step or
  manager input is written as a step directory: ``OUT/<item>`` for each item (purified or copied),
  with the step's own files (``_CHECKPOINT_METADATA``), so it can take the step's place in the
  manager's directory or be restored item by item.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import tempfile
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from jaxpurify import _orbax_read, io

if TYPE_CHECKING:
    from jaxpurify._codebook import Codebook


@dataclasses.dataclass(frozen=True)
class Source:
    """A checkpoint on disk, as :func:`open_source` found it.

    ``path`` as given; ``format`` one of ``io.FORMATS``; ``layout`` 'file' (a ``.safetensors`` or
    ``.msgpack`` file), or the Orbax 'item' (a checkpoint directory), 'step' (a
    ``CheckpointManager`` step directory) or 'manager' (a ``CheckpointManager`` directory); for a
    step, or the manager's step read, ``step`` its number (None if its directory's name holds
    none), ``step_dir`` its directory and ``items`` the names of its items (an Orbax item:
    ``("",)``); ``sep`` the key separator a safetensors file is written with ('/' otherwise).
    """

    path: str
    format: str
    layout: str
    step: int | None = None
    step_dir: str | None = None
    items: tuple[str, ...] = ()
    sep: str = "/"


def open_source(path: str, step: int | None = None) -> Source:
    """What ``path`` is, read from its name and metadata only (no array is read).

    ``step`` picks a step of a ``CheckpointManager`` directory (default: its latest finalized
    step).  Raises ``FileNotFoundError`` if nothing is at ``path``, ``ValueError`` if it is no
    checkpoint or ``step`` does not apply (not a manager, or no such step).
    """
    fmt = io.detect_format(path)
    if fmt != "orbax":
        if step is not None:
            raise ValueError(f"--step applies to an Orbax CheckpointManager directory, not to {path}")
        return Source(path, fmt, "file", sep=_safetensors_sep(path) if fmt == "safetensors" else "/")
    layout = _orbax_read.kind(path)
    step_dir, number, items = _orbax_read.resolve(path, step)
    layout = cast(str, layout)  # not None: resolve raises for a path that is no Orbax item, step or manager
    return Source(path, fmt, layout, number, step_dir if layout != "item" else None, tuple(items))


def _safetensors_sep(path: str) -> str:
    """The key separator from the header, when it reads (else '/': salvage decides then)."""
    import json

    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            keys = [k for k in json.loads(f.read(n)) if k != "__metadata__"]
    except (OSError, ValueError, struct.error, UnicodeDecodeError, MemoryError, OverflowError):
        return "/"
    return io.safetensors_separator(keys)


# -- subtrees ------------------------------------------------------------------------------------


def _subtree(tree: dict[str, Any], select: str) -> Any:
    node: Any = tree
    for k in [k for k in select.split("/") if k]:
        if not isinstance(node, dict) or k not in node:
            raise ValueError(f"--select {select!r}: no key {k!r} in the checkpoint")
        node = node[k]
    return node


def _model_paths(codebook: Codebook) -> list[str] | None:
    model = getattr(codebook, "model", None)
    return None if model is None else [p for p, _, _ in model]


def part(tree: dict[str, Any], select: str, codebook: Codebook) -> Any:
    """What purify gets: the codebook's model inside the subtree of ``tree`` at ``select``.

    Its leaves only, when the subtree holds every one of them (the subtree's other leaves, e.g. a
    train state's ``step`` beside ``params``, stay out of purify); else the whole subtree, so
    that the codebook's own check names what is missing.  ``ValueError`` if ``select`` names no
    subtree of ``tree``.
    """
    sub = _subtree(tree, select)
    paths = _model_paths(codebook)
    if paths is None or not isinstance(sub, dict):
        return sub
    flat = io.flatten(sub, prng_keys=True)
    if any(p not in flat for p in paths):
        return sub  # not there: the codebook's own check names the leaf
    return io._nest({p: flat[p] for p in paths})


def merge(tree: dict[str, Any], select: str, purified: Any) -> dict[str, Any]:
    """``tree`` with ``purified``'s leaves put in at ``select``; every other leaf as it was.

    A new tree: the dicts on the way are copies, ``tree`` itself is not changed.  Leaves of the
    subtree at ``select`` that ``purified`` does not hold (those :func:`part` left out) stay.
    """
    keys = [k for k in select.split("/") if k]

    def put(node: Any, new: Any) -> Any:
        if not isinstance(node, dict) or not isinstance(new, dict):
            return new
        out = dict(node)
        for k, v in new.items():
            out[k] = put(node.get(k), v)
        return out

    def walk(node: dict[str, Any], i: int) -> Any:  # at select: what put gives
        if i == len(keys):
            return put(node, purified)
        out = dict(node)
        out[keys[i]] = walk(node[keys[i]], i + 1)
        return out

    merged: dict[str, Any] = walk(tree, 0)
    return merged


def _holds(codebook: Codebook, node: object) -> bool:
    """Does ``node`` hold the codebook's model (every leaf, its shape and dtype)?"""
    if not isinstance(node, dict):
        return False
    paths = _model_paths(codebook)
    try:
        codebook.check(node if paths is None else part(node, "", codebook))
    except (ValueError, TypeError):
        return False
    return True


def _find_select(tree: dict[str, Any], codebook: Codebook) -> str:
    """The rule: '' if the tree holds the codebook's model, else the one subtree that does."""
    if _holds(codebook, tree):
        return ""
    found: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                p = f"{path}/{k}" if path else str(k)
                if _holds(codebook, v):
                    found.append(p)
                else:
                    walk(v, p)

    walk(tree, "")
    return found[0] if len(found) == 1 else ""


def read(source: Source, codebook: Codebook, select: str | None) -> tuple[dict[str, Any], str, io.Salvage | None]:
    """``(tree, select, salvaged)``: the whole checkpoint as a nested dict of arrays, where the
    codebook's model sits in it, and ``io.salvage``'s record (None if it read intact).

    ``select`` as given, or, if None, found by the rule of this module.  Raises ``io.Unreadable``
    for a checkpoint damaged beyond salvage (the reading that got furthest says why).
    """
    path = source.path
    candidates = [select] if select is not None else ["", "params"]
    if select is None and len(source.items) > 1:  # several Orbax items: the tree is {item: …}
        candidates = [c for item in source.items for c in (item, f"{item}/params")]
    best: io.Unreadable | None = None
    for sel in candidates:
        try:
            step = source.step if source.layout == "manager" else None
            tree, record = io.salvage(path, codebook, select=sel, format=source.format, step=step)
        except io.Unreadable as e:
            if best is None or e.located > best.located:  # the reading that got furthest explains it
                best = e
            continue
        if record is None and select is None:  # read intact: the rule looks at the whole tree
            sel = _find_select(tree, codebook)
        return tree, sel, record
    raise cast(io.Unreadable, best)  # there is at least one candidate, and each one failed


# -- writing -------------------------------------------------------------------------------------


def orbax_layout(path: str) -> str | None:
    """The Orbax layout at ``path``: 'item' (a checkpoint directory), 'step' (a
    ``CheckpointManager`` step directory), 'manager' (a ``CheckpointManager`` directory), or None
    (none of these, or nothing there)."""
    return _orbax_read.kind(path)


def out_layout(source: Source) -> str:
    """What :func:`write` makes of ``source``: a 'file', an Orbax 'item', or a 'step' directory
    (of a step, or of a manager's step)."""
    return {"file": "file", "item": "item"}.get(source.layout, "step")


def write(source: Source, out: str, tree: dict[str, Any]) -> None:
    """Write ``tree`` (the whole checkpoint, as :func:`read` gave it) at ``out`` in ``source``'s
    format and :func:`out_layout`, atomically: a failed write leaves what was at ``out``.

    A step is written as a step directory holding ``tree`` (one item) or ``tree[item]`` (each
    item ``tree`` names) and copies of the step's other entries.  An existing ``out`` is replaced
    as ``io.save`` replaces one; an existing directory that is not of the layout written is not
    (``ValueError``).  After a salvaged read, pass
    ``dataclasses.replace(source, sep=salvaged.sep)``: a damaged safetensors header's separator is
    the one salvage found.
    """
    if source.layout in ("file", "item"):
        io.save(out, tree, format=source.format, sep=source.sep)
        return
    trees = {source.items[0]: tree} if len(source.items) == 1 else tree
    parent = os.path.dirname(os.path.abspath(out))
    tmp = tempfile.mkdtemp(dir=parent, prefix=".jaxpurify-")
    try:
        new = os.path.join(tmp, "step")
        os.mkdir(new)
        step_dir = cast(str, source.step_dir)  # set for a 'step' or 'manager' source
        for entry in sorted(os.listdir(step_dir)):
            src = os.path.join(step_dir, entry)
            if entry in trees:
                io.save(os.path.join(new, entry), trees[entry], format="orbax")
            elif os.path.isdir(src):
                shutil.copytree(src, os.path.join(new, entry))  # other items (e.g. JSON metrics), as they were
            else:
                shutil.copy2(src, os.path.join(new, entry))
        io._replace_dir(new, out, replaces="step")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def nan_count(purified: Any, paths: list[str], select: str) -> int:
    """NaN entries left in ``purified`` at ``paths``: paths in the file (such as a salvage record's
    ``leaves``), under ``select``; paths outside ``purified`` count nothing."""
    flat = io.flatten(purified, prng_keys=True)
    pre = select.strip("/") + "/" if select.strip("/") else ""
    return sum(int(np.isnan(flat[p[len(pre) :]]).sum()) for p in paths if p[len(pre) :] in flat)
