"""The on-disk damage of benchmarks.containers, checked with each format's own reader."""

import os

import numpy as np
import pytest
from reference import flat_paths, read_checkpoint

from benchmarks import containers


def _tree():
    rng = np.random.default_rng(0)
    return {
        "params": {
            "conv": {"kernel": rng.standard_normal((3, 3, 4, 64)).astype(np.float32)},
            "dense": {"kernel": rng.standard_normal((256, 32)).astype(np.float32)},
        },
        "batch_stats": {"bn": {"mean": rng.standard_normal(64).astype(np.float32)}},
    }


def _write(tmp_path, fmt):
    tree = _tree()
    path = str(tmp_path / ("ckpt" if fmt == "orbax" else f"m.{fmt}"))
    containers.save(path, tree, fmt)
    return path, tree


@pytest.mark.parametrize("fmt", ["msgpack", "safetensors", "orbax"])
def test_payload_is_exactly_the_arrays(tmp_path, fmt):
    path, tree = _write(tmp_path, fmt)
    regions = containers.payload(path, fmt, tree)
    got = sorted(open(f, "rb").read()[a:b] for f, a, b in regions)
    assert got == sorted(v.tobytes() for v in flat_paths(tree).values())


@pytest.mark.parametrize("fmt", ["msgpack", "safetensors", "orbax"])
@pytest.mark.parametrize("kind", ["gross", "exponent"])
def test_word_damage_hits_the_floats_and_keeps_the_container(tmp_path, fmt, kind):
    path, tree = _write(tmp_path, fmt)
    containers.words(np.random.default_rng(1), containers.payload(path, fmt, tree), kind, scale=1.0)
    bad, clean = read_checkpoint(path, fmt), flat_paths(tree)  # the format's own reader still reads it
    changed = sum(int(np.sum(bad[k] != v)) for k, v in clean.items())
    total = sum(v.size for v in clean.values())
    rate = containers.GROSS_RATE if kind == "gross" else containers.FLIP_RATE
    assert 0.6 * rate * total < changed < 1.4 * rate * total
    if kind == "exponent":
        xor = np.concatenate([(bad[k].view("<u4") ^ v.view("<u4")).ravel() for k, v in clean.items()])
        assert set(np.log2(xor[xor != 0].astype(np.float64)).tolist()) <= set(map(float, containers.EXPONENT_BITS))


def test_bursts_land_anywhere_in_the_checkpoints_files_metadata_included(tmp_path):
    path, _ = _write(tmp_path, "orbax")
    files = containers.files(path)
    names = {os.path.basename(f) for f in files}
    assert {"_METADATA", ".zarray"} <= names  # hidden files are part of the container
    metadata_hit = False
    for seed in range(10):
        before = {f: np.frombuffer(open(f, "rb").read(), np.uint8) for f in files}
        total = sum(b.size for b in before.values())
        n = containers.burst(np.random.default_rng(seed), path)
        assert n == max(1, total // containers.BURST_EVERY)
        changed = 0
        for f, b in before.items():
            a = np.frombuffer(open(f, "rb").read(), np.uint8)
            assert a.size == b.size  # overwritten, never cut or grown
            hit = int(np.count_nonzero(a != b))
            changed += hit
            metadata_hit |= hit > 0 and os.path.basename(f) in ("_METADATA", ".zarray", "_CHECKPOINT_METADATA")
        assert 0 < changed <= containers.BURST_BYTES * n
    assert metadata_hit
