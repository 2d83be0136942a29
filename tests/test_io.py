"""jaxpurify.io against each format's own reader and writer (safetensors, Flax msgpack, Orbax)."""

import glob
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
from flax import serialization

from jaxpurify import io

FORMATS = {"orbax": "ckpt", "safetensors": "model.safetensors", "msgpack": "model.msgpack"}


def _params():
    rng = np.random.default_rng(0)
    return {
        "params": {
            "Conv_0": {
                "kernel": rng.standard_normal((3, 3, 1, 4)).astype(np.float32),
                "bias": rng.standard_normal(4).astype(ml_dtypes.bfloat16),
            },
            "Dense_0": {
                "kernel": jnp.asarray(rng.standard_normal((5, 2)), jnp.bfloat16),
                "bias": rng.standard_normal(2).astype(np.float16),
            },
        },
        "step": np.array(7, np.int32),
    }


def _flat_reference(tree):
    """Paths by a plain recursive walk over the nested dicts (independent of jaxpurify.tree)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update({f"{k}/{p}": a for p, a in _flat_reference(v).items()})
        else:
            out[k] = np.asarray(v)
    return out


def _assert_same(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for p in want:
        g, w = np.asarray(got[p]), np.asarray(want[p])
        assert g.dtype == w.dtype and g.shape == w.shape, p
        assert g.tobytes() == w.tobytes(), p  # bit-exact, bfloat16 included


def _own_reader(fmt, path):
    if fmt == "safetensors":
        return safetensors.numpy.load_file(path)  # keys are the '/'-joined paths
    if fmt == "msgpack":
        with open(path, "rb") as f:
            return _flat_reference(serialization.msgpack_restore(f.read()))
    with ocp.StandardCheckpointer() as c:
        return _flat_reference(c.restore(os.path.abspath(path)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_save_is_read_back_by_the_formats_own_reader(tmp_path, fmt):
    params = _params()
    before = jax.tree.map(lambda a: np.array(a), params)
    path = str(tmp_path / FORMATS[fmt])
    assert io.save(path, params) == fmt and io.detect_format(path) == fmt
    _assert_same(_own_reader(fmt, path), _flat_reference(params))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, before)  # not mutated


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_reads_what_the_formats_own_writer_wrote(tmp_path, fmt):
    params = _params()
    want = _flat_reference(params)
    path = str(tmp_path / FORMATS[fmt])
    if fmt == "safetensors":
        safetensors.numpy.save_file({k: np.require(v, requirements="C") for k, v in want.items()}, path)
    elif fmt == "msgpack":
        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
    else:
        with ocp.StandardCheckpointer() as c:
            c.save(os.path.abspath(path), params)
            c.wait_until_finished()
    _assert_same(_flat_reference(io.load(path)), want)
    restored = io.load(path, template=params)
    assert jax.tree.structure(restored) == jax.tree.structure(params)
    _assert_same(_flat_reference(restored), want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_template_keeps_lists_and_accepts_shape_dtype_structs(tmp_path, fmt):
    params = {"layers": [{"w": np.ones((2, 3), np.float32)}, {"w": np.zeros((3,), ml_dtypes.bfloat16)}]}
    path = str(tmp_path / FORMATS[fmt])
    io.save(path, params)
    template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    out = io.load(path, template)
    assert isinstance(out["layers"], list) and len(out["layers"]) == 2
    np.testing.assert_array_equal(out["layers"][0]["w"], params["layers"][0]["w"])
    assert out["layers"][1]["w"].dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "change, leaf",
    [
        (lambda t: t["params"]["Conv_0"].update(kernel=np.zeros((3, 3, 1, 5), np.float32)), "params/Conv_0/kernel"),
        (lambda t: t["params"]["Dense_0"].update(bias=np.zeros(2, np.float32)), "params/Dense_0/bias"),
        (lambda t: t["params"]["Dense_0"].update(extra=np.zeros(2, np.float32)), "params/Dense_0/extra"),
        (lambda t: t["params"].pop("Conv_0"), "params/Conv_0/bias"),
    ],
)
def test_a_template_mismatch_names_the_leaf(tmp_path, fmt, change, leaf):
    path = str(tmp_path / FORMATS[fmt])
    io.save(path, _params())
    template = _params()
    change(template)  # wrong shape / wrong dtype / leaf missing from the file / leaf not in the template
    with pytest.raises(ValueError, match=leaf):
        io.load(path, template)


def test_a_checker_object_is_used_as_the_template(tmp_path):
    path = str(tmp_path / "m.safetensors")
    io.save(path, _params())
    seen = []

    class Checker:
        def check(self, params):
            seen.append(params)
            if "Conv_0" in params["params"]:
                raise ValueError("leaf 'params/Conv_0/kernel' is not in the codebook")

    with pytest.raises(ValueError, match="Conv_0"):
        io.load(path, Checker())
    assert len(seen) == 1 and sorted(_flat_reference(seen[0])) == sorted(_flat_reference(_params()))


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_a_truncated_file_is_an_error_not_a_partial_tree(tmp_path, fmt):
    path = str(tmp_path / FORMATS[fmt])
    io.save(path, _params())
    data = open(path, "rb").read()
    for cut in (len(data) - 3, len(data) // 2, 10):
        with open(path, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(ValueError, match="cannot read"):
            io.load(path)


def test_a_truncated_orbax_checkpoint_is_an_error(tmp_path):
    path = str(tmp_path / "ckpt")
    io.save(path, _params())
    chunks = [f for f in glob.glob(os.path.join(path, "*", "0*")) if os.path.isfile(f)]  # each array's chunk
    assert chunks
    for f in chunks:
        data = open(f, "rb").read()
        with open(f, "wb") as g:
            g.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read as orbax"):
        io.load(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failed_write_leaves_the_old_checkpoint_and_no_debris(tmp_path, fmt, monkeypatch):
    path = str(tmp_path / FORMATS[fmt])
    old = _params()
    io.save(path, old)
    new = jax.tree.map(lambda a: np.asarray(a) + 1, _params())

    if fmt == "orbax":
        # fail the rename of the new directory into place, after the old one was moved aside
        real_rename = os.rename

        def rename(src, dst):
            if dst == path and "jaxpurify-old" not in src:
                raise OSError("disk full")
            real_rename(src, dst)

        monkeypatch.setattr(os, "rename", rename)
    else:

        def replace(src, dst):
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        io.save(path, new)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [FORMATS[fmt]]  # no temporary file or directory left
    _assert_same(_flat_reference(io.load(path)), _flat_reference(old))
    io.save(path, new)  # and a successful save replaces it
    _assert_same(_flat_reference(io.load(path)), _flat_reference(new))


def test_bad_leaves_and_paths(tmp_path):
    with pytest.raises(TypeError, match="rng"):
        io.save(str(tmp_path / "a.safetensors"), {"w": np.ones(2), "rng": jax.random.key(0)})
    with pytest.raises(TypeError, match="name"):
        io.save(str(tmp_path / "a.msgpack"), {"w": np.ones(2), "name": "conv"})
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match="suffix"):
        io.save(str(tmp_path / "a.bin"), {"w": np.ones(2)})
    with pytest.raises(ValueError, match="suffix"):
        io.save(str(tmp_path / "a.safetensors"), {"w": np.ones(2)}, format="msgpack")
    with pytest.raises(FileNotFoundError):
        io.load(str(tmp_path / "missing.safetensors"))
    os.mkdir(tmp_path / "plain")
    with pytest.raises(ValueError, match="not an Orbax checkpoint"):
        io.detect_format(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="not an Orbax checkpoint"):
        io.save(str(tmp_path / "plain"), {"w": np.ones(2)})  # never replaces a directory it did not write
    with ocp.CheckpointManager(str(tmp_path / "run")) as m:  # a manager's directory is never replaced
        m.save(1, args=ocp.args.StandardSave({"w": np.ones(2)}))
        m.wait_until_finished()
    with pytest.raises(ValueError, match="not an Orbax checkpoint"):
        io.save(str(tmp_path / "run"), {"w": np.ones(2)})
    assert os.path.isdir(tmp_path / "run" / "1" / "default")
    os.mkdir(tmp_path / "other")
    os.mkdir(tmp_path / "other" / "sub")
    with pytest.raises(ValueError, match="not an Orbax checkpoint"):
        io.load(str(tmp_path / "other"))


def test_format_is_sniffed_from_content_without_a_suffix(tmp_path):
    st, mp = str(tmp_path / "a"), str(tmp_path / "b")
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, st)
    with open(mp, "wb") as f:
        f.write(serialization.msgpack_serialize({"w": np.ones(3, np.float32)}))
    assert io.detect_format(st) == "safetensors" and io.detect_format(mp) == "msgpack"
    with open(str(tmp_path / "c"), "wb") as f:
        f.write(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(ValueError, match="not a safetensors"):
        io.detect_format(str(tmp_path / "c"))


def test_orbax_checkpoint_stores_floats_verbatim(tmp_path):
    """Uncompressed on purpose: damage on disk stays where it lands (see bench.disk), so the
    array's own bytes are found as they are in one of the files Orbax wrote."""
    w = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    io.save(tmp_path / "ckpt", {"layer": {"w": w}}, format="orbax")
    blobs = [p.read_bytes() for p in (tmp_path / "ckpt").rglob("*") if p.is_file()]
    assert any(w.tobytes() in b for b in blobs)
