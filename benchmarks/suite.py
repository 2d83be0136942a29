"""The benchmark suite in one run: ``python -m benchmarks.run --out DIR [--quick]`` (or ``python -m benchmarks.suite``).

1. Peers at the target point (K = 256, K/n = 4, m = 512, 15% gross errors): ``recover`` against
   HiGHS, CVXPY (Parameter reused), scikit-learn QuantileRegressor and MPAX on the same columns.
2. Grid: K × K/n × m × ρ, ``recover`` on all m columns, each peer timed on a sample of columns of
   the same (K, n, ρ) instance (an LP's time per column does not depend on m) and extrapolated.
3. Roofline: iteration FLOP rate against the matmul peak measured in the same run; compile time
   and XLA's memory per shape.
4. End to end: ``purify`` of ResNet-18-sized trees (one process per size, for honest memory).

Writes ``OUT/{peers,grid,roofline}.json``, ``OUT/resnet_size_*.json``, ``OUT/run.json`` (per part:
the command, git commit, seconds and the load average before and after) and ``OUT/summary.md``
(``benchmarks.report``; parts not named by ``--only`` keep the previous run's JSON). ``--out`` is
required: the committed results are ``benchmarks/results``, written only when named.
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
from benchmarks import peers as P
from benchmarks import report
from benchmarks import roofline as R
from benchmarks._common import write_json
from benchmarks.problems import machine, problem, rel_err

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
    cert = np.asarray(out.certified)
    m = Y.shape[1]
    return {
        "seconds": min(ts),
        "first_call_seconds": first,
        "columns_per_s": m / min(ts),
        "certified": int(cert.sum()),
        "columns": m,
        "certified_wrong": int((cert & (err > EXACT)).sum()),
        "max_rel_err": float(err.max()),
        "exact": int((err <= EXACT).sum()),
        "iterations_median": float(np.median(np.asarray(out.iterations))),
        "iterations_max": int(np.max(np.asarray(out.iterations))),
    }


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
    print(
        f"target point: recover {ours['columns_per_s']:.0f} col/s; "
        + ", ".join(f"{k} {v['ratio']:.0f}x" for k, v in peers.items() if v.get("available")),
        flush=True,
    )
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
        peers = peers_at(
            A,
            Y,
            X,
            cols,
            dict(K=K, n=n, m=mmax, rho=rho, seed=K + ratio),
            mpax=not quick and K <= MPAX_MAX_K,
            lp=K <= PEER_MAX_K,
        )
        per_col = None
        for m in g["m"]:
            if per_col is not None and 2 * per_col * m > CELL_BUDGET:
                rows.append(
                    {
                        "K": K,
                        "n": n,
                        "ratio": ratio,
                        "m": m,
                        "rho": rho,
                        "skipped": f"predicted {2 * per_col * m:.0f} s > budget {CELL_BUDGET:.0f} s",
                    }
                )
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
            log(
                f"K={K:<5} K/n={ratio} rho={rho:<4} m={m:<5} recover {ours['columns_per_s']:9.1f} col/s "
                f"certified {ours['certified']}/{m} exact {ours['exact']}/{m}  "
                + "  ".join(f"{k.split()[0]} {v:,.0f}x" for k, v in row["ratio_to"].items())
            )
    return rows


def roofline(quick: bool, log=print) -> dict:
    shapes = (
        [(256, 64, 512), (256, 64, 1024)]
        if quick
        else [(256, 64, 512), (256, 64, 1024), (1024, 256, 512), (1024, 256, 1024), (4096, 1024, 512)]
    )
    rates, compiles, peaks = [], [], []
    for K, n, m in shapes:
        # the peak is re-measured beside each shape: on a shared machine it moves within a run
        peak = R.matmul_peak()
        r = R.iteration_rate(K, n, m)
        peak = max(peak, R.matmul_peak())
        r.update(matmul_peak_gflops=peak, fraction_of_peak=r["iteration_gflops"] / peak)
        rates.append(r)
        peaks.append(peak)
        c = R.compile_and_memory(K, n, m)
        compiles.append(c)
        log(
            f"K={K} n={n} m={m}: iteration {r['iteration_gflops']:.1f} GFLOP/s = {r['fraction_of_peak']:.0%} of "
            f"peak {peak:.1f}; compile {c['compile_seconds']:.2f} s; "
            f"XLA memory {c.get('xla_bytes_over_input') or 0:.1f}× input"
        )
    return {"matmul_peak_gflops": max(peaks), "iteration": rates, "compile": compiles}


def resnet(quick: bool, out: str, log=print) -> list[dict]:
    res = []
    for size in (0.25,) if quick else (0.25, 0.5, 1.0, 2.0):
        path = os.path.join(out, f"resnet_size_{size:g}.json")
        p = subprocess.run(
            [sys.executable, "-m", "benchmarks.resnet", "--size", str(size), "--json", path],
            capture_output=True,
            text=True,
        )
        if p.returncode:
            res.append({"size": size, "error": (p.stderr.strip().splitlines() or ["failed"])[-1]})
        else:
            with open(path) as f:
                res.append(json.load(f))
        log(f"ResNet-18 × {size:g}: {res[-1]}")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small grid, 4 sampled peer columns, ResNet ¼× only")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory (e.g. a new one; the committed results: benchmarks/results)",
    )
    p.add_argument(
        "--only",
        choices=["target", "grid", "roofline", "resnet"],
        action="append",
        help="run only these parts (repeatable)",
    )
    a = p.parse_args(argv)
    out = a.out
    os.makedirs(out, exist_ok=True)
    parts = a.only or ["target", "grid", "roofline", "resnet"]
    log = lambda s: print(s, flush=True)
    command = (
        "python -m benchmarks.run" + (" --quick" if a.quick else "") + "".join(f" --only {x}" for x in (a.only or []))
    )
    command += f" --out {a.out}"
    run = {"quick": a.quick, "machine": machine(), "parts": {}}
    old = os.path.join(out, "run.json")
    if os.path.exists(old):  # parts not run this time keep their own command and load
        with open(old) as f:
            run["parts"] = json.load(f).get("parts", {})
    steps = {
        "target": lambda: write_json(os.path.join(out, "peers.json"), target(a.quick)),
        "grid": lambda: write_json(os.path.join(out, "grid.json"), grid(a.quick, log)),
        "roofline": lambda: write_json(os.path.join(out, "roofline.json"), roofline(a.quick, log)),
        "resnet": lambda: resnet(a.quick, out, log),
    }
    for part in parts:
        meta = {
            "command": command,
            "commit": _commit(),
            "load_before": os.getloadavg(),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        t0 = time.perf_counter()
        steps[part]()
        meta.update(seconds=time.perf_counter() - t0, load_after=os.getloadavg())
        run["parts"][part] = meta
        write_json(old, run)
        log(f"{part}: {meta['seconds']:.0f} s, load {meta['load_before']} → {meta['load_after']}")
    res = report.load(out)
    text = report.summary(res)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def _commit() -> str:
    """The source's git commit, '+dirty' when jaxpurify/ has uncommitted changes; '?' outside git."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+dirty" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
