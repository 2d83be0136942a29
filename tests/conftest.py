import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

# One persistent XLA compilation cache for the whole run, shared with the notebook's kernel
# (it inherits the environment): the same solver shapes are then compiled once, not per process.
# The process that makes it removes it at the end (under xdist that is the controller: its
# workers inherit the variable, so they neither make nor remove one); a cache the caller set stays.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="jaxpurify-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
