"""Damaged containers: real checkpoints saved in each format, damaged on disk, purified by the CLI.

Two models, built as their projects write them:

* ``resnet18``: Flax's ImageNet ResNet-18 (linen, ``BatchNorm`` with ``batch_stats``, written as in
  Flax's ``examples/imagenet/models.py``), its variables dict ``{"params", "batch_stats"}`` after
  one train-mode step (so the statistics are not their init values); 46.8 MB of float32;
* ``gpt2``: a GPT-2-small-shaped parameter tree (``benchmarks.gpt2.gpt2_tree(0.1)``: one block,
  5,026 × 768 token embeddings; 11.0M parameters, 44 MB).

Each gets the default codebook (every parameter protected, K/n = 4; BatchNorm statistics are
inference state: not encoded; the seal keeps an exact copy), weights ``decode(init_latent(…))``, a
seal of the whole tree, and is saved as ``msgpack``, ``safetensors`` and ``orbax`` by
``jaxpurify.io``, and beside them as ``orbax OCDBT`` (Orbax's PyTree handler uncompressed with
OCDBT, what ``io.save`` wrote before) and ``orbax Flax docs`` (``ocp.StandardCheckpointer().save``:
OCDBT, zstd).  Damage on disk:

* ``burst``: one run of 64 random bytes per 10 KB of the checkpoint's files — *all* of them,
  metadata included (headers, ``_METADATA``, ``.zarray``, the OCDBT index);
* ``gross``: 5% of the float32 words of the payload get v ± s·u (u log-uniform in [1, 1000],
  s the weights' rms); ``exponent``: 1% get one exponent bit flipped (payload as ``benchmarks.disk``
  finds it; the compressed data files as a whole).

Then ``jaxpurify purify CHECKPOINT --codebook … --out … --report …`` runs (``cli.main`` in this
process, its stdout and stderr captured at the file-descriptor level: a traceback or
``Event loop is closed`` noise would be seen).  Per case: exit code, certified fraction, the worst
relative error max|Ŵ − W| / max|W| over the protected leaves of the written output against the
deployed ones (target 1e-5), the unprotected leaves that differ from the deployed ones in the output
(a burst in ``batch_stats`` is repaired from the seal's copy of the inference state, so: none), what
salvage did, seconds.

    nice -n 10 python -m benchmarks.containers --out /tmp/containers.json [--models resnet18 gpt2]
        [--formats …] [--damages burst gross exponent] [--seeds 20] [--other-seeds 3]

Results go only to ``--out`` (JSON) and stdout (a markdown summary).  To place payload damage in a
msgpack file it reads the arrays' offsets with salvage's own parser (``jaxpurify._salvage_msgpack``;
searching for each array's bytes fails on repeated arrays such as BatchNorm's zero biases): like
``purify_plan``, ``greedy_cost`` and ``seal_cap`` it uses an internal on purpose.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io as _io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxpurify as jp
from jaxpurify import _salvage, _salvage_msgpack, cli, io
from jaxpurify._codebook_file import fingerprint

BURST_BYTES, BURST_EVERY = 64, 10 * 1024
GROSS_RATE, FLIP_RATE = 0.05, 0.01
EXPONENT_BITS = tuple(range(23, 31))
TARGET = 1e-5
FORMATS = ("msgpack", "safetensors", "orbax", "orbax OCDBT", "orbax Flax docs")
SUFFIX = {"msgpack": ".msgpack", "safetensors": ".safetensors"}
SECRET = b"jaxpurify-benchmark-containers!!"  # fixed bytes: reproducible, and no weak-key warning


# -- Flax's ImageNet ResNet, as its example writes it ----------------------------------------------
ModuleDef = Any


class ResNetBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Any
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    stage_sizes: tuple[int, ...]
    block_cls: ModuleDef
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Any = nn.relu

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm, act=self.act)(x)
        x = jnp.mean(x, axis=(1, 2))
        return jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype)(x), self.dtype)


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)


# -- the deployed models --------------------------------------------------------------------------
def resnet18_variables() -> dict:
    model = ResNet18(num_classes=1000)
    x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
    variables = model.init(jax.random.key(0), x[:1], train=False)
    _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])  # statistics of one batch
    return jax.tree.map(np.asarray, {"params": variables["params"], "batch_stats": updated["batch_stats"]})


def gpt2_params(size: float = 0.1) -> dict:
    from benchmarks.gpt2 import gpt2_tree

    rng = np.random.default_rng(0)
    return jax.tree.map(lambda z: (0.02 * rng.standard_normal(z.shape)).astype(np.float32), gpt2_tree(size))


def deploy(tree: dict) -> tuple[jp.Codebook, dict]:
    """The default codebook of ``tree``, the deployed weights decode(init_latent), sealed."""
    codebook = jp.Codebook.create(tree, SECRET)
    decoded = jax.tree.map(np.asarray, codebook.decode(codebook.init_latent(tree)))
    deployed = dict(tree, **decoded) if "params" in decoded and "params" in tree else decoded
    return codebook.seal(deployed), deployed


MODELS = {"resnet18": resnet18_variables, "gpt2": gpt2_params}


# -- checkpoints in each format -------------------------------------------------------------------
def save(path: str, tree: dict, fmt: str) -> None:
    import orbax.checkpoint as ocp

    if fmt in ("msgpack", "safetensors", "orbax"):
        io.save(path, tree, format=fmt)
    elif fmt == "orbax OCDBT":
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False, use_ocdbt=True)) as c:
            c.save(path, args=ocp.args.PyTreeSave(tree))
    else:  # as Flax's checkpointing guide writes it
        with ocp.StandardCheckpointer() as c:
            c.save(path, tree)


def files(path: str) -> list[str]:
    """Every file of a checkpoint (hidden ones such as ``.zarray`` included)."""
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names)


Region = tuple[str, int, int]


def payload(path: str, fmt: str, deployed: dict) -> list[Region]:
    """Where the float32 words of the arrays are (the compressed data files, for Flax docs' Orbax)."""
    from benchmarks import disk

    flat = io.flatten(deployed)
    if fmt == "msgpack":
        where = _salvage_msgpack.payload_offsets(_salvage.expectation(fingerprint(deployed)))
        return [(path, a, b) for a, b in where.values()]
    if fmt == "safetensors":
        return disk._safetensors_regions(path)
    if fmt == "orbax":
        return [
            (f, 0, os.path.getsize(f))
            for p in flat
            for f in files(os.path.join(path, p.replace("/", ".")))
            if not f.endswith(".zarray")
        ]
    data = sorted(glob.glob(os.path.join(path, "ocdbt.process_*", "d", "*")) + glob.glob(os.path.join(path, "d", "*")))
    if fmt == "orbax OCDBT":
        return disk._find_arrays(data, flat, strict=False)
    return [(f, 0, os.path.getsize(f)) for f in data]


def burst(rng: np.random.Generator, path: str) -> int:
    """One 64-byte run of random bytes per 10 KB of all the checkpoint's files; returns bursts."""
    fs = files(path)
    bufs = {f: bytearray(open(f, "rb").read()) for f in fs}
    sizes = np.array([len(bufs[f]) for f in fs])
    ends = np.cumsum(sizes)
    n = max(1, int(ends[-1]) // BURST_EVERY)
    for _ in range(n):
        at = int(rng.integers(0, ends[-1]))
        i = int(np.searchsorted(ends, at, side="right"))
        off = at - int(ends[i] - sizes[i])
        stop = min(off + BURST_BYTES, int(sizes[i]))
        bufs[fs[i]][off:stop] = rng.integers(0, 256, stop - off, dtype=np.uint8).tobytes()
    _write_back(bufs)
    return n


def words(rng: np.random.Generator, regions: list[Region], kind: str, scale: float) -> int:
    """Gross errors (5%) or exponent flips (1%) on the float32 words of ``regions``."""
    bufs = {f: bytearray(open(f, "rb").read()) for f in dict.fromkeys(r[0] for r in regions)}
    hit_total = 0
    for f, a, b in regions:
        w = np.frombuffer(bufs[f], dtype="<u4", count=(b - a) // 4, offset=a).copy()
        rate = GROSS_RATE if kind == "gross" else FLIP_RATE
        hit = np.flatnonzero(rng.random(w.size) < rate)
        if kind == "gross":
            mag = np.exp(rng.uniform(0.0, np.log(1e3), hit.size)) * scale
            with np.errstate(invalid="ignore", over="ignore"):
                v = w[hit].view("<f4").astype(np.float64) + np.where(rng.random(hit.size) < 0.5, -mag, mag)
                w[hit] = v.astype("<f4").view("<u4")
        else:
            bits = np.asarray(EXPONENT_BITS, np.uint32)[rng.integers(0, len(EXPONENT_BITS), hit.size)]
            w[hit] ^= np.uint32(1) << bits
        bufs[f][a : a + 4 * w.size] = w.astype("<u4").tobytes()
        hit_total += hit.size
    _write_back(bufs)
    return hit_total


def _write_back(bufs: dict[str, bytearray]) -> None:
    for f, buf in bufs.items():
        with open(f, "wb") as fh:
            fh.write(bytes(buf))


# -- one case -------------------------------------------------------------------------------------
@contextlib.contextmanager
def captured():
    """stdout and stderr of the block, Python's and the file descriptors' (C libraries' too)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        text = {"out": _io.StringIO(), "err": _io.StringIO()}
        try:
            with contextlib.redirect_stdout(text["out"]), contextlib.redirect_stderr(text["err"]):
                yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            out.seek(0)
            err.seek(0)
            text["out"] = text["out"].getvalue() + out.read().decode(errors="replace")
            text["err"] = text["err"].getvalue() + err.read().decode(errors="replace")


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    d = np.where(np.isfinite(d), d, np.inf)
    return float(d.max() / max(float(np.abs(b).max()), 1e-30)) if d.size else 0.0


def run_case(model: str, fmt: str, damage: str, seed: int, ctx: dict, workdir: str) -> dict:
    clean = ctx["checkpoints"][fmt]
    case = os.path.join(workdir, "case" + SUFFIX.get(fmt, ""))
    out = os.path.join(workdir, "out" + SUFFIX.get(fmt, ""))
    report = os.path.join(workdir, "report.json")
    for p in (case, out, report):
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
    (shutil.copytree if os.path.isdir(clean) else shutil.copy)(clean, case)
    rng = np.random.default_rng([seed, ("burst", "gross", "exponent").index(damage), FORMATS.index(fmt)])
    hits = (
        burst(rng, case) if damage == "burst" else words(rng, payload(case, fmt, ctx["deployed"]), damage, ctx["scale"])
    )
    argv = ["purify", case, "--codebook", ctx["codebook_path"], "--out", out, "--report", report]
    t0 = time.perf_counter()
    with captured() as text:
        try:
            code = cli.main([*argv, "--no-compilation-cache"])
            escaped = None
        except BaseException as e:  # an exception out of the CLI is a failure of the CLI
            code, escaped = None, f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    err = text["err"]
    row = {
        "model": model,
        "format": fmt,
        "damage": damage,
        "seed": seed,
        "hits": int(hits),
        "exit": code,
        "seconds": seconds,
        "load_average": os.getloadavg()[0],
        "escaped": escaped,
        "traceback": "Traceback" in err or escaped is not None,
        "event_loop_noise": "Event loop is closed" in err,
        "stderr_lines": [line for line in err.splitlines() if line.strip()][:12],
    }
    if os.path.exists(report):
        with open(report) as f:
            rep = json.load(f)
        row |= {
            "certified": rep["certified"],
            "columns": rep["columns"],
            "ok": rep["ok"],
            "seal_failed": [v["path"] for v in rep["seal"] if not v["verified"]],
            "salvage": rep["salvage"],
            "wrong_codebook": rep["wrong_codebook"],
        }
    if os.path.exists(out) and code in (0, 1):
        got = io.flatten(io.load(out))
        want = io.flatten(ctx["deployed"])
        protected = set(ctx["codebook"].protected)
        errs = {p: rel_error(got[p], want[p]) for p in protected}
        row["max_rel_err"] = max(errs.values())
        row["worst_leaf"] = max(errs, key=errs.get)
        row["unprotected_changed"] = [
            p for p in want if p not in protected and not np.array_equal(got[p], want[p], equal_nan=True)
        ]
    return row


# -- the run --------------------------------------------------------------------------------------
def prepare(model: str, workdir: str, formats) -> dict:
    t0 = time.perf_counter()
    tree = MODELS[model]()
    codebook, deployed = deploy(tree)
    book = os.path.join(workdir, "codebook.json")
    codebook.save(book)
    clean = {}
    for fmt in formats:
        clean[fmt] = os.path.join(workdir, "clean-" + fmt.replace(" ", "-") + SUFFIX.get(fmt, ""))
        save(clean[fmt], deployed, fmt)
    params = [v for p, v in io.flatten(deployed).items() if p in set(codebook.protected)]
    scale = float(np.sqrt(np.mean(np.concatenate([v.ravel() for v in params]).astype(np.float64) ** 2)))
    return {
        "codebook": codebook,
        "codebook_path": book,
        "deployed": deployed,
        "checkpoints": clean,
        "scale": scale,
        "parameters": int(sum(v.size for v in params)),
        "bytes": {f: sum(os.path.getsize(x) for x in files(p)) for f, p in clean.items()},
        "prepare_seconds": time.perf_counter() - t0,
    }


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    keys = dict.fromkeys((r["model"], r["format"], r["damage"]) for r in rows)
    for model, fmt, damage in keys:
        rs = [r for r in rows if (r["model"], r["format"], r["damage"]) == (model, fmt, damage)]
        codes: dict = {}
        for r in rs:
            codes[str(r["exit"])] = codes.get(str(r["exit"]), 0) + 1
        written = [r for r in rs if "max_rel_err" in r]
        exact = [r for r in written if r["max_rel_err"] <= TARGET]
        cert = [r["certified"] / r["columns"] for r in rs if r.get("columns")]
        stats_hit = [r["seed"] for r in rs if any(p.startswith("batch_stats") for p in r.get("seal_failed", []))]
        met = [
            r
            for r in rs
            if not r["traceback"]
            and (
                (r["exit"] == 0 and r.get("max_rel_err", math.inf) <= TARGET)
                or (r["exit"] not in (0, None) and r["stderr_lines"])
            )
        ]
        out.append(
            {
                "model": model,
                "format": fmt,
                "damage": damage,
                "seeds": len(rs),
                "exit_codes": codes,
                "protected_exact": f"{len(exact)}/{len(written)}",
                "min_certified_fraction": min(cert) if cert else None,
                "worst_rel_err": max((r["max_rel_err"] for r in written), default=None),
                "salvaged": sum(r.get("salvage") is not None for r in rs),
                "batch_stats_hit_seeds": stats_hit,
                "tracebacks": sum(r["traceback"] for r in rs),
                "target_met": f"{len(met)}/{len(rs)}",
                "median_seconds": statistics.median(r["seconds"] for r in rs),
            }
        )
    return out


def markdown(summary: list[dict]) -> str:
    head = (
        "| model | format | damage | seeds | exit codes | protected leaves exact (≤ 1e-5) | worst rel. error | "
        "min certified | salvaged | batch_stats hit (seeds) | tracebacks | s (median) |"
    )
    lines = [head, "|" + "---|" * 12]
    for s in summary:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(s["exit_codes"].items()))
        err = "—" if s["worst_rel_err"] is None else f"{s['worst_rel_err']:.1e}"
        cert = "—" if s["min_certified_fraction"] is None else f"{s['min_certified_fraction']:.4f}"
        hit = ", ".join(map(str, s["batch_stats_hit_seeds"])) or "none"
        lines.append(
            f"| {s['model']} | {s['format']} | {s['damage']} | {s['seeds']} | {codes} | {s['protected_exact']} | "
            f"{err} | {cert} | {s['salvaged']} | {hit} | {s['tracebacks']} | {s['median_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.containers", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSON results (written after every case)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    ap.add_argument(
        "--damages", nargs="+", choices=["burst", "gross", "exponent"], default=["burst", "gross", "exponent"]
    )
    ap.add_argument("--seeds", type=int, default=20, help="seeds of the burst damage (default 20)")
    ap.add_argument("--other-seeds", type=int, default=3, help="seeds of gross errors and exponent flips (default 3)")
    ap.add_argument("--workdir", help="where checkpoints are written (default: a temporary directory)")
    args = ap.parse_args(argv)
    rows, meta = [], {"command": " ".join(["python -m benchmarks.containers", *(argv or sys.argv[1:])])}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxpurify-containers-", dir=args.workdir) as workdir:
        ctxs = {}
        for model in args.models:
            os.mkdir(os.path.join(workdir, model))
            ctxs[model] = prepare(model, os.path.join(workdir, model), args.formats)
            meta[model] = {k: ctxs[model][k] for k in ("parameters", "bytes", "prepare_seconds", "scale")}
            print(
                f"{model}: {ctxs[model]['parameters']} protected parameters, files {ctxs[model]['bytes']}", flush=True
            )
        # seeds outside models and formats: a run stopped early still covers every model and format
        for damage in args.damages:
            for seed in range(args.seeds if damage == "burst" else args.other_seeds):
                for model, ctx in ctxs.items():
                    for fmt in args.formats:
                        row = run_case(model, fmt, damage, seed, ctx, os.path.join(workdir, model))
                        rows.append(row)
                        print(
                            f"{model} {fmt} {damage} seed {seed}: exit {row['exit']}, "
                            f"err {row.get('max_rel_err', '—')}, {row['seconds']:.0f} s"
                            + (f", {row['stderr_lines'][-1][:150]}" if row["exit"] not in (0, 1) else ""),
                            flush=True,
                        )
                        result = {
                            **meta,
                            "rows": rows,
                            "summary": summarize(rows),
                            "seconds": time.perf_counter() - t0,
                            "load_average": os.getloadavg(),
                            "jax": jax.__version__,
                        }
                        io.write_atomic(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(markdown(summarize(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
