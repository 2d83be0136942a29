"""The training recipe the experiments share: one per data set, the same for the plain and the
encoded model (same optimizer, schedule, steps, minibatches and augmentation: the same key).

AdamW with a linear warm-up over the first 5% of the steps and a cosine decay to 1% of the peak
rate (:func:`jaxpurify.train.recipe`), peak rate 3e-2, weight decay 1e-4, batches of 128, and for MNIST and
CIFAR-10 random shifts of up to 2 px (:func:`jaxpurify.train.random_shift`; the 8 × 8 digits get
none: a pixel there is an eighth of the image).  Neither model has BatchNorm, so no running
statistics need settling.

The peak rate is 3e-2, not the 3e-3 usual for Adam on small CNNs: the encoded model's optimizer
moves the latent Θ, and at 3e-3 it trained measurably slower than the plain model (1.3 pt short
on the digits' multi-layer CNN over three seeds) while the plain model moves by at most 0.3 pt
from 3e-3 to 3e-2 (docs/research/experiments.md has the sweep).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from jaxpurify import Codebook
from jaxpurify.train import Examples, random_shift, recipe, train

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]  # apply(params, x) -> logits


class Recipe(NamedTuple):
    steps: int
    learning_rate: float = 3e-2
    weight_decay: float = 1e-4
    warmup: float = 0.05
    shift: int = 0
    batch_size: int = 128

    def record(self) -> dict[str, Any]:
        return dict(self._asdict(), optimizer="adamw, linear warm-up, cosine decay to 1%")


RECIPES = {
    "digits": Recipe(steps=1500),
    "mnist": Recipe(steps=3000, shift=2),
    "cifar10": Recipe(steps=6000, shift=2),
}
QUICK_STEPS = 300


def recipe_for(dataset: str, quick: bool = False, steps: int | None = None, lr: float | None = None) -> Recipe:
    """The data set's recipe (``quick``: 300 steps), with ``steps`` / ``lr`` overriding it."""
    base = RECIPES["mnist" if dataset.startswith("mnist") else dataset]
    if quick:
        base = base._replace(steps=QUICK_STEPS)
    if steps is not None:
        base = base._replace(steps=int(steps))
    if lr is not None:
        base = base._replace(learning_rate=float(lr))
    return base


def fit(
    apply: ApplyFn,
    params0: PyTree,
    codebook: Codebook | None,
    x: Examples,
    y: Examples,
    r: Recipe,
    key: jax.Array,
    progress: bool | None = None,
) -> tuple[PyTree, float]:
    """Train from ``params0`` (encoded through ``codebook`` from ``init_latent``, or plain with
    None) by recipe ``r``; returns (the deployed parameters, wall seconds)."""
    t0 = time.perf_counter()
    start = codebook.init_latent(params0) if codebook is not None else params0
    latent = train(
        apply,
        start,
        codebook,
        x,
        y,
        key=key,
        steps=r.steps,
        batch_size=r.batch_size,
        optimizer=recipe(r.steps, learning_rate=r.learning_rate, weight_decay=r.weight_decay, warmup=r.warmup),
        augment=random_shift(r.shift) if r.shift else None,
        progress=progress,
    ).latent
    params = codebook.decode(latent) if codebook is not None else latent
    return jax.block_until_ready(params), time.perf_counter() - t0
