"""A tiny CIFAR-10 in the real binary layout (cifar-10-batches-bin/data_batch_1..5.bin and
test_batch.bin, records of 1 label byte and the red, green and blue 32 × 32 planes, row major),
written record by record from the documented layout, not by jaxpurify's reader.

Each class has its own mean colour under uniform noise, so a CNN trained on it for a few steps
does better than chance: the path runs, and its numbers could fail."""

from __future__ import annotations

import os

import numpy as np

RECORD = 1 + 3 * 32 * 32


def write_records(path, imgs: np.ndarray, labels: np.ndarray) -> None:
    with open(path, "wb") as f:
        for im, lab in zip(imgs, labels):
            f.write(bytes([int(lab)]))
            for c in range(3):
                f.write(bytes(int(v) for v in im[:, :, c].ravel()))


def make(root, per_batch: int = 40, test: int = 40, seed: int = 0) -> dict:
    """Write the fixture under ``root``/cifar-10-batches-bin; returns {file name: (images, labels)}."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, (10, 3))
    d = os.path.join(root, "cifar-10-batches-bin")
    os.makedirs(d, exist_ok=True)
    written = {}
    for name, n in [(f"data_batch_{i}.bin", per_batch) for i in range(1, 6)] + [("test_batch.bin", test)]:
        labels = rng.integers(0, 10, n)
        noise = rng.integers(-40, 41, (n, 32, 32, 3))
        imgs = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        write_records(os.path.join(d, name), imgs, labels)
        written[name] = (imgs, labels)
    return written
