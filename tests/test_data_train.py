import gzip

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxpurify as jp
from jaxpurify import data, models
from jaxpurify.train import (
    TrainResult,
    accuracy,
    batch_statistics,
    cross_entropy,
    random_shift,
    recipe,
    schedule,
    train,
)


def test_digits_embedded():
    ds = data.digits()
    assert ds.train.x.shape[1:] == (8, 8, 1) and ds.train.x.dtype == np.float32
    assert len(ds.train.x) + len(ds.test.x) == 1797
    assert 0.0 <= ds.train.x.min() and ds.train.x.max() <= 1.0
    assert set(np.unique(ds.test.y)) == set(range(10))


def _write_idx(path, arr, ndim):
    header = bytes([0, 0, 8, ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (20, 28, 28))
    labels = rng.integers(0, 10, 20)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, 3)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 1)
    ds = data.mnist(str(tmp_path), test_fraction=0.25)
    assert ds.name == "mnist-t10k-split"
    assert len(ds.train.x) == 15 and len(ds.test.x) == 5
    allx = np.concatenate([ds.train.x, ds.test.x])[..., 0] * 255
    ally = np.concatenate([ds.train.y, ds.test.y])
    order = np.argsort(
        [int(np.flatnonzero((imgs.reshape(20, -1) == a.reshape(1, -1)).all(1))[0]) for a in allx.round()]
    )
    np.testing.assert_array_equal(ally[order], labels)


def test_mnist_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        data.mnist(str(tmp_path))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"garbage!"))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"garbage!"))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        data.mnist(str(tmp_path))


def _write_cifar(path, imgs, labels):
    # the documented record: label byte, then the red, green and blue planes, each 32×32 row major
    with open(path, "wb") as f:
        for im, lab in zip(imgs, labels):
            f.write(bytes([int(lab)]))
            for c in range(3):
                f.write(bytes(int(v) for v in im[:, :, c].ravel()))


def test_cifar10_binary_reader(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    expect = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        imgs, labels = rng.integers(0, 256, (3, 32, 32, 3)), rng.integers(0, 10, 3)
        _write_cifar(d / name, imgs, labels)
        expect[name] = (imgs, labels)
    ds = data.cifar10(str(tmp_path))  # the parent folder is accepted too
    assert ds.train.x.shape == (15, 32, 32, 3) and ds.test.x.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(np.round(ds.test.x * 255), expect["test_batch.bin"][0])
    np.testing.assert_array_equal(ds.test.y, expect["test_batch.bin"][1])
    np.testing.assert_array_equal(np.round(ds.train.x[3:6] * 255), expect["data_batch_2.bin"][0])


def test_cifar10_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        data.cifar10(str(tmp_path))
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}.bin").write_bytes(b"\0" * 3073)
    (tmp_path / "test_batch.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(ValueError, match="test_batch.bin"):
        data.cifar10(str(tmp_path))


def test_tfds_source_reads_prepared_data_without_download(monkeypatch):
    import sys
    import types

    calls = {}
    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28, 1)

    def load(name, **kw):
        calls.update(kw, name=name)
        if name == "cifar10":
            raise AssertionError("Dataset cifar10 not found in data_dir")
        return [(imgs, np.array([3, 4])), (imgs[:1], np.array([5]))]

    fake = types.SimpleNamespace(load=load, as_numpy=lambda t: t)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    ds = data.load("mnist", "/prepared", source="tfds")
    assert calls["download"] is False and calls["data_dir"] == "/prepared" and calls["as_supervised"]
    assert ds.train.x.dtype == np.float32 and ds.train.x.max() == 1.0 * imgs.max() / 255
    np.testing.assert_array_equal(ds.test.y, [5])
    with pytest.raises(FileNotFoundError, match="no prepared 'cifar10'"):
        data.load("cifar10", "/prepared", source="tfds")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # not installed
    with pytest.raises(ValueError, match="tensorflow-datasets"):
        data.load("mnist", None, source="tfds")


def test_training_through_decode_learns():
    ds = data.digits()
    model = models.OneHiddenCNN(filters=32, patch=4)
    apply = lambda p, x: model.apply({"params": p}, x)
    params = model.init(jax.random.key(0), ds.train.x[:1])["params"]
    cb = jp.Codebook.create(params, jax.random.key(1), select=lambda p, _: -1 if p.startswith("hidden/") else False)
    latent = cb.encode(params)
    before = accuracy(apply, cb.decode(latent), ds.test.x, ds.test.y)
    latent, losses = train(
        apply, latent, cb, ds.train.x, ds.train.y, key=jax.random.key(2), steps=300, optimizer=optax.adam(1e-2)
    )
    assert losses.shape == (300,) and losses[-50:].mean() < 0.5 * losses[:50].mean()
    after = accuracy(apply, cb.decode(latent), ds.test.x, ds.test.y)
    assert before < 0.4 and after > 0.8
    # the trained weights are in range(A): the codebook's own encode/decode reproduces them
    W = cb.decode(latent)["hidden"]["kernel"]
    np.testing.assert_allclose(cb.decode(cb.encode(cb.decode(latent)))["hidden"]["kernel"], W, rtol=1e-4, atol=1e-6)


def _tiny_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    params = {"w": jnp.asarray(rng.normal(size=(6, 2)).astype(np.float32) * 0.1), "b": jnp.zeros((2,), jnp.float32)}
    apply = lambda p, xb: xb @ p["w"] + p["b"]
    return x, y, params, apply


def test_chunked_loop_matches_a_plain_loop():
    # reference: one optax step per Python iteration, the minibatch drawn as train documents it
    x, y, params, apply = _tiny_problem()
    key, steps, b = jax.random.key(3), 7, 16
    res = train(apply, params, None, x, y, key=key, steps=steps, batch_size=b, optimizer=optax.sgd(0.1), log_every=3)
    assert isinstance(res, TrainResult)
    opt = optax.sgd(0.1)
    p, s, ref_losses = params, opt.init(params), []
    for i in range(steps):
        idx = np.asarray(jax.random.choice(jax.random.fold_in(key, i), len(x), (b,), replace=False))
        logits = apply(p, jnp.asarray(x[idx]))
        ref_losses.append(float(-jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(b), y[idx]])))
        g = jax.grad(lambda q, idx=idx: cross_entropy(apply(q, jnp.asarray(x[idx])), jnp.asarray(y[idx])))(p)
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(res.losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(res.latent["w"], p["w"], rtol=1e-5, atol=1e-7)


def test_callback_sees_every_chunk_and_can_stop():
    x, y, params, apply = _tiny_problem()
    seen = []

    def cb(step, loss, latent):
        seen.append((step, loss, np.asarray(latent["w"]).copy()))
        return step >= 10

    res = train(apply, params, None, x, y, key=jax.random.key(0), steps=100, log_every=5, callback=cb)
    assert [s for s, _, _ in seen] == [5, 10]
    assert len(res.losses) == 10
    assert seen[-1][1] == res.losses[-1]
    np.testing.assert_array_equal(seen[-1][2], res.latent["w"])
    w0 = np.asarray(params["w"]).copy()
    train(apply, params, None, x, y, key=jax.random.key(0), steps=3)
    np.testing.assert_array_equal(params["w"], w0)  # the caller's tree is not mutated


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(steps=-1), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(log_every=0), "log_every"),
        (dict(steps=2.5), "steps"),
    ],
)
def test_train_rejects_bad_arguments(kw, name):
    x, y, params, apply = _tiny_problem()
    with pytest.raises(ValueError, match=name):
        train(apply, params, None, x, y, key=jax.random.key(0), **kw)
    with pytest.raises(ValueError, match="y has 39"):
        train(apply, params, None, x, y[:-1], key=jax.random.key(0))


class _BatchNormNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(4, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(self.bn(self.conv(x))).mean((1, 2)))


def test_batch_statistics_average_the_batches_and_leave_the_model_alone():
    x = data.digits().train.x[:100]
    model = _BatchNormNet(nnx.Rngs(0, dropout=1))
    before = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    def reference(conv):  # mean over the batches of the batch mean / biased variance of the BN input
        z = [np.asarray(conv(jnp.asarray(x[i : i + 32])), np.float64) for i in range(0, 100, 32)]
        return np.mean([b.mean((0, 1, 2)) for b in z], 0), np.mean([b.var((0, 1, 2)) for b in z], 0)

    stats = nnx.to_pure_dict(batch_statistics(model, x, batch_size=32))
    mean, var = reference(model.conv)
    np.testing.assert_allclose(stats["bn"]["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["bn"]["var"], var, rtol=1e-4, atol=1e-6)
    after = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, after, before)  # the caller's model is not modified
    assert model.bn.momentum == 0.99
    # through an EncodedModule: the statistics of the decoded weights
    cb = jp.Codebook.create(model, b"batch-statistics-test-key")
    latent = jax.tree.map(lambda t: 3 * t, cb.init_latent(model))
    encoded = jp.EncodedModule(model, latent)
    stats = nnx.to_pure_dict(batch_statistics(encoded, x, batch_size=32, call=lambda m, xb: m(xb, cb.decode)))
    decoded = nnx.clone(model)
    nnx.update(decoded, cb.decode(latent))
    mean, var = reference(decoded.conv)
    np.testing.assert_allclose(stats["model"]["bn"]["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["model"]["bn"]["var"], var, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no nnx.BatchNorm"):
        batch_statistics(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), x)
    with pytest.raises(ValueError, match="batch_size"):
        batch_statistics(model, x, batch_size=0)


def test_the_recipe_schedule_follows_its_formula():
    steps, peak, warm, final = 200, 3e-3, 0.05, 0.01
    w = 10
    for t in (0, 1, 5, 9, 10, 11, 57, 105, 150, 199, 200):
        if t < w:
            want = peak * t / w
        else:
            want = peak * (final + (1 - final) * (1 + np.cos(np.pi * (t - w) / (steps - w))) / 2)
        assert float(schedule(steps, peak, warm, final)(t)) == pytest.approx(want, rel=1e-5, abs=1e-12), t
    # AdamW: with a zero gradient only the decay moves a weight, by η(t)·λ·w per step
    opt = recipe(steps, learning_rate=peak, weight_decay=0.5)
    p = {"w": jnp.ones(3)}
    s = opt.init(p)
    for t in range(12):
        u, s = opt.update({"w": jnp.zeros(3)}, s, p)
        np.testing.assert_allclose(u["w"], -float(schedule(steps, peak)(t)) * 0.5 * p["w"], rtol=1e-6, atol=1e-12)
        p = optax.apply_updates(p, u)
    for kw, name in (
        (dict(steps=0), "steps"),
        (dict(steps=10, warmup=1.0), "warmup"),
        (dict(steps=10, final=2), "final"),
    ):
        with pytest.raises(ValueError, match=name):
            recipe(**kw)


def test_random_shift_moves_each_image_by_at_most_p_pixels_with_zero_fill():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, (64, 8, 8, 2)).astype(np.float32)  # no zeros inside: the fill is visible
    out = np.asarray(random_shift(2)(jax.random.key(0), jnp.asarray(x)))
    seen = set()
    for im, got in zip(x, out):
        padded = np.pad(im, ((2, 2), (2, 2), (0, 0)))
        match = [
            (dy, dx) for dy in range(5) for dx in range(5) if np.array_equal(padded[dy : dy + 8, dx : dx + 8], got)
        ]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 12  # offsets drawn per image, not one for the batch
    np.testing.assert_array_equal(random_shift(0)(jax.random.key(0), jnp.asarray(x)), x)
    with pytest.raises(ValueError, match="pixels"):
        random_shift(-1)


def test_train_augments_each_minibatch_with_the_steps_own_key():
    # reference: one SGD step per Python iteration, the batch drawn and shifted as train documents it
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(40, 4, 4, 1)).astype(np.float32)
    y = (x[:, :2].sum((1, 2, 3)) > x[:, 2:].sum((1, 2, 3))).astype(np.int32)
    params = {"w": jnp.asarray(rng.normal(size=(16, 2)).astype(np.float32) * 0.1)}
    apply = lambda p, xb: xb.reshape(len(xb), -1) @ p["w"]
    key, steps, b, shift = jax.random.key(3), 5, 8, random_shift(1)
    res = train(apply, params, None, x, y, key=key, steps=steps, batch_size=b, optimizer=optax.sgd(0.5), augment=shift)
    p = params
    for i in range(steps):
        k = jax.random.fold_in(key, i)
        idx = np.asarray(jax.random.choice(k, len(x), (b,), replace=False))
        xb = shift(jax.random.fold_in(k, 1), jnp.asarray(x[idx]))
        g = jax.grad(lambda q, xb=xb, yb=y[idx]: cross_entropy(apply(q, xb), jnp.asarray(yb)))(p)
        p = jax.tree.map(lambda a, d: a - 0.5 * d, p, g)
    np.testing.assert_allclose(res.latent["w"], p["w"], rtol=1e-5, atol=1e-7)
    plain = train(apply, params, None, x, y, key=key, steps=steps, batch_size=b, optimizer=optax.sgd(0.5))
    assert np.abs(np.asarray(plain.latent["w"]) - np.asarray(p["w"])).max() > 1e-4  # the shifts mattered
    with pytest.raises(TypeError, match="augment"):
        train(apply, params, None, x, y, key=key, steps=1, augment="shift")
