"""The keyed seal: attacks that l1 purification certifies are detected; honest purification verifies.

Ground truth in every test is the change the test itself made to the deployed weights."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify import _seal

K, N = 128, 32  # the kernel of issue 10: 3×3×32×128, encoded on its 128 output channels at K/n = 4


@pytest.fixture(scope="module")
def setup():
    shapes = {"conv": {"kernel": jnp.zeros((3, 3, 32, K)), "bias": jnp.zeros((K,))}}
    # a strong key (the attacker does not have it); encoded along the last axis as in the paper, so
    # the kernel is 288 columns of K = 128 and the bias one more (the seal itself is layout-free)
    cb = jp.Codebook.create(shapes, select=lambda path, leaf: leaf.ndim - 1)
    k1, k2 = jax.random.split(jax.random.key(1))
    init = {"conv": {"kernel": jax.random.normal(k1, (3, 3, 32, K)), "bias": jax.random.normal(k2, (K,))}}
    deployed = jax.tree.map(np.asarray, cb.decode(cb.init_latent(init)))  # in range(A)
    cb.seal(deployed)
    return cb, deployed


def _cols(w):  # (K, 288): one column per position, the encoded axis is last
    return np.asarray(w, np.float64).reshape(-1, K).T


def _uncols(Y, like):
    return Y.T.reshape(like.shape).astype(like.dtype)


def _with_kernel(deployed, kernel):
    return {"conv": {"kernel": kernel, "bias": deployed["conv"]["bias"]}}


def _purify(cb, params):
    purified, report = jp.purify(params, cb)
    return jax.tree.map(np.asarray, purified), report


def test_span_attack_is_certified_by_l1_and_caught_by_the_seal(setup):
    cb, deployed = setup
    W = deployed["conv"]["kernel"]
    # key-less: range(A) is the span of the leaf's own columns (an SVD of the deployed kernel)
    U = np.linalg.svd(_cols(W), full_matrices=False)[0][:, :N]
    rng = np.random.default_rng(0)
    delta = U @ rng.standard_normal((N, _cols(W).shape[1]))
    delta *= 0.21 * np.abs(W).max() / np.abs(delta).max()
    tampered = _with_kernel(deployed, _uncols(_cols(W) + delta, W))
    purified, report = _purify(cb, tampered)
    leaf = report["conv/kernel"]
    assert (leaf.certified, leaf.columns) == (288, 288)  # l1 cannot see it: every column certified
    change = np.abs(purified["conv"]["kernel"] - W).max() / np.abs(W).max()
    assert change > 0.2  # ... and the tampering is still there
    verdict = cb.verify(purified)
    assert not verdict["conv/kernel"].verified
    assert verdict["conv/kernel"].statistic > 100 * verdict["conv/kernel"].tolerance
    assert verdict["conv/bias"].verified  # the untouched leaf is not blamed


def test_in_span_change_of_one_column_is_caught_and_localized(setup):
    cb, deployed = setup
    W = deployed["conv"]["kernel"]
    Y = _cols(W)
    U = np.linalg.svd(Y, full_matrices=False)[0][:, :N]
    j = 200
    step = U @ np.random.default_rng(1).standard_normal(N)
    Y = Y.copy()
    Y[:, j] += 0.21 * np.abs(W).max() * step / np.abs(step).max()
    purified, report = _purify(cb, _with_kernel(deployed, _uncols(Y, W)))
    assert report["conv/kernel"].certified == 288
    v = cb.verify(purified)["conv/kernel"]
    assert not v.verified
    # column j is flat entries [128 j, 128 j + 128): one chunk of 4096, and only that one fails
    assert v.failed_chunks == (((128 * j) // 4096 * 4096, (128 * j) // 4096 * 4096 + 4096),)


@pytest.mark.parametrize("fault", ["zeroed", "copied"])
def test_whole_column_faults_certified_wrong_are_caught(setup, fault):
    cb, deployed = setup
    W = deployed["conv"]["kernel"]
    Y = _cols(W).copy()
    if fault == "zeroed":
        Y[:, 17] = 0.0
    else:
        Y[:, 17] = Y[:, 250]
    purified, report = _purify(cb, _with_kernel(deployed, _uncols(Y, W)))
    assert report["conv/kernel"].certified == 288  # certified as the zero column / as the copy
    np.testing.assert_allclose(_cols(purified["conv"]["kernel"])[:, 17], Y[:, 17], atol=1e-5)
    assert not cb.verify(purified)["conv/kernel"].verified


def test_laundered_estimate_is_caught(setup):
    cb, deployed = setup
    W = deployed["conv"]["kernel"]
    Y = _cols(W)
    rng = np.random.default_rng(2)
    bad = rng.random(Y.shape) < 0.45  # 45% gross errors: beyond capacity
    Yc = np.where(bad, Y + rng.choice([-1, 1], Y.shape) * rng.uniform(1, 30, Y.shape) * np.abs(Y).max(), Y)
    A = np.asarray(cb.matrix("conv/kernel", jnp.float32))
    # a (2, K, 512) zero-padded call: the shape of purify's own call for this tree (kernel and bias
    # blocks), so its compilation is reused and the test stays fast
    Ypad = np.zeros((2, K, 512), np.float32)
    Ypad[0, :, : Y.shape[1]] = Yc
    first = jp.recover(jnp.asarray(np.stack([A, A])), jnp.asarray(Ypad))
    assert int(first.certified[0, : Y.shape[1]].sum()) < 288 // 2
    estimate = A @ np.asarray(first.x[0, :, : Y.shape[1]])
    laundered = _with_kernel(deployed, _uncols(estimate, W))  # the l1 estimate written back
    purified, report = _purify(cb, laundered)
    assert report["conv/kernel"].certified == 288  # a second pass certifies the in-range estimate
    assert np.abs(purified["conv"]["kernel"] - W).max() > 0.1 * np.abs(W).max()
    assert not cb.verify(purified)["conv/kernel"].verified


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3])
def test_honest_purification_within_capacity_verifies(setup, rate):
    cb, deployed = setup
    W = deployed["conv"]["kernel"]
    Y = _cols(W)
    rng = np.random.default_rng(3)
    Yc = Y.copy()
    for j in range(Y.shape[1]):  # rate·K gross errors per column, at most 38 < (K − n)/2 = 48
        idx = rng.choice(K, int(rate * K), replace=False)
        Yc[idx, j] += rng.choice([-1, 1], idx.size) * np.exp(rng.uniform(0, np.log(1e3), idx.size))
    Yc[0, 5] = np.nan if rate else Yc[0, 5]  # an erasure too
    b = deployed["conv"]["bias"].copy()
    if rate:
        b[:3] = [1e4, -1e4, np.inf]
    purified, report = _purify(cb, {"conv": {"kernel": _uncols(Yc, W), "bias": b}})
    assert report.ok
    verdicts = cb.verify(purified)
    for v in verdicts.values():
        assert v.verified, v
        assert v.statistic < 0.1 * v.tolerance  # far from a false alarm
    assert verdicts["conv/kernel"].detectable < 0.005 * np.abs(W).max()  # the stated guarantee


def test_statistic_is_the_change_over_t_sqrt_c():
    # one entry changed by δ: every sketch row of its chunk moves by exactly ±δ
    cb = jp.Codebook.create({"w": np.zeros((100, 64), np.float64)})
    w = np.random.default_rng(4).standard_normal((100, 64))
    cb.seal({"w": w})
    t = math.sqrt(2 * math.log(2 * 32 * 2 / 2.0**-40))  # 6400 entries: chunks of 4096 and 2304
    for i, c in [(10, 4096), (5000, 2304)]:
        v = w.copy()
        v.flat[i] += 0.37
        out = cb.verify({"w": v})["w"]
        assert out.statistic == pytest.approx(0.37 / (t * math.sqrt(c)), rel=1e-9)
        assert not out.verified and len(out.failed_chunks) == 1
        assert cb.verify({"w": v}, err={"w": 0.37 / (t * math.sqrt(c)) * 1.001})["w"].verified


def test_changes_just_above_the_detectable_size_are_caught_below_tolerance_pass():
    cb = jp.Codebook.create({"w": jnp.zeros((64, 128), jnp.float32)})
    w = np.random.default_rng(5).standard_normal((64, 128)).astype(np.float32)
    cb.seal({"w": w})
    clean = cb.verify({"w": w})["w"]
    assert clean.verified and clean.statistic == 0.0
    rng = np.random.default_rng(6)
    for _ in range(20):  # a random entry, random sign, just above the guaranteed size: never missed
        v = w.astype(np.float64)
        v.flat[rng.integers(v.size)] += rng.choice([-1, 1]) * 1.01 * clean.detectable
        assert not cb.verify({"w": v})["w"].verified
    v = w.copy()
    v.flat[7] += clean.tolerance  # an error within the bound ε on one entry: no alarm
    assert cb.verify({"w": v})["w"].verified


def test_bad_inputs():
    cb = jp.Codebook.create({"w": jnp.zeros((4, 16))})
    with pytest.raises(ValueError, match="no seal"):
        cb.verify({"w": np.zeros((4, 16))})
    cb.seal({"w": np.ones((4, 16), np.float32)})
    with pytest.raises(ValueError, match="'w'"):
        cb.verify({"w": np.ones((4, 16))}, err=-1.0)
    with pytest.raises(ValueError, match="'w'"):
        cb.verify({"w": np.ones((4, 16))}, err={"w": float("nan")})
    with pytest.raises(ValueError, match="'w' has shape"):
        cb.verify({"w": np.ones((16, 4))})
    with pytest.raises(ValueError, match="'w' of the seal is missing"):
        cb.verify({"v": np.ones((4, 16))})
    nan = np.ones((4, 16))
    nan[1, 2] = np.nan
    out = cb.verify({"w": nan})["w"]
    assert not out.verified and out.statistic == math.inf
    with pytest.raises(ValueError, match="'w': cannot seal non-finite"):
        cb.seal({"w": nan.astype(np.float32)})
    with pytest.raises(ValueError, match="chunk"):
        cb.seal({"w": np.ones((4, 16), np.float32)}, chunk=0)


def test_seal_keys_differ_per_codebook_and_repr_hides_them():
    tree = {"w": np.ones((4, 16), np.float32)}
    a, b = jp.Codebook.create(tree), jp.Codebook.create(tree)
    sa, sb = a.seal(tree), b.seal(tree)
    assert not np.allclose(sa.leaves["w"].sketch, sb.leaves["w"].sketch)
    assert a.secret.hex() not in repr(sa) + repr(a) and "sealed" in repr(a)
    assert _seal.verify(sb, tree)["w"].verified


def test_bfloat16_leaf_one_ulp_everywhere_verifies_and_a_large_change_does_not():
    w = np.random.default_rng(7).standard_normal((64, 128)).astype(jnp.bfloat16)
    seal = _seal.Seal.create(bytes(range(32)), {"w": w}, chunk=16)  # 16-bit leaves: small chunks (module doc)
    up = (w.view(np.uint16) + np.uint16(1)).view(jnp.bfloat16)  # every entry one bf16 ulp larger in magnitude
    assert np.all(up != w)
    assert _seal.verify(seal, {"w": up})["w"].verified  # the cast back to bfloat16 may move every entry an ulp
    v = w.astype(np.float32)
    v[3, 5] += 0.3 * np.abs(v).max()
    out = _seal.verify(seal, {"w": v.astype(jnp.bfloat16)})["w"]
    assert not out.verified and out.detectable < 0.3 * float(np.abs(w.astype(np.float32)).max())


def test_sketch_matches_a_plain_python_rederivation():
    # signs: SHAKE-256 of BLAKE2b(derive(secret, "seal-signs"), path \0 chunk index), bit j·c + i = row j, entry i
    import hashlib

    w = np.random.default_rng(8).standard_normal(5000)
    cb = jp.Codebook.create({"w": np.zeros(5000)}, bytes(range(32)))
    sketch = cb.seal({"w": w}).leaves["w"].sketch
    sign_key = hashlib.blake2b(b"jaxpurify/seal-signs", digest_size=32, key=bytes(range(32))).digest()
    for chunk, start, size in [(0, 0, 4096), (1, 4096, 904)]:
        seed = hashlib.blake2b(b"w\0" + chunk.to_bytes(8, "little"), digest_size=32, key=sign_key).digest()
        stream = hashlib.shake_256(seed).digest(32 * size // 8 + 1)
        for row in (0, 31):
            bits = [(stream[(row * size + i) // 8] >> (7 - (row * size + i) % 8)) & 1 for i in range(size)]
            expect = math.fsum((1 - 2 * b) * x for b, x in zip(bits, w[start : start + size]))
            assert sketch[chunk, row] == pytest.approx(expect, rel=1e-12, abs=1e-12)
