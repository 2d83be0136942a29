"""purify on Flax CNNs: clean params and logits back under mixed corruption; honest reports."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify import contamination as C
from jaxpurify import models


@pytest.fixture(scope="module")
def setup():
    model = models.SmallCNN(channels=(16, 32), hidden=32)
    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
    params = model.init(jax.random.key(1), x)["params"]
    # encode only the leaves with K ≥ 16 so every column has room for a few errors
    cb = jp.Codebook.create(params, jax.random.key(2), select=lambda p, l: -1 if l.shape[-1] >= 16 else False)
    latent = cb.encode(params)
    # nonzero biases, so their recovery is not trivial
    latent = jax.tree.map(lambda t: t + 0.1 * jax.random.normal(jax.random.key(3), t.shape), latent)
    clean = cb.decode(latent)
    apply = lambda p: model.apply({"params": p}, x)
    return model, cb, clean, apply


def _flat(tree):
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_mixed_corruption_returns_clean_params_and_logits(setup):
    model, cb, clean, apply = setup

    def mixed(key, w, axis):
        k1, k2, k3 = jax.random.split(key, 3)
        w = C.gross_errors(k1, w, 0.08, axis=axis, low=1e-2, high=1e6)
        w = C.bit_flips(k2, w, 0.01)
        return C.erasures(k3, w, 0.01)

    bad = C.contaminate(jax.random.key(4), clean, cb, mixed)
    assert not all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(bad), jax.tree.leaves(clean)))
    pur, report = jp.purify(bad, cb)
    assert report.ok, str(report)
    fc, fp = _flat(clean), _flat(pur)
    for k in fc:
        assert fp[k].dtype == fc[k].dtype and fp[k].shape == fc[k].shape
        np.testing.assert_allclose(fp[k], fc[k], rtol=1e-5, atol=1e-5 * float(jnp.abs(fc[k]).max()))
    np.testing.assert_allclose(apply(pur), apply(clean), rtol=1e-4, atol=1e-4)
    assert report["conv1/kernel"].flagged > 0 and report["conv1/kernel"].erasures > 0
    assert report.certified == report.columns == sum(s.columns for s in cb.specs.values())


def test_unencoded_leaves_pass_through_and_input_untouched(setup):
    _, cb, clean, _ = setup
    bad = C.contaminate(jax.random.key(5), clean, cb, C.gross_errors, rate=0.05)
    before = jax.tree.map(np.array, bad)
    pur, _ = jp.purify(bad, cb)
    for p in ("readout/kernel", "readout/bias"):  # K = 10 < 16: not encoded
        a, b = p.split("/")
        assert pur[a][b] is bad[a][b]
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(bad)):
        np.testing.assert_array_equal(x, y)


def test_beyond_capacity_is_reported_not_recovered(setup):
    _, cb, clean, _ = setup
    bad = C.contaminate(jax.random.key(6), clean, cb, C.gross_errors, rate=0.45)
    pur, report = jp.purify(bad, cb)
    assert not report.ok
    assert report.certified < report.columns
    assert "NOT OK" in str(report)
    with pytest.raises(RuntimeError, match="not certified"):
        jp.purify(bad, cb, throw=True)


def test_mismatch_names_the_leaf(setup):
    _, cb, clean, _ = setup
    wrong = jax.tree.map(lambda x: x, clean)
    wrong["conv1"] = dict(wrong["conv1"], kernel=jnp.zeros((3, 3, 16, 8)))
    with pytest.raises(ValueError, match="conv1/kernel"):
        jp.purify(wrong, cb)
    missing = {k: v for k, v in clean.items() if k != "dense"}
    with pytest.raises(ValueError, match="dense/"):
        jp.purify(missing, cb)


def test_one_hidden_cnn_structure():
    m = models.OneHiddenCNN(filters=12, patch=4, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    p = m.init(jax.random.key(1), x)["params"]
    assert p["hidden"]["kernel"].shape == (4, 4, 1, 12) and p["readout"]["kernel"].shape == (12, 3)
    # f(x) = V · mean_p relu(W x_p + b) + c over the four non-overlapping 4×4 patches
    W = np.asarray(p["hidden"]["kernel"]).reshape(16, 12)
    patches = [np.asarray(x)[:, i : i + 4, j : j + 4, 0].reshape(2, 16) for i in (0, 4) for j in (0, 4)]
    h = np.mean([np.maximum(q @ W + np.asarray(p["hidden"]["bias"]), 0) for q in patches], axis=0)
    ref = h @ np.asarray(p["readout"]["kernel"]) + np.asarray(p["readout"]["bias"])
    np.testing.assert_allclose(m.apply({"params": p}, x), ref, rtol=1e-5, atol=1e-5)


def test_blocked_calls_match_one_call(setup):
    """Bounding memory (many small solver calls) gives the same answer as one call per group."""
    _, cb, clean, _ = setup
    bad = C.contaminate(jax.random.key(8), clean, cb, C.gross_errors, rate=0.1)
    one, rep1 = jp.purify(bad, cb)
    many, rep2 = jp.purify(bad, cb, max_entries=64 * 7)  # blocks of a few columns
    assert rep1.ok and rep2.ok
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
