"""JAX's persistent compilation cache, in the user's cache directory.

purify compiles one solver per (K, n) block shape; in a fresh process that compilation dominates
the first call. With the persistent cache, a later process loads the compiled executables from
disk instead, and the solver's lowered program from ``jaxpurify._exported`` (the compilation cache
does not skip tracing and lowering). The cache is trusted code: it lives in a directory only this
user can write.
"""

from __future__ import annotations

import os

import jax

from jaxpurify import _exported

ENV_DISABLE = "JAXPURIFY_NO_COMPILATION_CACHE"


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/jaxpurify/xla``, or ``~/.cache/jaxpurify/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxpurify", "xla")


def compilation_cache_disabled_by_env() -> bool:
    """True when ``JAXPURIFY_NO_COMPILATION_CACHE`` is set to anything but '', 0, false, no or off.

    The command line then runs without :func:`enable_compilation_cache`; the function itself
    does not look at the variable (a program that calls it decides).
    """
    return os.environ.get(ENV_DISABLE, "").strip().lower() not in {"", "0", "false", "no", "off"}


def enable_compilation_cache(path: str | os.PathLike[str] | None = None, *, min_compile_time_secs: float = 0.0) -> str:
    """Store compiled XLA programs under ``path`` (default :func:`default_cache_dir`); returns it.

    Call it before the first computation of the process: JAX reads the setting when it first
    compiles. Every program that took at least ``min_compile_time_secs`` to compile is stored
    (JAX's own default, 1 s, would skip the many small programs around the solver), whatever its
    size. The directory is created with mode 0o700: whoever can write to it can run code here, so
    an existing one that another user owns, or that group or others may write, is refused with a
    ``PermissionError`` (the command line then runs without the cache).
    """
    path = os.path.abspath(os.fspath(path) if path is not None else default_cache_dir())
    os.makedirs(path, mode=0o700, exist_ok=True)
    for where in (path, os.path.join(path, _exported.SUBDIR)):
        _check_private(where)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    _exported.use_dir(path)  # and the lowered solver programs, which this cache does not keep
    return path


def _check_private(where: str) -> None:
    try:
        st = os.stat(where)
    except FileNotFoundError:
        return
    mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    if not mine or st.st_mode & 0o022:
        raise PermissionError(
            f"compilation cache directory {where} is {'not yours' if not mine else 'writable by others'} "
            f"(mode {st.st_mode & 0o777:o}): whoever can write there can run code in this process; "
            "use a directory only you can write (chmod 700)"
        )
