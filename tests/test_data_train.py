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


def test_training_through_decode_learns():
    ds = data.digits()
    model = models.OneHiddenCNN(filters=32, patch=4)
    apply = lambda p, x: model.apply({"params": p}, x)
    params = model.init(jax.random.key(0), ds.train.x[:1])["params"]
    cb = jp.Codebook.create(params, jax.random.key(1), select=lambda p, _: p.startswith("hidden/"))
    latent = cb.encode(params)
    before = accuracy(apply, cb.decode(latent), ds.test.x, ds.test.y)
    latent = train(apply, latent, cb, ds.train.x, ds.train.y, key=jax.random.key(2), steps=300, optimizer=optax.adam(1e-2))
    after = accuracy(apply, cb.decode(latent), ds.test.x, ds.test.y)
    assert before < 0.4 and after > 0.8
    # the trained weights are in range(A): the codebook's own encode/decode reproduces them
    W = cb.decode(latent)["hidden"]["kernel"]
    np.testing.assert_allclose(cb.decode(cb.encode(cb.decode(latent)))["hidden"]["kernel"], W, rtol=1e-4, atol=1e-6)
