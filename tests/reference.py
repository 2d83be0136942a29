"""Independent references for the tests: the exact LP (HiGHS, ``benchmarks.highs``) and instance generators."""

from __future__ import annotations

import os

import numpy as np

from benchmarks.highs import lad_highs  # noqa: F401  (the exact LP by HiGHS: SciPy only, one definition)


def instance(rng, K, n, m, k, *, low=1.0, high=1e3, dtype=np.float64):
    """Gaussian A (K×n), clean X, and Y = A X + E with exactly k gross errors per column."""
    A = rng.standard_normal((K, n)) / np.sqrt(n)
    X = rng.standard_normal((n, m))
    Y = A @ X
    E = np.zeros_like(Y)
    scale = np.sqrt(np.mean(Y**2))
    for j in range(m):
        idx = rng.choice(K, k, replace=False)
        E[idx, j] = rng.choice([-1, 1], k) * np.exp(rng.uniform(np.log(low), np.log(high), k)) * scale
    return A.astype(dtype), X.astype(dtype), (Y + E).astype(dtype), E != 0


def rel_err(x, ref, axis=0):
    return np.linalg.norm(np.asarray(x, np.float64) - ref, axis=axis) / np.maximum(
        np.linalg.norm(ref, axis=axis), 1e-300
    )


def smallest_coprime(C: int, F: int) -> int:
    """The default layout's width by its definition, by brute force over every candidate (not the
    library's search): the smallest m > C coprime to C, to F and to every stride s = 2…16."""
    ok = lambda m: np.gcd(m, C) == 1 and np.gcd(m, F) == 1 and all(np.gcd(m, s) == 1 for s in range(2, 17))
    return min(m for m in range(C + 1, C + 1 + 64 * (C + F)) if ok(m))


def flat_paths(tree, prefix=""):
    """A nested dict's leaves by '/'-joined path, as NumPy arrays: a plain walk, independent of
    jaxpurify.tree."""
    out = {}
    for k, v in tree.items():
        out.update(flat_paths(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": np.asarray(v)})
    return out


def read_checkpoint(path, fmt):
    """The checkpoint at ``path`` by its format's own reader (safetensors, msgpack or orbax), flat
    by '/'-joined paths; not by jaxpurify.io.  The readers are imported here, when asked for."""
    if fmt == "safetensors":
        import safetensors.numpy

        return dict(safetensors.numpy.load_file(path))
    if fmt == "msgpack":
        from flax import serialization

        with open(path, "rb") as f:
            return flat_paths(serialization.msgpack_restore(f.read()))
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as c:
        return flat_paths(c.restore(os.path.abspath(path)))
