"""Codebook: selection, determinism, encode/decode, capacity, save/load."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify import models
from jaxpurify._codebook import gaussian_matrix


@pytest.fixture(scope="module")
def params():
    m = models.SmallCNN(channels=(16, 32), hidden=24)
    return m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]


def test_default_selection(params):
    cb = jp.Codebook.create(params, jax.random.key(1))
    # every floating leaf with ≥ 8 entries on its last axis, the 10-class read-out included
    expect = {
        "conv0/kernel": 16, "conv0/bias": 16, "conv1/kernel": 32, "conv1/bias": 32,
        "dense/kernel": 24, "dense/bias": 24, "readout/kernel": 10, "readout/bias": 10,
    }
    assert {p: s.K for p, s in cb.specs.items()} == expect
    for s in cb.specs.values():
        assert s.n == int(np.ceil(s.K / 4.0)) and s.axis == len(s.shape) - 1


def test_select_skip_and_axis(params):
    def select(path, leaf):
        if path.startswith("readout"):
            return False
        if path == "dense/kernel":
            return 0  # encode input features instead
        return None

    cb = jp.Codebook.create(params, jax.random.key(1), redundancy=2.0, select=select)
    assert "readout/kernel" not in cb.specs
    s = cb.specs["dense/kernel"]
    assert s.axis == 0 and s.K == params["dense"]["kernel"].shape[0] and s.n == -(-s.K // 2)
    with pytest.raises(ValueError, match="dense/kernel"):
        jp.Codebook.create(params, jax.random.key(1), select=lambda p, l: 5 if p == "dense/kernel" else None)
    with pytest.raises(ValueError, match="redundancy"):
        jp.Codebook.create(params, jax.random.key(1), redundancy=1.0)


def test_matrices_deterministic_and_distinct(params):
    a = jp.Codebook.create(params, jax.random.key(7))
    b = jp.Codebook.create(params, jax.random.key(7))
    c = jp.Codebook.create(params, jax.random.key(8))
    for p in a.specs:
        np.testing.assert_array_equal(a.matrix(p), b.matrix(p))
        assert not np.allclose(a.matrix(p), c.matrix(p))
    assert not np.allclose(a.matrix("conv1/kernel"), a.matrix("conv1/bias"))
    # raw uint32 keys and int seeds name the same key material as the typed key
    d = jp.Codebook.create(params, jax.random.PRNGKey(7))
    e = jp.Codebook.create(params, 7)
    for p in a.specs:
        np.testing.assert_array_equal(a.matrix(p), d.matrix(p))
        np.testing.assert_array_equal(a.matrix(p), e.matrix(p))


def test_matrix_is_gaussian_with_variance_one_over_n():
    A = gaussian_matrix((1, 2), "x", 400, 100)
    assert abs(A.mean()) < 0.01
    assert abs(A.var() * 100 - 1.0) < 0.02
    # Box–Muller normals: tails and symmetry of a standard normal
    z = A.ravel() * 10
    assert abs(np.mean(np.abs(z) > 1.96) - 0.05) < 0.005
    assert abs(np.mean(z**3)) < 0.05


def test_encode_decode_round_trip(params):
    cb = jp.Codebook.create(params, jax.random.key(3))
    latent = cb.encode(params)
    for p, s in cb.specs.items():
        leaf = latent
        for k in p.split("/"):
            leaf = leaf[k]
        assert leaf.shape == s.latent_shape()
    W = cb.decode(latent)  # in range(A)
    chex_equal = jax.tree.map(lambda a, b: (a.shape == b.shape) and (a.dtype == b.dtype), W, params)
    assert all(jax.tree.leaves(chex_equal))
    W2 = cb.decode(cb.encode(W))
    for a, b in zip(jax.tree.leaves(W), jax.tree.leaves(W2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(a).max()) + 1e-30)
    # decode is plain linear algebra: its gradient is Aᵀ applied to the cotangent
    g = jax.grad(lambda t: jnp.sum(cb.decode(t)["conv1"]["bias"]))(latent)
    A = np.asarray(cb.matrix("conv1/bias"), np.float64)
    np.testing.assert_allclose(g["conv1"]["bias"], A.sum(0), rtol=1e-5)


def test_decode_rejects_mismatch(params):
    cb = jp.Codebook.create(params, jax.random.key(3))
    latent = cb.encode(params)
    bad = jax.tree.map(lambda x: x, latent)
    bad["conv1"]["kernel"] = jnp.zeros((3, 3, 16, 5))
    with pytest.raises(ValueError, match="conv1/kernel"):
        cb.decode(bad)
    missing = {k: v for k, v in latent.items() if k != "dense"}
    with pytest.raises(ValueError, match="dense/"):
        cb.decode(missing)


def test_capacity(params):
    cb = jp.Codebook.create(params, jax.random.key(3))
    cap = cb.capacity().as_dict()
    s = cap["conv1/kernel"]
    assert (s["K"], s["n"], s["columns"], s["max_outliers"]) == (32, 8, 3 * 3 * 16, 12)
    text = str(cb.capacity())
    assert "conv1/kernel" in text and "max outliers" in text


def test_save_load_round_trip(tmp_path, params):
    cb = jp.Codebook.create(params, jax.random.key(11), redundancy=3.0)
    path = tmp_path / "cb.json"
    cb.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "jaxpurify.codebook" and "key" not in data  # the key is in cb.json.key
    assert path.stat().st_size < 4096  # matrices are regenerated, not stored
    back = jp.Codebook.load(path)
    assert back == cb
    for p in cb.specs:
        np.testing.assert_array_equal(back.matrix(p), cb.matrix(p))
    assert not list(tmp_path.glob(".codebook-*"))  # no temporary file left behind


def test_load_rejects_bad_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        jp.Codebook.load(p)
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a jaxpurify.codebook"):
        jp.Codebook.load(p)
    p.write_text(json.dumps({"format": "jaxpurify.codebook", "version": 1, "key": [0, 1], "redundancy": 4,
                             "leaves": [{"path": "a", "shape": [4, 8], "dtype": "float32", "axis": 1, "K": 8, "n": 9}]}))
    with pytest.raises(ValueError, match="'a'"):
        jp.Codebook.load(p)


def test_init_latent_keeps_the_initializer_variance(params):
    cb = jp.Codebook.create(params, jax.random.key(3))
    # a random W of the initializer's scale: projection keeps ~n/K of its energy, init_latent all
    W = jax.random.normal(jax.random.key(4), (3, 3, 16, 32))
    p = dict(params, conv1=dict(params["conv1"], kernel=W))
    proj = cb.decode(cb.encode(p))["conv1"]["kernel"]
    init = cb.decode(cb.init_latent(p))["conv1"]["kernel"]
    s = cb.specs["conv1/kernel"]
    assert abs(float(jnp.var(proj)) / float(jnp.var(W)) - s.n / s.K) < 0.05
    assert abs(float(jnp.var(init)) / float(jnp.var(W)) - 1.0) < 0.15
