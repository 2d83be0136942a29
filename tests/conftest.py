import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

# One persistent XLA compilation cache for the whole run, shared with the notebook's kernel
# (it inherits the environment): the same solver shapes are then compiled once, not per process.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxpurify-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
