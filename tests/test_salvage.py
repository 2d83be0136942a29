"""io.salvage: damaged containers read by the codebook's layout, checked against the formats' own
readers and against byte offsets found in the clean files (independent of salvage's layout)."""

import json
import os
import struct

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
from flax import serialization
from reference import flat_paths

from jaxpurify import Codebook, io
from jaxpurify._salvage import Unreadable

SECRET = b"test-salvage-secret-0123456789ab"


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {
        "params": {
            "Conv_0": {"kernel": f32(3, 3, 2, 8), "bias": f32(8)},
            "Dense_0": {"kernel": f32(32, 16), "bias": f32(16)},
        },
        "batch_stats": {"bn": {"mean": f32(8), "var": f32(8)}},
        "step": np.array(7, np.int32),
    }


def _params(seed=0):
    return {"params": _variables(seed)["params"]}


def _assert_same(got, want):
    got, want = flat_paths(got), flat_paths(want)
    assert sorted(got) == sorted(want)
    for p in want:
        assert got[p].dtype == want[p].dtype and got[p].shape == want[p].shape, p
        assert got[p].tobytes() == want[p].tobytes(), p


def _codebook(tree):
    return Codebook.create(tree, SECRET)


def _overwrite(path, at, data):
    raw = bytearray(open(path, "rb").read())
    raw[at : at + len(data)] = data
    with open(path, "wb") as f:
        f.write(bytes(raw))


def _insertion_order(tree, rng):
    """The same dicts with keys in another order (flax.serialization keeps insertion order)."""
    if not isinstance(tree, dict):
        return tree
    keys = list(tree)
    rng.shuffle(keys)
    return {k: _insertion_order(tree[k], rng) for k in keys}


# -- intact files: exactly the format's own reader -------------------------------------------------


@pytest.mark.parametrize("writer", ["io", "own"])
@pytest.mark.parametrize("fmt", ["msgpack", "safetensors", "orbax"])
def test_an_intact_checkpoint_reads_as_its_formats_reader_gives_it(tmp_path, fmt, writer):
    tree = _variables()
    path = str(tmp_path / {"msgpack": "m.msgpack", "safetensors": "m.safetensors", "orbax": "ckpt"}[fmt])
    if writer == "io":
        io.save(path, tree)
    elif fmt == "msgpack":
        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize(_insertion_order(tree, np.random.default_rng(1))))
    elif fmt == "safetensors":  # '.'-joined keys, as flatten_dict(params, sep=".") gives them
        safetensors.numpy.save_file({k.replace("/", "."): v for k, v in flat_paths(tree).items()}, path)
    else:  # as Flax's checkpointing guide writes it: OCDBT, compressed
        with ocp.StandardCheckpointer() as c:
            c.save(path, tree)
    got, record = io.salvage(path, _codebook(tree))
    assert record is None
    if fmt == "msgpack":
        with open(path, "rb") as f:
            want = serialization.msgpack_restore(f.read())
    elif fmt == "safetensors":
        want = {
            k.replace("." if writer == "own" else "/", "/"): v for k, v in safetensors.numpy.load_file(path).items()
        }
        want = io._nest(want)
    else:
        with ocp.StandardCheckpointer() as c:
            want = jax.tree.map(np.asarray, c.restore(path))
    _assert_same(got, want)
    _assert_same(got, tree)


# -- msgpack -------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["io", "flax"])
def test_damaged_msgpack_metadata_is_bypassed(tmp_path, writer):
    tree = _variables()
    path = str(tmp_path / "m.msgpack")
    if writer == "io":
        io.save(path, tree)
    else:
        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize(_insertion_order(tree, np.random.default_rng(2))))
    raw = open(path, "rb").read()
    for leaf in ("params/Dense_0/kernel", "batch_stats/bn/mean"):  # their headers (16 bytes before the data)
        _overwrite(path, raw.find(flat_paths(tree)[leaf].tobytes()) - 16, b"\xc1" * 16)
    with pytest.raises(Exception):  # noqa: B017 (msgpack raises several types)
        serialization.msgpack_restore(open(path, "rb").read())
    got, record = io.salvage(path, _codebook(tree))
    _assert_same(got, tree)  # every payload byte was intact
    assert record.format == "msgpack" and len(record.container) >= 2 and not record.leaves


def _truncated_msgpack(tmp_path, leaf, offset):
    """_params() saved as msgpack by io.save, cut ``offset`` bytes after where ``leaf``'s bytes
    begin, and salvaged: (the clean leaves, the whole file, the cut, the salvaged leaves, the record)."""
    tree = _params()
    path = str(tmp_path / "m.msgpack")
    io.save(path, tree)
    raw = open(path, "rb").read()
    flat = flat_paths(tree)
    cut = raw.find(flat[leaf].tobytes()) + offset
    with open(path, "wb") as f:
        f.write(raw[:cut])
    got, record = io.salvage(path, _codebook(tree))
    return flat, raw, cut, flat_paths(got), record


def test_truncated_msgpack_erases_exactly_the_missing_entries(tmp_path):
    # 25 whole entries of Conv_0/kernel survive
    flat, raw, cut, got, record = _truncated_msgpack(tmp_path, "params/Conv_0/kernel", 4 * 25 + 2)
    start = {p: raw.find(v.tobytes()) for p, v in flat.items()}  # where each leaf's bytes are
    for p, v in flat.items():
        present = max(0, min(v.size, (cut - start[p]) // 4))
        np.testing.assert_array_equal(got[p].reshape(-1)[:present], v.reshape(-1)[:present], err_msg=p)
        assert np.isnan(got[p].reshape(-1)[present:]).all(), p
    erased = {d.path: d.erased for d in record.leaves}
    assert erased == {p: v.size - max(0, min(v.size, (cut - start[p]) // 4)) for p, v in flat.items() if erased.get(p)}
    assert erased["params/Conv_0/kernel"] == flat["params/Conv_0/kernel"].size - 25


def test_msgpack_truncated_inside_a_header_erases_the_leaves_after_it(tmp_path):
    # cut inside Dense_0/bias's header
    flat, raw, cut, got, record = _truncated_msgpack(tmp_path, "params/Dense_0/bias", -5)
    for p, v in flat.items():
        if raw.find(v.tobytes()) + v.nbytes <= cut:
            assert got[p].tobytes() == v.tobytes(), p
        else:
            assert np.isnan(got[p]).all(), p
    assert sorted(d.path for d in record.leaves) == ["params/Dense_0/bias", "params/Dense_0/kernel"]


def test_an_unreadable_leaf_that_is_not_protected_is_named(tmp_path):
    tree = _variables()
    path = str(tmp_path / "m.msgpack")
    io.save(path, tree)  # sorted: batch_stats, params, step — cut inside the last, an int32 counter
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[:-2])
    with pytest.raises(Unreadable, match="'step' \\(not floating"):
        io.salvage(path, _codebook(tree))
    io.save(path, tree)
    raw = open(path, "rb").read()
    mean = raw.find(tree["batch_stats"]["bn"]["mean"].tobytes())
    with open(path, "wb") as f:  # cut inside batch_stats: state, not protected
        f.write(raw[: mean + 8])
    with pytest.raises(Unreadable, match="batch_stats/bn/mean' \\(not protected"):
        io.salvage(path, _codebook(tree))


def test_another_model_is_returned_as_read_for_the_codebook_to_refuse(tmp_path):
    tree = _variables()
    other = _variables()
    other["params"]["Dense_0"] = {"kernel": np.zeros((32, 20), np.float32), "bias": np.zeros(20, np.float32)}
    path = str(tmp_path / "m.msgpack")
    io.save(path, other)
    codebook = _codebook(tree)
    got, record = io.salvage(path, codebook)
    assert record is None
    _assert_same(got, other)
    with pytest.raises(ValueError, match="Dense_0"):
        codebook.check(got)


def test_a_file_where_the_codebooks_leaves_cannot_be_located_is_unreadable(tmp_path):
    path = str(tmp_path / "m.msgpack")
    io.save(path, {"w": {f"layer{i}": np.ones(64, np.float32) for i in range(6)}})
    _overwrite(path, 0, b"\xc1")
    with pytest.raises(Unreadable, match="can be located"):
        io.salvage(path, _codebook(_variables()))


# -- safetensors ---------------------------------------------------------------------------------


def _header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


@pytest.mark.parametrize("sep", ["/", "."])
def test_damaged_safetensors_header_is_bypassed(tmp_path, sep):
    tree = _variables()
    path = str(tmp_path / "m.safetensors")
    io.save(path, tree, sep=sep)
    n, header = _header(path)
    raw = open(path, "rb").read()
    key = "params/Conv_0/kernel".replace("/", sep)
    _overwrite(path, raw.find(json.dumps(key).encode()), b"\xff" * 40)  # the entry's key and dtype
    with pytest.raises(Exception):  # noqa: B017 (SafetensorError)
        safetensors.numpy.load_file(path)
    got, record = io.salvage(path, _codebook(tree))
    _assert_same(got, tree)
    assert record.container and not record.leaves
    _overwrite(path, 0, b"\xff" * 8)  # the header length too
    got, record = io.salvage(path, _codebook(tree))
    _assert_same(got, tree)
    assert any("header length" in c for c in record.container)


def test_truncated_safetensors_erases_the_missing_tail(tmp_path):
    tree = _params()
    path = str(tmp_path / "m.safetensors")
    io.save(path, tree)
    n, header = _header(path)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[:-10])  # the last tensor loses its last 10 bytes: 3 entries
    last = max(header, key=lambda k: header[k]["data_offsets"][1] if k != "__metadata__" else -1)
    got, record = io.salvage(path, _codebook(tree))
    got, want = flat_paths(got), flat_paths(tree)
    for p in want:
        tail = 3 if p == last else 0
        np.testing.assert_array_equal(
            got[p].reshape(-1)[: want[p].size - tail], want[p].reshape(-1)[: want[p].size - tail]
        )
        assert np.isnan(got[p].reshape(-1)[want[p].size - tail :]).all()
    assert [(d.path, d.erased) for d in record.leaves] == [(last, 3)]


# -- Orbax ---------------------------------------------------------------------------------------


def test_io_save_writes_orbax_without_ocdbt_or_compression(tmp_path):
    tree = _variables()
    path = tmp_path / "ckpt"
    io.save(path, tree)
    assert not (path / "manifest.ocdbt").exists()
    for p, v in flat_paths(tree).items():  # each array in a directory of its own, its bytes verbatim
        chunk = [f for f in (path / p.replace("/", ".")).iterdir() if f.name != ".zarray"]
        assert len(chunk) == 1 and chunk[0].read_bytes() == v.tobytes(), p


@pytest.mark.parametrize("what", ["_METADATA", ".zarray"])
def test_damaged_orbax_metadata_is_stood_in_for_by_the_codebook(tmp_path, what):
    tree = _variables()
    path = str(tmp_path / "ckpt")
    io.save(path, tree)
    target = os.path.join(path, "_METADATA" if what == "_METADATA" else "params.Dense_0.kernel/.zarray")
    _overwrite(target, 10, b"\xff" * 20)
    with pytest.raises(Exception), ocp.StandardCheckpointer() as c:  # noqa: B017
        c.restore(path)
    got, record = io.salvage(path, _codebook(tree))
    _assert_same(got, tree)
    assert record.format == "orbax" and record.container and not record.leaves


def test_a_truncated_orbax_chunk_erases_its_missing_tail_and_nothing_else(tmp_path):
    tree = _variables()
    path = str(tmp_path / "ckpt")
    io.save(path, tree)
    chunk = os.path.join(path, "params.Dense_0.kernel", "0.0")
    data = open(chunk, "rb").read()
    with open(chunk, "wb") as f:
        f.write(data[:-10])
    got, record = io.salvage(path, _codebook(tree))
    got, want = flat_paths(got), flat_paths(tree)
    k = "params/Dense_0/kernel"
    np.testing.assert_array_equal(got[k].reshape(-1)[:-3], want[k].reshape(-1)[:-3])
    assert np.isnan(got[k].reshape(-1)[-3:]).all()
    for p in want:
        if p != k:
            assert got[p].tobytes() == want[p].tobytes(), p
    assert [(d.path, d.erased) for d in record.leaves] == [(k, 3)]
    os.remove(os.path.join(path, "batch_stats.bn.var", "0"))  # a leaf that is not protected
    with pytest.raises(Unreadable, match="batch_stats/bn/var"):
        io.salvage(path, _codebook(tree))


def test_a_compressed_chunk_that_fails_is_an_erasure_of_its_entries(tmp_path):
    tree = _variables()
    path = str(tmp_path / "ckpt")
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_compression=True)) as c:
        c.save(path, args=ocp.args.PyTreeSave(tree))
    chunk = os.path.join(path, "params.Conv_0.kernel", "0.0.0.0")
    data = open(chunk, "rb").read()
    with open(chunk, "wb") as f:
        f.write(data[: len(data) // 2])  # a zstd frame cut in half cannot be decompressed
    got, record = io.salvage(path, _codebook(tree))
    got, want = flat_paths(got), flat_paths(tree)
    assert np.isnan(got["params/Conv_0/kernel"]).all()
    for p in want:
        if p != "params/Conv_0/kernel":
            assert got[p].tobytes() == want[p].tobytes(), p
    assert [d.path for d in record.leaves] == ["params/Conv_0/kernel"]


def test_checkpoint_manager_directories_load_their_latest_or_chosen_step(tmp_path):
    root = str(tmp_path / "run")
    trees = {s: _variables(seed=s) for s in (1, 5)}
    with ocp.CheckpointManager(root) as m:
        for s, t in trees.items():
            m.save(s, args=ocp.args.StandardSave(t))
        m.wait_until_finished()
    with ocp.CheckpointManager(root) as m:
        want = jax.tree.map(np.asarray, m.restore(5))
    _assert_same(io.load(root), want)
    _assert_same(io.load(root, step=1), trees[1])
    _assert_same(io.load(os.path.join(root, "1")), trees[1])
    assert io.detect_format(root) == io.detect_format(os.path.join(root, "1")) == "orbax"
    with pytest.raises(ValueError, match="no step 3"):
        io.load(root, step=3)


@pytest.mark.parametrize("fmt", ["msgpack", "safetensors", "orbax"])
def test_a_damaged_subtree_is_salvaged_and_the_leaves_beside_it_read_as_they_are(tmp_path, fmt):
    tree = _variables()
    codebook = _codebook(tree["params"])  # made for the params; the file is the variables dict
    path = str(tmp_path / {"msgpack": "m.msgpack", "safetensors": "m.safetensors", "orbax": "ckpt"}[fmt])
    io.save(path, tree)
    kernel = tree["params"]["Dense_0"]["kernel"]
    if fmt == "msgpack":
        raw = open(path, "rb").read()
        _overwrite(path, raw.find(kernel.tobytes()) - 16, b"\xc1" * 16)
    elif fmt == "safetensors":
        raw = open(path, "rb").read()
        _overwrite(path, raw.find(b'"params/Dense_0/kernel"'), b"\xff" * 30)
    else:
        _overwrite(os.path.join(path, "_METADATA"), 5, b"\xff" * 30)
        _overwrite(os.path.join(path, "params.Dense_0.kernel", ".zarray"), 3, b"\xff" * 30)
    got, record = io.salvage(path, codebook, select="params")
    assert record is not None and not record.leaves
    _assert_same(got, tree)  # the params by the layout, batch_stats and step as they are


def _truth(clean_offsets):
    """What the damaged checkpoint holds at each leaf's place (offsets found in the clean file)."""
    out = {}
    for p, (f, at, v) in clean_offsets.items():
        raw = open(f, "rb").read()
        out[p] = np.frombuffer(raw[at : at + v.nbytes], v.dtype).reshape(v.shape)
    return out


@pytest.mark.parametrize("fmt", ["msgpack", "safetensors", "orbax"])
def test_salvage_never_makes_up_a_value(tmp_path, fmt):
    """Dense bursts (one per 512 bytes, metadata hit often): whatever salvage returns is either
    what the damaged file holds at that leaf's place, or NaN in a protected leaf — or a named
    failure."""
    tree = _variables()
    codebook = _codebook(tree)
    flat = flat_paths(tree)
    outcomes = []
    for seed in range(12):
        path = str(tmp_path / f"{seed}{'' if fmt == 'orbax' else '.' + fmt}")
        io.save(path, tree)
        files = [path] if fmt != "orbax" else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        where = {}
        for p, v in flat.items():  # each leaf's bytes in the clean checkpoint, found by search
            hits = [(f, open(f, "rb").read().find(v.tobytes())) for f in files]
            where[p] = next((f, at, v) for f, at in hits if at >= 0)
        rng = np.random.default_rng(seed)
        for f in files:
            raw = bytearray(open(f, "rb").read())
            for _ in range(max(1, len(raw) // 512)):
                at = int(rng.integers(0, len(raw)))
                raw[at : at + 64] = rng.integers(0, 256, len(raw[at : at + 64]), dtype=np.uint8).tobytes()
            with open(f, "wb") as fh:
                fh.write(bytes(raw))
        truth = _truth(where)
        try:
            got, record = io.salvage(path, codebook)
        except Unreadable as e:
            outcomes.append("named")
            assert str(e).startswith(path)
            continue
        outcomes.append("read")
        got = flat_paths(got)
        erased = {d.path for d in (record.leaves if record else ())}
        for p, v in truth.items():
            g = got[p]
            if g.dtype.kind != "f":
                assert g.tobytes() == v.tobytes(), p
                continue
            made_nan = np.isnan(g) & ~np.isnan(v)
            assert not made_nan.any() or p in erased and p in codebook.protected, p
            keep = ~np.isnan(g)
            assert g[keep].tobytes() == v[keep].tobytes(), p
    assert "read" in outcomes


@pytest.mark.parametrize("layout", ["io", "ocdbt"])
def test_orbax_without_metadata_lists_the_leaves_beside_the_codebooks_from_storage(tmp_path, layout):
    tree = _variables()
    codebook = _codebook(tree["params"])  # the file has batch_stats and step beside the params
    path = str(tmp_path / "ckpt")
    if layout == "io":
        io.save(path, tree)
    else:  # Flax docs' Orbax: OCDBT, compressed
        with ocp.StandardCheckpointer() as c:
            c.save(path, tree)
    _overwrite(os.path.join(path, "_METADATA"), 0, b"\xff" * 40)
    got, record = io.salvage(path, codebook, select="params")
    _assert_same(got, tree)
    assert any("_METADATA" in c for c in record.container)
