"""Peak memory that contaminating and purifying one large leaf adds (target: at most 3× the leaf).

    python -m benchmarks.contamination_memory [--rows 4096] [--cols 50000] [--models gross_errors,...]
        [--purify] [--layouts axis0,default,interleave,pooled] [--cold] [--out FILE.json]

One float32 leaf of rows × cols (781 MB by default) protected along axis 0, contaminated through
``contaminate`` (pack → the model in chunks → unpack → replace), one model after another in one
process.  For each: wall time and the peak resident memory added during the call (sampled every
2 ms; the returned tree counts, the input does not), as a multiple of the leaf's bytes.

``--purify`` then purifies the same number of float32 entries once per layout that
``Codebook.create`` can choose, each sealed, with 5% gross errors, side by side:

* ``axis0``: a 512 × (rows·cols/512) leaf along axis 0 (the single-axis layout, K = 512);
* ``default``: a (rows·cols/4096) × 4096 leaf in the default layout (row blocks of ≤ 512 rows);
* ``interleave``: an F × 4095 leaf (F odd), ``select`` → ``"interleave"``: m = 4096 coprime
  columns, row blocks of ≤ 512;
* ``pooled``: the entries as one 1-D leaf, pooled (K = 512 rows).

The solver runs with its cheapest options there (one pass, one ADMM step, one polish round, one CG
step): its working set per call is fixed by ``max_entries`` and the shapes, not by the iteration
counts, so the host-side peak is what the full solve has, in minutes instead of an hour.  The
solver's programs for each layout are compiled before the measured call (on a smaller leaf whose
calls have the same shapes — which only purify's private plan, ``jaxpurify._plan``, can tell — else
by purifying the leaf once), so that the peak is the leaf's and not
the one-time compilation's (``--cold``: the first call).  ``--out`` writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import jax
import numpy as np

import jaxpurify as jp
from benchmarks._common import dump_json
from benchmarks.resnet import PeakRSS
from jaxpurify import contamination as C
from jaxpurify._plan import plan

MODELS = {
    "gross_errors": dict(rate=0.05),
    "stuck_at": dict(rate=0.05),
    "bit_flips": dict(rate=0.01),
    "erasures": dict(rate=0.01),
    "dense_noise": dict(sigma=0.01),
    "zero_columns": dict(rate=0.05),
    "copy_columns": dict(rate=0.05),
}


MAX_ENTRIES = 1 << 21  # purify's default
CHEAP = dict(finder_iters=1, passes=1, polish_rounds=1, max_cg=1)
LAYOUTS = ("axis0", "default", "interleave", "pooled")


def layout_case(layout: str, rows: int, cols: int):
    """(shape, select, warm-up shape) of the leaf for one layout: about rows × cols float32 entries,
    K ≤ 512 in every layout; the warm-up leaf's solver calls have the same shapes."""
    n = rows * cols
    odd = (n // 4095) | 1  # interleave: m = 4096 columns (coprime to 4095 and to an odd fan-in)
    return {
        "axis0": ((512, n // 512), lambda path, x: 0, (512, 8192)),
        "default": ((n // 4096, 4096), None, (1000, 4096)),
        "interleave": ((odd, 4095), lambda path, x: "interleave", (1021, 4095)),
        "pooled": ((n,), None, (512 * 8192,)),
    }[layout]


def _warm(small, select, damaged, cb) -> None:
    """Compile the layout's solver programs: on the small leaf when its calls have the same shapes
    (they depend on the whole layout), else on the leaf itself."""
    leaf = {"w": np.random.default_rng(3).standard_normal(small, dtype=np.float32)}
    tiny = jp.Codebook.create(leaf, select=select)
    shapes = lambda c: {call.shape for call in plan(c.groups.values(), MAX_ENTRIES)}  # noqa: E731
    if shapes(cb) <= shapes(tiny):
        damaged, cb = leaf, tiny.seal(leaf)
    jp.purify(damaged, cb, options=jp.RecoverOptions(**CHEAP))


def purify_row(layout: str, rows: int, cols: int, cold: bool) -> dict:
    shape, select, small = layout_case(layout, rows, cols)
    clean = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    damaged = clean.copy()
    hit = np.random.default_rng(1).random(shape) < 0.05
    damaged[hit] += 100.0
    del hit
    cb = jp.Codebook.create({"w": clean}, select=select)
    cb = cb.seal({"w": jax.device_put(clean)})
    del clean
    damaged = {"w": jax.device_put(damaged)}
    mb = damaged["w"].nbytes / 2**20
    groups = list(cb.groups.values())
    if not cold:
        _warm(small, select, damaged, cb)
    gc.collect()
    with PeakRSS() as m:
        t0 = time.perf_counter()
        purified, report = jp.purify(damaged, cb, options=jp.RecoverOptions(**CHEAP))
        jax.block_until_ready(purified)
        dt = time.perf_counter() - t0
    del purified
    return {
        "model": f"purify {layout} (sealed, cheapest solver options)",
        "layout": layout,
        "shape": list(shape),
        "groups": len(groups),
        "K": sorted({g.K for g in groups}),
        "leaf_mb": round(mb, 1),
        "seconds": round(dt, 2),
        "peak_added_mb": round(m.added, 1),
        "peak_over_leaf": round(m.added / mb, 2),
        "calls": report.calls,
        "warm": not cold,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=50_000)
    p.add_argument("--models", default=",".join(MODELS), help="contamination models ('' for none)")
    p.add_argument("--purify", action="store_true", help="also purify, once per layout (sealed)")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help=f"layouts for --purify, of {', '.join(LAYOUTS)}")
    p.add_argument("--cold", action="store_true", help="do not compile the solver first (first call measured)")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    layouts = [x for x in a.layouts.split(",") if x]
    unknown = [x for x in layouts if x not in LAYOUTS]
    if unknown:
        p.error(f"unknown layout {unknown[0]!r}; choose from {', '.join(LAYOUTS)}")
    rows = []
    names = [x for x in a.models.split(",") if x]
    if names:
        leaf = jax.device_put(np.random.default_rng(0).standard_normal((a.rows, a.cols), dtype=np.float32))
        params = {"w": leaf}
        cb = jp.Codebook.create(params, select=lambda path, x: 0)
        small = {"w": leaf[:8, :8]}
        C.contaminate(
            jax.random.key(1), small, jp.Codebook.create(small, select=lambda p_, x: 0), C.gross_errors, rate=0.1
        )  # JAX's one-time start-up memory is not the model's
        mb = leaf.nbytes / 2**20
        for name in names:
            gc.collect()
            with PeakRSS() as m:
                t0 = time.perf_counter()
                out = C.contaminate(jax.random.key(2), params, cb, getattr(C, name), **MODELS[name])
                jax.block_until_ready(out)
                dt = time.perf_counter() - t0
            rows.append(
                {
                    "model": name,
                    "leaf_mb": round(mb, 1),
                    "seconds": round(dt, 2),
                    "peak_added_mb": round(m.added, 1),
                    "peak_over_leaf": round(m.added / mb, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            del out
        del leaf, params, cb
    if a.purify:
        for layout in layouts:
            gc.collect()
            rows.append(purify_row(layout, a.rows, a.cols, a.cold))
            print(json.dumps(rows[-1]), flush=True)
        print(f"\n{'layout':<11} {'groups':>6} {'K':>12} {'calls':>5} {'seconds':>8} {'peak MB':>8} {'× leaf':>7}")
        for r in rows:
            if "layout" in r:
                ks = "/".join(map(str, r["K"]))
                print(
                    f"{r['layout']:<11} {r['groups']:>6} {ks:>12} {r['calls']:>5} {r['seconds']:>8} "
                    f"{r['peak_added_mb']:>8} {r['peak_over_leaf']:>7}"
                )
    if a.out:
        dump_json(a.out, rows)
    return rows


if __name__ == "__main__":
    main()
