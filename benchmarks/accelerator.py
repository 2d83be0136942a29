"""What to check the first time jaxpurify meets a GPU or TPU, in one run (≤ 5 minutes on one GPU):

1. **precision**: every dot of ``recover`` and of purify's device path is lowered with
   ``precision = [HIGHEST, HIGHEST]`` (the StableHLO text, as ``tests/test_precision.py`` reads
   it), and on the device itself a float32 product A·Θ at HIGHEST is within float32 rounding of
   the float64 product (TF32 or one bfloat16 pass, what DEFAULT may give on an accelerator, is
   about 1e-3 off; that error is reported beside it);
2. **agreement with the CPU**: ``recover`` on the device and on the CPU certifies the same
   columns, and each certified column's estimates agree within the two certificates' bounds,
   ‖x̂_dev − x̂_cpu‖ ≤ (bound_dev + bound_cpu)·‖x̂_cpu‖ (``Recovery.bound``); purify's device
   path on the device and its host path on the CPU certify the same columns and their purified
   leaves agree column by column within κ(A)·(bound_dev + bound_cpu) (κ: A's condition number);
   bit-identical results pass trivially and are reported as such;
3. **speed**: purify of a ResNet-18-sized tree (5% gross errors per column) and of a
   GPT-2-small-shaped tree (1%), the device path on the default device against the host path
   on the CPU (``device=False`` under ``jax.default_device(cpu)``), first call (compilation
   included) and warm call;
4. **memory**: the device's peak bytes in use (``Device.memory_stats()``; the CPU backend reports
   none, and the process's peak resident memory added by each call is given instead).

It runs on a CPU-only machine too (then "device" is the CPU and the trees default to small sizes),
which ``tests/test_bench.py`` does at toy sizes, so the script works the first time it meets an
accelerator::

    python -m benchmarks.accelerator [--resnet-size 1] [--gpt2-size 1] [--json out.json]

Exit status 0 when every check passes, 1 otherwise (the JSON and the printed table say which).
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxpurify as jp
from benchmarks._common import report
from benchmarks.gpt2 import gpt2_tree
from benchmarks.resnet import PeakRSS, resnet18_tree
from jaxpurify import contamination as C

DOT = re.compile(r"\bstablehlo\.dot(?:_general)?\b")
HIGHEST = re.compile(r"precision = \[HIGHEST, HIGHEST\]")
# a float32 product at full precision: a few ulps times √(inner dimension); TF32 / bfloat16: ~1e-3
FLOAT32_PRODUCT_RTOL = 1e-5


def devices() -> tuple[jax.Device, jax.Device]:
    """(the default device, a CPU device): the same device on a CPU-only machine."""
    return jax.devices()[0], jax.devices("cpu")[0]


def peak_device_bytes(device: jax.Device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)))


def lowered_dots(fn, *args) -> tuple[int, int]:
    """(dots, dots without HIGHEST) in the StableHLO text of ``jit(fn)(*args)``."""
    text = jax.jit(fn).lower(*args).as_text()
    dots = [line for line in text.splitlines() if DOT.search(line)]
    return len(dots), sum(1 for d in dots if not HIGHEST.search(d))


def check_precision(device: jax.Device, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((256, 64)).astype(np.float32) / 8
    T = rng.standard_normal((64, 512)).astype(np.float32)
    params = {"w": rng.standard_normal((64, 48)).astype(np.float32), "b": np.zeros(48, np.float32)}
    cb = jp.Codebook.create(params, b"benchmarks.accelerator precision")
    with jax.default_device(device):
        n_rec, low_rec = lowered_dots(jp.recover, A, A @ T)
        n_pur, low_pur = lowered_dots(lambda p: jp.purify(p, cb, device=True)[0], params)
        a, t = jax.device_put(A, device), jax.device_put(T, device)
        exact = A.astype(np.float64) @ T.astype(np.float64)
        err = {}
        for name, prec in (("highest", jax.lax.Precision.HIGHEST), ("default", jax.lax.Precision.DEFAULT)):
            got = np.asarray(jnp.matmul(a, t, precision=prec), np.float64)
            err[name] = float(np.max(np.abs(got - exact)) / np.max(np.abs(exact)))
    return {
        "recover_dots": n_rec,
        "recover_dots_without_highest": low_rec,
        "purify_device_dots": n_pur,
        "purify_device_dots_without_highest": low_pur,
        "product_rel_err_highest": err["highest"],
        "product_rel_err_default": err["default"],
        "ok": n_rec > 0 and n_pur > 0 and low_rec == 0 and low_pur == 0 and err["highest"] <= FLOAT32_PRODUCT_RTOL,
    }


def _sparse_problem(rng, K: int, n: int, m: int, rho: float):
    A = rng.standard_normal((K, n)).astype(np.float32) / np.sqrt(n)
    Y = A @ rng.standard_normal((n, m)).astype(np.float32)
    bad = rng.random((K, m)) < rho
    Y[bad] += rng.standard_normal(int(bad.sum())).astype(np.float32) * 10
    return A, Y


def check_recover(device: jax.Device, cpu: jax.Device, seed: int = 0) -> dict:
    A, Y = _sparse_problem(np.random.default_rng(seed), 256, 64, 512, 0.1)
    got = {}
    for name, dev in (("device", device), ("cpu", cpu)):
        with jax.default_device(dev):
            r = jp.recover(jax.device_put(A, dev), jax.device_put(Y, dev))
            got[name] = [np.asarray(v) for v in (r.x, r.certified, r.bound)]
    (xd, cd, bd), (xc, cc, bc) = got["device"], got["cpu"]
    both = cd & cc
    rel = np.linalg.norm(xd - xc, axis=0) / np.maximum(np.linalg.norm(xc, axis=0), 1e-30)
    within = bool(np.all(rel[both] <= bd[both] + bc[both]))
    return {
        "columns": int(Y.shape[1]),
        "certified_device": int(cd.sum()),
        "certified_cpu": int(cc.sum()),
        "same_certified": bool(np.array_equal(cd, cc)),
        "bit_identical": bool(np.array_equal(xd.view(np.uint32), xc.view(np.uint32))),
        "max_rel_diff": float(rel[both].max()) if both.any() else None,
        "max_bound_sum": float((bd + bc)[both].max()) if both.any() else None,
        "ok": bool(np.array_equal(cd, cc)) and bool(cd.any()) and within,
    }


def build(tree, rho: float, seed: int = 1):
    """(codebook, clean, contaminated) host trees: default codebook, decode(random latent)."""
    cb = jp.Codebook.create(tree, b"benchmarks.accelerator codebook")
    latent = jax.tree.map(lambda t: jax.random.normal(jax.random.key(t.size), t.shape), cb.encode(tree))
    clean = jax.tree.map(np.asarray, cb.decode(latent))
    bad = jax.tree.map(np.asarray, C.contaminate(jax.random.key(seed), clean, cb, C.gross_errors, rate=rho))
    return cb, clean, bad


def _purify_on(device, path_device: bool, bad, cb):
    """(purified host tree, report, seconds, peak RSS added MB) of one purify on ``device``."""
    with jax.default_device(device), PeakRSS() as mem:
        t0 = time.perf_counter()
        inputs = jax.device_put(bad, device) if path_device else bad
        pur, rep = jp.purify(inputs, cb, device=path_device)
        pur = jax.tree.map(np.asarray, jax.block_until_ready(pur))
        seconds = time.perf_counter() - t0
    return pur, rep, seconds, mem.added


def _column_agreement(cb, a, b, rep_a, rep_b) -> tuple[bool, float, float]:
    """Per group: the purified columns of two runs agree within κ(A)·(bound_a + bound_b) where
    both certified.  Returns (ok, largest relative column difference, largest allowance)."""
    pa, pb = cb.pack(a), cb.pack(b)

    def largest_bound(rep, name):  # the report keeps recover's bounds per leaf: the group's worst
        found = [leaf.max_bound for leaf in rep.leaves if name in leaf.groups and leaf.max_bound is not None]
        return max(found) if found else np.inf

    ok, worst, allow_max = True, 0.0, 0.0
    for name in cb.groups:
        s = np.linalg.svd(np.asarray(cb.matrix(name), np.float64), compute_uv=False)
        allow = float(s[0] / s[-1]) * (largest_bound(rep_a, name) + largest_bound(rep_b, name))
        x, y = np.asarray(pa[name], np.float64), np.asarray(pb[name], np.float64)
        fin = np.isfinite(x) & np.isfinite(y)
        d = np.sqrt(np.sum(np.where(fin, x - y, 0) ** 2, 0)) / np.maximum(
            np.sqrt(np.sum(np.where(fin, y, 0) ** 2, 0)), 1e-30
        )
        worst, allow_max = max(worst, float(d.max())), max(allow_max, allow)
        ok &= bool(np.all(d <= allow))
    return ok, worst, allow_max


def check_purify(name: str, tree, rho: float, device: jax.Device, cpu: jax.Device) -> dict:
    cb, clean, bad = build(tree, rho)
    res = {"tree": name, "parameters": int(sum(v.size for v in jax.tree.leaves(clean))), "rho": rho}
    runs = {}
    for label, dev, on_device in (("device_path", device, True), ("cpu_host_path", cpu, False)):
        for call in ("first", "warm"):
            pur, rep, seconds, added = _purify_on(dev, on_device, bad, cb)
            res[f"{label}_{call}_seconds"] = seconds
            res[f"{label}_{call}_rss_added_mb"] = added
        res[f"{label}_certified"] = f"{rep.certified}/{rep.columns}"
        runs[label] = (pur, rep)
        res[f"{label}_peak_device_bytes"] = peak_device_bytes(dev)
    (pd, rd), (pc, rc) = runs["device_path"], runs["cpu_host_path"]
    same = rd.certified == rc.certified and rd.columns == rc.columns
    identical = all(
        np.array_equal(np.asarray(u).view(np.uint8), np.asarray(v).view(np.uint8))
        for u, v in zip(jax.tree.leaves(pd), jax.tree.leaves(pc))
    )
    agree, worst, allow = (True, 0.0, 0.0) if identical else _column_agreement(cb, pd, pc, rd, rc)
    err = max(
        float(np.max(np.abs(np.asarray(u, np.float64) - v)) / max(float(np.max(np.abs(v))), 1e-30))
        for u, v in zip(jax.tree.leaves(pd), jax.tree.leaves(clean))
    )
    res.update(
        same_certified=bool(same),
        bit_identical=bool(identical),
        max_rel_column_diff=worst,
        allowance=allow,
        max_rel_err_vs_clean=err,
        speedup_warm=res["cpu_host_path_warm_seconds"] / res["device_path_warm_seconds"],
        ok=bool(same and agree and rd.certified == rd.columns),
    )
    return res


def trees(resnet_size: float, gpt2_size: float) -> list[tuple[str, dict, float]]:
    """(name, tree of zeros, gross-error rate): the ResNet-18- and GPT-2-small-shaped trees."""
    return [
        (f"resnet18 ×{resnet_size:g}", resnet18_tree(np.sqrt(resnet_size)), 0.05),
        (f"gpt2-small ×{gpt2_size:g}", gpt2_tree(gpt2_size), 0.01),
    ]


def run(cases: list[tuple[str, dict, float]]) -> dict:
    device, cpu = devices()
    t0 = time.perf_counter()
    out = {
        "backend": jax.default_backend(),
        "device": str(device),
        "device_kind": getattr(device, "device_kind", ""),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "precision": check_precision(device),
        "recover": check_recover(device, cpu),
        "purify": [check_purify(name, tree, rho, device, cpu) for name, tree, rho in cases],
    }
    out["seconds"] = time.perf_counter() - t0
    out["ok"] = out["precision"]["ok"] and out["recover"]["ok"] and all(p["ok"] for p in out["purify"])
    return out


def table(res: dict) -> str:
    p, r = res["precision"], res["recover"]
    lines = [
        f"backend {res['backend']} ({res['device_kind'] or res['device']}, {res['devices']} device(s)), "
        f"jax {res['jax']}, {res['seconds']:.0f} s",
        f"precision: {p['recover_dots']} recover dots / {p['purify_device_dots']} purify dots, "
        f"{p['recover_dots_without_highest'] + p['purify_device_dots_without_highest']} without HIGHEST; "
        f"A·Θ rel. error HIGHEST {p['product_rel_err_highest']:.1e}, DEFAULT {p['product_rel_err_default']:.1e}"
        f" -> {'ok' if p['ok'] else 'FAILED'}",
        f"recover vs CPU: certified {r['certified_device']} / {r['certified_cpu']} of {r['columns']}, "
        f"bit-identical {r['bit_identical']}, max rel. diff {r['max_rel_diff']} (bounds {r['max_bound_sum']})"
        f" -> {'ok' if r['ok'] else 'FAILED'}",
        "",
        "| tree | parameters | device path first / warm s | CPU host path first / warm s | warm speed-up | "
        "peak device bytes | certified (device, cpu) | bit-identical | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for q in res["purify"]:
        peak = q["device_path_peak_device_bytes"]
        memory = f"n/a (RSS +{q['device_path_first_rss_added_mb']:.0f} MB)" if peak is None else f"{peak:,}"
        lines.append(
            f"| {q['tree']} | {q['parameters']:,} | {q['device_path_first_seconds']:.1f} / "
            f"{q['device_path_warm_seconds']:.1f} | {q['cpu_host_path_first_seconds']:.1f} / "
            f"{q['cpu_host_path_warm_seconds']:.1f} | {q['speedup_warm']:.2f}× | "
            f"{memory} | "
            f"{q['device_path_certified']}, {q['cpu_host_path_certified']} | {q['bit_identical']} | "
            f"{'ok' if q['ok'] else 'FAILED'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_cpu = jax.default_backend() == "cpu"
    p.add_argument(
        "--resnet-size", type=float, default=0.05 if on_cpu else 1.0, help="parameters relative to ResNet-18"
    )
    p.add_argument(
        "--gpt2-size", type=float, default=0.01 if on_cpu else 1.0, help="blocks and embedding rows of GPT-2 small"
    )
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    res = run(trees(a.resnet_size, a.gpt2_size))
    report(table(res), res, a.json)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
