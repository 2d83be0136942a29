"""What purify's plan costs: item widths, padding, solver shapes.

    python -m benchmarks.purify_plan [--skip-timing]

1. Columns solved (padding included) and distinct solver shapes for the ResNet-18-sized trees of
   ``benchmarks.resnet``, for purify's plan and for the plan it replaced (every leaf cut into
   blocks of one width per (K, n), each leaf padded to whole blocks).
2. ``recover`` on 1024 real columns per call, cut into items of 1024, 128 or 16 columns, at
   K = 64 and 256 (n = K/4, 5% gross errors), warm, best of 3, side by side: the measurement
   behind ``_plan.ITEM_COST``.
3. Warm purify of one ResNet-18-sized tree (``--resnet SIZE``, 5% gross errors) with this plan and
   with the previous one, alternating in one process: the plan is the only difference.

It measures an internal choice, so unlike the suite it imports ``jaxpurify._plan`` and swaps
``jaxpurify._purify.plan`` on purpose; it follows the plan's internals and is not part of
``python -m benchmarks.run``.
"""

from __future__ import annotations

import argparse
import collections
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxpurify as jp
from benchmarks.resnet import resnet18_tree
from jaxpurify import _purify
from jaxpurify import contamination as C
from jaxpurify._plan import Call, Item, plan


def previous_calls(groups, max_entries: int = 1 << 21) -> tuple[Call, ...]:
    """The plan before this one, as calls: per (K, n) one block width (the widest group's, to a
    power of two), every group padded to whole blocks, the last call padded with empty blocks."""
    by = collections.defaultdict(list)
    for g in groups:
        by[(g.dtype, g.K, g.n)].append(g)
    calls = []
    for (dtype, K, n), mem in by.items():
        per_call = max(1, max_entries // K)
        block = min(1 << (max(g.columns for g in mem) - 1).bit_length(), per_call)
        items = [Item(g.name, j, min(j + block, g.columns)) for g in mem for j in range(0, g.columns, block)]
        per_batch = max(1, min(per_call // block, len(items)))
        calls += [
            Call(dtype, K, n, block, per_batch, tuple(items[i : i + per_batch]))
            for i in range(0, len(items), per_batch)
        ]
    return tuple(calls)


def previous_plan(groups, max_entries: int = 1 << 21) -> tuple[int, int]:
    """(columns solved, shapes) of the plan before this one."""
    calls = previous_calls(groups, max_entries)
    return sum(c.slots * c.width for c in calls), len({c.shape for c in calls})


def plans() -> None:
    for size in (0.25, 1.0, 2.0):
        cb = jp.Codebook.create(resnet18_tree(math.sqrt(size)), jax.random.key(0), redundancy=4.0)
        gs = list(cb.groups.values())
        calls = plan(gs, 1 << 21)
        old, old_shapes = previous_plan(gs)
        print(
            f"ResNet-18 × {size}: {len(gs)} groups, {sum(g.columns for g in gs)} columns; solved: "
            f"plan {sum(c.slots * c.width for c in calls)} in {len({c.shape for c in calls})} shapes, "
            f"previous {old} in {old_shapes} shapes",
            flush=True,
        )


def side_by_side(size: float, repeats: int, last_axis: bool) -> None:
    """Warm purify of the ResNet-18-sized tree with this plan and with the previous one, in one
    process, alternating (everything else — layout, solver, transfers — is the same).
    ``last_axis``: the layout before full coverage, one group per leaf along its last axis (the
    40 norm scales and biases are then single-column groups)."""
    select = (lambda path, leaf: leaf.ndim - 1) if last_axis else None
    cb = jp.Codebook.create(resnet18_tree(math.sqrt(size)), jax.random.key(0), redundancy=4.0, select=select)
    clean = cb.decode(
        jax.tree.map(
            lambda t: jax.random.normal(jax.random.key(t.size), t.shape), cb.init_latent(resnet18_tree(math.sqrt(size)))
        )
    )
    bad = C.contaminate(jax.random.key(1), clean, cb, C.gross_errors, rate=0.05)
    variants = {"plan": _purify.plan, "previous": lambda groups, max_entries: previous_calls(groups, max_entries)}
    best = collections.defaultdict(lambda: math.inf)
    for r in range(repeats + 1):  # the first round compiles
        for name, fn in variants.items():
            _purify.plan = fn
            t0 = time.perf_counter()
            pur, rep = jp.purify(bad, cb)
            jax.block_until_ready(pur)
            dt = time.perf_counter() - t0
            if r == 0:
                print(
                    f"  {name}: first call {dt:.1f} s ({rep.solver_shapes} shapes), "
                    f"certified {rep.certified}/{rep.columns}"
                )
            else:
                best[name] = min(best[name], dt)
    _purify.plan = variants["plan"]
    print(
        f"ResNet-18 × {size} ({'last-axis' if last_axis else 'default'} layout), warm, best of {repeats}: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()),
        flush=True,
    )


def widths() -> None:
    rng = np.random.default_rng(0)
    for K in (64, 256):
        n = K // 4
        data = {}
        for slots, w in ((1, 1024), (8, 128), (64, 16)):
            A = (rng.standard_normal((slots, K, n)) / np.sqrt(n)).astype(np.float32)
            Y = A @ rng.standard_normal((slots, n, w)).astype(np.float32)
            Y = np.where(rng.random(Y.shape) < 0.05, Y + 100, Y).astype(np.float32)
            data[(slots, w)] = (jnp.asarray(A), jnp.asarray(Y))
            jax.block_until_ready(jp.recover(*data[(slots, w)]))  # compile
        best = collections.defaultdict(lambda: math.inf)
        for _ in range(3):
            for key, (A, Y) in data.items():
                t0 = time.perf_counter()
                jax.block_until_ready(jp.recover(A, Y))
                best[key] = min(best[key], time.perf_counter() - t0)
        print(f"K={K}: " + ", ".join(f"{s}×{w}: {t * 1e3:.1f} ms" for (s, w), t in best.items()), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-timing", action="store_true", help="only the plans' column counts")
    p.add_argument("--skip-widths", action="store_true", help="no item-width timing")
    p.add_argument("--resnet", type=float, default=0.25, help="size of the side-by-side purify (0: skip)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--last-axis", action="store_true", help="one group per leaf along its last axis")
    a = p.parse_args(argv)
    with open("/proc/loadavg") as f:
        print("load:", " ".join(f.read().split()[:3]))
    plans()
    if not (a.skip_timing or a.skip_widths):
        widths()
    if not a.skip_timing:
        if a.resnet:
            side_by_side(a.resnet, a.repeats, a.last_axis)
    with open("/proc/loadavg") as f:
        print("load:", " ".join(f.read().split()[:3]))


if __name__ == "__main__":
    main()
