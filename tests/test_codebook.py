"""Codebook: default coverage and layout, select, determinism, encode/decode, capacity, save/load."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify import _codebook_file, models
from jaxpurify._codebook import gaussian_matrix


@pytest.fixture(scope="module")
def params():
    m = models.SmallCNN(channels=(16, 32), hidden=24, pool="mean")  # a (32, 24) dense kernel
    return m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]


def _flat(tree):
    """path → leaf, by a plain loop over jax's own flattening (independent of jaxpurify.tree)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(k.key) for k in path)] = leaf
    return out


def _stride_free(m):
    return all(math.gcd(m, s) == 1 for s in range(2, 17))


def _width(C, F):
    """The default layout's column count, by brute force from its definition (not the library's
    search): the smallest m > C coprime to C, to the fan-in F and to every stride 2…16."""
    return next(
        m for m in range(C + 1, 64 * (C + F)) if math.gcd(m, C) == 1 and math.gcd(m, F) == 1 and _stride_free(m)
    )


def _pool_width(N):
    """A pool of N entries: the smallest width ≥ ⌈N / 512⌉ that is 1 or free of strides 2…16."""
    return next(m for m in range(-(-N // 512), N + 17) if m == 1 or _stride_free(m))


SMALL = ["conv0/bias", "conv0/kernel", "conv1/bias", "dense/bias", "readout/bias", "readout/kernel"]  # K < 16: pooled


def _pool(cb):
    (name,) = [n for n in cb.groups if n.startswith("pool/")]
    return name, cb.groups[name]


def test_default_protects_every_floating_parameter(params):
    cb = jp.Codebook.create(params, jax.random.key(1))
    flat = _flat(params)
    assert set(cb.protected) == set(flat)
    assert cb.unprotected(params) == []
    cap = cb.capacity().as_dict()
    assert cap["fraction"] == 1.0 and cap["covered"] == sum(v.size for v in flat.values())
    # interleaved: (K, m) = (⌈N/m⌉, m), m from the definition; K < 16 that way: pooled (path order)
    expect = {}
    for path in ("conv1/kernel", "dense/kernel"):
        shape = flat[path].shape
        N, C = flat[path].size, shape[-1]
        m = _width(C, N // C)
        expect[path] = (-(-N // m), m)
    for path in SMALL:
        if flat[path].ndim >= 2:
            N, C = flat[path].size, flat[path].shape[-1]
            assert -(-N // _width(C, N // C)) < 16, path
    name, pool = _pool(cb)
    N = sum(flat[p].size for p in SMALL)
    expect[name] = (-(-N // _pool_width(N)), _pool_width(N))
    assert {g: (s.K, s.columns) for g, s in cb.groups.items()} == expect
    assert pool.members == tuple(p for p in flat if p in SMALL)  # path order
    for g in cb.groups.values():
        assert g.n == math.ceil(g.K / 4.0)


def test_default_layout_is_interleaved(params):
    """Entry f (C order) of a leaf sits at row f // m, column f mod m of its group; a pool fills
    rows with its members' entries, in path order."""
    cb = jp.Codebook.create(params, jax.random.key(1))
    flat = {p: np.asarray(v) for p, v in _flat(params).items()}
    packed = cb.pack(params)
    for path in ("conv1/kernel", "dense/kernel"):
        W = flat[path].ravel()
        Y = packed[path]
        m = Y.shape[1]
        for f in range(W.size):
            assert Y[f // m, f % m] == W[f]
        assert np.isnan(Y.ravel()[W.size :]).all()
    name, pool = _pool(cb)
    entries = [x for p in flat if p in SMALL for x in flat[p].ravel()]
    Y = packed[name]
    for i, x in enumerate(entries):
        assert Y[i // pool.columns, i % pool.columns] == x


def test_tall_leaves_split_and_pool_pads_with_nan():
    rng = np.random.default_rng(0)
    params = {
        "a": rng.standard_normal((3, 3, 64, 8)).astype(np.float32),  # 4608 entries in 17 columns
        "b": rng.standard_normal((9000, 3)).astype(np.float32),  # 27000 in 17 columns: 1589 = 7 × 227 rows
        "c": rng.standard_normal((700,)).astype(np.float32),  # pooled: 700 + 13 entries
        "d": rng.standard_normal((13,)).astype(np.float32),
    }
    cb = jp.Codebook.create(params, 0)
    shapes = {g: (s.K, s.columns) for g, s in cb.groups.items()}
    name, pool = _pool(cb)
    assert _width(8, 576) == 17 and _width(3, 9000) == 17 and _pool_width(713) == 17
    # a: ⌈4608/17⌉ = 272 rows, one group; b: 1589 rows, at least 4 blocks of ≤ 512, and 7 (the
    # smallest count from 4 that divides 1589) blocks of 227 rows, the last padded; the pool:
    # ⌈713/17⌉ = 42 rows
    assert shapes == {"a": (272, 17), **{f"b#{i}": (227, 17) for i in range(7)}, name: (42, 17)}
    packed = cb.pack(params)
    flat_b = params["b"].ravel()
    for i, (lo, hi) in enumerate((227 * i, 227 * (i + 1)) for i in range(7)):
        block = packed[f"b#{i}"].ravel()
        real = flat_b[lo * 17 : hi * 17]
        np.testing.assert_array_equal(block[: real.size], real)
        assert np.isnan(block[real.size :]).all()
    Y = packed[name]
    flat = np.concatenate([params["c"], params["d"]])
    np.testing.assert_array_equal(Y.ravel()[:713], flat)
    assert np.isnan(Y.ravel()[713:]).all() and Y.ravel()[713:].size == 42 * 17 - 713
    back = cb.unpack(packed)
    for p, v in params.items():
        np.testing.assert_array_equal(back[p], v)
    assert pool.weakest == (42 - 11 - 1) // 2  # a padded column has one row less
    assert cb.capacity().weakest.name == name  # the shortest K


def test_padding_is_an_erasure_and_pooled_columns_certify():
    """The padded row of a pool is NaN: recover treats it as an erasure and still certifies."""
    rng = np.random.default_rng(1)
    params = {"b1": rng.standard_normal(400).astype(np.float32), "b2": rng.standard_normal(333).astype(np.float32)}
    cb = jp.Codebook.create(params, 3)
    name, g = _pool(cb)
    assert g.K * g.columns > 733  # padded
    clean = cb.decode(cb.encode(params))  # in range(A)
    Y = np.array(cb.pack(clean)[name])
    assert np.isnan(Y).sum() == g.K * g.columns - 733
    bad = Y.copy()
    for j in range(g.columns):  # 10% gross errors per column, on real rows
        rows = rng.choice(g.K - 1, int(0.1 * g.K), replace=False)
        bad[rows, j] += 100.0
    out = jp.recover(cb.matrix(name), jnp.asarray(bad))
    assert bool(out.certified.all())
    fitted = np.asarray(cb.matrix(name, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)) @ np.asarray(out.x)
    real = ~np.isnan(Y)
    np.testing.assert_allclose(fitted[real], Y[real], rtol=1e-4, atol=1e-4 * np.abs(Y[real]).max())


def test_select_skip_and_axis(params):
    def select(path, leaf):
        if path.startswith("readout"):
            return False
        if path == "dense/kernel":
            return 0  # the single-axis layout: input features
        return None

    cb = jp.Codebook.create(params, jax.random.key(1), redundancy=2.0, select=select)
    assert "readout/kernel" not in cb.protected
    assert {p: r for p, _, r in cb.unprotected(params)} == {
        "readout/bias": "skipped by select",
        "readout/kernel": "skipped by select",
    }
    s = cb.specs["dense/kernel"]
    assert s.axis == 0 and s.K == params["dense"]["kernel"].shape[0] and s.n == -(-s.K // 2)
    W = np.asarray(params["dense"]["kernel"])
    np.testing.assert_array_equal(cb.pack(params)["dense/kernel"], W)  # column j = W[:, j]
    assert cb.capacity().fraction == pytest.approx(1 - (24 * 10 + 10) / sum(v.size for v in _flat(params).values()))
    with pytest.raises(ValueError, match="dense/kernel"):
        jp.Codebook.create(params, jax.random.key(1), select=lambda p, l: 5 if p == "dense/kernel" else None)
    with pytest.raises(TypeError, match="dense/kernel"):
        jp.Codebook.create(params, jax.random.key(1), select=lambda p, l: "x" if p == "dense/kernel" else None)
    with pytest.raises(ValueError, match="redundancy"):
        jp.Codebook.create(params, jax.random.key(1), redundancy=1.0)


def test_matrices_deterministic_and_distinct(params):
    a = jp.Codebook.create(params, jax.random.key(7))
    b = jp.Codebook.create(params, jax.random.key(7))
    c = jp.Codebook.create(params, jax.random.key(8))
    for name, g in a.groups.items():
        np.testing.assert_array_equal(a.matrix(name), b.matrix(name))
        assert not np.allclose(a.matrix(name), c.matrix(name))
        ref = gaussian_matrix(a.secret, name, g.K, g.n)  # A is named by the group
        np.testing.assert_array_equal(a.matrix(name, jnp.float32), ref.astype(np.float32))
    d = jp.Codebook.create(params, jax.random.PRNGKey(7))
    e = jp.Codebook.create(params, 7)
    for name in a.groups:
        np.testing.assert_array_equal(a.matrix(name), d.matrix(name))
        np.testing.assert_array_equal(a.matrix(name), e.matrix(name))
    with pytest.raises(ValueError, match="nope"):
        a.matrix("nope")


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
    assert {k: v.shape for k, v in latent.items()} == {n: (g.n, g.columns) for n, g in cb.groups.items()}
    W = cb.decode(latent)  # in range(A)
    assert jax.tree.structure(W) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(W), jax.tree.leaves(params)):
        assert a.shape == b.shape and a.dtype == b.dtype
    # decode is A Θ laid out: check it against numpy for one leaf group and the pool
    for name, g in cb.groups.items():
        Y = np.asarray(cb.matrix(name), np.float64) @ np.asarray(latent[name], np.float64)
        got = cb.pack(W)[name]
        real = np.isfinite(got)  # the last row's padding entries are erasures (NaN), not values
        assert real.sum() == g.entries
        np.testing.assert_allclose(got[real], Y.astype(np.float32)[real], rtol=1e-5, atol=1e-6)
    traced = jax.jit(cb.encode)(W)  # the jnp path gives the host fit's answer
    for name in latent:
        np.testing.assert_allclose(traced[name], latent[name], rtol=1e-4, atol=1e-5)
    W2 = cb.decode(cb.encode(W))
    for a, b in zip(jax.tree.leaves(W), jax.tree.leaves(W2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(a).max()) + 1e-30)
    # decode is plain linear algebra: the gradient of the sum of a pooled leaf is Aᵀ applied to
    # the indicator of that leaf's entries in the pool
    name, pool = _pool(cb)
    g = jax.jit(jax.grad(lambda t: jnp.sum(cb.decode(t)["conv1"]["bias"])))(latent)
    start = sum(params[p.split("/")[0]][p.split("/")[1]].size for p in SMALL[: SMALL.index("conv1/bias")])
    ind = np.zeros(pool.K * pool.columns)
    ind[start : start + 32] = 1.0
    A = np.asarray(cb.matrix(name), np.float64)
    np.testing.assert_allclose(g[name], A.T @ ind.reshape(pool.K, pool.columns), rtol=1e-5, atol=1e-6)


def test_unprotected_params_ride_in_the_latent(params):
    cb = jp.Codebook.create(params, 0, select=lambda p, l: False if p == "readout/bias" else None)
    latent = cb.encode(params)
    assert latent["readout/bias"] is params["readout"]["bias"]
    out = cb.decode(dict(latent, **{"readout/bias": jnp.ones(10)}))
    np.testing.assert_array_equal(out["readout"]["bias"], np.ones(10))
    with pytest.raises(ValueError, match="readout/bias"):
        cb.decode({k: v for k, v in latent.items() if k != "readout/bias"})


def test_decode_rejects_mismatch(params):
    cb = jp.Codebook.create(params, jax.random.key(3))
    latent = cb.encode(params)
    with pytest.raises(ValueError, match="conv1/kernel"):
        cb.decode(dict(latent, **{"conv1/kernel": jnp.zeros((3, 5))}))
    with pytest.raises(ValueError, match="dense/kernel"):
        cb.decode({k: v for k, v in latent.items() if k != "dense/kernel"})
    with pytest.raises(ValueError, match="dense/kernel"):
        cb.decode(dict(latent, **{"dense/kernel": jnp.zeros(latent["dense/kernel"].shape, jnp.int32)}))
    with pytest.raises(TypeError, match="latent"):
        cb.decode([1, 2])
    with pytest.raises(ValueError, match="conv1/kernel"):
        cb.encode(dict(params, conv1=dict(params["conv1"], kernel=jnp.zeros((3, 3, 16, 8)))))


def test_capacity(params):
    cb = jp.Codebook.create(params, jax.random.key(3))
    cap = cb.capacity().as_dict()
    s = cap["groups"]["conv1/kernel"]
    # 3·3·16·32 = 4608 entries in m = 37 columns (_width(32, 144)): K = 125, n = 32
    assert _width(32, 144) == 37
    assert (s["K"], s["n"], s["columns"], s["max_outliers"]) == (125, 32, 37, (125 - 32) // 2)
    name, pool = _pool(cb)
    assert cap["weakest"] == {"group": "dense/kernel", "max_outliers": (27 - 7 - 1) // 2}
    text = str(cb.capacity())
    assert "conv1/kernel" in text and "max outliers" in text and "(100.0%)" in text


def test_linen_state_collections_and_odd_leaves_are_not_protected():
    rng = np.random.default_rng(0)
    variables = {
        "params": {"w": jnp.asarray(rng.standard_normal((32, 4)), jnp.float32), "step": jnp.asarray(3)},
        "batch_stats": {"mean": jnp.zeros(4), "var": jnp.ones(4)},
        "rng": jax.random.key(0),
    }
    cb = jp.Codebook.create(variables, 0)
    assert cb.protected == ("params/w",)
    got = {p: (z, r) for p, z, r in cb.unprotected(variables)}
    assert got == {
        "batch_stats/mean": (4, "inference state (linen collection 'batch_stats')"),
        "batch_stats/var": (4, "inference state (linen collection 'batch_stats')"),
        "params/step": (1, "not floating (int32)"),
        "rng": (1, "RNG state (typed PRNG key)"),
    }
    with pytest.raises(ValueError, match="params/step"):
        jp.Codebook.create(variables, 0, select=lambda p, l: True)
    with pytest.raises(ValueError, match="no parameter"):
        jp.Codebook.create({"x": jnp.zeros(3, jnp.int32)}, 0)


def test_save_load_round_trip(tmp_path, params):
    cb = jp.Codebook.create(
        params, jax.random.key(11), redundancy=3.0, select=lambda p, l: 0 if p == "dense/kernel" else None
    )
    path = tmp_path / "cb.json"
    cb.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "jaxpurify.codebook" and "key" not in data  # the key is in cb.json.key
    assert path.stat().st_size < 8192  # matrices are regenerated, not stored
    back = jp.Codebook.load(path)
    assert back == cb and back.groups == cb.groups
    for name in cb.groups:
        np.testing.assert_array_equal(back.matrix(name), cb.matrix(name))
    latent = cb.encode(params)
    for a, b in zip(jax.tree.leaves(back.decode(latent)), jax.tree.leaves(cb.decode(latent))):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob(".codebook-*"))  # no temporary file left behind


def test_version_1_files_still_load(tmp_path, params):
    """A version-1 file (one single-axis group per leaf, A named by the path) keeps its matrices."""
    v1 = {
        "format": "jaxpurify.codebook",
        "version": 1,
        "key": [0, 42],
        "redundancy": 4.0,
        "leaves": [{"path": "dense/kernel", "shape": [32, 24], "dtype": "float32", "axis": 1, "K": 24, "n": 6}],
    }
    p = tmp_path / "v1.json"
    p.write_text(json.dumps(v1))
    cb = jp.Codebook.load(p, allow_legacy=True)  # unauthenticated: refused without the opt-in
    np.testing.assert_array_equal(
        cb.matrix("dense/kernel", jnp.float32), gaussian_matrix((0, 42), "dense/kernel", 24, 6).astype(np.float32)
    )
    W = np.asarray(params["dense"]["kernel"])
    np.testing.assert_array_equal(cb.pack(params)["dense/kernel"], W.T)  # column = a row of W


def test_load_rejects_bad_files(tmp_path, params):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        jp.Codebook.load(p)
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a jaxpurify.codebook"):
        jp.Codebook.load(p)
    p.write_text(
        json.dumps(
            {
                "format": "jaxpurify.codebook",
                "version": 1,
                "key": [0, 1],
                "redundancy": 4,
                "leaves": [{"path": "a", "shape": [4, 8], "dtype": "float32", "axis": 1, "K": 8, "n": 9}],
            }
        )
    )
    with pytest.raises(ValueError, match="'a'"):
        jp.Codebook.load(p, allow_legacy=True)
    cb0 = jp.Codebook.create(params, 0)
    good = cb0.to_json()
    for edit, match in [
        (lambda d: d["groups"][0].update(K=d["groups"][0]["K"] + 1), "conv1/kernel"),
        (lambda d: d["groups"][0]["segments"][0].__setitem__(2, 5), "conv1/kernel"),
        (lambda d: d["groups"].pop(), "conv0"),
        (lambda d: d["leaves"][0].update(dtype="int32"), "conv0"),
        (lambda d: d["leaves"][0].update(axis=9), "conv0"),
        (lambda d: d.pop("groups"), "malformed"),
    ]:
        bad = json.loads(json.dumps(good))
        edit(bad)
        # written with a valid MAC (as a buggy writer would), so that the layout checks are reached
        _codebook_file.write(p, None, _codebook_file.document(bad, cb0.secret, cb0.model, None), cb0.secret)
        with pytest.raises(ValueError, match=match):
            jp.Codebook.load(p)


def test_init_latent_keeps_the_initializer_variance(params):
    cb = jp.Codebook.create(params, jax.random.key(3))
    # a random W of the initializer's scale: projection keeps ~n/K of its energy, init_latent all
    W = jax.random.normal(jax.random.key(4), (3, 3, 16, 32))
    p = dict(params, conv1=dict(params["conv1"], kernel=W))
    proj = cb.decode(cb.encode(p))["conv1"]["kernel"]
    init = cb.decode(cb.init_latent(p))["conv1"]["kernel"]
    g = cb.groups["conv1/kernel"]
    assert abs(float(jnp.var(proj)) / float(jnp.var(W)) - g.n / g.K) < 0.05
    assert abs(float(jnp.var(init)) / float(jnp.var(W)) - 1.0) < 0.15


def test_half_precision_leaves_keep_their_dtype_and_pool_apart():
    p = {"w": jnp.ones((32, 8), jnp.bfloat16), "b": jnp.ones(8, jnp.float16), "c": jnp.ones(9, jnp.float32)}
    cb = jp.Codebook.create(p, 0)
    pools = {g.dtype: g.members for n, g in cb.groups.items() if n.startswith("pool/")}
    assert pools == {"float16": ("b",), "float32": ("c",)}
    assert {n: y.dtype for n, y in cb.pack(p).items()}["w"] == jnp.bfloat16
    out = cb.decode(cb.encode(p))
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in p.items()}
    assert jp.Codebook.from_json(cb.to_json(), cb.secret).to_json() == cb.to_json()
