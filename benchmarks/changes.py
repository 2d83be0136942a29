"""What each of solver v2's choices gives, measured by switching it off through ``RecoverOptions``
(public API), side by side in one process on the same columns:

* ``default``: ``recover`` as shipped;
* ``no trimming``: ``trim=False`` (later passes do not try "drop the largest residuals, refit");
* ``one pass``: ``passes=1`` (no later passes on the columns the first one did not certify);
* ``long later passes``: ``retry_iters=30`` (the later passes run ADMM as long as the first);
* ``long finder, one pass``: ``finder_iters=2000, passes=1, trim=False``: ADMM run to its
  tolerance before the polish, close to how v1 found outliers (v1 also ran up to 3 full-width
  passes; this is not v1, only its finder strategy).

Points: K = 256, m = 512 columns, gross errors log-uniform in 1–1000 × the weight scale, at the
target point (K/n = 4, 15%) and past the l1 boundary (K/n = 2, ρ = 0.20 and 0.25).  Reports
best-of-``--repeat`` warm time, columns exact (relative error ≤ 1e-5) and certified, and columns
certified but not exact (must be 0), with the load average.

    python -m benchmarks.changes [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import os

import jax.numpy as jnp
import numpy as np

import jaxpurify as jp
from benchmarks._common import report
from benchmarks.problems import machine, problem, rel_err
from benchmarks.roofline import best_of

EXACT = 1e-5
VARIANTS = {
    "default": {},
    "no trimming": {"trim": False},
    "one pass": {"passes": 1},
    "long later passes": {"retry_iters": 30},
    "long finder, one pass": {"finder_iters": 2000, "passes": 1, "trim": False},
}
POINTS = ((4, 0.15), (2, 0.20), (2, 0.25))  # (K/n, ρ) at K = 256, m = 512


def measure(ratio: int, rho: float, repeat: int) -> list[dict]:
    """Every variant on the same (K=256, n=256/ratio, m=512, ρ) columns."""
    A, X, Y = problem(256, 256 // ratio, 512, rho)
    A32, Y32 = jnp.asarray(A, jnp.float32), jnp.asarray(Y, jnp.float32)
    rows = []
    for name, change in VARIANTS.items():
        opts = jp.RecoverOptions().replace(**change)
        t = best_of(lambda opts=opts: jp.recover(A32, Y32, opts).x, repeat=repeat)
        out = jp.recover(A32, Y32, opts)
        err, cert = rel_err(out.x, X), np.asarray(out.certified)
        rows.append(
            {
                "K/n": ratio,
                "rho": rho,
                "variant": name,
                "options": change,
                "seconds": t,
                "exact_certified": int((cert & (err <= EXACT)).sum()),
                "columns": 512,
                "certified_wrong": int((cert & (err > EXACT)).sum()),
                "load": [round(x, 2) for x in os.getloadavg()],
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per variant, one column pair per point, time relative to the default."""
    pts = list(dict.fromkeys((r["K/n"], r["rho"]) for r in rows))
    by = {(r["variant"], r["K/n"], r["rho"]): r for r in rows}
    L = [
        "| variant | " + " | ".join(f"K/n={k}, ρ={p}: exact & certified, time (× default)" for k, p in pts) + " |",
        "|---|" + "---|" * len(pts),
    ]
    for name in VARIANTS:
        cells = []
        for k, p in pts:
            r, d = by[(name, k, p)], by[("default", k, p)]
            wrong = f", {r['certified_wrong']} certified wrong" if r["certified_wrong"] else ""
            cells.append(
                f"{r['exact_certified']}/{r['columns']}{wrong}, {r['seconds'] * 1e3:.0f} ms "
                f"({r['seconds'] / d['seconds']:.2f}×)"
            )
        opt = ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items())
        L.append(f"| {name}{f' (`{opt}`)' if opt else ''} | " + " | ".join(cells) + " |")
    return "\n".join(L)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args(argv)
    before = os.getloadavg()
    rows = [r for ratio, rho in POINTS for r in measure(ratio, rho, a.repeat)]
    res = {
        "machine": machine(),
        "command": "python -m benchmarks.changes" + (f" --repeat {a.repeat}" if a.repeat != 3 else ""),
        "load_before": before,
        "load_after": os.getloadavg(),
        "rows": rows,
    }
    load = lambda v: "/".join(f"{x:.1f}" for x in v)
    print(f"{res['machine']}; load average 1/5/15 min {load(before)} → {load(res['load_after'])}")
    report(table(rows), res, a.json)
    return res


if __name__ == "__main__":
    main()
