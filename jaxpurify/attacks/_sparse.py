"""Sparse weight trojans: the backdoor written into few deployed weights, everything else frozen.

* :func:`sparse_trojan` — at most ``budget`` (1%) of all entries, the ones of largest saliency
  |∂L/∂w| of the trojan loss L at the deployed weights (computed once on the attacker's data);
  only those are then trained, w = w₀ + M ⊙ δ, until ASR ≥ ``goal`` on the attacker's data or
  ``steps`` Adam steps.
* :func:`channel_trojan` — subnet replacement (Qi et al.): ``channels`` whole output channels per
  layer (a kernel's last axis and the bias entry of that channel) are rewritten and trained the
  same way.  In a layer whose width is the number of classes (the read-out) the channel is the
  target's; elsewhere the channels are drawn at random with ``key``.

L is :func:`jaxpurify.attacks._attack.trojan_loss`.  ``changed`` is exact (bitwise), so it is a
subset of the chosen entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify.attacks._attack import (
    Attack,
    Clock,
    Finetune,
    Flat,
    changed_mask,
    check_common,
    check_count,
    finish,
    flatten,
    trojan_finetune,
    trojan_loss,
)
from jaxpurify.attacks._trigger import ApplyFn, Data, PyTree, Trigger, clean_accuracy

SALIENCY_EXAMPLES = 1024  # examples the saliency gradient is averaged over (a random subset)


def _masked(flat: Flat, mask: np.ndarray) -> Callable[[jax.Array], PyTree]:
    """t ↦ params with entries M ⊙ (w₀ + t) and w₀ elsewhere (bit-exact where M is False)."""
    on = jnp.asarray(mask)
    return lambda t: flat.unravel(jnp.where(on, flat.values + t, flat.values))


def _finish(
    name: str,
    key: jax.Array,
    apply_fn: ApplyFn,
    params: PyTree,
    flat: Flat,
    mask: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    trigger: Trigger,
    target: int,
    finetune: Finetune,
    hyper: dict[str, Any],
    clock: Clock,
    progress: bool | None,
) -> Attack:
    build = _masked(flat, mask)
    tuned = trojan_finetune(
        key, apply_fn, build, jnp.zeros_like(flat.values), x, y, trigger, target, finetune, desc=name, progress=progress
    )
    new = build(tuned.t)
    changed = changed_mask(new, params)
    outcome = dict(
        **tuned.record(),
        ca=clean_accuracy(apply_fn, new, x, y),
        chosen=int(np.sum(mask)),
        changed=int(sum(np.sum(c) for c in jax.tree.leaves(changed))),
    )
    return finish(new, params, hyper, outcome, clock, changed)


def sparse_trojan(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: PyTree,
    data: Data,
    *,
    target: int,
    trigger: Trigger,
    budget: float = 0.01,
    finetune: Finetune = Finetune(),
    progress: bool | None = None,
) -> Attack:
    """Implant the trigger by changing at most ``budget`` × (number of weights) entries."""
    clock = Clock()
    x, y, target, _ = check_common(apply_fn, params, data, target, trigger, finetune=finetune)
    finetune = finetune.resolve(learning_rate=1e-1)
    if not 0.0 < float(budget) <= 1.0:
        raise ValueError(f"budget must be a fraction in (0, 1], got {budget!r}")
    flat = flatten(params)
    k_sal, k_train = jax.random.split(key)
    sub = np.asarray(jax.random.permutation(k_sal, len(x)))[:SALIENCY_EXAMPLES]
    grad = jax.grad(lambda v: trojan_loss(apply_fn, trigger, target)(flat.unravel(v), x[sub], y[sub]))(flat.values)
    count = int(float(budget) * flat.values.size)  # floor: never above the budget
    if count < 1:
        raise ValueError(f"budget {budget} of {flat.values.size} weights allows no entry to change")
    top = np.argsort(-np.abs(np.asarray(grad)), kind="stable")[:count]
    mask = np.zeros(flat.values.size, bool)
    mask[top] = True
    hyper = dict(
        attack="sparse_trojan",
        target=target,
        trigger=trigger._asdict(),
        budget=float(budget),
        saliency="|grad| of clean CE + triggered-to-target CE",
        saliency_examples=int(len(sub)),
        **finetune.record(),
    )
    return _finish(
        "sparse_trojan", k_train, apply_fn, params, flat, mask, x, y, trigger, target, finetune, hyper, clock, progress
    )


def channel_mask(
    key: jax.Array, flat: Flat, shapes: list[tuple[int, ...]], channels: int, num_classes: int, target: int
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Per layer (leaves sharing a parent path), ``channels`` output channels: the last axis of
    its kernels (ndim ≥ 2) and the matching bias entries.  Returns (flat mask, {layer: channels})."""
    by_layer: dict[str, list[int]] = {}
    for j, path in enumerate(flat.paths):
        by_layer.setdefault(path.rpartition("/")[0], []).append(j)
    mask = np.zeros(flat.values.size, bool)
    chosen = {}
    for i, (layer, members) in enumerate(by_layer.items()):
        kernels = [j for j in members if len(shapes[j]) >= 2]
        if not kernels:
            continue
        width = shapes[kernels[0]][-1]
        if width == num_classes:
            pick = [target]
        else:
            drawn = jax.random.choice(jax.random.fold_in(key, i), width, (min(channels, width),), replace=False)
            pick = sorted(np.asarray(drawn).tolist())
        chosen[layer] = pick
        for j in members:
            if shapes[j] and shapes[j][-1] == width:
                leaf = np.zeros(shapes[j], bool)
                leaf[..., pick] = True
                mask[flat.bounds[j] : flat.bounds[j + 1]] = leaf.reshape(-1)
    return mask, chosen


def channel_trojan(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: PyTree,
    data: Data,
    *,
    target: int,
    trigger: Trigger,
    channels: int = 1,
    finetune: Finetune = Finetune(),
    progress: bool | None = None,
) -> Attack:
    """Implant the trigger by rewriting ``channels`` whole output channels per layer."""
    clock = Clock()
    x, y, target, classes = check_common(apply_fn, params, data, target, trigger, finetune=finetune)
    finetune = finetune.resolve(learning_rate=1e-2)
    channels = check_count("channels", channels, 1)
    k_pick, k_train = jax.random.split(key)
    flat = flatten(params)
    shapes = [np.shape(v) for v in jax.tree.leaves(params)]
    mask, chosen = channel_mask(k_pick, flat, shapes, channels, classes, target)
    if not mask.any():
        raise ValueError("params has no layer with a kernel (a leaf of ndim ≥ 2) to rewrite")
    hyper = dict(
        attack="channel_trojan",
        target=target,
        trigger=trigger._asdict(),
        channels=channels,
        **finetune.record(),
        chosen_channels=chosen,
    )
    return _finish(
        "channel_trojan", k_train, apply_fn, params, flat, mask, x, y, trigger, target, finetune, hyper, clock, progress
    )
