"""Solver programs exported once and reloaded by later processes (``jax.export``).

JAX's persistent compilation cache skips XLA's compilation in a second process, but not the
tracing and lowering of the Python solver before it: for one solver shape that was 0.5–0.6 s of
a 2.1 s ``jaxpurify purify`` with a warm cache.  Here the lowered program (StableHLO, serialized by
``jax.export``) is kept beside the compilation cache, so a later process deserializes it (a few
ms), and the compilation cache supplies the executable.

Only on when :func:`jaxpurify.enable_compilation_cache` was called (the command line does it).
A program is found again only under the same key: this package's source as imported, the JAX
and jaxlib versions, the platform, the trace-time configuration below, the static arguments and
every input's shape and dtype.  A file that cannot be read, does not match, or fails to run is
exported again and overwritten; a cache that cannot be written only costs the next process the
tracing.  The files are code as much as the compilation cache's are: they live in its directory,
which :func:`jaxpurify.enable_compilation_cache` requires to be writable by this user only.

Every source edit or JAX upgrade changes the keys, so old programs are never read again: after
each write the least recently used programs are deleted while the folder holds more than
``MAX_BYTES`` (a read marks a program used), and so are temporary files a killed writer left.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
import time
from collections.abc import Callable
from typing import Any, cast

import jax
import numpy as np


def _code_digest() -> str:
    """The package's source (so an edited checkout never reuses a program), read at import: a
    process that imported the old code must not store its program under the new code's key."""
    h = hashlib.sha256()
    root = pathlib.Path(__file__).parent
    files = sorted(root.rglob("*.py")) or sorted(root.rglob("*.pyc"))  # a bytecode-only install
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    # jax.lib sets jaxlib's version as a plain attribute, not a re-export the type checker knows
    h.update(f"{jax.__version__} {jax.lib.__version__}".encode())  # type: ignore[attr-defined]
    return h.hexdigest()


SUBDIR = "jaxpurify-solvers"
SUFFIX = ".jaxexport"
# ~80 KB per solver shape: room for several hundred shapes, small beside the compilation cache
MAX_BYTES = 64 << 20
# a temporary file this old was left by a killed writer (a live write takes milliseconds)
STALE_TMP_SECONDS = 3600.0
_DIGEST = _code_digest()
_dir: str | None = None
_loaded: dict[str, Callable[..., Any]] = {}  # key → jitted call of the exported program, per process


def use_dir(cache_dir: str | None) -> None:
    """Keep exported programs under ``cache_dir/SUBDIR`` (``None``: export nothing)."""
    global _dir
    _dir = None if cache_dir is None else os.path.join(cache_dir, SUBDIR)
    _loaded.clear()


def enabled() -> bool:
    return _dir is not None


def _platform(args: tuple[Any, ...]) -> str | None:
    """The export platform of the inputs when they all live on one device of the default backend
    (what ``jax.export`` lowers for), else None (several devices, sharded, or another backend)."""
    devices = set()
    for a in args:
        devices |= set(a.devices()) if isinstance(a, jax.Array) else set()
    if len(devices) != 1 or next(iter(devices)).platform != jax.default_backend():
        return None
    return jax.export.default_export_platform()


def _key(tag: str, platform: str, args: tuple[Any, ...]) -> str:
    cfg: Any = jax.config  # its options are attributes set at run time, unknown to the type checker
    parts = [
        _DIGEST,
        tag,
        platform,
        # configuration read while tracing: it changes the program, not only its compilation
        str(cfg.jax_enable_x64),
        str(cfg.jax_default_matmul_precision),
        str(cfg.jax_numpy_dtype_promotion),
        *(f"{np.shape(a)}{np.dtype(a.dtype)}" for a in args),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def call(fn: Callable[..., Any], tag: str, outputs: int, *args: Any) -> Any:
    """``fn(*args)`` — ``fn`` jitted, arrays in and a tuple of ``outputs`` arrays out, static
    arguments bound and described by ``tag`` — through the exported program kept for this key;
    exported and stored on a miss.  Without a cache directory, or for inputs spread over several
    devices, simply ``fn(*args)``."""
    where = _dir
    platform = _platform(args)
    if where is None or platform is None:
        return fn(*args)
    key = _key(tag, platform, args)
    run = _loaded.get(key)
    if run is not None:
        return run(*args)
    exp = _read(where, key, platform, outputs, args)
    if exp is not None:
        run = jax.jit(exp.call)
        try:  # a damaged file can deserialize and still fail to compile
            out = run(*args)
        except Exception:
            pass
        else:
            _loaded[key] = run
            return out
    exp = jax.export.export(cast(jax.stages.Wrapped, fn), platforms=(platform,))(*args)  # jitted, as documented
    _write(where, key, exp.serialize())
    run = _loaded[key] = jax.jit(exp.call)
    return run(*args)


def _read(where: str, key: str, platform: str, outputs: int, args: tuple[Any, ...]) -> jax.export.Exported | None:
    try:
        path = os.path.join(where, key + SUFFIX)
        with open(path, "rb") as f:
            exp = jax.export.deserialize(bytearray(f.read()))
        want = tuple((tuple(np.shape(a)), np.dtype(a.dtype)) for a in args)
        have = tuple((tuple(v.shape), np.dtype(v.dtype)) for v in exp.in_avals)
        fits = have == want and len(exp.out_avals) == outputs and tuple(exp.platforms) == (platform,)
        if not (fits and exp.nr_devices == 1):
            return None
        _touch(path)
        return exp
    except Exception:  # missing, truncated or foreign: export again and overwrite it
        return None


def _write(where: str, key: str, blob: bytes | bytearray) -> None:
    """Atomic: a concurrent reader sees the old file or the whole new one, never a part."""
    tmp = None
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=where, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, os.path.join(where, key + SUFFIX))
        tmp = None
        _sweep(where, keep=key + SUFFIX)
    except OSError:  # a read-only cache only costs the next process the tracing
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _touch(path: str) -> None:
    """Mark a program used (its mtime): the sweep deletes the least recently used first."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache: nothing to mark, nothing will be swept
        pass


def _sweep(where: str, keep: str) -> None:
    """Delete stale temporary files, then the least recently used programs (never ``keep``, the
    one just written) until the folder's programs take at most ``MAX_BYTES``."""
    now = time.time()
    programs = []
    with os.scandir(where) as entries:
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
                if e.name.startswith(".tmp-") and now - st.st_mtime > STALE_TMP_SECONDS:
                    os.unlink(e.path)
                elif e.name.endswith(SUFFIX) and e.is_file(follow_symlinks=False):
                    programs.append((st.st_mtime, st.st_size, e.name))
            except OSError:  # another process swept it first
                pass
    total = sum(size for _, size, _ in programs)
    for _, size, name in sorted(programs):
        if total <= MAX_BYTES:
            break
        if name == keep:
            continue
        try:
            os.unlink(os.path.join(where, name))
        except OSError:
            continue
        total -= size
