"""Error paths (issue 10 item 9): every bad input to the loader, ``Codebook.create``, encode /
decode, ``purify`` and ``recover`` is a ValueError or TypeError whose message names the argument
or the leaf — never a NameError, AttributeError, IndexError or a JAX internal — and raised before
any work (nothing here reaches the solver, so nothing compiles), with the inputs left as they were.
The one deliberate exception: a file that does not exist is the OS's FileNotFoundError."""

import copy
import json
import warnings

import numpy as np
import pytest

import jaxpurify as jp

F32 = np.float32


def _params():
    return {"d": {"kernel": np.ones((16, 8), F32), "bias": np.zeros(8, F32)}}


@pytest.fixture(scope="module")
def cb():
    return jp.Codebook.create(_params())


@pytest.fixture(scope="module")
def saved(cb, tmp_path_factory):
    path = tmp_path_factory.mktemp("cb") / "cb.json"
    cb.save(path)
    return path


def _write(dirpath, name, text):
    p = dirpath / name
    p.write_text(text)
    p.chmod(0o600)  # a key file readable by others would add a warning
    return p


def _edited(path, tmp, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    out = tmp / "edited.json"
    out.write_text(json.dumps(doc))
    _write(tmp, "edited.json.key", (path.parent / "cb.json.key").read_text())
    return out


LOAD = [
    ("path int", lambda p, t: jp.Codebook.load(3), TypeError, "path must be"),
    ("path None", lambda p, t: jp.Codebook.load(None), TypeError, "path must be"),
    ("key_path int", lambda p, t: jp.Codebook.load(p, key_path=5), TypeError, "key_path must be"),
    (
        "not JSON",
        lambda p, t: jp.Codebook.load(_write(t, "e.json", "")),
        ValueError,
        "e.json: the codebook is not JSON",
    ),
    (
        "JSON list",
        lambda p, t: jp.Codebook.load(_write(t, "l.json", "[1, 2]")),
        ValueError,
        "l.json: not a jaxpurify.codebook",
    ),
    ("key file not JSON", lambda p, t: jp.Codebook.load(p, key_path=_write(t, "k.key", "x")), ValueError, "k.key"),
    (
        "key file of another kind",
        lambda p, t: jp.Codebook.load(p, key_path=_write(t, "k2.key", "[1]")),
        ValueError,
        "k2.key",
    ),
    (
        "K edited",
        lambda p, t: jp.Codebook.load(_edited(p, t, lambda d: d["groups"][0].update(K=7))),
        ValueError,
        "tampered|malformed",
    ),
    (
        "dtype edited",
        lambda p, t: jp.Codebook.load(_edited(p, t, lambda d: d["leaves"][0].update(dtype="int32"))),
        ValueError,
        "tampered|malformed",
    ),
    ("missing file", lambda p, t: jp.Codebook.load(t / "nope.json"), FileNotFoundError, "nope.json"),
]


@pytest.mark.parametrize("name,call,error,match", LOAD, ids=[c[0] for c in LOAD])
def test_loader(saved, tmp_path, name, call, error, match):
    with pytest.raises(error, match=match):
        call(saved, tmp_path)


CREATE = [
    ("params None", dict(params=None), ValueError, "no parameter leaf"),
    ("only int leaves", dict(params={"a": np.ones((4, 4), np.int32)}), ValueError, "no parameter leaf"),
    ("redundancy str", dict(redundancy="4"), ValueError, "redundancy"),
    ("redundancy nan", dict(redundancy=float("nan")), ValueError, "redundancy"),
    ("redundancy inf", dict(redundancy=float("inf")), ValueError, "redundancy"),
    ("redundancy 1", dict(redundancy=1), ValueError, "redundancy"),
    ("redundancy bool", dict(redundancy=True), ValueError, "redundancy"),
    ("key float", dict(key=1.5), TypeError, "key"),
    ("key str", dict(key="secret"), TypeError, "key"),
    ("key empty bytes", dict(key=b""), ValueError, "key"),
    ("key short bytes", dict(key=b"123"), ValueError, "key"),
    ("key negative", dict(key=-1), ValueError, "key"),
    ("key bool", dict(key=True), TypeError, "key"),
    ("key list", dict(key=[1, 2]), TypeError, "key"),
    ("select not callable", dict(select=3), TypeError, "select"),
    ("select returns str", dict(select=lambda p, x: "x"), TypeError, "select"),
    ("select axis out of range", dict(select=lambda p, x: 5), ValueError, "leaf 'd/bias'"),
]


@pytest.mark.parametrize("name,kw,error,match", CREATE, ids=[c[0] for c in CREATE])
def test_create(name, kw, error, match):
    kw = dict(kw)
    params = kw.pop("params", _params())
    with warnings.catch_warnings(), pytest.raises(error, match=match):
        warnings.simplefilter("ignore")  # int / JAX keys warn before some of the errors
        jp.Codebook.create(params, **kw)


def _latent(cb, fn):
    return {k: fn(np.asarray(v)) for k, v in cb.encode(_params()).items()}


CODEC = [
    ("encode None", lambda cb: cb.encode(None), ValueError, "leaf 'd/"),
    (
        "encode wrong shape",
        lambda cb: cb.encode({"d": {"kernel": np.ones((4, 8), F32), "bias": np.zeros(8, F32)}}),
        ValueError,
        "leaf 'd/kernel' has shape",
    ),
    (
        "encode missing leaf",
        lambda cb: cb.encode({"d": {"kernel": np.ones((16, 8), F32)}}),
        ValueError,
        "leaf 'd/bias'",
    ),
    (
        "encode int leaf",
        lambda cb: cb.encode({"d": {"kernel": np.ones((16, 8), np.int32), "bias": np.zeros(8, F32)}}),
        ValueError,
        "leaf 'd/kernel' has dtype int32",
    ),
    ("decode None", lambda cb: cb.decode(None), TypeError, "latent"),
    ("decode empty", lambda cb: cb.decode({}), ValueError, "group .* is missing from the latent"),
    ("decode int latent", lambda cb: cb.decode(_latent(cb, lambda v: v.astype(np.int32))), ValueError, "dtype int32"),
    (
        "decode complex latent",
        lambda cb: cb.decode(_latent(cb, lambda v: v.astype(np.complex64))),
        ValueError,
        "complex64",
    ),
    ("decode str latent", lambda cb: cb.decode(_latent(cb, lambda v: "abc")), TypeError, "latent of group"),
    ("decode wrong shape", lambda cb: cb.decode(_latent(cb, lambda v: v[:1])), ValueError, "has shape"),
]


@pytest.mark.parametrize("name,call,error,match", CODEC, ids=[c[0] for c in CODEC])
def test_encode_decode(cb, name, call, error, match):
    with pytest.raises(error, match=match):
        call(cb)


def _tree(kernel, bias=None):
    return {"d": {"kernel": kernel, "bias": np.zeros(8, F32) if bias is None else bias}}


PURIFY = [
    ("codebook None", dict(codebook=None), TypeError, "codebook must be"),
    ("codebook path", dict(codebook="cb.json"), TypeError, "codebook must be"),
    ("params None", dict(params=None), ValueError, "leaf 'd/"),
    ("wrong shape", dict(params=_tree(np.ones((4, 8), F32))), ValueError, "leaf 'd/kernel' has shape"),
    ("wrong dtype", dict(params=_tree(np.ones((16, 8), np.float64))), ValueError, "leaf 'd/kernel' has dtype float64"),
    ("int leaf", dict(params=_tree(np.ones((16, 8), np.int32))), ValueError, "leaf 'd/kernel' has dtype int32"),
    ("str leaf", dict(params=_tree("abc")), ValueError, "leaf 'd/kernel'"),
    ("missing leaf", dict(params={"d": {"kernel": np.ones((16, 8), F32)}}), ValueError, "leaf 'd/bias'"),
    ("on_uncertified", dict(on_uncertified="launder"), ValueError, "on_uncertified"),
    ("max_entries 0", dict(max_entries=0), ValueError, "max_entries"),
    ("max_entries float", dict(max_entries=1.5), ValueError, "max_entries"),
    ("max_entries bool", dict(max_entries=True), ValueError, "max_entries"),
    ("options type", dict(options=3), TypeError, "options"),
    ("unknown override", dict(foo=1), TypeError, "foo"),
    ("atol negative", dict(atol=-1.0), ValueError, "atol"),
    ("atol inf", dict(atol=float("inf")), ValueError, "atol"),
    ("rtol 2", dict(rtol=2.0), ValueError, "rtol"),
]


@pytest.mark.parametrize("name,kw,error,match", PURIFY, ids=[c[0] for c in PURIFY])
def test_purify(cb, name, kw, error, match):
    kw = dict(kw)
    params = kw.pop("params", _params())
    codebook = kw.pop("codebook", cb)
    before = copy.deepcopy(params)
    with pytest.raises(error, match=match):
        jp.purify(params, codebook, **kw)
    assert _same(before, params)  # nothing passed in is mutated


def _same(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and np.array_equal(np.asarray(a), np.asarray(b))


A8 = np.ones((8, 2), F32)
Y8 = np.ones(8, F32)
RECOVER = [
    ("A int", (np.ones((8, 2), np.int32), Y8), {}, TypeError, "A must be a real floating array"),
    ("A bool", (np.ones((8, 2), bool), Y8), {}, TypeError, "A must be a real floating array"),
    ("Y complex", (A8, np.ones(8, np.complex64)), {}, TypeError, "Y must be a real floating array"),
    ("A None", (None, Y8), {}, TypeError, "A must be a real floating array"),
    ("A str", ("abc", Y8), {}, TypeError, "A must be a real floating array"),
    ("A ragged", ([[1.0, 2.0], [1.0]], Y8), {}, TypeError, "A must be a real floating array"),
    ("A NaN", (np.full((8, 2), np.nan, F32), Y8), {}, ValueError, "A has non-finite"),
    ("A Inf", (np.where(np.eye(8, 2) > 0, np.inf, 1).astype(F32), Y8), {}, ValueError, "A has non-finite"),
    ("A 1-D", (Y8, Y8), {}, ValueError, "A must have shape"),
    ("n = 0", (np.ones((8, 0), F32), Y8), {}, ValueError, "1 ≤ n < K"),
    ("K = n", (np.ones((4, 4), F32), np.ones(4, F32)), {}, ValueError, "1 ≤ n < K"),
    ("Y wrong K", (A8, np.ones(7, F32)), {}, ValueError, "Y must have shape"),
    ("Y scalar", (A8, F32(1)), {}, ValueError, "Y must have shape"),
    ("batch mismatch", (np.ones((3, 8, 2), F32), np.ones((2, 8, 4), F32)), {}, ValueError, "batch shapes"),
    ("options type", (A8, Y8), dict(options="x"), TypeError, "options"),
    ("unknown override", (A8, Y8), dict(bogus=1), TypeError, "bogus"),
    ("passes 0", (A8, Y8), dict(passes=0), ValueError, "passes"),
    ("rtol 2", (A8, Y8), dict(rtol=2.0), ValueError, "rtol"),
    ("relax 2", (A8, Y8), dict(relax=2.0), ValueError, "relax"),
    ("atol nan", (A8, Y8), dict(atol=float("nan")), ValueError, "atol"),
    ("trim int", (A8, Y8), dict(trim=1), ValueError, "trim"),
]


@pytest.mark.parametrize("name,args,kw,error,match", RECOVER, ids=[c[0] for c in RECOVER])
def test_recover(name, args, kw, error, match):
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    before = [a.copy() for a in arrays]
    with pytest.raises(error, match=match):
        jp.recover(*args, **kw)
    for a, b in zip(before, arrays):  # nothing passed in is mutated
        np.testing.assert_array_equal(a, b)
