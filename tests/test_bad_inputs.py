"""Error paths (issue 10 item 9): every bad input to the loader, ``Codebook.create``, encode /
decode, ``purify`` and ``recover`` is a ValueError or TypeError whose message names the argument
or the leaf — never a NameError, AttributeError, IndexError or a JAX internal — and raised before
any work (nothing here reaches the solver, so nothing compiles), with the inputs left as they were.
The one deliberate exception: a file that does not exist is the OS's FileNotFoundError."""

import copy
import json
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify import cli, io

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
    # issue 25: these were raw UnicodeDecodeError / RecursionError tracebacks
    (
        "binary garbage",
        lambda p, t: jp.Codebook.load(_write_bytes(t, "g.json", b"\x89PNG\xff\xfe" + bytes(range(256)))),
        ValueError,
        "g.json: the codebook is not JSON",
    ),
    (
        "deeply nested JSON",
        lambda p, t: jp.Codebook.load(_write(t, "n.json", "[" * 100_000 + "]" * 100_000)),
        ValueError,
        "n.json: the codebook is JSON nested too deeply",
    ),
    (
        "key file binary",
        lambda p, t: jp.Codebook.load(p, key_path=_write_bytes(t, "b.key", b"\xff")),
        ValueError,
        "b.key",
    ),
    (
        "version 1 without the opt-in",
        lambda p, t: jp.Codebook.load(
            _write(t, "v1.json", json.dumps({"format": "jaxpurify.codebook", "version": 1, "key": [0, 7]}))
        ),
        ValueError,
        "v1.json: version-1 .* allow_legacy",
    ),
    ("allow_legacy str", lambda p, t: jp.Codebook.load(p, allow_legacy="yes"), TypeError, "allow_legacy"),
    (
        "min_seal_counter negative",
        lambda p, t: jp.Codebook.load(p, min_seal_counter=-1),
        ValueError,
        "min_seal_counter",
    ),
]


def _write_bytes(dirpath, name, data):
    p = dirpath / name
    p.write_bytes(data)
    p.chmod(0o600)
    return p


@pytest.mark.parametrize("name,call,error,match", LOAD, ids=[c[0] for c in LOAD])
def test_loader(saved, tmp_path, name, call, error, match):
    with pytest.raises(error, match=match):
        call(saved, tmp_path)


SAVE = [
    (
        "missing directory",
        lambda t: t / "nowhere" / "cb.json",
        FileNotFoundError,
        "directory '.*nowhere' does not exist",
    ),
    ("a directory", lambda t: t / "adir", IsADirectoryError, "adir' is a directory"),
]


@pytest.mark.parametrize("name,where,error,match", SAVE, ids=[c[0] for c in SAVE])
def test_failed_save_names_the_path_and_leaves_nothing(cb, tmp_path, name, where, error, match):
    # issue 25: a missing directory named a temporary file; saving onto a directory failed after
    # writing <dir>.key (the secret)
    (tmp_path / "adir").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(error, match=match):
        cb.save(where(tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no key file, no temporary


CREATE = [
    ("params None", dict(params=None), ValueError, "no parameter leaf"),
    (
        "mixed dict keys",
        dict(params={"d": {"kernel": np.ones((16, 8), F32), 0: np.ones(8, F32)}}),
        ValueError,
        "dict at 'd' .* mixes key types \\(int, str\\)",
    ),
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
    # issue 25: an OverflowError from inside jit, a RuntimeError of JAX's, a comparison in tree_flatten
    ("passes 10**12", dict(passes=10**12), ValueError, "passes must be a positive int ≤ 2\\*\\*31"),
    ("max_cg 2**31", dict(max_cg=2**31), ValueError, "max_cg"),
    ("deleted leaf", dict(params="deleted"), ValueError, "leaf 'd/kernel' has been deleted"),
    (
        "mixed dict keys",
        dict(params={"d": {"kernel": np.ones((16, 8), F32), "bias": np.zeros(8, F32)}, 1: np.ones(3, F32)}),
        ValueError,
        "top-level dict of the tree mixes key types",
    ),
]


def _deleted_kernel():
    k = jnp.ones((16, 8), jnp.float32)
    k.delete()
    return {"d": {"kernel": k, "bias": np.zeros(8, F32)}}


@pytest.mark.parametrize("name,kw,error,match", PURIFY, ids=[c[0] for c in PURIFY])
def test_purify(cb, name, kw, error, match):
    kw = dict(kw)
    params = kw.pop("params", _params())
    params = _deleted_kernel() if isinstance(params, str) and params == "deleted" else params
    codebook = kw.pop("codebook", cb)
    before = _copy(params)
    with pytest.raises(error, match=match):
        jp.purify(params, codebook, **kw)
    assert _same(before, params)  # nothing passed in is mutated


def _copy(tree):  # a deleted array cannot be read, so it stands for itself
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    return tree if isinstance(tree, jax.Array) and tree.is_deleted() else copy.deepcopy(tree)


def _same(a, b):
    if isinstance(a, jax.Array) and a.is_deleted():
        return a is b
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
    ("passes 10**12", (A8, Y8), dict(passes=10**12), ValueError, "passes must be a positive int ≤ 2\\*\\*31"),
    ("A deleted", ("deleted", Y8), {}, ValueError, "A has been deleted"),
    ("Y deleted", (A8, "deleted"), {}, ValueError, "Y has been deleted"),
]


def _deleted_like(a):
    d = jnp.asarray(a)
    d.delete()
    return d


@pytest.mark.parametrize("name,args,kw,error,match", RECOVER, ids=[c[0] for c in RECOVER])
def test_recover(name, args, kw, error, match):
    args = tuple(
        _deleted_like(A8 if i == 0 else Y8) if isinstance(a, str) and a == "deleted" else a for i, a in enumerate(args)
    )
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    before = [a.copy() for a in arrays]
    with pytest.raises(error, match=match):
        jp.recover(*args, **kw)
    for a, b in zip(before, arrays):  # nothing passed in is mutated
        np.testing.assert_array_equal(a, b)


CLI = [
    # issue 25: --out o.zip wrote safetensors and exited 0, though io.save refuses .zip
    ("zip suffix", "o.zip", "suffix .zip does not name safetensors"),
    ("no suffix (Orbax)", "purified", "suffix \\(none\\) does not name safetensors"),
    ("another format", "o.msgpack", "suffix .msgpack does not name safetensors"),
]


@pytest.mark.parametrize("name,out,match", CLI, ids=[c[0] for c in CLI])
def test_cli_refuses_an_output_suffix_it_will_not_write(cb, saved, tmp_path, capsys, name, out, match):
    src = tmp_path / "m.safetensors"
    io.save(src, _params())
    argv = ["purify", str(src), "--codebook", str(saved), "--out", str(tmp_path / out)]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # nothing written
