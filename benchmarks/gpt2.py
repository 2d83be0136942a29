"""End-to-end: purify a GPT-2-small-shaped parameter tree (124M parameters) with 1% gross errors.

The tree has GPT-2 small's leaves (token and position embeddings 50257×768 and 1024×768; per
block the attention c_attn 768×2304 and c_proj 768×768, the MLP c_fc 768×3072 and c_proj
3072×768, their biases and two layer norms; a final layer norm).  ``--size s`` keeps every block's
shapes and scales the block count and the embedding rows by s, so cost against parameters shows
whether purify is linear.  Default codebook (every parameter protected, K/n = 4); the deployed
weights are decode(random latent); 1% of every column gets a gross error.

Reports the wall time of a first call (compilation included) and of a warm call, the peak
resident memory each call adds (sampled every 2 ms; the output counts, the input does not) and
the certified columns.  ``--processes 2`` runs the same purify in two ``jax.distributed``
processes on 127.0.0.1 (CPU collectives), each holding half of every leaf (split along its last
axis), and reports each process:

    python -m benchmarks.gpt2 [--size 0.25] [--processes 2] [--path host|device] [--json out.json]
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxpurify as jp
from benchmarks._common import write_json
from benchmarks.resnet import PeakRSS
from jaxpurify import contamination as C

VOCAB, CONTEXT, WIDTH, BLOCKS = 50257, 1024, 768, 12


def gpt2_tree(size: float = 1.0) -> dict:
    """Zeros with GPT-2 small's shapes; ``size`` scales the block count and the embedding rows."""
    d = WIDTH
    blocks = max(1, round(BLOCKS * size))
    tree = {
        "wte": (max(16, round(VOCAB * size)), d),
        "wpe": (max(16, round(CONTEXT * size)), d),
        "ln_f": {"scale": (d,), "bias": (d,)},
    }
    for i in range(blocks):
        tree[f"h{i}"] = {
            "ln_1": {"scale": (d,), "bias": (d,)},
            "ln_2": {"scale": (d,), "bias": (d,)},
            "attn": {"c_attn": {"kernel": (d, 3 * d), "bias": (3 * d,)}, "c_proj": {"kernel": (d, d), "bias": (d,)}},
            "mlp": {"c_fc": {"kernel": (d, 4 * d), "bias": (4 * d,)}, "c_proj": {"kernel": (4 * d, d), "bias": (d,)}},
        }
    return jax.tree.map(lambda s: jnp.zeros(s, jnp.float32), tree, is_leaf=lambda x: isinstance(x, tuple))


def build(size: float, rho: float):
    """(codebook, clean, contaminated): the same in every process (fixed keys)."""
    shapes = gpt2_tree(size)
    cb = jp.Codebook.create(shapes, b"jaxpurify-bench-gpt2-key")
    latent = jax.tree.map(lambda t: jax.random.normal(jax.random.key(t.size), t.shape), cb.encode(shapes))
    clean = jax.block_until_ready(cb.decode(latent))
    bad = jax.block_until_ready(C.contaminate(jax.random.key(1), clean, cb, C.gross_errors, rate=rho))
    return cb, clean, bad


def timed(fn):
    """(result, seconds, peak MB added) of ``fn()``, its arrays ready."""
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        seconds = time.perf_counter() - t0
    return out, seconds, mem.added


def spread_over_processes(tree, process: int, processes: int):
    """Each process keeps its block of every leaf's last axis, as one global array."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.asarray(jax.devices()), ("hosts",))

    def local(leaf):
        block = leaf.shape[-1] // processes
        spec = P(*([None] * (leaf.ndim - 1) + ["hosts"]))
        mine = np.asarray(leaf)[..., process * block : (process + 1) * block]
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), mine, leaf.shape)

    return jax.tree.map(local, tree)


def run(size: float, rho: float, path: str, process: int = 0, processes: int = 1) -> dict:
    cb, clean, bad = build(size, rho)
    nparams = sum(x.size for x in jax.tree.leaves(clean))
    pbytes = sum(x.nbytes for x in jax.tree.leaves(clean))
    if processes > 1:
        bad = spread_over_processes(bad, process, processes)
    device = {"auto": None, "host": False, "device": True}[path]
    res = {
        "size": size,
        "parameters": int(nparams),
        "parameter_mb": pbytes / 2**20,
        "rho": rho,
        "process": process,
        "processes": processes,
        "devices": jax.device_count(),
        "path": path,
        "groups": len(cb.groups),
    }
    for label in ("cold", "warm"):
        (pur, rep), seconds, added = timed(lambda: jp.purify(bad, cb, device=device))
        res[f"{label}_seconds"] = seconds
        res[f"{label}_peak_added_mb"] = added
        if label == "cold":
            del pur
    if isinstance(rep, jp.Report):
        res.update(certified=rep.certified, columns=rep.columns, report="Report")
        ref = clean
    else:  # multi-process: the report is arrays spread over the processes
        from jax.experimental import multihost_utils

        cert = sum(int(np.sum(multihost_utils.process_allgather(c, tiled=True))) for c in rep.certified.values())
        res.update(certified=cert, columns=rep.columns, report="DeviceReport")
        ref = clean
    errs = []
    for x, y in zip(jax.tree.leaves(pur), jax.tree.leaves(ref)):
        y = np.asarray(y)
        # each process checks the shards it holds against the same slice of the clean leaf (the
        # purified leaves may be laid out over the devices differently from the input)
        shards = x.addressable_shards if isinstance(x, jax.Array) else [None]
        for sh in shards:
            a = np.asarray(x if sh is None else sh.data, np.float64)
            b = np.asarray(y if sh is None else y[sh.index], np.float64)
            errs.append(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
    res["max_rel_err_local"] = float(max(errs))
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=float, default=1.0, help="parameters relative to GPT-2 small (124M)")
    p.add_argument("--rho", type=float, default=0.01, help="fraction of every column with a gross error")
    p.add_argument("--path", choices=("auto", "host", "device"), default="auto", help="purify's path")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=1800, help="a process stuck this long dumps its stacks and exits")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.process_id is not None:  # one member of a multi-process run
        faulthandler.dump_traceback_later(a.timeout, exit=True)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{a.port}", num_processes=a.processes, process_id=a.process_id)
        print(json.dumps(run(a.size, a.rho, a.path, a.process_id, a.processes)), flush=True)
        jax.distributed.shutdown()
        return None
    if a.processes > 1:
        port = _free_port()
        argv = [
            sys.executable,
            "-m",
            "benchmarks.gpt2",
            "--size",
            str(a.size),
            "--rho",
            str(a.rho),
            "--path",
            a.path,
            "--processes",
            str(a.processes),
            "--port",
            str(port),
            "--timeout",
            str(a.timeout),
        ]
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                argv + ["--process-id", str(i)],
                stdout=subprocess.PIPE,
                text=True,
                env=dict(os.environ, JAX_PLATFORMS="cpu"),
            )
            for i in range(a.processes)
        ]
        outs = [proc.communicate()[0] for proc in procs]
        if any(proc.returncode for proc in procs):
            raise SystemExit(f"a process failed: {[proc.returncode for proc in procs]}")
        res = {
            "processes": [json.loads(o.strip().splitlines()[-1]) for o in outs],
            "wall_seconds_all": time.perf_counter() - t0,
        }
    else:
        res = run(a.size, a.rho, a.path)
    if a.json:
        write_json(a.json, res)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
