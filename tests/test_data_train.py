import gzip

import jax
import numpy as np
import optax
import pytest

import jaxpurify as jp
from jaxpurify import data, models
from jaxpurify.train import accuracy, train


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
    order = np.argsort([int(np.flatnonzero((imgs.reshape(20, -1) == a.reshape(1, -1)).all(1))[0]) for a in allx.round()])
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
    latent = train(apply, latent, cb, ds.train.x, ds.train.y, key=jax.random.key(2), steps=300, optimizer=optax.adam(1e-2))
    after = accuracy(apply, cb.decode(latent), ds.test.x, ds.test.y)
    assert before < 0.4 and after > 0.8
    # the trained weights are in range(A): the codebook's own encode/decode reproduces them
    W = cb.decode(latent)["hidden"]["kernel"]
    np.testing.assert_allclose(cb.decode(cb.encode(cb.decode(latent)))["hidden"]["kernel"], W, rtol=1e-4, atol=1e-6)
