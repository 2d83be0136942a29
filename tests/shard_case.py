"""The tree of tests/test_shard.py, and (run as a script) its purify in a fresh process.

Run as ``python tests/shard_case.py OUT.npz`` with ``XLA_FLAGS`` set for the device count: it
writes the device path's purified leaves, their sharding and, on one device, the host path's.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxpurify as jp
from jaxpurify import contamination as C

# One solver shape (K = 32, width 8): max_entries = 256 cuts the two leaves into 14 items of 8
# columns, so 8 devices get whole slots (16 after padding) and one device all 14.
MAX_ENTRIES = 256
COLUMNS = 64 + 48


def case():
    """(codebook, clean, contaminated): 10% gross errors in every column."""
    rng = np.random.default_rng(0)
    params = {
        "a": jnp.asarray(rng.standard_normal((32, 64)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal((32, 48)), jnp.float32),
    }
    # the single-axis layout (K = 32 along axis 0): one solver shape, as the comment above counts
    cb = jp.Codebook.create(params, b"0123456789abcdef", select=lambda path, leaf: 0)
    clean = cb.decode(cb.init_latent(params))
    bad = C.contaminate(jax.random.key(3), clean, cb, C.gross_errors, rate=0.1)
    return cb, clean, bad


def main(path: str) -> None:
    cb, _, bad = case()
    pur, rep = jp.purify(bad, cb, max_entries=MAX_ENTRIES, device=True)
    out = {f"device/{k}": np.asarray(pur[k]) for k in cb.protected}
    out.update({f"devices/{k}": np.asarray(len(pur[k].sharding.device_set)) for k in cb.protected})
    out.update({f"replicated/{k}": np.asarray(pur[k].sharding.is_fully_replicated) for k in cb.protected})
    out["certified"] = np.asarray(rep.certified)
    if jax.device_count() == 1:
        host, _ = jp.purify(bad, cb, max_entries=MAX_ENTRIES, device=False)
        out.update({f"host/{k}": np.asarray(host[k]) for k in cb.protected})
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
