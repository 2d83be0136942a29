"""The benchmark suite in one run: ``jaxpurify bench [--quick]`` or ``python -m benchmarks.run``.

1. Peers at the target point (K = 256, K/n = 4, m = 512, 15% gross errors): ``recover`` against
   HiGHS, CVXPY (Parameter reused), scikit-learn QuantileRegressor and MPAX on the same columns.
2. Grid: K × K/n × m × ρ, ``recover`` on all m columns, each peer timed on a sample of columns of
   the same (K, n, ρ) instance (an LP's time per column does not depend on m) and extrapolated.
3. Roofline: iteration FLOP rate against the matmul peak measured in the same run; compile time
   and XLA's memory per shape.
4. End to end: ``purify`` of ResNet-18-sized trees (one process per size, for honest memory).

Writes ``OUT/{peers,grid,roofline}.json``, ``OUT/resnet_size_*.json`` and ``OUT/summary.md``;
OUT defaults to ``benchmarks/results`` (``benchmarks/results/quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

import jaxpurify as jp
from jaxpurify.bench import peers as P
from jaxpurify.bench import roofline as R
from jaxpurify.bench.problems import machine, problem, rel_err
from jaxpurify.experiments._common import write_json

FULL = {"K": (64, 256, 1024, 4096), "ratio": (2, 4, 8), "m": (1, 64, 4096), "rho": (0.05, 0.2)}
QUICK = {"K": (64, 256), "ratio": (2, 4, 8), "m": (1, 64), "rho": (0.05, 0.2)}
EXACT = 1e-5  # relative error that counts as exact (float32 solve)


def time_recover(A, Y, X, repeat: int | None = None) -> dict:
    """recover on all columns in float32: first call (compiles) and best of ``repeat`` warm calls
    (3, or 1 when the first call took over 20 s)."""
    A32, Y32 = A.astype(np.float32), Y.astype(np.float32)
    t0 = time.perf_counter()
    out = jax.block_until_ready(jp.recover(A32, Y32))
    first = time.perf_counter() - t0
    ts = []
    for _ in range(repeat or (3 if first < 20 else 1)):
        t0 = time.perf_counter()
        out = jax.block_until_ready(jp.recover(A32, Y32))
        ts.append(time.perf_counter() - t0)
    err = rel_err(out.x, X)
    m = Y.shape[1]
    return {"seconds": min(ts), "first_call_seconds": first, "columns_per_s": m / min(ts),
            "certified": int(np.asarray(out.certified).sum()), "columns": m, "max_rel_err": float(err.max()),
            "exact": int((err <= EXACT).sum()), "iterations_median": float(np.median(np.asarray(out.iterations))),
            "iterations_max": int(np.max(np.asarray(out.iterations)))}


CELL_BUDGET = 150.0  # seconds; a recover cell predicted to take longer is skipped and said so
PEER_MAX_K = 1024  # HiGHS took 123 s per column at K=4096, n=512 and 430 s at n=1024 (measured)
MPAX_MAX_K = 256  # one dense LP per column, compiled per shape: ~1 min per cell beyond this


def _sample(K: int, quick: bool) -> int:
    return 2 if quick else (4 if K <= 256 else 1)


def peers_at(A, Y, X, cols, mpax_args=None, mpax=True, lp=True) -> dict:
    skip = {"available": False, "reason": "not run at this size (time budget)"}
    out = {name: (P.time_peer(make, A, Y, X, cols) if lp else skip) for name, make in P.PEERS.items()}
    if mpax_args is not None:
        out["MPAX"] = P.mpax_peer(**mpax_args, columns=len(cols)) if mpax else skip
    return out


def target(quick: bool) -> dict:
    K, n, m, rho = 256, 64, 512, 0.15
    A, X, Y = problem(K, n, m, rho)
    ours = time_recover(A, Y, X)
    cols = np.linspace(0, m - 1, 4 if quick else 32).astype(int)
    peers = peers_at(A, Y, X, cols, dict(K=K, n=n, m=m, rho=rho))
    for r in peers.values():
        if r.get("available"):
            r["ratio"] = ours["columns_per_s"] / r["columns_per_s"]
    return {"K": K, "n": n, "m": m, "rho": rho, "recover": ours, "peers": peers}


def grid(quick: bool, log=print) -> list[dict]:
    g = QUICK if quick else FULL
    rows = []
    for K, ratio, rho in itertools.product(g["K"], g["ratio"], g["rho"]):
        n = K // ratio
        mmax = max(g["m"])
        A, X, Y = problem(K, n, mmax, rho, seed=K + ratio)
        cols = np.linspace(0, mmax - 1, _sample(K, quick)).astype(int)
        # MPAX builds a dense (K, n + 2K) LP per column: beyond K = 1024 it exceeds the time budget
        peers = peers_at(A, Y, X, cols, dict(K=K, n=n, m=mmax, rho=rho, seed=K + ratio), mpax=not quick and K <= MPAX_MAX_K,
                         lp=K <= PEER_MAX_K)
        per_col = None
        for m in g["m"]:
            if per_col is not None and 2 * per_col * m > CELL_BUDGET:
                rows.append({"K": K, "n": n, "ratio": ratio, "m": m, "rho": rho, "skipped":
                             f"predicted {2 * per_col * m:.0f} s > budget {CELL_BUDGET:.0f} s"})
                log(f"K={K:<5} K/n={ratio} rho={rho:<4} m={m:<5} skipped: {rows[-1]['skipped']}")
                continue
            ours = time_recover(A, Y[:, :m], X[:, :m])
            if m > 1:
                per_col = ours["seconds"] / m
            row = {"K": K, "n": n, "ratio": ratio, "m": m, "rho": rho, "recover": ours, "ratio_to": {}}
            for name, r in peers.items():
                if r.get("available"):
                    row["ratio_to"][name] = ours["columns_per_s"] / r["columns_per_s"]
            row["peers"] = peers
            rows.append(row)
            log(f"K={K:<5} K/n={ratio} rho={rho:<4} m={m:<5} recover {ours['columns_per_s']:9.1f} col/s "
                f"certified {ours['certified']}/{m} exact {ours['exact']}/{m}  "
                + "  ".join(f"{k.split()[0]} {v:,.0f}x" for k, v in row["ratio_to"].items()))
    return rows


def roofline(quick: bool, log=print) -> dict:
    peak = R.matmul_peak()
    shapes = [(256, 64, 512), (256, 64, 1024)] if quick else [
        (256, 64, 512), (256, 64, 1024), (1024, 256, 512), (1024, 256, 1024), (4096, 1024, 512)]
    rates, compiles = [], []
    for K, n, m in shapes:
        r = R.iteration_rate(K, n, m)
        r["fraction_of_peak"] = r["iteration_gflops"] / peak
        rates.append(r)
        c = R.compile_and_memory(K, n, m)
        compiles.append(c)
        log(f"K={K} n={n} m={m}: iteration {r['iteration_gflops']:.1f} GFLOP/s = {r['fraction_of_peak']:.0%} of "
            f"peak {peak:.1f}; compile {c['compile_seconds']:.2f} s; XLA memory {c.get('xla_bytes_over_input') or 0:.1f}× input")
    return {"matmul_peak_gflops": peak, "iteration": rates, "compile": compiles}


def resnet(quick: bool, out: str, log=print) -> list[dict]:
    res = []
    for size in ((0.25,) if quick else (0.25, 0.5, 1.0, 2.0)):
        path = os.path.join(out, f"resnet_size_{size:g}.json")
        p = subprocess.run([sys.executable, "-m", "jaxpurify.bench.resnet", "--size", str(size), "--json", path],
                           capture_output=True, text=True)
        if p.returncode:
            res.append({"size": size, "error": (p.stderr.strip().splitlines() or ["failed"])[-1]})
        else:
            with open(path) as f:
                res.append(json.load(f))
        log(f"ResNet-18 × {size:g}: {res[-1]}")
    return res


def _peer_cell(r: dict) -> str:
    if not r.get("available"):
        return f"— ({r.get('reason', 'n/a')})"
    return f"{r['columns_per_s']:.3g} col/s, err {r['max_rel_err']:.0e}, {r['columns_timed']} cols"


def summary(res: dict) -> str:
    t = res["target"]
    L = [f"# jaxpurify benchmarks{' (quick)' if res['quick'] else ''}", "",
         f"machine: {res['machine']}; command: `{res['command']}` ({res['seconds']:.0f} s; parts not named "
         "by --only are read from the previous run's JSON in the same directory)", "",
         f"## recover vs LP peers (K={t['K']}, n={t['n']}, m={t['m']}, {t['rho']:.0%} gross errors)", "",
         "Peers are timed on a sample of columns and extrapolated (count in the table).", "",
         "| solver | columns/s | max rel err | recover / peer |", "|---|---|---|---|",
         f"| jaxpurify.recover (float32, all {t['m']} columns) | {t['recover']['columns_per_s']:.0f} | "
         f"{t['recover']['max_rel_err']:.1e} | 1 |"]
    for name, r in t["peers"].items():
        if r.get("available"):
            L.append(f"| {name}: {r['solver']} ({r['columns_timed']} columns) | {r['columns_per_s']:.1f} | "
                     f"{r['max_rel_err']:.1e} | {r['ratio']:.0f}× |")
        else:
            L.append(f"| {name} | not available: {r['reason']} | | |")
    names = list(P.PEERS) + ["MPAX"]
    L += ["", "## Grid: throughput ratio recover / peer", "",
          "Ours: all m columns, float32. Exact = relative error ≤ 1e-5 against the planted x. Where l1 "
          "recovery itself fails (ρ beyond the threshold for K/n) no solver is exact; see the HiGHS err column.", "",
          "| K | K/n | ρ | m | recover col/s | certified | exact | " + " | ".join(n.split()[0] for n in names)
          + " | HiGHS err |", "|" + "---|" * (8 + len(names))]
    for r in res["grid"]:
        if "skipped" in r:
            L.append(f"| {r['K']} | {r['ratio']} | {r['rho']} | {r['m']} | skipped: {r['skipped']} |" + " |" * (2 + len(names) + 1))
            continue
        o = r["recover"]
        ratios = [f"{r['ratio_to'][n]:,.0f}×" if n in r["ratio_to"] else "—" for n in names]
        h = r["peers"]["HiGHS (linprog)"] if r["peers"]["HiGHS (linprog)"].get("available") else {}
        L.append(f"| {r['K']} | {r['ratio']} | {r['rho']} | {r['m']} | {o['columns_per_s']:,.1f} | "
                 f"{o['certified']}/{o['columns']} | {o['exact']}/{o['columns']} | " + " | ".join(ratios)
                 + f" | {h.get('max_rel_err', float('nan')):.0e} |")
    rf = res["roofline"]
    L += ["", f"## Roofline (matmul peak {rf['matmul_peak_gflops']:.1f} GFLOP/s, float32 square, same run)", "",
          "| K | n | m | s/iteration | GFLOP/s (products) | fraction of peak | product pair alone | compile s | XLA memory / input |",
          "|---|---|---|---|---|---|---|---|---|"]
    for it, c in zip(rf["iteration"], rf["compile"]):
        L.append(f"| {it['K']} | {it['n']} | {it['m']} | {it['seconds_per_iteration']*1e3:.2f} ms | "
                 f"{it['iteration_gflops']:.1f} | {it['fraction_of_peak']:.0%} | {it['product_pair_gflops']:.1f} | "
                 f"{c['compile_seconds']:.2f} | {c.get('xla_bytes_over_input') or float('nan'):.1f}× |")
    L += ["", "## End to end: purify of a ResNet-18-sized tree, 5% gross errors", "",
          "| size | parameters | cold s (incl. compile) | warm s | peak added cold / param bytes | warm | certified |",
          "|---|---|---|---|---|---|---|"]
    for r in res["resnet"]:
        if "error" in r:
            L.append(f"| {r['size']} | failed: {r['error']} | | | | | |")
        else:
            L.append(f"| {r['size']:g}× | {r['parameters']:,} | {r['cold_seconds']:.1f} | {r['warm_seconds']:.1f} | "
                     f"{r['cold_peak_over_param_bytes']:.1f}× | {r['warm_peak_over_param_bytes']:.1f}× | {r['certified']} |")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jaxpurify bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small grid, 4 sampled peer columns, ResNet ¼× only")
    p.add_argument("--out", help="output directory (default benchmarks/results[/quick])")
    p.add_argument("--only", choices=["target", "grid", "roofline", "resnet"], action="append",
                   help="run only these parts (repeatable)")
    a = p.parse_args(argv)
    out = a.out or os.path.join("benchmarks", "results", "quick" if a.quick else "")
    os.makedirs(out, exist_ok=True)
    parts = a.only or ["target", "grid", "roofline", "resnet"]
    t0 = time.perf_counter()
    log = lambda s: print(s, flush=True)
    res = {"quick": a.quick, "machine": machine(), "command": "jaxpurify bench" + (" --quick" if a.quick else ""),
           "target": None, "grid": [], "roofline": None, "resnet": []}
    if "target" in parts:
        res["target"] = target(a.quick)
        write_json(os.path.join(out, "peers.json"), res["target"])
        log(f"target point: recover {res['target']['recover']['columns_per_s']:.0f} col/s; " + ", ".join(
            f"{k} {v['ratio']:.0f}x" for k, v in res["target"]["peers"].items() if v.get("available")))
    if "grid" in parts:
        res["grid"] = grid(a.quick, log)
        write_json(os.path.join(out, "grid.json"), res["grid"])
    if "roofline" in parts:
        res["roofline"] = roofline(a.quick, log)
        write_json(os.path.join(out, "roofline.json"), res["roofline"])
    if "resnet" in parts:
        res["resnet"] = resnet(a.quick, out, log)
    res["seconds"] = time.perf_counter() - t0
    # parts not run this time come from the last run's files, so the summary stays complete
    stored = {"target": "peers.json", "grid": "grid.json", "roofline": "roofline.json"}
    for part, name in stored.items():
        path = os.path.join(out, name)
        if part not in parts and os.path.exists(path):
            with open(path) as f:
                res[part] = json.load(f)
    if "resnet" not in parts:
        for size in ((0.25,) if a.quick else (0.25, 0.5, 1.0, 2.0)):
            path = os.path.join(out, f"resnet_size_{size:g}.json")
            if os.path.exists(path):
                with open(path) as f:
                    res["resnet"].append(json.load(f))
    if res["target"] and res["grid"] and res["roofline"] and res["resnet"]:
        res["command"] += "".join(f" --only {x}" for x in (a.only or []))
        text = summary(res)
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
