"""Orbax checkpoints on disk: which directory holds the tree, and its arrays read with TensorStore.

Layouts (what ``jaxpurify purify`` accepts):

* an *item*: a PyTree checkpoint directory (``_METADATA``; what ``io.save`` and
  ``ocp.StandardCheckpointer().save`` write);
* a *step*: a ``CheckpointManager`` step directory, one item per subdirectory (``default``, or the
  names given to ``ocp.args.Composite``);
* a *manager*: a ``CheckpointManager`` directory of steps named by their number (``0``, ``100``,
  or with a prefix such as ``ckpt_100``); the latest finalized step unless a step is asked for.

Arrays are read one by one with TensorStore's synchronous API (the same driver specs Orbax uses:
``zarr`` or ``zarr3`` over a ``file`` or ``ocdbt`` kvstore, ``fill_missing_data_reads`` off).
Why not ``Checkpointer.restore``: it runs every read on an asyncio loop it closes as soon as one
read fails, and reads still in flight then complete into the closed loop, printing
``RuntimeError: Event loop is closed`` tracebacks; reading synchronously, nothing is left in
flight, and one array's failure is that array's alone (what salvage needs).  The values are
Orbax's own (``tests/test_io.py`` compares them with ``StandardCheckpointer().restore``).
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # for annotations only: the functions below import it when called
    import tensorstore as ts

ITEM_MARKERS = ("_METADATA", "manifest.ocdbt", "checkpoint")
_STEP = re.compile(r"^(?:.*?_)?(\d+)$")
_TMP = ".orbax-checkpoint-tmp"
_READABLE = {"np.ndarray", "jax.Array", "scalar"}


class Unsupported(ValueError):
    """The checkpoint holds values this reader does not interpret (left to Orbax's own reader)."""


# -- layout ---------------------------------------------------------------------------------------


def is_item(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in ITEM_MARKERS)


def step_items(path: str) -> dict[str, str]:
    """The PyTree items of a step directory, by name (empty if it is not one)."""
    if not os.path.isdir(path) or is_item(path):
        return {}
    return {d: os.path.join(path, d) for d in sorted(os.listdir(path)) if is_item(os.path.join(path, d))}


def steps(path: str) -> dict[int, str]:
    """Finalized steps of a CheckpointManager directory, by number (empty if it is not one)."""
    out: dict[int, str] = {}
    if not os.path.isdir(path) or is_item(path):
        return out
    for d in os.listdir(path):
        m = _STEP.match(d)
        full = os.path.join(path, d)
        if m and _TMP not in d and step_items(full):
            out.setdefault(int(m.group(1)), full)
    return out


def kind(path: str) -> str | None:
    """'item', 'step', 'manager' or None."""
    if is_item(path):
        return "item"
    if step_items(path):
        return "step"
    if steps(path):
        return "manager"
    return None


def resolve(path: str, step: int | None = None) -> tuple[str, int | None, dict[str, str]]:
    """(step directory or item, step number or None, {item name: item directory}).

    An item gives ``{"": path}``.  Raises ``ValueError`` saying what the directory holds."""
    what = kind(path)
    if what == "item":
        if step is not None:
            raise ValueError(f"{path}: an Orbax checkpoint, not a CheckpointManager directory; --step does not apply")
        return path, None, {"": path}
    if what == "step":
        if step is not None:
            raise ValueError(f"{path}: a CheckpointManager step directory; --step applies to its parent")
        return path, _step_number(path), step_items(path)
    if what == "manager":
        found = steps(path)
        if step is None:
            step = max(found)
        elif step not in found:
            raise ValueError(f"{path}: no step {step} (steps: {', '.join(map(str, sorted(found)))})")
        return found[step], step, step_items(found[step])
    raise ValueError(
        f"{path}: a directory but not an Orbax checkpoint, CheckpointManager step or CheckpointManager "
        "directory (no _METADATA in it or in its subdirectories)"
    )


def _step_number(path: str) -> int | None:
    m = _STEP.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


# -- metadata -------------------------------------------------------------------------------------


def metadata(path: str) -> dict[str, Any]:
    """``_METADATA`` as JSON; ``ValueError`` if it is missing or not JSON."""
    try:
        with open(os.path.join(path, "_METADATA"), "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: _METADATA unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tree_metadata"), dict):
        raise ValueError(f"{path}: _METADATA holds no tree_metadata")
    return doc


def arrays(doc: dict[str, Any]) -> dict[str, str]:
    """{leaf path ('/'-joined keys): array name in the checkpoint ('.'-joined)} from ``_METADATA``."""
    out = {}
    for key, entry in doc["tree_metadata"].items():
        try:
            keys = [str(k["key"]) for k in entry["key_metadata"]]
            value = entry["value_metadata"]
        except (KeyError, TypeError):
            raise ValueError(f"_METADATA entry {key!r} is malformed") from None
        if value.get("skip_deserialize"):
            continue
        if value.get("value_type") not in _READABLE:
            raise Unsupported(f"leaf {'/'.join(keys)!r} has value type {value.get('value_type')!r}")
        out["/".join(keys)] = ".".join(keys)
    return out


def layout(path: str, doc: dict[str, Any] | None = None) -> tuple[bool, bool]:
    """(use_ocdbt, use_zarr3) of an item, from ``_METADATA`` if given, else from the files."""
    if doc is not None and isinstance(doc.get("use_ocdbt"), bool) and isinstance(doc.get("use_zarr3"), bool):
        return doc["use_ocdbt"], doc["use_zarr3"]
    ocdbt = os.path.exists(os.path.join(path, "manifest.ocdbt"))
    zarr3 = False
    if not ocdbt:
        for d in os.listdir(path):
            if os.path.exists(os.path.join(path, d, "zarr.json")):
                zarr3 = True
                break
    return ocdbt, zarr3


def array_names(path: str, ocdbt: bool) -> set[str] | None:
    """The arrays an item holds, from its storage rather than ``_METADATA``: the directories
    holding zarr metadata, or the keys of the OCDBT database (None if it cannot be listed)."""
    if not ocdbt:
        return {
            d
            for d in os.listdir(path)
            if os.path.isdir(os.path.join(path, d))
            and not d.startswith(("_", "ocdbt.process_"))
            and any(os.path.exists(os.path.join(path, d, m)) for m in (".zarray", "zarr.json", "0"))
        }
    import tensorstore as ts

    try:
        kv = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": os.path.abspath(path) + "/"}})
        keys = kv.result().list().result()
    except Exception:  # a damaged manifest or b-tree node: nothing can be listed
        return None
    return {k.decode(errors="replace").split("/")[0] for k in keys if b"/" in k}


# -- arrays ---------------------------------------------------------------------------------------


def spec(path: str, name: str, ocdbt: bool, zarr3: bool, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The TensorStore spec Orbax reads an array with (``meta``: assume this zarr metadata)."""
    root = os.path.abspath(path)
    if ocdbt:
        kvstore = {"driver": "ocdbt", "base": {"driver": "file", "path": root + "/"}, "path": name + "/"}
    else:
        kvstore = {"driver": "file", "path": os.path.join(root, name) + "/"}
    s: dict[str, Any] = {"driver": "zarr3" if zarr3 else "zarr", "kvstore": kvstore, "fill_missing_data_reads": False}
    if meta is not None:
        s.update(metadata=meta, assume_metadata=True)
    return s


def open_array(path: str, name: str, ocdbt: bool, zarr3: bool, meta: dict[str, Any] | None = None) -> ts.TensorStore:
    import tensorstore as ts

    return ts.open(spec(path, name, ocdbt, zarr3, meta), open=True, read=True).result()


def read_array(path: str, name: str, ocdbt: bool, zarr3: bool) -> np.ndarray:
    return np.asarray(open_array(path, name, ocdbt, zarr3).read().result())


def key_impls(path: str) -> dict[str, str]:
    """{array name: PRNG impl} of the typed PRNG keys Orbax stored (their key data, with the impl's
    name in ``array_metadatas``); empty if there are none or the files cannot be read."""
    out = {}
    for f in sorted(glob.glob(os.path.join(path, "array_metadatas", "*"))):
        try:
            with open(f, "rb") as fh:
                entries = json.loads(fh.read().decode("utf-8"))["array_metadatas"]
            for e in entries:
                meta = e["array_metadata"]
                impl = (meta.get("ext_metadata") or {}).get("random_key_impl")
                if impl:
                    out[str(meta["param_name"])] = str(impl)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            continue  # no key recorded there: its arrays read as plain key data
    return out


def read(path: str) -> dict[str, Any]:
    """{leaf path: array} of an undamaged item (typed PRNG keys as typed keys, as Orbax restores
    them); ``ValueError`` at the first unreadable array, ``Unsupported`` for values other than
    arrays and scalars."""
    doc = metadata(path)
    ocdbt, zarr3 = layout(path, doc)
    impls = key_impls(path)
    out: dict[str, Any] = {}
    for leaf, name in arrays(doc).items():
        try:
            out[leaf] = read_array(path, name, ocdbt, zarr3)
        except Exception as e:  # TensorStore raises ValueError / OSError subclasses per failure kind
            raise ValueError(f"array {name!r}: {type(e).__name__}: {_first_line(e)}") from None
        if name in impls:
            import jax

            out[leaf] = jax.random.wrap_key_data(out[leaf], impl=impls[name])
    if not out:
        raise ValueError(f"{path}: the checkpoint holds no arrays")
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).split(" [tensorstore_spec=")[0]
    return " ".join(text.split())[:300]
