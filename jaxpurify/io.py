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
there is no partial tree.  Orbax ``CheckpointManager`` directories and their step directories
load too (the latest step, or ``step=``).

:func:`salvage` reads a *damaged* checkpoint by the layout a codebook expects: metadata damage is
bypassed, unreadable entries of protected leaves come back as NaN (erasures for purify), anything
else unreadable is an error naming the leaves (``jaxpurify._salvage``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxpurify import _orbax_read
from jaxpurify._salvage import Salvage as Salvage  # re-exported: what salvage returns
from jaxpurify._salvage import Unreadable as Unreadable  # re-exported: what salvage raises
from jaxpurify.tree import leaves_with_paths

if TYPE_CHECKING:
    from jaxpurify._codebook import Codebook

PyTree = Any

FORMATS = ("orbax", "safetensors", "msgpack")
_SUFFIXES = {".safetensors": "safetensors", ".msgpack": "msgpack", ".mpk": "msgpack"}
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "checkpoint")


# -- formats --------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of an existing checkpoint: 'orbax' (a directory: a checkpoint, or a
    ``CheckpointManager`` step or directory), 'safetensors' or 'msgpack'.

    Files are recognised by suffix (``.safetensors``, ``.msgpack``/``.mpk``), else by their first
    bytes. Raises ``FileNotFoundError`` if nothing is there, ``ValueError`` if it is none of these.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if _orbax_read.kind(path) is not None:  # a checkpoint, a CheckpointManager step or directory
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


def save_format(path: str | os.PathLike[str], format: str | None = None) -> str:
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


def _host_array(path: str, leaf: Any, prng_keys: bool = False) -> np.ndarray:
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
    flat: dict[str, np.ndarray] = {}
    for path, leaf in named:
        if not path or "" in path.split("/"):
            raise ValueError(f"leaf path {path!r} has an empty key; every key must be non-empty")
        flat[path] = _host_array(path, leaf, prng_keys)
    return flat


def _nest(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
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


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
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


def _replace_dir(new: str, path: str, replaces: str = "item") -> None:
    """Move directory ``new`` to ``path``; an existing Orbax checkpoint there is replaced (of the
    layout ``replaces``: an item, or a CheckpointManager step; never a manager's whole directory).

    A directory cannot be renamed over a non-empty one, so the old checkpoint is first moved
    aside, and moved back if the second rename fails: at every moment one complete checkpoint
    exists (under ``path`` or its aside name).
    """
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    if _orbax_read.kind(path) != replaces:
        what = "an Orbax checkpoint" if replaces == "item" else "a CheckpointManager step directory"
        raise ValueError(f"{path} exists and is not {what}; not overwriting it")
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


def _orbax_checkpointer() -> Any:  # an orbax Checkpointer (orbax ships no type information)
    """Orbax's PyTree checkpointer, synchronous, with compression and OCDBT off.

    The layout that survives damage (``python -m benchmarks.containers``): every array is a
    directory of its own holding a small ``.zarray`` and its bytes verbatim.  Compressed, a
    flipped bit or a damaged block turns into garbage over thousands of floats, or a failed load;
    verbatim, damage stays where it lands and purify removes it.  With OCDBT (Orbax's default)
    all arrays share one data file located through a checksummed b-tree index: a burst in the
    index loses every array; here the file system is the index, and a damaged ``.zarray`` or
    ``_METADATA`` is stood in for by the codebook (:func:`salvage`).  Other checkpoints still load.
    """
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False, use_ocdbt=False))


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Orbax logs routine notices at WARNING through absl (e.g. that a checkpoint written without
    OCDBT has no OCDBT files to merge); they are not problems of the caller's checkpoint."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def _save_orbax(path: str, tree: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path} is a file; an Orbax checkpoint is a directory")
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".jaxpurify-")
    try:
        new = os.path.join(tmp, "checkpoint")
        with _quiet_orbax(), _orbax_checkpointer() as ckptr:
            ckptr.save(new, args=ocp.args.PyTreeSave(tree))
        _replace_dir(new, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_orbax(path: str, step: int | None = None) -> Any:
    """An item's tree; a step's items (one: its tree; several: ``{item: tree}``)."""
    _, _, items = _orbax_read.resolve(path, step)
    trees = {name: _load_orbax_item(item) for name, item in items.items()}
    return next(iter(trees.values())) if len(trees) == 1 else trees


def _load_orbax_item(path: str) -> Any:
    try:  # synchronous TensorStore reads: see _orbax_read for why not Checkpointer.restore
        return _nest(_orbax_read.read(path))
    except _orbax_read.Unsupported:  # values other than arrays: Orbax's own reader
        import orbax.checkpoint as ocp

        with _quiet_orbax(), ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(path)


def _save_safetensors(path: str, tree: dict[str, Any], sep: str = "/") -> None:
    import safetensors.numpy

    flat: dict[str, np.ndarray] = {}
    for k, v in flatten(tree).items():
        if sep != "/" and sep in k:
            raise ValueError(f"leaf {k!r}: a key contains {sep!r}, the key separator asked for")
        flat[k.replace("/", sep)] = np.require(v, requirements="C")  # keeps 0-d shapes
    write_atomic(path, safetensors.numpy.save(flat))


def safetensors_separator(keys: Iterable[str]) -> str:
    """How a safetensors file joins path components: '/' (``io.save``), or '.' when no key holds
    a '/' but one holds a '.' (``flax.traverse_util.flatten_dict(params, sep=".")``, the
    convention transformers writes)."""
    keys = list(keys)
    return "." if not any("/" in k for k in keys) and any("." in k for k in keys) else "/"


def _load_safetensors(path: str) -> Any:
    import safetensors.numpy

    # load_file (not load(bytes)) reads bfloat16; copy so no array is a view of the mapped file
    flat = {k: np.array(v) for k, v in safetensors.numpy.load_file(path).items()}
    sep = safetensors_separator(flat)
    return _nest({k.replace(sep, "/"): v for k, v in flat.items()})


def _save_msgpack(path: str, tree: dict[str, Any]) -> None:
    from flax import serialization

    write_atomic(path, serialization.msgpack_serialize(tree))


def _load_msgpack(path: str) -> Any:
    from flax import serialization

    with open(path, "rb") as f:
        return serialization.msgpack_restore(f.read())


_WRITERS: dict[str, Callable[[str, dict[str, Any]], None]] = {
    "orbax": _save_orbax,
    "safetensors": _save_safetensors,
    "msgpack": _save_msgpack,
}
_READERS: dict[str, Callable[..., Any]] = {
    "orbax": _load_orbax,
    "safetensors": _load_safetensors,
    "msgpack": _load_msgpack,
}


# -- public API -----------------------------------------------------------------------------------


def save(path: str | os.PathLike[str], params: PyTree, format: str | None = None, *, sep: str = "/") -> str:
    """Write ``params`` to ``path`` atomically; returns the format written.

    ``format`` is 'orbax', 'safetensors' or 'msgpack'; by default it follows the suffix
    (``.safetensors``, ``.msgpack``/``.mpk``; no suffix: an Orbax checkpoint directory, written
    uncompressed and without OCDBT, the layout that survives damage: see ``_orbax_checkpointer``).
    Leaves are stored as host arrays under their '/'-joined paths (safetensors: joined with
    ``sep``, '/' or '.'), dtypes kept (bfloat16 included); Orbax also stores typed PRNG keys
    (``jax.random.key``: key data and impl, as Orbax itself does). Raises ``TypeError`` naming a
    leaf that is not a numeric array (e.g. a typed PRNG key for safetensors or msgpack). ``params`` is
    not modified; an existing file or Orbax checkpoint at ``path`` is replaced only once the new one
    is complete.
    """
    path = os.path.abspath(os.fspath(path))
    fmt = save_format(path, format)
    if sep not in ("/", ".") or (sep != "/" and fmt != "safetensors"):
        raise ValueError(f"sep must be '/' (or '.' for safetensors), got {sep!r} for {fmt}")
    if not os.path.isdir(os.path.dirname(path)):
        raise FileNotFoundError(f"{os.path.dirname(path)}: no such directory")
    tree = _nest(flatten(params, prng_keys=fmt == "orbax"))
    if fmt == "safetensors":
        _save_safetensors(path, tree, sep)
    else:
        _WRITERS[fmt](path, tree)
    return fmt


def load(
    path: str | os.PathLike[str], template: Any = None, format: str | None = None, *, step: int | None = None
) -> PyTree:
    """Read a checkpoint written by :func:`save` (or by Orbax, safetensors or Flax directly).

    An Orbax ``CheckpointManager`` directory gives its latest step (or ``step``); a step directory
    its item (several items: ``{item: tree}``).  safetensors keys are split on '/', or on '.' when
    no key holds a '/' (:func:`safetensors_separator`).

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
    if step is not None and fmt != "orbax":
        raise ValueError(f"step applies to Orbax CheckpointManager directories, not to {fmt}")
    try:
        raw = _READERS[fmt](os.path.abspath(path), **({"step": step} if step is not None else {}))
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


def _expected(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
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


# -- damaged checkpoints --------------------------------------------------------------------------


def salvage(
    path: str | os.PathLike[str],
    codebook: Codebook,
    *,
    select: str = "",
    format: str | None = None,
    step: int | None = None,
) -> tuple[PyTree, Salvage | None]:
    """Read a checkpoint for purify, by the codebook's layout where the container is damaged.

    Returns ``(tree, salvage)``: ``salvage`` is None when the format's own reader read the file
    (the tree is then exactly :func:`load`'s, whatever it holds: ``codebook.check`` names a leaf
    of another model), else a :class:`Salvage` record of the metadata defects bypassed and of the
    entries that could not be read.  Those are NaN — erasures, which purify solves for — and only
    ever in leaves the codebook protects; an unreadable entry anywhere else raises
    :class:`Unreadable` (a ``ValueError``) naming the leaves, as does a file in
    which fewer than half of the codebook's leaves can be located.  ``select``: the '/'-joined
    path of the subtree the codebook was made for (its other leaves must read intact).  Byte
    overwrites (bursts, bit flips) and truncation are what salvage undoes; see ``_salvage``.
    """
    from jaxpurify import _salvage

    path = os.fspath(path)
    fmt = detect_format(path) if format is None else format
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    model = getattr(codebook, "model", None)
    if model is None:  # a version-1 codebook records no fingerprint: nothing to salvage by
        return load(path, format=fmt, step=step), None
    pre = select.strip("/")
    expect = _salvage.expectation(model, pre)
    erasable = {f"{pre}/{p}" if pre else p for p in codebook.protected}
    flat, record = _salvage.read(path, fmt, expect, erasable, select=pre, step=step)
    return _nest(flat), record
