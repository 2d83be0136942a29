"""Training an encoded network: optimize the latent Θ through ``codebook.decode``.

The deployed parameters are ``decode(latent)`` = A Θ, so the loss is a plain function of the
latent and ``jax.grad`` flows through the fixed matrices; optax does the rest.

:func:`minimize` is the loop shared by :func:`train` and :func:`jaxpurify.convert.convert`:
minibatch optax steps are dispatched one compiled step at a time without waiting, and the host
sees the loss, the progress bar and the callback once per chunk of ``log_every`` steps.

:func:`recipe` is the optimizer the experiments train with (AdamW, linear warm-up, cosine decay)
and :func:`random_shift` the augmentation; give both models of a comparison the same recipe, steps
and key and they see the same minibatches and the same shifts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax  # type: ignore[import-untyped]  # optax ships no py.typed

from jaxpurify._codebook import Codebook
from jaxpurify.progress import Progress

if TYPE_CHECKING:
    from flax import nnx

PyTree = Any
# examples along the first axis, on the host or the device
Examples = np.ndarray | jax.Array
# callback(step, loss, latent) -> True to stop; step = steps done so far, loss = that step's loss
Callback = Callable[[int, float, PyTree], Any]
# augment(key, x) -> x: a random transformation of one minibatch of images (N, H, W, C)
Augment = Callable[[jax.Array, jax.Array], jax.Array]


class TrainResult(NamedTuple):
    """``latent``: the trained latent (or parameters); ``losses``: the minibatch loss of every
    step taken, a float32 host array of length ``steps`` (shorter if a callback stopped early)."""

    latent: PyTree
    losses: np.ndarray


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over the batch of −log softmax(logits)[label]: ``logits`` (N, C), integer ``labels`` (N,);
    a scalar."""
    mean: jax.Array = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return mean


def recipe(
    steps: int,
    *,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    warmup: float = 0.05,
    final: float = 0.01,
) -> optax.GradientTransformation:
    """AdamW whose rate rises linearly from 0 to ``learning_rate`` over the first ``warmup`` ×
    ``steps`` steps, then follows a cosine down to ``final`` × ``learning_rate`` at ``steps``:

        η(t) = η·t/w  (t < w),   η(t) = η·(f + (1 − f)(1 + cos(π (t − w)/(T − w)))/2)  (t ≥ w)

    with decoupled weight decay ``weight_decay`` (Θ ← Θ − η(t)·λ·Θ; on a latent this shrinks the
    decoded W = AΘ by the same factor, so the plain and the encoded model decay alike)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    checks: tuple[tuple[str, float, Callable[[float], bool]], ...] = (
        ("learning_rate", learning_rate, lambda v: v > 0),
        ("weight_decay", weight_decay, lambda v: v >= 0),
        ("warmup", warmup, lambda v: 0 <= v < 1),
        ("final", final, lambda v: 0 <= v <= 1),
    )
    for name, v, ok in checks:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not ok(float(v)):
            raise ValueError(f"{name}: out of range, got {v!r}")
    return optax.adamw(schedule(steps, learning_rate, warmup, final), weight_decay=float(weight_decay))


def schedule(steps: int, learning_rate: float, warmup: float = 0.05, final: float = 0.01) -> optax.Schedule:
    """:func:`recipe`'s rate η(t): linear warm-up over round(``warmup`` × ``steps``) steps, then a
    cosine to ``final`` × ``learning_rate`` at ``steps``."""
    w = int(round(warmup * steps))
    return optax.warmup_cosine_decay_schedule(
        0.0, float(learning_rate), w, int(steps), float(final) * float(learning_rate)
    )


def random_shift(pixels: int = 2) -> Augment:
    """Augmentation: each image moved by its own offset (dy, dx), uniform in {−p, …, p}², the
    uncovered border filled with zeros (the random translations standard for MNIST and CIFAR)."""
    if isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)) or pixels < 0:
        raise ValueError(f"pixels must be an integer ≥ 0, got {pixels!r}")
    p = int(pixels)

    def augment(key: jax.Array, x: jax.Array) -> jax.Array:
        if p == 0:
            return x
        n, h, w, c = x.shape
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        at = jax.random.randint(key, (n, 2), 0, 2 * p + 1)
        return jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, at)

    return augment


def _check_loop_args(
    steps: int, batch_size: int, log_every: int, arrays: Sequence[Examples], names: Sequence[str]
) -> None:
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
    data: Sequence[Examples],
    *,
    key: jax.Array,
    steps: int,
    batch_size: int = 128,
    optimizer: optax.GradientTransformation | None = None,
    callback: Callback | None = None,
    log_every: int = 50,
    desc: str = "train",
    progress: bool | None = None,
    space: tuple[Callable[[PyTree], PyTree], Callable[[PyTree], PyTree]] | None = None,
) -> TrainResult:
    """Minimize ``loss(latent, key, *batch)`` with optax over random minibatches of ``data``.

    Step i draws ``batch_size`` distinct examples with ``jax.random.fold_in(key, i)``, the same
    for every array in ``data``, and passes ``loss`` a key of its own for any randomness it needs
    (augmentation). Steps run in chunks of ``log_every``; after each chunk
    the chunk's losses come to the host (one transfer), the progress bar advances and
    ``callback(step, loss, latent)`` is called (it may return True to stop). ``progress=None``
    follows ``JAXPURIFY_PROGRESS``; False silences.

    ``space=(decode, encode)``: the optimizer works on the decoded parameters W = decode(latent)
    instead of the latent.  ``loss`` then takes W (``loss(W, key, *batch)``), the optimizer sees
    ∂loss/∂W and keeps its state for W, and its update u moves the latent by ``encode(u)``: for a
    codebook, Θ ← Θ + A⁺u, so W moves by the orthogonal projection of u onto range(A).
    """
    opt = optimizer or optax.adam(1e-2)
    arrays = [jnp.asarray(a) for a in data]
    size = len(arrays[0])
    b = min(batch_size, size)

    @jax.jit
    def one_step(i: int, t: PyTree, s: PyTree, arrays: list[jax.Array]) -> tuple[PyTree, PyTree, jax.Array]:
        k = jax.random.fold_in(key, i)
        idx = jax.random.choice(k, size, (b,), replace=False)
        batch = (a[idx] for a in arrays)
        if space is None:
            l, g = jax.value_and_grad(loss)(t, jax.random.fold_in(k, 1), *batch)
            upd, s = opt.update(g, s, t)
            return optax.apply_updates(t, upd), s, l
        decode, encode = space
        w = decode(t)
        l, g = jax.value_and_grad(loss)(w, jax.random.fold_in(k, 1), *batch)
        upd, s = opt.update(g, s, w)
        return optax.apply_updates(t, encode(upd)), s, l

    # Steps are dispatched one compiled call each, not run inside a lax.fori_loop: XLA's CPU
    # backend runs a convolution inside a while loop 11-20x slower than the same step on its own
    # (the multi-layer CNN at 28x28: 728 vs 64 ms a step, benchmarks/README.md "Training").
    # Dispatch is asynchronous, so the host still waits only once per chunk.
    state = opt.init(latent if space is None else space[0](latent))
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
    x: Examples,
    y: Examples,
    *,
    key: jax.Array,
    steps: int = 500,
    batch_size: int = 128,
    optimizer: optax.GradientTransformation | None = None,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy,
    augment: Augment | None = None,
    callback: Callback | None = None,
    log_every: int = 50,
    progress: bool | None = None,
    space: str = "latent",
) -> TrainResult:
    """Minimize ``loss_fn(apply_fn(decode(latent), x), y)`` over the latent with minibatch optax.

    ``apply_fn(params, x)`` is e.g. ``lambda p, x: model.apply({"params": p}, x)``; start from
    ``codebook.init_latent(model.init(...)["params"])``.  With ``codebook=None`` the parameters
    are trained directly (the unencoded baseline).  Returns ``TrainResult(latent, losses)``;
    ``callback(step, loss, latent)`` is called every ``log_every`` steps and may return True to
    stop early. The loss reaches the host only then, so the steps in between run back to back.
    ``augment(key, xb)`` (e.g. :func:`random_shift`) transforms each minibatch first, with a key
    of the step's own: the same key gives the plain and the encoded model the same transformations.
    ``optimizer`` defaults to Adam at 1e-2; :func:`recipe` is the schedule the experiments use.

    ``space`` (with a codebook): ``"latent"`` runs the optimizer on Θ, whose gradient is
    Aᵀ∂L/∂W; ``"weights"`` runs it on W = AΘ (state and per-entry scaling of W, as for the plain
    model) and moves Θ by A⁺u, the least-squares latent of its update u (see :func:`minimize`).
    """
    _check_loop_args(steps, batch_size, log_every, [x, y], ["x", "y"])
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be a callable augment(key, x) -> x, got {type(augment).__name__}")
    if space not in ("latent", "weights"):
        raise ValueError(f"space must be 'latent' or 'weights', got {space!r}")
    weights_space = (codebook.decode, codebook.encode) if space == "weights" and codebook is not None else None
    decode = codebook.decode if codebook is not None and weights_space is None else (lambda t: t)

    def loss(t: PyTree, key: jax.Array, xb: jax.Array, yb: jax.Array) -> jax.Array:
        if augment is not None:
            xb = augment(key, xb)
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
        space=weights_space,
    )


def batch_statistics(
    model: nnx.Module,
    x: Examples,
    *,
    batch_size: int = 256,
    call: Callable[[nnx.Module, jax.Array], Any] | None = None,
) -> nnx.State[Any, Any]:
    """Settled BatchNorm statistics of a Flax NNX ``model`` on ``x``: every ``nnx.BatchNorm``'s
    running mean and variance set to the average over the batches of ``x`` of the batch mean and
    (biased) variance, the other layers in evaluation mode and no parameter changed.

    Running statistics are an exponential average (momentum 0.99 by default) that trails the
    weights while they train, so a model evaluated after a few hundred steps, encoded or not, is
    judged with statistics of earlier weights.  Recompute them before evaluating:
    ``nnx.update(model, batch_statistics(model, x_train))``.  ``call(model, xb)`` runs the model
    on a batch (default ``model(xb)``; for an :class:`jaxpurify.EncodedModule`,
    ``lambda m, xb: m(xb, codebook.decode)``).  Works on a clone: ``model`` is not modified;
    returns ``nnx.state(clone, nnx.BatchStat)``."""
    from flax import nnx

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    if len(x) == 0:
        raise ValueError("x has no examples")
    clone = nnx.clone(model)
    # nnx.iter_graph, not nnx.iter_modules: the latter is missing from flax 0.12.0, our oldest version
    norms = [m for _, m in nnx.iter_graph(clone) if isinstance(m, nnx.BatchNorm)]
    if not norms:
        raise ValueError("model has no nnx.BatchNorm layer: there are no statistics to settle")
    clone.eval()  # type: ignore[no-untyped-call]  # flax leaves Module.eval unannotated
    for m in norms:
        m.use_running_average = False
    run = call or (lambda m, xb: m(xb))
    for t, start in enumerate(range(0, len(x), batch_size), start=1):
        for m in norms:  # running ← ((t − 1)·running + batch)/t: the mean of the batches' statistics
            m.momentum = (t - 1) / t
        run(clone, jnp.asarray(x[start : start + batch_size]))
    return nnx.state(clone, nnx.BatchStat)


def accuracy(
    apply_fn: Callable[[PyTree, jax.Array], jax.Array], params: PyTree, x: Examples, y: Examples, batch: int = 2048
) -> float:
    """Fraction of correct argmax predictions (NaN logits count as wrong)."""
    correct = 0
    for i in range(0, len(x), batch):
        logits = apply_fn(params, jnp.asarray(x[i : i + batch]))
        pred = jnp.argmax(jnp.nan_to_num(logits, nan=-jnp.inf), axis=-1)
        ok = (pred == jnp.asarray(y[i : i + batch])) & jnp.all(jnp.isfinite(logits), axis=-1)
        correct += int(jnp.sum(ok))
    return correct / len(x)
