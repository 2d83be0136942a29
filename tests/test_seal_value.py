"""``Codebook.seal`` returns a new sealed codebook and leaves the one it is called on as it was
(issue 23, item 3); saving an unsealed codebook warns, so the old statement form
``codebook.seal(deployed); codebook.save(...)`` is noticed; ``purify`` takes only a ``jaxpurify.Codebook``.

References: the codebook file as JSON (its own reader: ``json``), the original's ``to_json()``
taken before sealing, and the deployed weights the test itself changed."""

import json
import warnings

import jax
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify import cli, io

SECRET = bytes(range(32))


def _params():
    rng = np.random.default_rng(0)
    return {"d": {"kernel": rng.standard_normal((16, 8)).astype(np.float32), "bias": np.zeros(8, np.float32)}}


@pytest.fixture()
def made():
    cb = jp.Codebook.create(_params(), SECRET)
    deployed = jax.tree.map(np.asarray, cb.decode(cb.init_latent(_params())))
    return cb, deployed


def _moved(deployed):  # the kernel changed by 1.0 in one entry: far beyond the seal's tolerance
    kernel = deployed["d"]["kernel"].copy()
    kernel[3, 2] += 1.0
    return {"d": {"kernel": kernel, "bias": deployed["d"]["bias"]}}


def test_seal_returns_a_sealed_copy_and_leaves_the_codebook_as_it_was(made, tmp_path):
    cb, deployed = made
    before = json.dumps(cb.to_json(), sort_keys=True)
    sealed = cb.seal(deployed)
    assert isinstance(sealed, jp.Codebook) and sealed is not cb
    assert cb.seal_record is None and json.dumps(cb.to_json(), sort_keys=True) == before
    with pytest.raises(ValueError, match="no seal"):
        cb.verify(deployed)
    assert "sealed" not in repr(cb) and "sealed" in repr(sealed)
    # everything but the seal is carried over: the key, the layout, the model
    assert json.dumps(sealed.to_json(), sort_keys=True) == before
    assert sealed.secret == cb.secret and sealed.model == cb.model and sealed.root == cb.root
    assert isinstance(sealed.seal_record, jp.Seal) and sealed.seal_record.counter == 1
    assert sealed != cb
    # the record is a working seal: it verifies the deployed weights and catches a change
    assert all(v.verified for v in sealed.verify(deployed).values())
    assert not sealed.verify(_moved(deployed))["d/kernel"].verified
    # the two do not share containers: changing one's public kinds leaves the other's
    sealed.kinds["d/kernel"] = "state"
    assert cb.kinds["d/kernel"] == "param"


def test_the_sealed_copy_survives_its_file_and_reseals_into_another_copy(made, tmp_path):
    cb, deployed = made
    sealed = cb.seal(deployed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sealed codebook saves without a warning
        sealed.save(tmp_path / "cb.json")
    doc = json.loads((tmp_path / "cb.json").read_text())
    assert doc["seal"] is not None and doc["seal"]["counter"] == 1
    back = jp.Codebook.load(tmp_path / "cb.json")
    assert back == sealed and back != cb
    again = back.seal(_moved(deployed))  # re-sealed after a legitimate update
    assert (again.seal_record.counter, back.seal_record.counter) == (2, 1)
    assert all(v.verified for v in back.verify(deployed).values())  # the first copy keeps its seal
    assert all(v.verified for v in again.verify(_moved(deployed)).values())


def test_the_old_statement_form_saves_an_unsealed_file_with_a_warning(made, tmp_path):
    cb, deployed = made
    cb.seal(deployed)  # the pre-0.3 form: the sealed copy is dropped
    with pytest.warns(jp.UnsealedCodebookWarning, match=r"codebook = codebook\.seal\(deployed\)"):
        cb.save(tmp_path / "cb.json")
    assert json.loads((tmp_path / "cb.json").read_text())["seal"] is None
    # what already happens to an unsealed codebook stays: the library reports the seal unchecked …
    _, report = jp.purify(_moved(deployed), jp.Codebook.load(tmp_path / "cb.json"))
    assert not report.sealed and "keyed seal not checked" in report.status()
    # … and the command line refuses it unless told --unsealed
    io.save(str(tmp_path / "m.msgpack"), deployed)
    argv = ["purify", str(tmp_path / "m.msgpack"), "--codebook", str(tmp_path / "cb.json")]
    assert cli.main([*argv, "--out", str(tmp_path / "p.msgpack")]) == cli.EXIT_UNSEALED
    assert not (tmp_path / "p.msgpack").exists()


class _Proxy:
    """Has every method of the codebook it wraps: what purify accepted before."""

    def __init__(self, codebook):
        self._codebook = codebook

    def __getattr__(self, name):
        return getattr(self._codebook, name)


def test_purify_refuses_anything_but_a_codebook(made):
    cb, deployed = made
    proxy = _Proxy(cb.seal(deployed))
    assert all(hasattr(proxy, a) for a in ("groups", "protected", "pack", "unpack", "replace", "seal_record"))
    for call in (
        lambda: jp.purify(deployed, proxy),
        lambda: jp.purify(deployed, proxy, device=True),
        lambda: jax.jit(lambda p: jp.purify(p, proxy))(deployed),
        lambda: jp.purify(deployed, cb.seal(deployed).seal_record),  # the Seal that seal() used to return
    ):
        with pytest.raises(TypeError, match="codebook must be a jaxpurify.Codebook, got (_Proxy|Seal)"):
            call()
