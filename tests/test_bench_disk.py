"""The on-disk damage of benchmarks.disk, checked with each format's own reader."""

import numpy as np
import pytest
import safetensors.numpy
from flax import serialization

from benchmarks import disk
from jaxpurify import io


def _tree():
    rng = np.random.default_rng(0)
    return {
        "conv": {
            "kernel": rng.standard_normal((3, 3, 4, 64)).astype(np.float32),
            "bias": rng.standard_normal(64).astype(np.float32),
        },
        "dense": {"kernel": rng.standard_normal((256, 32)).astype(np.float32)},
    }


def _read(path, fmt):
    if fmt == "safetensors":
        return {k.replace("/", "."): v for k, v in safetensors.numpy.load_file(path).items()}
    with open(path, "rb") as f:
        nested = serialization.msgpack_restore(f.read())
    return {f"{a}.{b}": v for a, sub in nested.items() for b, v in sub.items()}


def _write(tmp_path, fmt):
    tree = _tree()
    path = str(tmp_path / f"m.{fmt}")
    io.save(path, tree)
    clean = {k.replace("/", "."): v for k, v in io.flatten(tree).items()}
    return path, clean, disk.payload(path, fmt, io.flatten(tree))


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_payload_is_exactly_the_arrays(tmp_path, fmt):
    path, clean, regions = _write(tmp_path, fmt)
    raw = open(path, "rb").read()
    got = sorted(np.frombuffer(raw[a:b], "<f4").tobytes() for _, a, b in regions)
    assert got == sorted(v.tobytes() for v in clean.values())


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_gross_errors_hit_about_5_percent_and_keep_the_container(tmp_path, fmt):
    path, clean, regions = _write(tmp_path, fmt)
    disk.damage(np.random.default_rng(1), regions, "gross 5%", scale=1.0)
    bad = _read(path, fmt)  # the format's own reader still parses it
    changed = sum(int(np.sum(bad[k] != v)) for k, v in clean.items())
    total = sum(v.size for v in clean.values())
    assert 0.035 * total < changed < 0.065 * total
    big = np.concatenate([np.abs(bad[k] - v)[bad[k] != v] for k, v in clean.items()])
    assert big.min() >= 0.5 and big.max() <= 1e3 + 10  # |error| in [1, 1000]·scale, up to rounding


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_exponent_flips_change_one_exponent_bit(tmp_path, fmt):
    path, clean, regions = _write(tmp_path, fmt)
    disk.damage(np.random.default_rng(2), regions, "exponent flips 1%", scale=1.0)
    bad = _read(path, fmt)
    xor = np.concatenate([(bad[k].view("<u4") ^ v.view("<u4")).ravel() for k, v in clean.items()])
    hit = xor[xor != 0]
    assert 0 < hit.size < 0.03 * xor.size
    assert set(np.log2(hit.astype(np.float64)).tolist()) <= set(float(b) for b in disk.EXPONENT_BITS)


def test_bursts_are_64_byte_runs_inside_the_payload(tmp_path):
    path, clean, regions = _write(tmp_path, "safetensors")
    before = np.frombuffer(open(path, "rb").read(), np.uint8)
    disk.damage(np.random.default_rng(3), regions, "64-byte bursts / 10 KB", scale=1.0)
    after = np.frombuffer(open(path, "rb").read(), np.uint8)
    diff = np.flatnonzero(before != after)
    inside = np.zeros(before.size, bool)
    for _, a, b in regions:
        inside[a:b] = True
    payload = sum(b - a for _, a, b in regions)
    assert inside[diff].all()
    assert 0 < diff.size <= disk.BURST_BYTES * (payload // disk.BURST_EVERY)
    runs = np.split(diff, np.flatnonzero(np.diff(diff) > disk.BURST_BYTES) + 1)
    assert all(r[-1] - r[0] < disk.BURST_BYTES for r in runs)


def test_uncompressed_orbax_payload_is_array_bytes(tmp_path):
    tree = _tree()
    path = str(tmp_path / "ckpt")
    disk.save(path, tree, disk.ORBAX_RAW)
    flat = io.flatten(tree)
    regions = disk.payload(path, disk.ORBAX_RAW, flat)
    assert regions  # the large kernels are stored verbatim
    blobs = {v.tobytes() for v in flat.values()}
    for f, a, b in regions:
        assert open(f, "rb").read()[a:b] in blobs
    loaded = io.load(path, template=tree)  # Orbax's own reader, through io.load
    assert all(np.array_equal(loaded[k][j], tree[k][j]) for k in tree for j in tree[k])
