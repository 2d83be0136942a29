"""End-to-end: purify a ResNet-18-sized encoded parameter tree with 5% gross errors.

The tree has ResNet-18's leaves (conv kernels HWIO, batch-norm scales and biases, the 512×1000
read-out) scaled in width by sqrt(--size), so --size 1 is about 11.7M parameters.  Every leaf with
K ≥ 8 on its last axis is encoded at K/n = 4; the deployed weights are decode(random latent).
Reports wall time of a cold call (compilation included) and a warm call, and for each the peak
resident memory the call adds (sampled every 2 ms; the purified output tree counts, the input does
not) relative to the parameter bytes.  Run one size per process:

    python -m benchmarks.resnet --size 1 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import threading
import time

import jax
import jax.numpy as jnp

import jaxpurify as jp
from benchmarks._common import report
from jaxpurify import contamination as C


def resnet18_tree(width: float = 1.0, classes: int = 1000) -> dict:
    c = lambda k: max(8, int(round(k * width)))
    tree = {"conv1": {"kernel": (7, 7, 3, c(64))}, "bn1": {"scale": (c(64),), "bias": (c(64),)}}
    cin = c(64)
    for li, ch in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            stride_block = li > 1 and b == 0
            blk = {
                "conv1": {"kernel": (3, 3, cin, c(ch))},
                "bn1": {"scale": (c(ch),), "bias": (c(ch),)},
                "conv2": {"kernel": (3, 3, c(ch), c(ch))},
                "bn2": {"scale": (c(ch),), "bias": (c(ch),)},
            }
            if stride_block:
                blk["down"] = {"kernel": (1, 1, cin, c(ch))}
                blk["down_bn"] = {"scale": (c(ch),), "bias": (c(ch),)}
            tree[f"layer{li}_{b}"] = blk
            cin = c(ch)
    tree["fc"] = {"kernel": (cin, classes), "bias": (classes,)}
    return jax.tree.map(lambda s: jnp.zeros(s, jnp.float32), tree, is_leaf=lambda x: isinstance(x, tuple))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakRSS:
    """Samples the resident set every 2 ms in a thread: the peak of one call, not of the process."""

    def __enter__(self):
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()

        def run():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, rss_mb())

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def added(self) -> float:
        return self.peak - self.base


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=float, default=1.0, help="parameter count relative to ResNet-18")
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--max-entries", type=int, default=None, help="purify's max_entries (default: its own)")
    p.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help="jp.enable_compilation_cache(DIR): a second process then skips compiling and tracing",
    )
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.compilation_cache:  # as the command line does: compiled and exported programs
        jp.enable_compilation_cache(a.compilation_cache)
    shapes = resnet18_tree(math.sqrt(a.size))
    cb = jp.Codebook.create(shapes, jax.random.key(0), redundancy=4.0)
    latent = cb.encode(shapes)
    latent = jax.tree.map(lambda t: jax.random.normal(jax.random.key(t.size), t.shape), latent)
    clean = jax.block_until_ready(cb.decode(latent))
    bad = jax.block_until_ready(C.contaminate(jax.random.key(1), clean, cb, C.gross_errors, rate=a.rho))
    nparams = sum(x.size for x in jax.tree.leaves(clean))
    pbytes = sum(x.nbytes for x in jax.tree.leaves(clean))
    kw = {} if a.max_entries is None else {"max_entries": a.max_entries}
    with PeakRSS() as m_cold:
        t0 = time.perf_counter()
        pur, rep = jp.purify(bad, cb, **kw)
        jax.block_until_ready(pur)
        cold = time.perf_counter() - t0
    del pur
    with PeakRSS() as m_warm:
        t0 = time.perf_counter()
        pur, rep = jp.purify(bad, cb, **kw)
        jax.block_until_ready(pur)
        warm = time.perf_counter() - t0
    err = max(
        float(jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), 1e-30))
        for x, y in zip(jax.tree.leaves(pur), jax.tree.leaves(clean))
    )
    res = {
        "size": a.size,
        "parameters": int(nparams),
        "parameter_mb": pbytes / 2**20,
        "rho": a.rho,
        "groups": len(cb.groups),
        "leaves": len(cb.protected),
        "solver_shapes": rep.solver_shapes,
        "calls": rep.calls,
        "cold_seconds": cold,
        "warm_seconds": warm,
        "max_entries": kw.get("max_entries", "default"),
        "compilation_cache": bool(a.compilation_cache),
        # peak resident memory added by the call, output tree included (the input already existed)
        "cold_peak_added_mb": m_cold.added,
        "cold_peak_over_param_bytes": m_cold.added / (pbytes / 2**20),
        "warm_peak_added_mb": m_warm.added,
        "warm_peak_over_param_bytes": m_warm.added / (pbytes / 2**20),
        "certified": f"{rep.certified}/{rep.columns}",
        "ok": rep.ok,
        "max_rel_err": err,
    }
    report(json.dumps(res), res, a.json)
    return res


if __name__ == "__main__":
    main()
