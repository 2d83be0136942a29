"""What every attack shares: its result type, the trojan loss, and the bookkeeping.

Every attack is ``attack(key, apply_fn, params, data, *, target, trigger, **hyper) -> Attack`` on
the *deployed* parameters (never the latent).  The trojan loss on a batch (x, y) is

    L(w) = CE(f_w(x), y) + mean_{i: y_i ≠ t} CE(f_w(stamp(x_i)), t)

(keep the clean behaviour, send triggered non-target inputs to the target t).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax  # type: ignore[import-untyped]  # optax ships no py.typed
from jax.flatten_util import ravel_pytree

from jaxpurify.attacks._trigger import (
    ApplyFn,
    Data,
    PyTree,
    Trigger,
    attack_success_rate,
    check_data,
    check_target,
    clean_accuracy,
)
from jaxpurify.train import minimize
from jaxpurify.tree import leaves_with_paths


class Attack(NamedTuple):
    """``params``: the attacked deployed parameters (same structure, shapes and dtypes);
    ``changed``: a bool tree like params, True exactly where an entry differs (bitwise) from the
    input; ``hyper``: every hyper-parameter used (JSON-able), plus ``hyper["outcome"]``, what the
    attack reached on the attacker's own data; ``seconds``: wall time of the attack; ``trigger``:
    the trigger the attack implanted when it crafted its own (None: the one it was given)."""

    params: PyTree
    changed: PyTree
    hyper: dict[str, Any]
    seconds: float
    trigger: Trigger | None = None


def changed_mask(new: PyTree, old: PyTree) -> PyTree:
    """True where the bit patterns differ (so −0.0 vs 0.0 and NaN payloads count, NaN == NaN)."""

    def diff(a: Any, b: Any) -> np.ndarray | np.bool_:  # a 0-d leaf gives a NumPy bool
        a, b = np.asarray(a), np.asarray(b)
        ne: np.ndarray = a.view(np.uint8).reshape(a.shape + (-1,)).__ne__(b.view(np.uint8).reshape(b.shape + (-1,)))
        return ne.any(-1)

    return jax.tree.map(diff, new, old)


def finish(
    new: PyTree,
    params: PyTree,
    hyper: dict[str, Any],
    outcome: dict[str, Any],
    clock: Clock,
    changed: PyTree | None = None,
) -> Attack:
    """How every attack ends: ``outcome`` (what it reached on the attacker's data) recorded as
    ``hyper["outcome"]``, after what an earlier stage put there (the crafted trigger's rows), and
    the :class:`Attack` with ``changed`` = :func:`changed_mask` of ``new`` against the input
    ``params`` (pass it when already computed) and the wall time of ``clock``."""
    hyper["outcome"] = dict(hyper.get("outcome", {}), **outcome)
    return Attack(new, changed_mask(new, params) if changed is None else changed, hyper, clock())


def check_inputs(
    apply_fn: ApplyFn, params: PyTree, data: Data, *, finetune: Finetune | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate what every attack takes (and ``finetune`` if given); returns (x, y, classes) with
    host arrays (``classes``: the width of the logits).  The untargeted :func:`pbfa` stops here."""
    if finetune is not None and not isinstance(finetune, Finetune):
        raise TypeError(f"finetune must be a Finetune, got {type(finetune).__name__}")
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable apply_fn(params, x) -> logits, got {type(apply_fn).__name__}")
    if not jax.tree.leaves(params):
        raise ValueError("params has no leaves")
    for leaf in jax.tree.leaves(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"params: every leaf must be floating, got {jnp.result_type(leaf)}")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError("data must be the attacker's (x, y)")
    x, y = check_data(data[0], data[1], what="data")
    try:
        logits = jax.eval_shape(lambda p: apply_fn(p, jnp.asarray(x[:1])), params)
    except Exception as e:  # any failure here means apply_fn does not fit params and data
        raise ValueError(f"apply_fn(params, x) fails on the attacker's data: {type(e).__name__}: {e}") from None
    return x, y, int(logits.shape[-1])


def check_common(
    apply_fn: ApplyFn,
    params: PyTree,
    data: Data,
    target: int,
    trigger: Trigger,
    *,
    finetune: Finetune | None = None,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """:func:`check_inputs`, then the trigger and the target every targeted attack takes; returns
    (x, y, target, classes)."""
    x, y, classes = check_inputs(apply_fn, params, data, finetune=finetune)
    if not isinstance(trigger, Trigger):
        raise TypeError(f"trigger must be a Trigger, got {type(trigger).__name__}")
    trigger._check(x.shape)
    target = check_target(target)
    if target >= classes:
        raise ValueError(f"target {target} is not one of the model's {classes} classes")
    if not (y != target).any():
        raise ValueError(f"data: every label is the target {target}; nothing to trigger")
    return x, y, target, classes


def trojan_objective(target: int, weight: float = 1.0) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """objective(clean_logits, triggered_logits, y): the trojan loss from the logits of a batch
    and of the same batch stamped with the trigger."""

    def objective(clean_logits: jax.Array, triggered_logits: jax.Array, y: jax.Array) -> jax.Array:
        clean: jax.Array = optax.softmax_cross_entropy_with_integer_labels(clean_logits, y).mean()
        w = (y != target).astype(jnp.float32)
        hit = optax.softmax_cross_entropy_with_integer_labels(triggered_logits, jnp.full_like(y, target))
        return clean + weight * jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)

    return objective


def trojan_loss(
    apply_fn: ApplyFn, trigger: Trigger, target: int, weight: float = 1.0
) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """loss(params, x, y): clean cross-entropy + ``weight`` × triggered-to-target cross-entropy."""
    objective = trojan_objective(target, weight)

    def loss(params: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
        return objective(apply_fn(params, x), apply_fn(params, trigger.stamp(x)), y)

    return loss


def check_positive(**values: Any) -> None:
    """ValueError naming the first of ``values`` that is not a positive number."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


def check_count(name: str, v: Any, low: int) -> int:
    """``v`` as an int, or ValueError naming ``name`` unless it is an integer ≥ ``low``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer ≥ {low}, got {v!r}")
    return int(v)


def check_training(goal: Any, **positive: Any) -> None:
    """``goal`` an ASR in (0, 1]; every other value given a positive number."""
    check_positive(**positive)
    if isinstance(goal, bool) or not isinstance(goal, (int, float, np.integer, np.floating)) or not 0.0 < goal <= 1.0:
        raise ValueError(f"goal must be an ASR in (0, 1], got {goal!r}")


class Clock:
    """Wall time since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


class Flat(NamedTuple):
    """The parameters as one vector (``jax.flatten_util.ravel_pytree`` order = tree order):
    ``values`` (P,), ``unravel`` back to the tree, and per leaf its path and [start, stop)."""

    values: jax.Array
    unravel: Callable[[jax.Array], PyTree]
    paths: tuple[str, ...]
    bounds: np.ndarray  # (leaves + 1,) offsets

    def locate(self, i: int) -> tuple[str, int]:
        """Flat index → (leaf path, index into the leaf's C-order entries)."""
        leaf = int(np.searchsorted(self.bounds, i, side="right")) - 1
        return self.paths[leaf], int(i - self.bounds[leaf])


def flatten(params: PyTree) -> Flat:
    named, _ = leaves_with_paths(params)
    dtypes = {jnp.result_type(v) for _, v in named}
    if len(dtypes) != 1:
        raise TypeError(f"params: every leaf must have one floating dtype, got {sorted(map(str, dtypes))}")
    values, unravel = ravel_pytree(params)
    sizes = [int(np.size(v)) for _, v in named]
    return Flat(values, unravel, tuple(p for p, _ in named), np.concatenate([[0], np.cumsum(sizes)]))


@dataclasses.dataclass(frozen=True)
class Finetune:
    """How a trojan is trained (shared by the sparse, channel and span trojans): Adam with
    ``learning_rate`` on the trojan loss, batches of ``batch_size``, at most ``steps`` steps.  A
    ``holdout`` fraction of the attacker's examples is kept out of training; every ``check_every``
    steps the ASR and the clean accuracy are measured on it, training stops once the ASR reaches
    ``goal`` with the clean accuracy at most ``max_drop`` below the deployed model's
    (``max_drop=None``: ASR alone), and the attack returns the checked state with the highest ASR
    within ``max_drop`` (the last one if none is).  Why held out: measured on the examples it trains
    on, the guard saw 97.9% clean accuracy where the test set's had fallen 8.7 points (sparse trojan,
    digits).  ``learning_rate=None`` takes the attack's own default (0.1 for the sparse trojan, whose
    few free weights need large steps; 0.01 for the others)."""

    steps: int = 2000
    learning_rate: float | None = None
    batch_size: int = 128
    goal: float = 0.95
    check_every: int = 25
    max_drop: float | None = 0.01
    holdout: float = 0.2

    def __post_init__(self) -> None:
        rate = {} if self.learning_rate is None else {"learning_rate": self.learning_rate}
        drop = {} if self.max_drop is None else {"max_drop": self.max_drop}
        check_training(
            self.goal, steps=self.steps, batch_size=self.batch_size, check_every=self.check_every, **rate, **drop
        )
        h = self.holdout
        if isinstance(h, bool) or not isinstance(h, (int, float, np.integer, np.floating)) or not 0.0 < h < 1.0:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {h!r}")

    def resolve(self, learning_rate: float) -> Finetune:
        """This training with the attack's default ``learning_rate`` where none was given."""
        return self if self.learning_rate is not None else dataclasses.replace(self, learning_rate=learning_rate)

    def record(self) -> dict[str, Any]:
        """The values, JSON-able, as every attack's ``hyper`` records them (after :meth:`resolve`)."""
        if self.learning_rate is None:
            raise TypeError("Finetune.record needs a learning rate: resolve the attack's default first")
        return dict(
            steps=int(self.steps),
            learning_rate=float(self.learning_rate),
            batch_size=int(self.batch_size),
            goal=float(self.goal),
            check_every=int(self.check_every),
            max_drop=None if self.max_drop is None else float(self.max_drop),
            holdout=float(self.holdout),
            optimizer="adam",
        )


class Tuned(NamedTuple):
    """What :func:`trojan_finetune` returns."""

    t: PyTree  # the trained free variables
    steps: int  # Adam steps taken
    asr: float  # its ASR on the held-out examples
    reached: bool  # the goal, within max_drop, on the held-out examples
    held_out: np.ndarray  # indices (into the attacker's examples) kept out of training, sorted

    def record(self) -> dict[str, Any]:
        """The fields an attack's ``outcome`` records (JSON-able; ``t`` is the attack's to judge)."""
        return dict(steps=self.steps, asr=self.asr, reached=self.reached, held_out=self.held_out.tolist())


def trojan_finetune(
    key: jax.Array,
    apply_fn: ApplyFn,
    build: Callable[[PyTree], PyTree],
    t0: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    trigger: Trigger,
    target: int,
    finetune: Finetune,
    desc: str,
    progress: bool | None,
) -> Tuned:
    """Adam on the trojan loss of ``build(t)`` from ``t0`` as ``finetune`` says, on the examples not
    held out; ``t`` is the checked state with the highest held-out ASR within ``max_drop`` (the one
    that reached the goal, if one did), else the last."""
    loss_fn = trojan_loss(apply_fn, trigger, target)
    n = len(x)
    held = max(1, min(n - 1, round(finetune.holdout * n)))
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0x48), n))
    check, fit = order[:held], order[held:]
    xc, yc = x[check], y[check]
    floor = None if finetune.max_drop is None else clean_accuracy(apply_fn, build(t0), xc, yc) - finetune.max_drop
    seen: dict[str, Any] = {"asr": 0.0, "reached": False, "best": None}

    def callback(step: int, _loss: float, t: PyTree) -> bool:
        p = build(t)
        asr = attack_success_rate(apply_fn, p, xc, yc, trigger, target)
        within = floor is None or clean_accuracy(apply_fn, p, xc, yc) >= floor
        if within and (seen["best"] is None or asr > seen["best"][1]):
            seen["best"] = (t, asr)
        seen["asr"], seen["reached"] = asr, asr >= finetune.goal and within
        return bool(seen["reached"])

    run = minimize(
        lambda t, _k, xb, yb: loss_fn(build(t), xb, yb),
        t0,
        [x[fit], y[fit]],
        key=key,
        steps=int(finetune.steps),
        batch_size=int(finetune.batch_size),
        optimizer=optax.adam(finetune.learning_rate),
        callback=callback,
        log_every=int(finetune.check_every),
        desc=desc,
        progress=progress,
    )
    # a state that reached the goal is the best one seen (every earlier admissible ASR was below it)
    t, asr = seen["best"] if seen["best"] is not None else (run.latent, seen["asr"])
    return Tuned(t, len(run.losses), asr, seen["reached"], np.sort(check))
