"""Regular damage on a ResNet-18-sized tree: does the default layout spread it over many columns?

    python -m benchmarks.patterns [--size 1] [--out DIR] [--only stride-3 ...]

Memory and storage fail in regular patterns: every s-th float (a stuck address line, a bad DRAM
column), one byte lane of a 64-bit word, a 4 KB page, a whole row or channel of a kernel.  If a
layout puts a pattern's damaged entries into a few code columns, those columns fill up (past the
⌊(K − n)/2⌋ a certificate accepts) while the rest stay clean; spread evenly, every column takes
the pattern's average rate.

The tree is ``benchmarks.resnet.resnet18_tree`` (ResNet-18's leaves, ~11.7M float32 at
``--size 1``), encoded with ``Codebook.create``'s default layout at K/n = 4 and sealed; the
deployed weights are ``decode`` of a random latent.  The leaves are laid end to end in tree
order, as a checkpoint file stores them, and each pattern is applied to that flat buffer:

* ``stride-s``: every s-th float's top exponent bit flipped (|w| < 2 becomes |w|·2^128);
* ``lane-b``: byte b of every 8-byte word stuck at 0xFF (b = 3: an exponent byte of every other
  float, NaN or a huge value; b = 0: the low mantissa byte of every other float, a small change);
* ``page``: one 4 KB page (1,024 floats) zeroed in every 32 KB (12.5% of the entries);
* ``row`` / ``channel``: in every kernel, one fan-in row (its C outputs) or one output channel
  (its F inputs) overwritten with 1e3.

Two irregular references come first: ``gross-5%`` (5% of every column overwritten by large
values, ``jaxpurify.contamination.gross_errors``) and ``flips-1%`` (1% of the entries with one
random bit flipped, ``bit_flips``).

Per pattern: the fraction of damaged entries, of protected columns certified, of columns that are
certified *and* exact (relative error ≤ 1e-5 of the column's max against the deployed column),
certified columns that are not exact (must be 0), whether the report (seal included) is ok, the
warm purify time, its ratio to a repeat of the first warm call (``gross-5%``), and the XLA
compilations during the call (a different damage must not compile anything new).  Uses only the
public API, so the same script measures any version.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import numpy as np

import jaxpurify as jp
from benchmarks.resnet import resnet18_tree
from jaxpurify import contamination

EXACT = 1e-5


def _strided(s: int):
    def damage(bits: np.ndarray, layout) -> None:
        bits[::s] ^= np.uint32(1 << 30)

    return damage


def _lane(b: int):
    def damage(bits: np.ndarray, layout) -> None:
        raw = bits.view(np.uint8)
        raw[b::8] = 0xFF

    return damage


def _page(bits: np.ndarray, layout) -> None:
    period, page = 8192, 1024  # floats: 32 KB and 4 KB
    for start in range(0, bits.size, period):
        bits[start : start + page] = 0


def _kernels(layout):
    for start, shape in layout:
        if len(shape) >= 2:
            yield start, int(np.prod(shape[:-1])), shape[-1]


def _row(bits: np.ndarray, layout) -> None:
    big = np.float32(1e3).view(np.uint32)
    for start, F, C in _kernels(layout):
        i = F // 2
        bits[start + i * C : start + (i + 1) * C] = big


def _channel(bits: np.ndarray, layout) -> None:
    big = np.float32(1e3).view(np.uint32)
    for start, F, C in _kernels(layout):
        c = C // 3
        bits[start + c : start + F * C : C] = big


PATTERNS = {
    **{f"stride-{s}": _strided(s) for s in range(2, 17)},
    "lane-0": _lane(0),
    "lane-3": _lane(3),
    "page": _page,
    "row": _row,
    "channel": _channel,
}


def flat(tree) -> tuple[np.ndarray, list, list]:
    """The leaves end to end (tree order), their (start, shape), and their paths."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    arrays = [np.asarray(v, np.float32).ravel() for _, v in leaves]
    starts = np.cumsum([0] + [a.size for a in arrays])[:-1]
    layout = [(int(s), tuple(np.shape(v))) for s, (_, v) in zip(starts, leaves)]
    return np.concatenate(arrays), layout, [p for p, _ in leaves]


def unflat(buf: np.ndarray, tree, layout):
    treedef = jax.tree_util.tree_structure(tree)
    return jax.tree_util.tree_unflatten(
        treedef, [buf[s : s + int(np.prod(shape))].reshape(shape).copy() for s, shape in layout]
    )


def column_stats(cb, purified, deployed, report) -> dict:
    """Columns certified, certified and exact, and certified but not exact, from the packed codes
    and each group's per-column certificates."""
    got, want = cb.pack(purified), cb.pack(deployed)
    exact = wrong = 0
    for g in report.groups:
        p, w = np.asarray(got[g.name], np.float64), np.asarray(want[g.name], np.float64)
        with np.errstate(invalid="ignore"):
            err = np.nanmax(np.abs(p - w), axis=0)
        ok = err <= EXACT * np.maximum(np.nanmax(np.abs(w), axis=0), 1e-30)  # NaN error: not exact
        exact += int(np.sum(g.certified_mask & ok))
        wrong += int(np.sum(g.certified_mask & ~ok))
    return {
        "columns": report.columns,
        "certified": report.certified,
        "certified_exact": exact,
        "certified_wrong": wrong,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=float, default=1.0, help="parameter count relative to ResNet-18")
    p.add_argument("--only", nargs="*", choices=["gross-5%", "flips-1%", *PATTERNS], help="run only these")
    p.add_argument("--out", help="directory for patterns.json (nothing is written without it)")
    a = p.parse_args(argv)
    shapes = resnet18_tree(math.sqrt(a.size))
    cb = jp.Codebook.create(shapes, redundancy=4.0)
    latent = cb.encode(shapes)
    latent = jax.tree.map(lambda t: jax.random.normal(jax.random.key(t.size), t.shape), latent)
    deployed = jax.tree.map(np.asarray, cb.decode(latent))
    cb = cb.seal(deployed)
    buf, layout, _ = flat(deployed)
    columns = sum(g.columns for g in cb.groups.values())
    print(f"{buf.size:,} floats in {len(layout)} leaves; {len(cb.groups)} groups, {columns:,} columns", flush=True)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: compiles.append(event) if event.endswith("backend_compile_duration") else None
    )
    models = {
        "gross-5%": (contamination.gross_errors, {"rate": 0.05}),
        "flips-1%": (contamination.bit_flips, {"rate": 0.01}),
    }
    first = contamination.contaminate(jax.random.key(1), deployed, cb, models["gross-5%"][0], rate=0.05)
    jp.purify(first, cb)  # compile every solver shape once, outside the timings
    t0 = time.perf_counter()
    jp.purify(first, cb)
    reference = time.perf_counter() - t0
    print(f"first warm call (gross-5%, repeated): {reference:.2f} s; load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for name in a.only or [*models, *PATTERNS]:
        if name in models:
            fn, kw = models[name]
            damaged = contamination.contaminate(jax.random.key(2), deployed, cb, fn, **kw)
            damaged_buf = flat(damaged)[0]
        else:
            bits = buf.view(np.uint32).copy()
            PATTERNS[name](bits, layout)
            damaged_buf = bits.view(np.float32)
            damaged = unflat(damaged_buf, deployed, layout)
        changed = float(np.mean(damaged_buf.view(np.uint32) != buf.view(np.uint32)))
        n0 = len(compiles)
        t0 = time.perf_counter()
        purified, report = jp.purify(damaged, cb)
        seconds = time.perf_counter() - t0
        s = column_stats(cb, purified, deployed, report)
        row = {
            "pattern": name,
            "damaged_fraction": changed,
            **s,
            "certified_fraction": s["certified"] / s["columns"],
            "certified_exact_fraction": s["certified_exact"] / s["columns"],
            "ok": bool(report.ok),
            "status": report.status(),
            "seconds": seconds,
            "ratio_to_first_warm_call": seconds / reference,
            "compilations": len(compiles) - n0,
        }
        rows.append(row)
        print(
            f"{name:<10} damaged {changed:6.1%}  certified {row['certified_fraction']:6.1%}  "
            f"certified & exact {row['certified_exact_fraction']:6.1%}  wrong {s['certified_wrong']}  "
            f"ok {report.ok!s:<5}  {seconds:5.1f} s ({seconds / reference:.2f}×, {len(compiles) - n0} compiled)",
            flush=True,
        )
        if not report.ok:
            print(f"           {report.status()[:240]}", flush=True)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        info = {"size": a.size, "first_warm_call_seconds": reference, "load": os.getloadavg()[0]}
        with open(os.path.join(a.out, "patterns.json"), "w") as f:
            json.dump({**info, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
