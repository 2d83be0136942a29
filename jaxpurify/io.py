"""Save and load parameter trees: Orbax checkpoints, ``.safetensors`` and Flax msgpack.

    save("ckpt/step_100", params)            # an Orbax checkpoint (a directory)
    save("model.safetensors", params)        # one file, no pickle
    save("model.msgpack", params)            # flax.serialization.msgpack_serialize
    params = load("model.safetensors", template=params_like)

Every format stores the same thing: the tree's leaves under their '/'-joined paths
(``jaxpurify.tree.leaves_with_paths``), as a nested dict of host arrays. Writes go to a temporary
file or directory next to the destination and are renamed into place, so a failed write leaves the
old checkpoint (or nothing), never a half-written one. Loads read the whole file, then check it
against a template (paths, shapes and dtypes; errors name the leaf) before anything is returned:
there is no partial tree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxpurify.tree import leaves_with_paths

PyTree = Any

FORMATS = ("orbax", "safetensors", "msgpack")
_SUFFIXES = {".safetensors": "safetensors", ".msgpack": "msgpack", ".mpk": "msgpack"}
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "checkpoint")


# -- formats --------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """The format of an existing checkpoint: 'orbax' (a directory), 'safetensors' or 'msgpack'.

    Files are recognised by suffix (``.safetensors``, ``.msgpack``/``.mpk``), else by their first
    bytes. Raises ``FileNotFoundError`` if nothing is there, ``ValueError`` if it is none of these.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, m)) for m in _ORBAX_MARKERS):
            return "orbax"
        inner = sorted(d for d in os.listdir(path) if os.path.exists(os.path.join(path, d, "_METADATA")))
        hint = f"; the checkpoint may be {os.path.join(path, inner[0])} (a CheckpointManager item)" if inner else ""
        raise ValueError(
            f"{path}: a directory but not an Orbax checkpoint (no _CHECKPOINT_METADATA or _METADATA){hint}"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    by_suffix = _SUFFIXES.get(os.path.splitext(path)[1].lower())
    if by_suffix:
        return by_suffix
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: u64 little-endian header length, then the JSON header; msgpack: a map
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path):
        return "safetensors"
    if head[:1] and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "msgpack"
    raise ValueError(f"{path}: not a safetensors, msgpack or Orbax checkpoint")


def save_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The format :func:`save` writes at ``path``; ``ValueError`` if the suffix conflicts or is unknown."""
    path = os.fspath(path)
    suffix = os.path.splitext(path.rstrip(os.sep))[1].lower()
    implied = _SUFFIXES.get(suffix, "orbax" if not suffix else None)
    if format is None:
        if implied is None:
            raise ValueError(
                f"cannot tell the format of {path!r} from suffix {suffix!r}; pass format= "
                f"one of {FORMATS} (or use .safetensors, .msgpack, or no suffix for Orbax)"
            )
        return implied
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if implied is not None and implied != format and suffix:
        raise ValueError(f"path {path!r} has a {implied} suffix but format={format!r}")
    return format


# -- trees <-> flat {path: array} -----------------------------------------------------------------


def _host_array(path: str, leaf, prng_keys: bool = False) -> np.ndarray:
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.numpy.issubdtype(dtype, jax.dtypes.prng_key):
        if prng_keys:  # Orbax stores a typed key itself: its key data and the impl's name
            return leaf  # type: ignore[no-any-return]
        raise TypeError(f"leaf {path!r} is a typed PRNG key; store jax.random.key_data(key) instead")
    try:
        arr = np.asarray(leaf)
    except Exception as e:  # any leaf NumPy cannot hold
        raise TypeError(f"leaf {path!r} ({type(leaf).__name__}) is not an array: {e}") from None
    if not (arr.dtype == np.bool_ or jax.numpy.issubdtype(arr.dtype, jax.numpy.number)):
        raise TypeError(f"leaf {path!r} has dtype {arr.dtype}, not a numeric array")
    return arr


def flatten(params: PyTree, *, prng_keys: bool = False) -> dict[str, np.ndarray]:
    """``{path: host array}`` for every leaf; paths as :func:`jaxpurify.tree.leaves_with_paths`,
    except that the ``value`` key of an NNX variable restored by Orbax (``{"value": array}``)
    stays in the path, so the tree is written back as it came.  ``prng_keys``: typed PRNG keys
    are kept as they are (for Orbax, which stores them), not refused."""
    named, _ = leaves_with_paths(params, boxes=False)
    if not named:
        raise ValueError("params has no leaves to save")
    flat = {}
    for path, leaf in named:
        if not path or "" in path.split("/"):
            raise ValueError(f"leaf path {path!r} has an empty key; every key must be non-empty")
        flat[path] = _host_array(path, leaf, prng_keys)
    return flat


def _nest(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, arr in flat.items():
        *parents, last = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"leaf {path!r} sits below another leaf")
        node[last] = arr
    return tree


# -- atomic writes --------------------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".jaxpurify-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _replace_dir(new: str, path: str) -> None:
    """Move directory ``new`` to ``path``; an existing Orbax checkpoint there is replaced.

    A directory cannot be renamed over a non-empty one, so the old checkpoint is first moved
    aside, and moved back if the second rename fails: at every moment one complete checkpoint
    exists (under ``path`` or its aside name).
    """
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    if detect_format(path) != "orbax":
        raise ValueError(f"{path} exists and is not an Orbax checkpoint; not overwriting it")
    aside = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".jaxpurify-old-")
    old = os.path.join(aside, "checkpoint")
    try:
        os.rename(path, old)
    except BaseException:
        os.rmdir(aside)
        raise
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)  # if even this fails, the old checkpoint stays in `aside`, not deleted
        os.rmdir(aside)
        raise
    shutil.rmtree(aside)


# -- per-format writers and readers ---------------------------------------------------------------


def _orbax_checkpointer():
    """Orbax's PyTree checkpointer, synchronous, with compression off.

    Compressed storage turns a flipped bit or a damaged block into garbage over thousands of
    floats, or a failed load (``python -m benchmarks.disk``): stored verbatim, damage stays
    where it lands and purify can remove it.  Compressed checkpoints still load.
    """
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))


def _save_orbax(path: str, tree: dict) -> None:
    import orbax.checkpoint as ocp

    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path} is a file; an Orbax checkpoint is a directory")
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".jaxpurify-")
    try:
        new = os.path.join(tmp, "checkpoint")
        with _orbax_checkpointer() as ckptr:
            ckptr.save(new, args=ocp.args.PyTreeSave(tree))
        _replace_dir(new, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_orbax(path: str) -> Any:
    with _orbax_checkpointer() as ckptr:
        return ckptr.restore(path)


def _save_safetensors(path: str, tree: dict) -> None:
    import safetensors.numpy

    flat = {k: np.require(v, requirements="C") for k, v in flatten(tree).items()}  # keeps 0-d shapes
    write_atomic(path, safetensors.numpy.save(flat))


def _load_safetensors(path: str) -> Any:
    import safetensors.numpy

    # load_file (not load(bytes)) reads bfloat16; copy so no array is a view of the mapped file
    return _nest({k: np.array(v) for k, v in safetensors.numpy.load_file(path).items()})


def _save_msgpack(path: str, tree: dict) -> None:
    from flax import serialization

    write_atomic(path, serialization.msgpack_serialize(tree))


def _load_msgpack(path: str) -> Any:
    from flax import serialization

    with open(path, "rb") as f:
        return serialization.msgpack_restore(f.read())


_WRITERS: dict[str, Callable[[str, dict], None]] = {
    "orbax": _save_orbax,
    "safetensors": _save_safetensors,
    "msgpack": _save_msgpack,
}
_READERS: dict[str, Callable[[str], Any]] = {
    "orbax": _load_orbax,
    "safetensors": _load_safetensors,
    "msgpack": _load_msgpack,
}


# -- public API -----------------------------------------------------------------------------------


def save(path: str | os.PathLike, params: PyTree, format: str | None = None) -> str:
    """Write ``params`` to ``path`` atomically; returns the format written.

    ``format`` is 'orbax', 'safetensors' or 'msgpack'; by default it follows the suffix
    (``.safetensors``, ``.msgpack``/``.mpk``; no suffix: an Orbax checkpoint directory). Leaves are
    stored as host arrays under their '/'-joined paths, dtypes kept (bfloat16 included); Orbax
    also stores typed PRNG keys (``jax.random.key``: key data and impl, as Orbax itself does).
    Raises ``TypeError`` naming a leaf that is not a numeric array (e.g. a typed PRNG key for
    safetensors or msgpack). ``params`` is
    not modified; an existing file or Orbax checkpoint at ``path`` is replaced only once the new one
    is complete.
    """
    path = os.path.abspath(os.fspath(path))
    fmt = save_format(path, format)
    if not os.path.isdir(os.path.dirname(path)):
        raise FileNotFoundError(f"{os.path.dirname(path)}: no such directory")
    _WRITERS[fmt](path, _nest(flatten(params, prng_keys=fmt == "orbax")))
    return fmt


def load(path: str | os.PathLike, template: Any = None, format: str | None = None) -> PyTree:
    """Read a checkpoint written by :func:`save` (or by Orbax, safetensors or Flax directly).

    Without ``template``: a nested dict of NumPy arrays keyed by path components. With a pytree
    ``template`` (arrays or ``jax.ShapeDtypeStruct``): a tree of the template's structure, after
    checking that the file has exactly the template's leaf paths, each with its shape and dtype.
    With an object that has a ``.check(params)`` method (a codebook), that check is run instead.
    Errors: ``FileNotFoundError``; ``ValueError`` for an unreadable or truncated file and for a
    mismatch, naming the leaf. Nothing is returned unless every leaf was read and checked.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from jaxpurify import io
        >>> params = {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "model.safetensors")
        ...     written = io.save(path, params)
        ...     back = io.load(path)
        >>> written, back["dense"]["kernel"].tolist()
        ('safetensors', [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    """
    path = os.fspath(path)
    fmt = detect_format(path) if format is None else format
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    try:
        raw = _READERS[fmt](os.path.abspath(path))
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as e:  # each reader has its own error types for a damaged file
        raise ValueError(f"{path}: cannot read as {fmt}: {type(e).__name__}: {e}") from None
    try:
        flat = flatten(raw, prng_keys=fmt == "orbax")
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from None
    if template is None:
        return _nest(flat)
    check = getattr(template, "check", None)
    if callable(check) and not isinstance(template, (dict, list, tuple)):
        params = _nest(flat)
        check(params)
        return params
    return _match(flat, template, path)


def _expected(leaf) -> tuple[tuple[int, ...], np.dtype]:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    arr = np.asarray(leaf)
    return arr.shape, arr.dtype


def _match(flat: dict[str, np.ndarray], template: PyTree, source: str) -> PyTree:
    """Arrange ``flat`` in the template's structure, or raise naming every mismatching leaf."""
    named, treedef = leaves_with_paths(template, boxes=False)
    problems = []
    for p, leaf in named:
        shape, dtype = _expected(leaf)
        if p not in flat:
            problems.append(f"leaf {p!r} is missing (template: {shape} {dtype})")
        elif flat[p].shape != shape or flat[p].dtype != dtype:
            problems.append(f"leaf {p!r} is {flat[p].shape} {flat[p].dtype}, the template expects {shape} {dtype}")
    wanted = {p for p, _ in named}
    problems += [f"leaf {p!r} is not in the template" for p in flat if p not in wanted]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{source} does not match the template: " + "; ".join(problems[:5]) + more)
    return jax.tree_util.tree_unflatten(treedef, [flat[p] for p, _ in named])
