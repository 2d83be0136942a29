"""The paper's CNNs in Flax linen.

``OneHiddenCNN`` is the one-hidden-layer non-overlapping CNN of Lu, Huang and Wang:

    f(x) = V · (1/P) Σ_p relu(W x_p + b)

with the input cut into P non-overlapping patches x_p (a convolution whose stride equals its
kernel size, VALID padding), K filters W with bias b, ReLU, an average over patches and a linear
read-out V.  ``SmallCNN`` is a small multi-layer CNN for the multi-layer experiments.

Both split into a feature extractor and a head, ``f(x) = head(features(x))``: call
``model.apply(variables, x, part="features")`` for the head's input and
``model.apply(variables, h, part="head")`` for the logits from it (``part="all"``, the default,
is the whole network).  ``HEAD`` names each model's head leaves; the bit-flip searches use the
split to run the unchanged feature extractor once per batch (:class:`jaxpurify.attacks.Split`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

PARTS = ("all", "features", "head")


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")


class OneHiddenCNN(nn.Module):
    filters: int = 64
    patch: int = 2
    num_classes: int = 10

    HEAD = ("readout/kernel", "readout/bias")

    @nn.compact
    def __call__(self, x: jax.Array, part: str = "all") -> jax.Array:
        _check_part(part)
        if part != "head":
            p = (self.patch, self.patch)
            h = nn.Conv(self.filters, p, strides=p, padding="VALID", use_bias=True, name="hidden")(x)
            x = jnp.mean(nn.relu(h), axis=(1, 2))
            if part == "features":
                return x
        return nn.Dense(self.num_classes, name="readout")(x)


class SmallCNN(nn.Module):
    """Convolutions (3 × 3, ReLU, 2 × 2 average pooling while the map is larger than 2 × 2), then
    the feature map flattened (``pool="flatten"``, as Flax's MNIST example does) or averaged over
    its positions (``pool="mean"``), a dense hidden layer and the read-out.  Averaging keeps only
    which local patterns occur, not where: on MNIST (7,500 training images) it reached 0.93, the
    flattened map 0.98 or more (``jaxpurify reproduce mnist --arch multi``)."""

    channels: Sequence[int] = (32, 64)
    hidden: int = 128
    num_classes: int = 10
    pool: str = "flatten"

    HEAD = ("dense/kernel", "dense/bias", "readout/kernel", "readout/bias")

    @nn.compact
    def __call__(self, x: jax.Array, part: str = "all") -> jax.Array:
        _check_part(part)
        if part != "head":
            for i, c in enumerate(self.channels):
                x = nn.Conv(c, (3, 3), padding="SAME", name=f"conv{i}")(x)
                x = nn.relu(x)
                if x.shape[1] > 2 and x.shape[2] > 2:
                    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            if self.pool == "flatten":
                x = x.reshape(x.shape[0], -1)
            elif self.pool == "mean":
                x = jnp.mean(x, axis=(1, 2))
            else:
                raise ValueError(f"pool must be 'flatten' or 'mean', got {self.pool!r}")
            if part == "features":
                return x
        x = nn.relu(nn.Dense(self.hidden, name="dense")(x))
        return nn.Dense(self.num_classes, name="readout")(x)
