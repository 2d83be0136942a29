"""One process of tests/test_distributed.py: ``python tests/distributed_case.py ID COUNT PORT OUT``.

Joins a ``jax.distributed`` cluster on 127.0.0.1 with CPU collectives (gloo), holds its share of
every protected leaf of the tree of ``shard_case`` (split along the last axis, one block per
process), purifies the global tree and writes the gathered result and the certified counts.
"""

import sys

import jax


def main(process_id: int, processes: int, port: int, path: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=process_id)
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P
    from shard_case import MAX_ENTRIES, case

    import jaxpurify as jp

    cb, _, bad = case()
    sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("hosts",)), P(None, "hosts"))

    def local(leaf):  # this process's block of columns: all it holds of the leaf
        block = leaf.shape[-1] // processes
        mine = np.asarray(leaf)[:, process_id * block : (process_id + 1) * block]
        return jax.make_array_from_process_local_data(sharding, mine, leaf.shape)

    spread = {k: local(v) for k, v in bad.items()}
    assert not spread["a"].is_fully_addressable
    pur, rep = jp.purify(spread, cb, max_entries=MAX_ENTRIES)
    out = {f"leaf/{k}": np.asarray(multihost_utils.process_allgather(pur[k], tiled=True)) for k in cb.protected}
    out["certified"] = np.asarray(
        [int(np.sum(multihost_utils.process_allgather(c, tiled=True))) for c in rep.certified.values()]
    ).sum()
    out["report"] = np.asarray(type(rep).__name__)
    np.savez(path, **out)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
