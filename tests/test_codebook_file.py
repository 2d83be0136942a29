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
        # the layout's own consistency check: K is 17 (288 entries in 17 columns), 16 rows hold too few
        (lambda d: d["groups"][0].update(K=16), "group 'conv/kernel'"),
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


def test_failed_rename_of_the_codebook_puts_the_key_file_back(saved, tmp_path, monkeypatch):
    # the key is renamed into place first; if the codebook's rename then fails, no new secret stays
    cb, path = saved
    before = path.read_bytes(), (tmp_path / "cb.json.key").read_bytes()
    replace = os.replace

    def failing_second(src, dst):
        if os.fspath(dst).endswith("cb.json") or os.fspath(dst).endswith("fresh.json"):
            raise OSError("rename failed")
        return replace(src, dst)

    monkeypatch.setattr(_codebook_file.os, "replace", failing_second)
    with pytest.raises(OSError, match="rename failed"):
        jp.Codebook.create(_params()).save(path)  # over an existing pair: the old key file comes back
    with pytest.raises(OSError, match="rename failed"):
        cb.save(tmp_path / "fresh.json")  # a new pair: no key file is left
    monkeypatch.undo()
    assert (path.read_bytes(), (tmp_path / "cb.json.key").read_bytes()) == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cb.json", "cb.json.key"]
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


def _v1(path, key=(0, 42)):
    leaf = {"path": "w", "shape": [4, 16], "dtype": "float32", "axis": 1, "K": 16, "n": 4}
    doc = {"format": "jaxpurify.codebook", "version": 1, "key": list(key), "redundancy": 4.0, "leaves": [leaf]}
    path.write_text(json.dumps(doc))
    return path


def test_version_1_files_load_only_when_allowed_by_name(tmp_path):
    p = _v1(tmp_path / "old.json")
    with pytest.raises(ValueError, match="version-1.*unauthenticated.*allow_legacy=True"):
        jp.Codebook.load(p)  # issue 25: anyone can write one, so it is no longer the default
    with pytest.raises(TypeError, match="allow_legacy must be a bool"):
        jp.Codebook.load(p, allow_legacy="yes")
    with pytest.warns(LegacyCodebookWarning, match="unauthenticated"):
        cb = jp.Codebook.load(p, allow_legacy=True)
    assert cb.secret == b"\x00\x00\x00\x00\x2a\x00\x00\x00" and cb.model is None and cb.legacy
    with pytest.warns(UserWarning):
        ref = jp.Codebook.create({"w": jnp.zeros((4, 16))}, 42, select=lambda p, l: 1)  # v1's layout
    np.testing.assert_array_equal(cb.matrix("w"), ref.matrix("w"))
    cb.save(tmp_path / "new.json")  # re-saved as version 2, key moved out
    assert json.loads((tmp_path / "new.json").read_text())["version"] == 2
    back = jp.Codebook.load(tmp_path / "new.json")
    assert back == cb and not back.legacy
    _v1(p, key=(0, 2**40))
    with pytest.warns(LegacyCodebookWarning), pytest.raises(ValueError, match="uint32"):
        jp.Codebook.load(p, allow_legacy=True)


def test_a_forged_version_1_file_with_the_real_key_file_is_wrong_key(tmp_path):
    # issue 25: an attacker's version-1 file (their own key words inside) was used even with --key
    # pointing at the real key file; a key file given explicitly must hold the file's key
    real = jp.Codebook.create({"w": jnp.zeros((4, 16))}, select=lambda p, l: 1)
    real.save(tmp_path / "real.json")
    forged = _v1(tmp_path / "forged.json", key=(0, 7))
    with pytest.raises(ValueError, match="allow_legacy"):
        jp.Codebook.load(forged, key_path=tmp_path / "real.json.key")
    with pytest.warns(LegacyCodebookWarning), pytest.raises(ValueError, match="wrong key"):
        jp.Codebook.load(forged, key_path=tmp_path / "real.json.key", allow_legacy=True)


def test_purify_with_a_legacy_codebook_says_so_in_the_report(tmp_path):
    p = _v1(tmp_path / "old.json")
    with pytest.warns(LegacyCodebookWarning):
        cb = jp.Codebook.load(p, allow_legacy=True)
    w = np.asarray(cb.decode({"w": np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)})["w"])
    _, report = jp.purify({"w": w}, cb)
    assert report.ok and report.legacy_codebook and report.as_dict()["legacy_codebook"] is True
    assert "legacy version-1 file, NOT authenticated" in report.status() and "NOT authenticated" in str(report)
    cb.save(tmp_path / "new.json")
    _, report = jp.purify({"w": w}, jp.Codebook.load(tmp_path / "new.json"))
    assert report.ok and not report.legacy_codebook and "legacy" not in str(report)


def test_an_older_sealed_file_replays_unless_a_minimum_counter_is_given(tmp_path):
    # replay: the MAC says the file is one the key holder wrote, not that it is the latest; the
    # seal's counter (under the MAC) lets a deployment refuse an older one
    cb = jp.Codebook.create(_params())
    old_w, new_w = _params(), _params()
    new_w["dense"]["kernel"] = new_w["dense"]["kernel"] * 2
    cb = cb.seal(old_w)
    assert cb.seal_record.counter == 1
    cb.save(tmp_path / "cb.json")
    old_file = (tmp_path / "cb.json").read_bytes()
    cb = cb.seal(new_w)
    assert cb.seal_record.counter == 2 and cb.seal_record.created is not None
    cb.save(tmp_path / "cb.json")
    (tmp_path / "cb.json").write_bytes(old_file)  # the attacker puts back the older file and weights
    replayed = jp.Codebook.load(tmp_path / "cb.json")
    assert all(v.verified for v in replayed.verify(old_w).values())  # the replay verifies: documented
    with pytest.raises(ValueError, match="stale codebook: its seal has counter 1, below min_seal_counter=2"):
        jp.Codebook.load(tmp_path / "cb.json", min_seal_counter=2)
    _edit(tmp_path / "cb.json", lambda d: d["seal"].update(counter=2))
    with pytest.raises(ValueError, match="tampered"):  # the counter is under the MAC
        jp.Codebook.load(tmp_path / "cb.json")
    unsealed = jp.Codebook.create(_params())
    with pytest.warns(jp.UnsealedCodebookWarning):
        unsealed.save(tmp_path / "u.json")
    with pytest.raises(ValueError, match="it has no seal"):
        jp.Codebook.load(tmp_path / "u.json", min_seal_counter=1)
    for bad in (-1, 1.5, True, 2**63):
        with pytest.raises(ValueError, match="min_seal_counter"):
            jp.Codebook.load(tmp_path / "u.json", min_seal_counter=bad)
    assert cb.seal(new_w, counter=7).seal_record.counter == 7
    with pytest.raises(ValueError, match="counter must be an int"):
        cb.seal(new_w, counter=-1)


def test_seal_is_stored_encrypted_and_authenticated(saved, tmp_path):
    cb, path = saved
    cb = cb.seal(_params())
    cb.save(path)
    doc = json.loads(path.read_text())
    assert set(doc["seal"]["leaves"]) == {"conv/bias", "conv/kernel", "dense/kernel"}
    back = jp.Codebook.load(path)
    assert back == cb and all(v.verified for v in back.verify(_params()).values())
    _edit(path, lambda d: d["seal"]["leaves"]["conv/bias"].update(max_abs=1e9))
    with pytest.raises(ValueError, match="tampered"):
        jp.Codebook.load(path)
