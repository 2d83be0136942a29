"""Tables from the suite's JSON results: ``OUT/summary.md`` and the generated blocks of
``benchmarks/README.md``, so that replacing the figures after a run is mechanical.

    python -m benchmarks.report --results benchmarks/results [--baseline benchmarks/results/v1]
                                     [--readme benchmarks/README.md]

Every table states the command that made it and the load average before and after (from
``OUT/run.json``, written by the suite).  A ``--baseline`` directory (an earlier run's JSON, e.g.
solver v1's) adds its figures in columns labelled with its name, never as current figures.  In
the README, only the blocks between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` are
rewritten; a missing marker is an error, not a silent skip.
"""

from __future__ import annotations

import argparse
import json
import os
import re

PEERS = ("HiGHS (linprog)", "CVXPY (Parameter reused)", "scikit-learn QuantileRegressor", "MPAX")
HIGHS = PEERS[0]
SIZES = (0.25, 0.5, 1.0, 2.0)
PART_FILES = {"target": "peers.json", "grid": "grid.json", "roofline": "roofline.json"}


def load(directory: str) -> dict:
    """The JSON of one results directory: {"run", "target", "grid", "roofline", "resnet", "solver"};
    a part that is not there is None (or [] for the lists)."""

    def read(name):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    res = {part: read(name) for part, name in PART_FILES.items()}
    res["grid"] = res["grid"] or []
    res["run"] = read("run.json") or {}
    res["solver"] = read("solver.json")
    res["changes"] = read("changes.json")
    res["resnet"] = [r for r in (read(f"resnet_size_{s:g}.json") for s in SIZES) if r is not None]
    res["name"] = os.path.basename(os.path.normpath(directory))
    return res


def provenance(res: dict, part: str) -> str:
    """'command (commit, load before → after, N s)' for one part of a run, as far as recorded."""
    p = res["run"].get("parts", {}).get(part)
    if not p:
        return "command and load not recorded"
    load = lambda v: "/".join(f"{x:.1f}" for x in v)
    said = [f"commit {p.get('commit', '?')}"] + [p[k] for k in ("started",) if k in p]
    said += [f"{p['seconds']:.0f} s"] if "seconds" in p else []
    said += (
        [f"load average 1/5/15 min {load(p['load_before'])} before → {load(p['load_after'])} after"]
        if "load_before" in p
        else ["load not recorded"]
    )
    return f"`{p['command']}` ({', '.join(said)})"


def _cells(grid: list[dict]) -> dict:
    return {(r["K"], r["ratio"], r["rho"], r["m"]): r for r in grid}


def _rng(vals, fmt="{:,.0f}") -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    lo, hi = min(vals), max(vals)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def _wrong(o: dict):
    return o.get("certified_wrong")  # v1 runs did not record it


# -- tables ---------------------------------------------------------------------------------------


def target_table(res: dict, base: dict | None) -> list[str]:
    t, b = res["target"], (base or {}).get("target")
    bn = base["name"] if base else None
    L = [
        f"K={t['K']}, n={t['n']}, m={t['m']}, {t['rho']:.0%} gross errors; peers timed on a sample of columns and "
        f"extrapolated. {provenance(res, 'target')}",
        "",
        "| solver | columns/s | max rel err | recover / peer |" + (f" {bn}: recover / peer |" if b else ""),
        "|---|---|---|---|" + ("---|" if b else ""),
    ]
    o = t["recover"]
    L.append(
        f"| jaxpurify.recover (float32, all {t['m']} columns) | {o['columns_per_s']:,.0f} "
        f"| {o['max_rel_err']:.1e} | 1 |" + (f" {bn}: {b['recover']['columns_per_s']:,.0f} col/s |" if b else "")
    )
    for name, r in t["peers"].items():
        old = (b or {}).get("peers", {}).get(name, {})
        tail = (f" {old['ratio']:,.0f}× |" if old.get("available") else " — |") if b else ""
        if r.get("available"):
            L.append(
                f"| {name}: {r['solver']} ({r['columns_timed']} columns) | {r['columns_per_s']:.1f} | "
                f"{r['max_rel_err']:.1e} | {r['ratio']:,.0f}× |" + tail
            )
        else:
            L.append(f"| {name} | not available: {r['reason']} | | |" + tail)
    return L


def grid_table(res: dict, base: dict | None) -> list[str]:
    old = _cells(base["grid"]) if base else {}
    bn = base["name"] if base else None
    L = [
        f"Ours: all m columns, float32. Exact = relative error ≤ 1e-5 against the planted x. Where l1 recovery "
        f"itself fails no solver is exact; see the HiGHS err column. {provenance(res, 'grid')}",
        "",
        "| K | K/n | ρ | m | recover col/s | certified | exact | certified, not exact | "
        + " | ".join(n.split()[0] for n in PEERS)
        + " | HiGHS err |"
        + (f" {bn} col/s | now / {bn} |" if base else ""),
        "|" + "---|" * (9 + len(PEERS) + (2 if base else 0)),
    ]
    for r in res["grid"]:
        key = (r["K"], r["ratio"], r["rho"], r["m"])
        head = f"| {r['K']} | {r['ratio']} | {r['rho']} | {r['m']} |"
        b = old.get(key, {}).get("recover")
        tail = (f" {b['columns_per_s']:,.1f} |" if b else " — |") if base else ""
        if "skipped" in r:
            L.append(head + f" skipped: {r['skipped']} |" + " |" * (3 + len(PEERS) + 1) + tail + (" |" if base else ""))
            continue
        o = r["recover"]
        ratios = [f"{r['ratio_to'][n]:,.0f}×" if n in r["ratio_to"] else "—" for n in PEERS]
        h = r["peers"].get(HIGHS, {})
        herr = f"{h['max_rel_err']:.0e}" if h.get("available") else "—"
        w = _wrong(o)
        L.append(
            head + f" {o['columns_per_s']:,.1f} | {o['certified']}/{o['columns']} | {o['exact']}/{o['columns']} | "
            f"{'—' if w is None else w} | " + " | ".join(ratios) + f" | {herr} |"
        )
        if base:
            L[-1] += tail + (f" {o['columns_per_s'] / b['columns_per_s']:.2f}× |" if b else " — |")
    return L


def grid_by_k(res: dict, base: dict | None) -> list[str]:
    """Per K: recover / HiGHS over the cells at each m, exactness, slowest cell; v1 beside it."""
    bn = base["name"] if base else None
    ms = sorted({r["m"] for r in res["grid"]})
    L = [
        "| K | "
        + " | ".join(f"recover / HiGHS, m={m}" for m in ms)
        + (f" | {bn}: recover / HiGHS, m={ms[-1]}" if base else "")
        + " | certified / exact / certified-not-exact, all cells | slowest cell (K/n, ρ, m: col/s) | skipped |",
        "|" + "---|" * (len(ms) + 4 + (1 if base else 0)),
    ]
    for K in sorted({r["K"] for r in res["grid"]}):
        rows = [r for r in res["grid"] if r["K"] == K]
        run = [r for r in rows if "skipped" not in r]
        ratio = lambda rs, m: _rng([r["ratio_to"].get(HIGHS) for r in rs if r["m"] == m and "skipped" not in r])
        cert = sum(r["recover"]["certified"] for r in run)
        exact = sum(r["recover"]["exact"] for r in run)
        cols = sum(r["recover"]["columns"] for r in run)
        wrong = [_wrong(r["recover"]) for r in run]
        wrong = "—" if None in wrong else str(sum(wrong))
        slow = min((r for r in run if r["m"] > 1), key=lambda r: r["recover"]["columns_per_s"], default=None)
        slow = f"{slow['ratio']}, {slow['rho']}, {slow['m']}: {slow['recover']['columns_per_s']:,.1f}" if slow else "—"
        brows = [r for r in base["grid"] if r["K"] == K] if base else []
        x = lambda r: r + "×" * (r != "—")
        L.append(
            f"| {K} | "
            + " | ".join(x(ratio(run, m)) for m in ms)
            + (f" | {x(ratio(brows, ms[-1]))}" if base else "")
            + f" | {cert:,} / {exact:,} / {wrong} of {cols:,} | {slow} | {len(rows) - len(run)} |"
        )
    return L


def roofline_table(res: dict, base: dict | None) -> list[str]:
    rf, b = res["roofline"], (base or {}).get("roofline")
    bn = base["name"] if base else None
    old = {(r["K"], r["n"], r["m"]): (r, c) for r, c in zip(b["iteration"], b["compile"])} if b else {}
    L = [
        f"Matmul peak {rf['matmul_peak_gflops']:.1f} GFLOP/s (float32 square, best in the run; each row's fraction is "
        f"of the peak measured beside it where recorded). {provenance(res, 'roofline')}",
        "",
        "| K | n | m | s/iteration | GFLOP/s (products) | matmul peak | fraction of peak | product pair alone | "
        "compile s | XLA memory / input |" + (f" {bn}: fraction of peak, compile s |" if b else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if b else ""),
    ]
    for it, c in zip(rf["iteration"], rf["compile"]):
        o = old.get((it["K"], it["n"], it["m"]))
        L.append(
            f"| {it['K']} | {it['n']} | {it['m']} | {it['seconds_per_iteration'] * 1e3:.2f} ms | "
            f"{it['iteration_gflops']:.1f} | {it.get('matmul_peak_gflops', rf['matmul_peak_gflops']):.1f} | "
            f"{it['fraction_of_peak']:.0%} | {it['product_pair_gflops']:.1f} | "
            f"{c['compile_seconds']:.2f} | {c.get('xla_bytes_over_input') or float('nan'):.1f}× |"
            + ((f" {o[0]['fraction_of_peak']:.0%}, {o[1]['compile_seconds']:.2f} |" if o else " — |") if b else "")
        )
    return L


def resnet_table(res: dict, base: dict | None) -> list[str]:
    old = {r["size"]: r for r in (base or {}).get("resnet", []) if "error" not in r}
    bn = base["name"] if base else None
    L = [
        f"5% gross errors, one process per size. {provenance(res, 'resnet')}",
        "",
        "| size | parameters | cold s (incl. compile) | warm s | peak added cold / param bytes | warm | certified |"
        + (f" {bn}: cold s, warm s |" if base else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if base else ""),
    ]
    for r in res["resnet"]:
        o = old.get(r["size"])
        tail = (f" {o['cold_seconds']:.1f}, {o['warm_seconds']:.1f} |" if o else " — |") if base else ""
        if "error" in r:
            L.append(f"| {r['size']} | failed: {r['error']} | | | | | |" + tail)
        else:
            L.append(
                f"| {r['size']:g}× | {r['parameters']:,} | {r['cold_seconds']:.1f} | {r['warm_seconds']:.1f} | "
                f"{r['cold_peak_over_param_bytes']:.1f}× | {r['warm_peak_over_param_bytes']:.1f}× | {r['certified']} |"
                + tail
            )
    return L


def compare_table(res: dict, base: dict) -> list[str]:
    """The same figures of two runs side by side: what the changes between them gave, in sum."""
    bn, now_cells, old_cells = base["name"], _cells(res["grid"]), _cells(base["grid"])
    L = [f"| figure | {bn} | now |", "|---|---|---|"]
    t, b = res.get("target"), base.get("target")
    if t and b:
        L.append(
            f"| target point: recover col/s | {b['recover']['columns_per_s']:,.0f} "
            f"| {t['recover']['columns_per_s']:,.0f} |"
        )
        h_old, h_now = b["peers"].get(HIGHS, {}), t["peers"].get(HIGHS, {})
        if h_old.get("available") and h_now.get("available"):
            L.append(f"| target point: recover / HiGHS | {h_old['ratio']:,.0f}× | {h_now['ratio']:,.0f}× |")
    both = [
        (now_cells[k], old_cells[k])
        for k in now_cells
        if k in old_cells and "skipped" not in now_cells[k] and "skipped" not in old_cells[k]
    ]
    if both:
        for m in sorted({n["m"] for n, _ in both}):
            sp = sorted(n["recover"]["columns_per_s"] / o["recover"]["columns_per_s"] for n, o in both if n["m"] == m)
            L.append(
                f"| grid, m={m}: recover col/s now / {bn}, {len(sp)} cells (min, median, max) | 1 | "
                f"{sp[0]:.2f}×, {sp[len(sp) // 2]:.2f}×, {sp[-1]:.2f}× |"
            )
        hard = [(n, o) for n, o in both if n["ratio"] == 2 and n["rho"] == 0.2]
        if hard:
            cnt = lambda rs, i: sum(p[i]["recover"]["certified"] for p in rs)
            cols = sum(n["recover"]["columns"] for n, _ in hard)
            L.append(
                f"| grid, K/n=2, ρ=0.2 (past the l1 boundary): certified columns, {len(hard)} cells | "
                f"{cnt(hard, 1):,} of {cols:,} | {cnt(hard, 0):,} of {cols:,} |"
            )
    skipped = lambda g: sum("skipped" in r for r in g)
    if res["grid"] and base["grid"]:
        L.append(f"| grid: cells skipped (predicted > 150 s) | {skipped(base['grid'])} | {skipped(res['grid'])} |")
    rf, rb = res.get("roofline"), base.get("roofline")
    if rf and rb:
        frac = lambda r: _rng([i["fraction_of_peak"] * 100 for i in r["iteration"]], "{:.0f}") + "%"
        comp = lambda r: _rng([c["compile_seconds"] for c in r["compile"]], "{:.1f}") + " s"
        L.append(f"| roofline: iteration rate / matmul peak | {frac(rb)} | {frac(rf)} |")
        L.append(f"| roofline: compile per shape | {comp(rb)} | {comp(rf)} |")
    old_r = {r["size"]: r for r in base.get("resnet", []) if "error" not in r}
    for r in res.get("resnet", []):
        o = old_r.get(r["size"])
        if o and "error" not in r:
            fig = lambda x: (
                f"{x['cold_seconds']:.1f} / {x['warm_seconds']:.1f} / "
                f"{x['warm_peak_over_param_bytes']:.1f}× / {x['certified']}"
            )
            L.append(
                f"| ResNet-18 × {r['size']:g}: cold s / warm s / warm peak ÷ parameter bytes / columns certified "
                f"(the layouts differ) | {fig(o)} | {fig(r)} |"
            )
    return L


def summary(res: dict, base: dict | None = None) -> str:
    """The whole of ``summary.md``: every part that is present, each with its command and load."""
    L = [
        f"# jaxpurify benchmarks{' (quick)' if res['run'].get('quick') else ''}",
        "",
        f"machine: {res['run'].get('machine', 'not recorded')}. Generated by `python -m benchmarks.report` "
        "from the JSON in this directory"
        + (f"; columns named {base['name']} are that earlier run's figures, for comparison only" if base else "")
        + ".",
    ]
    parts = [
        ("target", "recover vs LP peers", target_table),
        ("grid", "Grid: throughput ratio recover / peer", grid_table),
        ("grid", "Grid by K", grid_by_k),
        ("roofline", "Roofline", roofline_table),
        ("resnet", "End to end: purify of a ResNet-18-sized tree", resnet_table),
    ]
    if base:
        L += ["", f"## Compared with {base['name']}", ""] + compare_table(res, base)
    for part, title, table in parts:
        if res[part]:
            L += ["", f"## {title}", ""] + table(res, base)
    return "\n".join(L) + "\n"


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each ``<!-- bench:NAME -->…<!-- /bench:NAME -->`` block's inside replaced."""
    for name, body in blocks.items():
        pat = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
        if not pat.search(text):
            raise ValueError(f"no block <!-- bench:{name} --> … <!-- /bench:{name} --> in the README")
        text = pat.sub(lambda m, body=body: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text, count=1)
    return text


def readme_blocks(res: dict, base: dict | None) -> dict[str, str]:
    blocks = {}
    if res["target"]:
        blocks["target"] = "\n".join(target_table(res, base))
    if res["grid"]:
        blocks["grid"] = "\n".join(grid_by_k(res, base))
    if res["roofline"]:
        blocks["roofline"] = "\n".join(roofline_table(res, base))
    if res["resnet"]:
        blocks["resnet"] = "\n".join(resnet_table(res, base))
    if base:
        blocks["compare"] = "\n".join(compare_table(res, base))
    if res["changes"]:
        blocks["changes"] = changes_text(res["changes"])
    return blocks


def changes_text(ch: dict) -> str:
    """``changes.json`` (``python -m benchmarks.changes``) as its table, with command and load."""
    from benchmarks.changes import table

    load = lambda v: "/".join(f"{x:.1f}" for x in v)
    return (
        f"`{ch['command']}` (K = 256, m = 512; best of 3 warm calls; load average 1/5/15 min "
        f"{load(ch['load_before'])} before → {load(ch['load_after'])} after)\n\n" + table(ch["rows"])
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, metavar="DIR", help="a results directory; its summary.md is rewritten")
    p.add_argument("--baseline", help="an earlier run's results directory, shown beside (e.g. benchmarks/results/v1)")
    p.add_argument("--readme", help="rewrite this file's <!-- bench:NAME --> blocks (e.g. benchmarks/README.md)")
    a = p.parse_args(argv)
    res = load(a.results)
    base = load(a.baseline) if a.baseline else None
    text = summary(res, base)
    with open(os.path.join(a.results, "summary.md"), "w") as f:
        f.write(text)
    if a.readme:
        with open(a.readme) as f:
            old = f.read()
        new = replace_blocks(old, readme_blocks(res, base))
        with open(a.readme, "w") as f:
            f.write(new)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
