"""Training an encoded network: optimize the latent Θ through ``codebook.decode``.

The deployed parameters are ``decode(latent)`` = A Θ, so the loss is a plain function of the
latent and ``jax.grad`` flows through the fixed matrices; optax does the rest.

:func:`minimize` is the loop shared by :func:`train` and :func:`jaxpurify.convert.convert`:
minibatch optax steps are dispatched one compiled step at a time without waiting, and the host
sees the loss, the progress bar and the callback once per chunk of ``log_every`` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpurify._codebook import Codebook
from jaxpurify.progress import Progress

PyTree = Any
# callback(step, loss, latent) -> True to stop; step = steps done so far, loss = that step's loss
Callback = Callable[[int, float, PyTree], Any]


class TrainResult(NamedTuple):
    """``latent``: the trained latent (or parameters); ``losses``: the minibatch loss of every
    step taken, a float32 host array of length ``steps`` (shorter if a callback stopped early)."""

    latent: PyTree
    losses: np.ndarray


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _check_loop_args(steps, batch_size, log_every, arrays: Sequence[np.ndarray], names: Sequence[str]) -> None:
    for name, v, low in (("steps", steps, 0), ("batch_size", batch_size, 1), ("log_every", log_every, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {v!r}")
    n = len(arrays[0])
    if n == 0:
        raise ValueError(f"{names[0]} has no examples")
    for name, a in zip(names[1:], arrays[1:]):
        if len(a) != n:
            raise ValueError(f"{names[0]} has {n} examples but {name} has {len(a)}")


def minimize(
    loss: Callable[..., jax.Array],
    latent: PyTree,
    data: Sequence[np.ndarray],
    *,
    key,
    steps: int,
    batch_size: int = 128,
    optimizer: optax.GradientTransformation | None = None,
    callback: Callback | None = None,
    log_every: int = 50,
    desc: str = "train",
    progress: bool | None = None,
) -> TrainResult:
    """Minimize ``loss(latent, key, *batch)`` with optax over random minibatches of ``data``.

    Step i draws ``batch_size`` distinct examples with ``jax.random.fold_in(key, i)``, the same
    for every array in ``data``, and passes ``loss`` a key of its own for any randomness it needs
    (augmentation). Steps run in chunks of ``log_every``; after each chunk
    the chunk's losses come to the host (one transfer), the progress bar advances and
    ``callback(step, loss, latent)`` is called (it may return True to stop). ``progress=None``
    follows ``JAXPURIFY_PROGRESS``; False silences.
    """
    opt = optimizer or optax.adam(1e-2)
    arrays = [jnp.asarray(a) for a in data]
    size = len(arrays[0])
    b = min(batch_size, size)

    @jax.jit
    def one_step(i, t, s, arrays):
        k = jax.random.fold_in(key, i)
        idx = jax.random.choice(k, size, (b,), replace=False)
        l, g = jax.value_and_grad(loss)(t, jax.random.fold_in(k, 1), *(a[idx] for a in arrays))
        upd, s = opt.update(g, s, t)
        return optax.apply_updates(t, upd), s, l

    # Steps are dispatched one compiled call each, not run inside a lax.fori_loop: XLA's CPU
    # backend runs a convolution inside a while loop 11-20x slower than the same step on its own
    # (the multi-layer CNN at 28x28: 728 vs 64 ms a step, benchmarks/README.md "Training").
    # Dispatch is asynchronous, so the host still waits only once per chunk.
    state = opt.init(latent)
    history: list[np.ndarray] = []
    done = 0
    with Progress(total=steps, desc=desc, disable=None if progress is None else not progress) as bar:
        while done < steps:
            stop = min(done + log_every, steps)
            chunk = []
            for i in range(done, stop):
                latent, state, l = one_step(i, latent, state, arrays)
                chunk.append(l)
            losses = np.asarray(jnp.stack(chunk), np.float32)  # the only host sync of the chunk
            history.append(losses)
            done = stop
            bar.update(len(losses), loss=float(losses[-1]))
            if callback is not None and callback(done, float(losses[-1]), latent):
                break
    return TrainResult(latent, np.concatenate(history) if history else np.zeros((0,), np.float32))


def train(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    latent: PyTree,
    codebook: Codebook | None,
    x: np.ndarray,
    y: np.ndarray,
    *,
    key,
    steps: int = 500,
    batch_size: int = 128,
    optimizer: optax.GradientTransformation | None = None,
    loss_fn: Callable = cross_entropy,
    callback: Callback | None = None,
    log_every: int = 50,
    progress: bool | None = None,
) -> TrainResult:
    """Minimize ``loss_fn(apply_fn(decode(latent), x), y)`` over the latent with minibatch optax.

    ``apply_fn(params, x)`` is e.g. ``lambda p, x: model.apply({"params": p}, x)``; start from
    ``codebook.init_latent(model.init(...)["params"])``.  With ``codebook=None`` the parameters
    are trained directly (the unencoded baseline).  Returns ``TrainResult(latent, losses)``;
    ``callback(step, loss, latent)`` is called every ``log_every`` steps and may return True to
    stop early. The loss reaches the host only then, so the steps in between run back to back.
    """
    _check_loop_args(steps, batch_size, log_every, [x, y], ["x", "y"])
    decode = codebook.decode if codebook is not None else (lambda t: t)

    def loss(t, _key, xb, yb):
        return loss_fn(apply_fn(decode(t), xb), yb)

    return minimize(
        loss,
        latent,
        [x, y],
        key=key,
        steps=steps,
        batch_size=batch_size,
        optimizer=optimizer,
        callback=callback,
        log_every=log_every,
        desc="train",
        progress=progress,
    )


def accuracy(apply_fn, params, x, y, batch: int = 2048) -> float:
    """Fraction of correct argmax predictions (NaN logits count as wrong)."""
    correct = 0
    for i in range(0, len(x), batch):
        logits = apply_fn(params, jnp.asarray(x[i : i + batch]))
        pred = jnp.argmax(jnp.nan_to_num(logits, nan=-jnp.inf), axis=-1)
        ok = (pred == jnp.asarray(y[i : i + batch])) & jnp.all(jnp.isfinite(logits), axis=-1)
        correct += int(jnp.sum(ok))
    return correct / len(x)
