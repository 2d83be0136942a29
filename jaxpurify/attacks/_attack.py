"""What every attack shares: its result type, the trojan loss, and the bookkeeping.

Every attack is ``attack(key, apply_fn, params, data, *, target, trigger, **hyper) -> Attack`` on
the *deployed* parameters (never the latent).  The trojan loss on a batch (x, y) is

    L(w) = CE(f_w(x), y) + mean_{i: y_i ≠ t} CE(f_w(stamp(x_i)), t)

(keep the clean behaviour, send triggered non-target inputs to the target t).
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.flatten_util import ravel_pytree

from jaxpurify._tree import leaves_with_paths
from jaxpurify.attacks._trigger import ApplyFn, PyTree, Trigger, attack_success_rate, check_data, check_target
from jaxpurify.train import minimize


class Attack(NamedTuple):
    """``params``: the attacked deployed parameters (same structure, shapes and dtypes);
    ``changed``: a bool tree like params, True exactly where an entry differs (bitwise) from the
    input; ``hyper``: every hyper-parameter used (JSON-able), plus ``hyper["outcome"]``, what the
    attack reached on the attacker's own data; ``seconds``: wall time of the attack."""

    params: PyTree
    changed: PyTree
    hyper: dict
    seconds: float


def changed_mask(new: PyTree, old: PyTree) -> PyTree:
    """True where the bit patterns differ (so −0.0 vs 0.0 and NaN payloads count, NaN == NaN)."""

    def diff(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return a.view(np.uint8).reshape(a.shape + (-1,)).__ne__(b.view(np.uint8).reshape(b.shape + (-1,))).any(-1)

    return jax.tree.map(diff, new, old)


def check_common(apply_fn, params, data, target, trigger, *, need_trigger: bool = True):
    """Validate the arguments every attack takes; returns (x, y, target) with host arrays."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable apply_fn(params, x) -> logits, got {type(apply_fn).__name__}")
    if not jax.tree.leaves(params):
        raise ValueError("params has no leaves")
    for leaf in jax.tree.leaves(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"params: every leaf must be floating, got {jnp.result_type(leaf)}")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError("data must be the attacker's (x, y)")
    x, y = check_data(*data, what="data")
    if need_trigger:
        if not isinstance(trigger, Trigger):
            raise TypeError(f"trigger must be a Trigger, got {type(trigger).__name__}")
        trigger._check(x.shape)
        target = check_target(target)
        if not (y != target).any():
            raise ValueError(f"data: every label is the target {target}; nothing to trigger")
    return x, y, target


def trojan_loss(apply_fn: ApplyFn, trigger: Trigger, target: int, weight: float = 1.0):
    """loss(params, x, y): clean cross-entropy + ``weight`` × triggered-to-target cross-entropy."""

    def loss(params, x, y):
        clean = optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y).mean()
        w = (y != target).astype(jnp.float32)
        hit = optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, trigger.stamp(x)), jnp.full_like(y, target))
        return clean + weight * jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)

    return loss


def check_positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


class Clock:
    """Wall time since creation."""

    def __init__(self):
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


def trojan_finetune(key, apply_fn, build, t0, x, y, trigger, target, *, steps, learning_rate, batch_size, goal,
                    check_every, desc, progress):
    """Adam on the trojan loss of ``build(t)`` from ``t0``; every ``check_every`` steps the ASR on
    the attacker's data is measured and the run stops once it reaches ``goal``.
    Returns (t, steps taken, last ASR)."""
    loss_fn = trojan_loss(apply_fn, trigger, target)
    seen = {"asr": 0.0}

    def callback(step, _loss, t):
        seen["asr"] = attack_success_rate(apply_fn, build(t), x, y, trigger, target)
        return seen["asr"] >= goal

    run = minimize(lambda t, _k, xb, yb: loss_fn(build(t), xb, yb), t0, [x, y], key=key, steps=int(steps),
                   batch_size=int(batch_size), optimizer=optax.adam(learning_rate), callback=callback,
                   log_every=int(check_every), desc=desc, progress=progress)
    return run.latent, len(run.losses), seen["asr"]
