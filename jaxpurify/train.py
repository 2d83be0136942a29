"""Training an encoded network: optimize the latent Θ through ``codebook.decode``.

The deployed parameters are ``decode(latent)`` = A Θ, so the loss is a plain function of the
latent and ``jax.grad`` flows through the fixed matrices; optax does the rest.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpurify._codebook import Codebook


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    latent: Any,
    codebook: Codebook | None,
    x: np.ndarray,
    y: np.ndarray,
    *,
    key,
    steps: int = 500,
    batch_size: int = 128,
    optimizer: optax.GradientTransformation | None = None,
    loss_fn: Callable = cross_entropy,
) -> Any:
    """Minimize ``loss_fn(apply_fn(decode(latent), x), y)`` over the latent with minibatch optax.

    ``apply_fn(params, x)`` is e.g. ``lambda p, x: model.apply({"params": p}, x)``; start from
    ``codebook.init_latent(model.init(...)["params"])``.  With
    ``codebook=None`` the parameters are trained directly (the unencoded baseline).
    Returns the trained latent (or parameters).
    """
    if steps < 0 or batch_size < 1:
        raise ValueError("steps must be ≥ 0 and batch_size ≥ 1")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    opt = optimizer or optax.adam(1e-2)
    decode = codebook.decode if codebook is not None else (lambda t: t)

    def loss(t, xb, yb):
        return loss_fn(apply_fn(decode(t), xb), yb)

    @jax.jit
    def step(t, s, xb, yb):
        l, g = jax.value_and_grad(loss)(t, xb, yb)
        upd, s = opt.update(g, s, t)
        return optax.apply_updates(t, upd), s, l

    state = opt.init(latent)
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    b = min(batch_size, len(x))
    for i in range(steps):
        idx = jax.random.choice(jax.random.fold_in(key, i), len(x), (b,), replace=False)
        latent, state, _ = step(latent, state, xs[idx], ys[idx])
    return latent


def accuracy(apply_fn, params, x, y, batch: int = 2048) -> float:
    """Fraction of correct argmax predictions (NaN logits count as wrong)."""
    correct = 0
    for i in range(0, len(x), batch):
        logits = apply_fn(params, jnp.asarray(x[i : i + batch]))
        pred = jnp.argmax(jnp.nan_to_num(logits, nan=-jnp.inf), axis=-1)
        ok = (pred == jnp.asarray(y[i : i + batch])) & jnp.all(jnp.isfinite(logits), axis=-1)
        correct += int(jnp.sum(ok))
    return correct / len(x)
