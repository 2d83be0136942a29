"""jaxpurify.checkpoint: a checkpoint on disk as `jaxpurify purify` reads and writes it (the command
line's own behaviour is tests/test_cli.py)."""

import jax
import numpy as np
import pytest

from jaxpurify import Codebook, checkpoint, io


@pytest.fixture(scope="module")
def state():
    """A train state's worth: the codebook's model under ``model`` with a leaf of its own beside
    the model's (``count``), and a ``step`` beside ``model``."""
    rng = np.random.default_rng(0)
    params = {"Dense_0": {"kernel": rng.standard_normal((6, 16)).astype(np.float32), "bias": np.zeros(16, np.float32)}}
    codebook = Codebook.create(params, b"test-checkpoint-secret-012345678")
    clean = jax.tree.map(np.asarray, codebook.decode(codebook.init_latent(params)))
    return {"model": {**clean, "count": np.array(3, np.int32)}, "step": np.array(7, np.int32)}, codebook


def test_read_part_merge_write_keep_everything_outside_the_model(tmp_path, state):
    tree, codebook = state
    src, out = str(tmp_path / "state.msgpack"), str(tmp_path / "purified.msgpack")
    io.save(src, tree)
    source = checkpoint.open_source(src)
    assert (source.format, source.layout, checkpoint.out_layout(source)) == ("msgpack", "file", "file")
    read, select, salvaged = checkpoint.read(source, codebook, None)
    assert select == "model" and salvaged is None  # the rule: the one subtree that holds the model
    model = checkpoint.part(read, select, codebook)
    assert sorted(io.flatten(model)) == ["Dense_0/bias", "Dense_0/kernel"]
    changed = jax.tree.map(lambda a: a + 1, model)
    before = jax.tree.map(np.copy, read)
    merged = checkpoint.merge(read, select, changed)
    jax.tree.map(np.testing.assert_array_equal, read, before)  # the tree read is not changed
    checkpoint.write(source, out, merged)
    back = io.flatten(io.load(out))
    assert int(back["step"]) == 7 and int(back["model/count"]) == 3
    np.testing.assert_array_equal(back["model/Dense_0/kernel"], tree["model"]["Dense_0"]["kernel"] + 1)
    nan = jax.tree.map(lambda a: np.full_like(a, np.nan), changed)
    assert checkpoint.nan_count(nan, ["model/Dense_0/bias"], select) == 16


def test_open_source_says_what_a_path_is(tmp_path, state):
    tree, _ = state
    ckpt, file = str(tmp_path / "ckpt"), str(tmp_path / "m.safetensors")
    io.save(ckpt, tree)
    io.save(file, tree, sep=".")
    assert checkpoint.orbax_layout(ckpt) == "item" and checkpoint.orbax_layout(str(tmp_path)) == "step"
    item = checkpoint.open_source(ckpt)
    assert (item.format, item.layout, checkpoint.out_layout(item)) == ("orbax", "item", "item")
    assert checkpoint.open_source(file).sep == "."
    with pytest.raises(ValueError, match="--step"):
        checkpoint.open_source(file, step=1)
    with pytest.raises(FileNotFoundError):
        checkpoint.open_source(str(tmp_path / "missing.msgpack"))
