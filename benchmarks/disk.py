"""Damage on disk: a user's CNN saved in each checkpoint format, bytes edited, loaded, purified.

A CNN written as a Flax user would (Conv → Conv → Dense → Dense(10), nothing about jaxpurify
inside) is trained through the default codebook on the digits, sealed and saved with
:mod:`jaxpurify.io` as an Orbax checkpoint, a ``.safetensors`` file and a Flax ``.msgpack`` file.
Each file is then damaged at the byte level, as storage faults would:

* ``gross``: 5% of the float32 words of the payload get v ← v ± s·u, u log-uniform in [1, 1000]
  and s the weights' rms (the byte form of ``contamination.gross_errors``);
* ``exponent``: 1% of the words get one exponent bit (23–30) flipped;
* ``burst``: one run of 64 random bytes per 10 KB of payload, at a random offset.

The payload is where the floats are stored: for safetensors and msgpack the byte range of each
array (safetensors: from its header; msgpack: where the array's bytes sit in the file), so the
container's own structure is left intact. For ``orbax`` (``io.save``: no OCDBT, uncompressed) the
edits land in each array's chunk file (its bytes verbatim); the ``orbax, uncompressed`` rows write
with Orbax's own ``use_compression=False`` (OCDBT on) and hit only the arrays' bytes. ``io.save``
used to write Orbax compressed (zstd): there a byte edit failed the load or decompressed into
garbage over thousands of floats, which this benchmark showed, so it now writes uncompressed (and,
since ``benchmarks.containers`` damaged the metadata too, without OCDBT). A load that fails
is a reported outcome, not an error of the benchmark. The damaged checkpoint is loaded
with ``io.load(template=...)`` and purified; per format × damage the table gives the worst
per-leaf relative error max|Ŵ − W| / max|W| (target ≤ 1e-5), certified / total columns, whether
``report.ok`` (seal included) and test accuracy damaged → purified vs the clean model's.

    python -m benchmarks.disk [--steps 300] [--seed 0] [--json FILE]

It prints the table; ``--json`` also writes the figures (the committed ones are
``benchmarks/results/disk.json``: nothing is written there unless asked).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import struct
import tempfile
import time
import warnings

import flax.linen as nn
import jax
import numpy as np

import jaxpurify as jp
from benchmarks._common import write_json
from jaxpurify import data, io
from jaxpurify.train import accuracy, train

GROSS_RATE = 0.05
FLIP_RATE = 0.01
BURST_BYTES, BURST_EVERY = 64, 10 * 1024
EXPONENT_BITS = tuple(range(23, 31))  # float32
TARGET = 1e-5
ORBAX_RAW = "orbax, uncompressed"  # not io.save's: written with Orbax's own use_compression=False
FORMATS = io.FORMATS + (ORBAX_RAW,)
SUFFIX = {"orbax": "", "safetensors": ".safetensors", "msgpack": ".msgpack", ORBAX_RAW: ""}


class CNN(nn.Module):
    """As a user writes it: two convolutions, a hidden dense layer, a 10-way read-out."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))


# -- where the floats are -------------------------------------------------------------------------
Region = tuple[str, int, int]  # file, start, stop (bytes)


def _safetensors_regions(path: str) -> list[Region]:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    base = 8 + size
    return [
        (path, base + a, base + b)
        for k, v in header.items()
        if k != "__metadata__"
        for a, b in [v["data_offsets"]]
        if v["dtype"] == "F32"
    ]


def _find_arrays(files: list[str], clean: dict[str, np.ndarray], strict: bool) -> list[Region]:
    """Each array's bytes where they sit verbatim (C order) in one of ``files``.

    msgpack stores every array so (``strict``: all must be found once); uncompressed Orbax stores
    large arrays so, but inlines small ones in its b-tree nodes, which are left alone.
    """
    raws = {f: open(f, "rb").read() for f in files}
    out = []
    for p, arr in clean.items():
        blob = np.ascontiguousarray(arr).tobytes()
        hits = [(f, at) for f, raw in raws.items() for at in [raw.find(blob)] if at >= 0]
        if len(hits) == 1 and raws[hits[0][0]].find(blob, hits[0][1] + 1) < 0:
            out.append((hits[0][0], hits[0][1], hits[0][1] + len(blob)))
        elif strict:
            raise RuntimeError(f"leaf {p!r}: its bytes are not found exactly once in {files}")
    return out


def _orbax_files(path: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(path, "ocdbt.process_*", "d", "*")))
    if not files:
        raise RuntimeError(f"{path}: no OCDBT data files found")
    return files


def payload(path: str, fmt: str, clean: dict[str, np.ndarray]) -> list[Region]:
    """The byte ranges holding the parameters' values in a checkpoint written by ``io.save``."""
    if fmt == "safetensors":
        return _safetensors_regions(path)
    if fmt == "msgpack":
        return _find_arrays([path], clean, strict=True)
    if fmt == ORBAX_RAW:
        return _find_arrays(_orbax_files(path), clean, strict=False)
    chunks = [  # io.save's layout: one directory per array, its chunk file(s) beside a .zarray
        os.path.join(path, p.replace("/", "."), f)
        for p in clean
        for f in sorted(os.listdir(os.path.join(path, p.replace("/", "."))))
        if f != ".zarray"
    ]
    return [(f, 0, os.path.getsize(f)) for f in chunks]


# -- byte-level damage (each edits words or bytes of the regions, in place in `files`) ------------
def _words(files: dict[str, bytearray], region: Region) -> np.ndarray:
    f, a, b = region
    n = (b - a) // 4
    return np.frombuffer(files[f], dtype="<u4", count=n, offset=a)


def gross(rng: np.random.Generator, files, regions, scale: float) -> None:
    for reg in regions:
        w = _words(files, reg).copy()
        hit = np.flatnonzero(rng.random(w.size) < GROSS_RATE)
        mag = np.exp(rng.uniform(0.0, np.log(1e3), hit.size)) * scale
        with np.errstate(invalid="ignore", over="ignore"):  # compressed (Orbax) bytes may read as NaN
            v = w[hit].view("<f4").astype(np.float64)
            w[hit] = (v + np.where(rng.random(hit.size) < 0.5, -mag, mag)).astype("<f4").view("<u4")
        _put(files, reg, w)


def exponent(rng: np.random.Generator, files, regions, scale: float) -> None:
    for reg in regions:
        w = _words(files, reg).copy()
        hit = np.flatnonzero(rng.random(w.size) < FLIP_RATE)
        bits = np.asarray(EXPONENT_BITS, np.uint32)[rng.integers(0, len(EXPONENT_BITS), hit.size)]
        w[hit] ^= np.uint32(1) << bits
        _put(files, reg, w)


def burst(rng: np.random.Generator, files, regions, scale: float) -> None:
    """One 64-byte run of random bytes per 10 KB of payload (at least one), anywhere in it."""
    sizes = np.array([b - a for _, a, b in regions])
    total = int(sizes.sum())
    for _ in range(max(1, total // BURST_EVERY)):
        at = int(rng.integers(0, total))
        i = int(np.searchsorted(np.cumsum(sizes), at, side="right"))
        f, a, b = regions[i]
        start = min(a + at - int(sizes[:i].sum()), max(a, b - BURST_BYTES))
        stop = min(start + BURST_BYTES, b)
        files[f][start:stop] = rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes()


def _put(files, region: Region, words: np.ndarray) -> None:
    f, a, _ = region
    files[f][a : a + 4 * words.size] = words.astype("<u4").tobytes()


DAMAGE = {"gross 5%": gross, "exponent flips 1%": exponent, "64-byte bursts / 10 KB": burst}


def damage(rng, regions: list[Region], kind: str, scale: float) -> None:
    """Apply ``DAMAGE[kind]`` to the files on disk (read, edit, write back in place)."""
    files = {f: bytearray(open(f, "rb").read()) for f in dict.fromkeys(r[0] for r in regions)}
    DAMAGE[kind](rng, files, regions, scale)
    for f, buf in files.items():
        with open(f, "wb") as fh:
            fh.write(bytes(buf))


# -- the measurement -----------------------------------------------------------------------------
def rel_errors(tree, ref) -> dict[str, float]:
    """Per leaf max|a − b| / max|b| (inf where a is not finite)."""
    a, b = io.flatten(tree), io.flatten(ref)
    out = {}
    for p in b:
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(a[p].astype(np.float64) - b[p].astype(np.float64))
        d = np.where(np.isfinite(d), d, np.inf)
        out[p] = float(d.max() / max(float(np.abs(b[p]).max()), 1e-30))
    return out


def trained(seed: int, steps: int):
    """The user's CNN trained through the default codebook: (apply, codebook, deployed, dataset)."""
    ds = data.digits(seed=seed)
    model = CNN()
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    params = model.init(jax.random.key(seed), ds.train.x[:1])["params"]
    with warnings.catch_warnings():  # a seeded secret on purpose: the benchmark must be reproducible
        warnings.simplefilter("ignore", jp.WeakKeyWarning)
        codebook = jp.Codebook.create(params, jax.random.key(seed + 1))
    latent = codebook.init_latent(params)
    latent = train(
        apply, latent, codebook, ds.train.x, ds.train.y, key=jax.random.key(seed + 2), steps=steps, progress=False
    ).latent
    deployed = jax.tree.map(np.asarray, codebook.decode(latent))
    codebook = codebook.seal(deployed)
    return apply, codebook, deployed, ds


def save(path: str, tree, fmt: str) -> None:
    """``io.save``, or for ``ORBAX_RAW`` Orbax's PyTree handler with compression off."""
    if fmt != ORBAX_RAW:
        io.save(path, tree, format=fmt)
        return
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False)) as ckptr:
        ckptr.save(path, args=ocp.args.PyTreeSave(tree))


def one(fmt, kind, workdir, seed, apply, codebook, deployed, ds, acc_clean, scale) -> dict:
    path = os.path.join(workdir, f"{FORMATS.index(fmt)}-{kind.split()[0]}{SUFFIX[fmt]}")
    save(path, deployed, fmt)
    regions = payload(path, fmt, io.flatten(deployed))
    damage(np.random.default_rng([seed, list(DAMAGE).index(kind), FORMATS.index(fmt)]), regions, kind, scale)
    row = {
        "format": fmt,
        "damage": kind,
        "payload_bytes": sum(b - a for _, a, b in regions),
        "acc_clean": acc_clean,
        "parameter_bytes": sum(v.nbytes for v in io.flatten(deployed).values()),
    }
    try:
        loaded = io.load(path, template=deployed)
    except ValueError as e:
        return row | {"load_error": str(e)[:300]}
    changed = sum(int(np.sum(~(x == y))) for x, y in zip(io.flatten(loaded).values(), io.flatten(deployed).values()))
    t0 = time.perf_counter()
    purified, report = jp.purify(loaded, codebook)
    seconds = time.perf_counter() - t0
    errs = rel_errors(purified, deployed)
    return row | {
        "load_error": None,
        "floats_changed": changed,
        "certified": report.certified,
        "columns": report.columns,
        "ok": report.ok,
        "max_rel_err": max(errs.values()),
        "rel_err": errs,
        "purify_seconds": seconds,
        "acc_damaged": accuracy(apply, loaded, ds.test.x, ds.test.y),
        "acc_purified": accuracy(apply, purified, ds.test.x, ds.test.y),
    }


def run(seed: int = 0, steps: int = 300, formats=FORMATS) -> dict:
    t0 = time.perf_counter()
    apply, codebook, deployed, ds = trained(seed, steps)
    acc_clean = accuracy(apply, deployed, ds.test.x, ds.test.y)
    floats = np.concatenate([v.ravel() for v in io.flatten(deployed).values()]).astype(np.float64)
    scale = float(np.sqrt(np.mean(floats**2)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="jaxpurify-disk-") as workdir:
        for fmt in formats:
            for kind in DAMAGE:
                rows.append(one(fmt, kind, workdir, seed, apply, codebook, deployed, ds, acc_clean, scale))
    cap = codebook.capacity()
    return {
        "seed": seed,
        "steps": steps,
        "parameters": int(floats.size),
        "acc_clean": acc_clean,
        "capacity": str(cap),
        "target_rel_err": TARGET,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
        "load_average": os.getloadavg()[0],
        "jax": jax.__version__,
    }


def _reason(message: str) -> str:
    """The decoder's own complaint from a load error (e.g. zstd's), else its start."""
    found = re.search(r"(\w+\(\) failed: [^;]*)", message)
    return f"`{found.group(1) if found else message[:80]}`"


def markdown(result: dict) -> str:
    head = (
        "| format | damage | floats changed | max rel. error (worst leaf) | certified | report.ok "
        "| accuracy damaged → purified (clean) |"
    )
    lines = [head, "|" + "---|" * 7]
    for r in result["rows"]:
        if r["format"] == ORBAX_RAW:  # small arrays are inlined in b-tree nodes, not damaged
            r = r | {"format": f"{ORBAX_RAW} (damage on {r['payload_bytes'] / r['parameter_bytes']:.1%} of the bytes)"}
        if r["load_error"]:
            lines.append(f"| {r['format']} | {r['damage']} | — | load failed: {_reason(r['load_error'])} | — | — | — |")
            continue
        err = r["max_rel_err"]
        mark = "" if err <= TARGET else " **(> 1e-5)**"
        lines.append(
            f"| {r['format']} | {r['damage']} | {r['floats_changed']} | {err:.1e}{mark} | "
            f"{r['certified']}/{r['columns']} | {'yes' if r['ok'] else 'no'} | "
            f"{r['acc_damaged']:.3f} → {r['acc_purified']:.3f} ({r['acc_clean']:.3f}) |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.disk", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300, help="training steps of the encoded CNN")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    result = run(args.seed, args.steps)
    if args.json:
        write_json(args.json, result)
    print(
        f"{result['parameters']} parameters, {result['steps']} training steps, {result['seconds']:.0f} s, "
        f"load average {result['load_average']:.1f}"
    )
    print(markdown(result))
    bad = [r for r in result["rows"] if not r["load_error"] and not (r["ok"] and r["max_rel_err"] <= TARGET)]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
