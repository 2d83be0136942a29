"""The codebook file: authenticated, bound to its model, key kept apart, written atomically."""

import json
import os
import stat

import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify import _codebook_file
from jaxpurify._codebook_file import LegacyCodebookWarning


def _params(hidden=24):
    return {
        "conv": {"kernel": jnp.ones((3, 3, 2, 16), jnp.float32), "bias": jnp.zeros((16,), jnp.float32)},
        "dense": {"kernel": jnp.ones((16, hidden), jnp.float32)},
        "step": jnp.zeros((), jnp.int32),  # not a float leaf: in the fingerprint, never encoded
    }


@pytest.fixture()
def saved(tmp_path):
    cb = jp.Codebook.create(_params())
    path = tmp_path / "cb.json"
    cb.save(path)
    return cb, path


def _edit(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_round_trip_key_apart_and_permissions(saved, tmp_path):
    cb, path = saved
    key_file = tmp_path / "cb.json.key"
    text = path.read_text()
    doc = json.loads(text)  # the file format's own reader
    assert doc["format"] == "jaxpurify.codebook" and doc["version"] == 2
    assert cb.secret.hex() not in text and "secret" not in doc and "key" not in doc
    assert cb.secret.hex() in key_file.read_text()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    # the fingerprint lists every leaf of the tree, the int one included
    assert [p for p, _, _ in doc["model"]] == ["conv/bias", "conv/kernel", "dense/kernel", "step"]
    assert doc["model"][3] == ["step", [], "int32"]
    back = jp.Codebook.load(path)
    assert back == cb and back.secret == cb.secret
    for p in cb.specs:
        np.testing.assert_array_equal(back.matrix(p), cb.matrix(p))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cb.json", "cb.json.key"]  # no temporary left


def test_key_path_option(tmp_path):
    cb = jp.Codebook.create(_params())
    cb.save(tmp_path / "cb.json", key_path=tmp_path / "secret.key")
    assert not (tmp_path / "cb.json.key").exists()
    with pytest.raises(FileNotFoundError, match="key_path"):
        jp.Codebook.load(tmp_path / "cb.json")
    assert jp.Codebook.load(tmp_path / "cb.json", key_path=tmp_path / "secret.key") == cb
    with pytest.raises(ValueError, match="key_path must differ"):
        cb.save(tmp_path / "cb.json", key_path=tmp_path / "cb.json")


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["leaves"][0].update(dtype="int32"),  # issue 10: made purify return int32 weights
        lambda d: d["leaves"][1].update(K=8),  # issue 10: raised NameError from the loader
        lambda d: d.update(redundancy=2.0),
        lambda d: d["model"][3].__setitem__(2, "float32"),
        lambda d: d.pop("mac"),
        lambda d: d.update(mac="é" * 64),  # not ASCII: still a ValueError, not compare_digest's TypeError
        lambda d: d.update(mac=d["mac"][:-1] + ("0" if d["mac"][-1] != "0" else "1")),
    ],
)
def test_edited_file_is_refused_as_tampered(saved, edit):
    cb, path = saved
    _edit(path, edit)
    with pytest.raises(ValueError, match="tampered"):
        jp.Codebook.load(path)


def test_wrong_key_is_named(saved, tmp_path):
    cb, path = saved
    other = jp.Codebook.create(_params())
    other.save(tmp_path / "other.json")
    with pytest.raises(ValueError, match="wrong key"):
        jp.Codebook.load(path, key_path=tmp_path / "other.json.key")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["leaves"][0].update(dtype="int32"), "'conv/bias' has dtype 'int32'"),
        (lambda d: d["leaves"][0].update(dtype="foo"), "'foo', expected a floating"),
        (lambda d: d["groups"][0].update(n=18), "group 'conv/kernel'.*1 ≤ n < K"),
        (lambda d: d["groups"][0].update(n=0), "group 'conv/kernel' n must be an int ≥ 1"),
        (lambda d: d["groups"][0].update(K=4.5), "group 'conv/kernel' K must be an int"),
        (lambda d: d["groups"][0].update(dtype="int8"), "group 'conv/kernel' has dtype 'int8'"),
        (lambda d: d["groups"][0].update(K=17), "group 'conv/kernel'"),  # the layout's own consistency check
        (lambda d: d["groups"][0]["segments"].append(["nowhere", 0, 1]), "segment"),
        (lambda d: d["leaves"][1].update(axis=True), "axis must be an int"),
        (lambda d: d["leaves"][1].update(axis=4), "axis 4 out of range"),
        (lambda d: d.update(redundancy="4"), "redundancy"),
        (lambda d: d.update(leaves=[]), "non-empty"),
        (lambda d: d["model"].pop(0), "'conv/bias' is not in the model fingerprint"),
        (lambda d: d.update(seal={"chunk": 0}), "bad seal"),
    ],
)
def test_schema_is_checked_even_under_a_valid_mac(tmp_path, edit, match):
    # a document whose MAC is right but whose content is wrong, as a buggy writer would make it
    cb = jp.Codebook.create(_params())
    doc = _codebook_file.document(cb.to_json(), cb.secret, cb.model, None)
    edit(doc)
    doc["mac"] = _codebook_file._mac(cb.secret, doc)
    path = tmp_path / "cb.json"
    _codebook_file.write(path, None, doc, cb.secret)
    with pytest.raises(ValueError, match=match):
        jp.Codebook.load(path)


def test_non_finite_numbers_are_refused(saved):
    cb, path = saved
    _edit(path, lambda d: d.update(redundancy=float("inf")))  # json writes Infinity
    with pytest.raises(ValueError, match="tampered"):
        jp.Codebook.load(path)


def test_codebook_for_another_model_names_the_leaf():
    cb = jp.Codebook.create(_params())
    cb.check(_params())  # the same model: no error
    with pytest.raises(ValueError, match="other model: leaf 'dense/kernel' differs"):
        cb.check(_params(hidden=32))
    p = _params()
    p["conv"]["bias"] = p["conv"]["bias"].astype(jnp.float16)
    with pytest.raises(ValueError, match="'conv/bias' differs: params has float16"):
        cb.check(p)
    p = _params()
    del p["step"]
    with pytest.raises(ValueError, match="'step' .* missing"):
        cb.check(p)
    p = dict(_params(), extra=jnp.zeros(3))
    with pytest.raises(ValueError, match="'extra'"):
        cb.check(p)
    with pytest.raises(ValueError, match="other model"):
        cb.seal(_params(hidden=32))


def test_failed_save_leaves_both_old_files(saved, tmp_path, monkeypatch):
    cb, path = saved
    before = path.read_bytes(), (tmp_path / "cb.json.key").read_bytes()
    other = jp.Codebook.create(_params())
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the codebook's temporary, after the key's
            raise OSError("disk full")

    monkeypatch.setattr(_codebook_file.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    assert (path.read_bytes(), (tmp_path / "cb.json.key").read_bytes()) == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cb.json", "cb.json.key"]
    monkeypatch.undo()
    assert jp.Codebook.load(path) == cb


def test_bad_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        jp.Codebook.load(p)
    p.write_text(json.dumps({"format": "jaxpurify.codebook", "version": 7}))
    with pytest.raises(ValueError, match="version 7"):
        jp.Codebook.load(p)
    cb = jp.Codebook.create(_params())
    cb.save(p)
    (tmp_path / "x.json.key").write_text('{"format": "jaxpurify.codebook-key", "secret": "zz"}')
    with pytest.raises(ValueError, match="not hex"):
        jp.Codebook.load(p)


def test_group_readable_key_file_warns(saved, tmp_path):
    cb, path = saved
    os.chmod(tmp_path / "cb.json.key", 0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        assert jp.Codebook.load(path) == cb


def test_version_1_files_still_load_with_a_warning(tmp_path):
    p = tmp_path / "old.json"
    leaf = {"path": "w", "shape": [4, 16], "dtype": "float32", "axis": 1, "K": 16, "n": 4}
    p.write_text(
        json.dumps({"format": "jaxpurify.codebook", "version": 1, "key": [0, 42], "redundancy": 4.0, "leaves": [leaf]})
    )
    with pytest.warns(LegacyCodebookWarning, match="unauthenticated"):
        cb = jp.Codebook.load(p)
    assert cb.secret == b"\x00\x00\x00\x00\x2a\x00\x00\x00" and cb.model is None
    with pytest.warns(UserWarning):
        ref = jp.Codebook.create({"w": jnp.zeros((4, 16))}, 42, select=lambda p, l: 1)  # v1's layout
    np.testing.assert_array_equal(cb.matrix("w"), ref.matrix("w"))
    cb.save(tmp_path / "new.json")  # re-saved as version 2, key moved out
    assert json.loads((tmp_path / "new.json").read_text())["version"] == 2
    assert jp.Codebook.load(tmp_path / "new.json") == cb
    p.write_text(
        json.dumps(
            {"format": "jaxpurify.codebook", "version": 1, "key": [0, 2**40], "redundancy": 4.0, "leaves": [leaf]}
        )
    )
    with pytest.warns(LegacyCodebookWarning), pytest.raises(ValueError, match="uint32"):
        jp.Codebook.load(p)


def test_seal_is_stored_encrypted_and_authenticated(saved, tmp_path):
    cb, path = saved
    cb.seal(_params())
    cb.save(path)
    doc = json.loads(path.read_text())
    assert set(doc["seal"]["leaves"]) == {"conv/bias", "conv/kernel", "dense/kernel"}
    back = jp.Codebook.load(path)
    assert back == cb and all(v.verified for v in back.verify(_params()).values())
    _edit(path, lambda d: d["seal"]["leaves"]["conv/bias"].update(max_abs=1e9))
    with pytest.raises(ValueError, match="tampered"):
        jp.Codebook.load(path)
