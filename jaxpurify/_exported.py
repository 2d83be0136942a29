"""Solver programs exported once and reloaded by later processes (``jax.export``).

JAX's persistent compilation cache skips XLA's compilation in a second process, but not the
tracing and lowering of the Python solver before it: for one solver shape that was 0.5–0.6 s of
a 2.1 s ``jaxpurify purify`` with a warm cache.  Here the lowered program (StableHLO, serialized by
``jax.export``) is kept beside the compilation cache, so a later process deserializes it (a few
ms), and the compilation cache supplies the executable.

Only on when :func:`jaxpurify.enable_compilation_cache` was called (the command line does it).
A program is found again only under the same key: this package's source, the JAX and jaxlib
versions, the backend, the trace-time configuration below, the static arguments and every
input's shape and dtype.  An unreadable or mismatched file is ignored and rewritten.  The files
are code as much as the compilation cache's are: they live in its directory (mode 0o700).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import tempfile
from typing import Any, Callable

import jax
import numpy as np

SUBDIR = "jaxpurify-solvers"
_dir: str | None = None
_loaded: dict[str, Callable] = {}  # key → jitted call of the exported program, per process


def use_dir(cache_dir: str | None) -> None:
    """Keep exported programs under ``cache_dir/SUBDIR`` (``None``: export nothing)."""
    global _dir
    _dir = None if cache_dir is None else os.path.join(cache_dir, SUBDIR)
    _loaded.clear()


def enabled() -> bool:
    return _dir is not None


@functools.lru_cache(maxsize=None)
def _code_digest() -> str:
    """This package's source (so an edited checkout never loads a stale program) and versions."""
    h = hashlib.sha256()
    root = pathlib.Path(__file__).parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(f"{jax.__version__} {jax.lib.__version__}".encode())
    return h.hexdigest()


def _key(tag: str, args: tuple) -> str:
    cfg = jax.config
    parts = [
        _code_digest(), tag, jax.default_backend(),
        # configuration read while tracing: it changes the program, not only its compilation
        str(cfg.jax_enable_x64), str(cfg.jax_default_matmul_precision), str(cfg.jax_numpy_dtype_promotion),
        *(f"{np.shape(a)}{np.dtype(a.dtype)}" for a in args),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def call(fn: Callable, tag: str, *args: Any) -> Any:
    """``fn(*args)`` (``fn`` jitted, arrays in and out, static arguments bound and described by
    ``tag``), through the exported program kept for this key; exported and stored on a miss."""
    key = _key(tag, args)
    run = _loaded.get(key)
    if run is None:
        exp = _read(key, args)
        if exp is None:
            exp = jax.export.export(fn)(*args)
            _write(key, exp.serialize())
        run = _loaded[key] = jax.jit(exp.call)
    return run(*args)


def _read(key: str, args: tuple):
    path = os.path.join(_dir, key + ".jaxexport")
    try:
        with open(path, "rb") as f:
            exp = jax.export.deserialize(bytearray(f.read()))
    except FileNotFoundError:
        return None
    except Exception:  # truncated or foreign file: export again and overwrite it
        return None
    want = tuple((tuple(np.shape(a)), np.dtype(a.dtype)) for a in args)
    have = tuple((tuple(v.shape), np.dtype(v.dtype)) for v in exp.in_avals)
    return exp if have == want else None


def _write(key: str, blob: bytes) -> None:
    """Atomic: a concurrent reader sees the old file or the whole new one, never a part."""
    os.makedirs(_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=_dir, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, os.path.join(_dir, key + ".jaxexport"))
    except OSError:  # a read-only cache only costs the next process the tracing
        try:
            os.unlink(tmp)
        except OSError:
            pass
