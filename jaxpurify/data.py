"""Datasets: an embedded default that needs no download, and readers for user-provided files.

* :func:`digits` — the 8×8 handwritten digits bundled with scikit-learn (1,797 images).
* :func:`mnist` — MNIST from the standard IDX files (``*-images-idx3-ubyte[.gz]``,
  ``*-labels-idx1-ubyte[.gz]``) in a directory the user gives.
* :func:`cifar10` — CIFAR-10 from the binary version (``cifar-10-batches-bin/*.bin``); the
  pickled Python version is never read.
* :func:`from_tfds` — MNIST or CIFAR-10 already prepared by tensorflow-datasets (``download=False``).

Images are float32 in [0, 1] with shape (N, H, W, C); labels int32.  Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    x: np.ndarray
    y: np.ndarray


class Dataset(NamedTuple):
    train: Split
    test: Split
    name: str


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[Split, Split]:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    te, tr = idx[:n_test], idx[n_test:]
    return Split(x[tr], y[tr]), Split(x[te], y[te])


def digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8×8 digits, split into train and test at random (seeded)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    tr, te = _split(x, y, test_fraction, seed)
    return Dataset(tr, te, "digits")


def _read_idx(path: str, ndim: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 + 4 * ndim or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {body.size} bytes of data")
    return body.reshape(dims)


def _find(data_dir: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(
        f"{os.path.join(data_dir, stem)}[.gz] not found; expected the standard MNIST IDX files "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz) in --data-dir"
    )


def _mnist_part(data_dir: str, prefix: str) -> Split:
    x = _read_idx(_find(data_dir, f"{prefix}-images-idx3-ubyte"), 3)
    y = _read_idx(_find(data_dir, f"{prefix}-labels-idx1-ubyte"), 1)
    if len(x) != len(y):
        raise ValueError(f"{data_dir}: {prefix} has {len(x)} images but {len(y)} labels")
    return Split((x.astype(np.float32) / 255.0)[..., None], y.astype(np.int32))


def mnist(data_dir: str, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """MNIST from IDX files.  With only the t10k files present, they are split into train and test."""
    try:
        train = _mnist_part(data_dir, "train")
        test = _mnist_part(data_dir, "t10k")
        return Dataset(train, test, "mnist")
    except FileNotFoundError:
        part = _mnist_part(data_dir, "t10k")
        tr, te = _split(part.x, part.y, test_fraction, seed)
        return Dataset(tr, te, "mnist-t10k-split")


def cifar10(data_dir: str) -> Dataset:
    """CIFAR-10 from the binary version (``cifar-10-batches-bin``: data_batch_1..5.bin, test_batch.bin).

    Each record is 1 label byte and 3,072 image bytes (1,024 red, 1,024 green, 1,024 blue, row
    major).  ``data_dir`` may be the ``cifar-10-batches-bin`` folder or its parent.  The Python
    (pickled) version is never read.
    """
    sub = os.path.join(data_dir, "cifar-10-batches-bin")
    if os.path.isdir(sub):
        data_dir = sub

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = os.path.join(data_dir, name)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found; expected the CIFAR-10 binary version (cifar-10-batches-bin/ with "
                "data_batch_1.bin … data_batch_5.bin and test_batch.bin) in --data-dir"
            )
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % 3073:
            raise ValueError(f"{path}: size {raw.size} is not a whole number of 3,073-byte CIFAR-10 records")
        rec = raw.reshape(-1, 3073)
        y = rec[:, 0].astype(np.int32)
        if y.max() > 9:
            raise ValueError(f"{path}: label {y.max()} out of range 0..9; not a CIFAR-10 binary file")
        x = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
        return x, y

    parts = [read(f"data_batch_{i}.bin") for i in range(1, 6)]
    tx, ty = read("test_batch.bin")
    return Dataset(
        Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), Split(tx, ty), "cifar10"
    )


def from_tfds(name: str, data_dir: str | None = None) -> Dataset:
    """``name`` ('mnist' or 'cifar10') from a tensorflow-datasets directory that is already prepared.

    Uses ``tfds.load(..., download=False)``, so nothing is fetched: prepare the data beforehand
    (``tfds build mnist``) or point ``data_dir`` at a prepared copy.
    """
    if name not in ("mnist", "cifar10"):
        raise ValueError(f"dataset {name!r}: tensorflow-datasets loading supports mnist and cifar10")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(
            "--source tfds needs tensorflow-datasets (pip install tensorflow-datasets tensorflow)"
        ) from None
    try:
        parts = tfds.load(
            name, split=["train", "test"], batch_size=-1, as_supervised=True, download=False, data_dir=data_dir
        )
    except Exception as e:  # tfds raises its own assertion/NotFound types
        raise FileNotFoundError(
            f"tensorflow-datasets has no prepared {name!r} in "
            f"{data_dir or '~/tensorflow_datasets'} ({type(e).__name__}: {e})"
        ) from None
    splits = []
    for x, y in tfds.as_numpy(parts):
        x = np.asarray(x)
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(
                f"tensorflow-datasets {name!r}: expected uint8 images (N, H, W, C), got {x.dtype} {x.shape}"
            )
        splits.append(Split(x.astype(np.float32) / 255.0, np.asarray(y, np.int32)))
    return Dataset(splits[0], splits[1], name)


def load(name: str, data_dir: str | None = None, seed: int = 0, source: str = "files") -> Dataset:
    """'digits' (embedded), 'mnist' or 'cifar10' (from files in data_dir, or ``source='tfds'``)."""
    if name == "digits":
        return digits(seed=seed)
    if source == "tfds":
        return from_tfds(name, data_dir)
    if source != "files":
        raise ValueError(f"unknown source {source!r}; choose files or tfds")
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data-dir (nothing is downloaded)")
    if name == "mnist":
        return mnist(data_dir, seed=seed)
    if name == "cifar10":
        return cifar10(data_dir)
    raise ValueError(f"unknown dataset {name!r}; choose digits, mnist or cifar10")
