"""Peak memory that contaminating one large leaf adds (issue 10, item 8: at most 3× the leaf).

    python -m benchmarks.contamination_memory [--rows 4096] [--cols 50000] [--models gross_errors,...] [--purify]

One float32 leaf of rows × cols (781 MB by default) protected along axis 0, contaminated through
``contaminate`` (pack → the model in chunks → unpack → replace), one model after another in one
process.  For each: wall time and the peak resident memory added during the call (sampled every
2 ms; the returned tree counts, the input does not), as a multiple of the leaf's bytes.
``--purify`` then seals the clean leaf and purifies the gross-errors output the same way.  The
solver runs with its cheapest options there (one pass, one ADMM step, one polish round, one CG
step): its working set per call is fixed by ``max_entries`` and the shapes, not by the iteration
counts, so the host-side peak is what the full solve has, in minutes instead of an hour.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import jax
import numpy as np

import jaxpurify as jp
from benchmarks.resnet import PeakRSS
from jaxpurify import contamination as C

MODELS = {
    "gross_errors": dict(rate=0.05),
    "stuck_at": dict(rate=0.05),
    "bit_flips": dict(rate=0.01),
    "erasures": dict(rate=0.01),
    "dense_noise": dict(sigma=0.01),
    "zero_columns": dict(rate=0.05),
    "copy_columns": dict(rate=0.05),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=50_000)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--purify", action="store_true", help="also purify the gross-errors output (sealed)")
    a = p.parse_args(argv)
    leaf = jax.device_put(np.random.default_rng(0).standard_normal((a.rows, a.cols), dtype=np.float32))
    params = {"w": leaf}
    cb = jp.Codebook.create(params, jax.random.key(0), select=lambda path, x: 0)
    C.contaminate(
        jax.random.key(1),
        {"w": leaf[:8, :8]},
        jp.Codebook.create({"w": leaf[:8, :8]}, 0, select=lambda p_, x: 0),
        C.gross_errors,
        rate=0.1,
    )  # JAX's one-time start-up memory is not the model's
    mb = leaf.nbytes / 2**20
    rows = []
    for name in a.models.split(","):
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
        if a.purify and name == "gross_errors":
            damaged = out
        del out
    if a.purify:
        cb.seal(params)
        cheap = jp.RecoverOptions(finder_iters=1, passes=1, polish_rounds=1, max_cg=1)
        gc.collect()
        with PeakRSS() as m:
            t0 = time.perf_counter()
            purified, report = jp.purify(damaged, cb, options=cheap)
            dt = time.perf_counter() - t0
        rows.append(
            {
                "model": "purify (sealed, cheapest solver options)",
                "leaf_mb": round(mb, 1),
                "seconds": round(dt, 2),
                "peak_added_mb": round(m.added, 1),
                "peak_over_leaf": round(m.added / mb, 2),
                "calls": report.calls,
                "certified": report.certified,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
