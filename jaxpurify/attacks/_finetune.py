"""BadNets by fine-tuning (Gu et al.): a dense change of every deployed weight.

The attacker poisons its data (a ``fraction`` of the examples stamped with the trigger and
relabelled ``target``, all-to-one; :func:`poison`) and fine-tunes the deployed parameters on it
with Adam, minimising the plain cross-entropy  mean_i CE(f_w(x'_i), y'_i).
"""

from __future__ import annotations

import jax
import optax  # type: ignore[import-untyped]  # optax ships no py.typed

from jaxpurify.attacks._attack import Attack, Clock, check_common, check_positive, finish
from jaxpurify.attacks._trigger import ApplyFn, Data, PyTree, Trigger, attack_success_rate, clean_accuracy, poison
from jaxpurify.train import cross_entropy, minimize


def badnets(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: PyTree,
    data: Data,
    *,
    target: int,
    trigger: Trigger,
    fraction: float = 0.1,
    steps: int = 500,
    learning_rate: float = 1e-2,
    batch_size: int = 128,
    progress: bool | None = None,
) -> Attack:
    """Fine-tune ``params`` for ``steps`` Adam steps on ``data`` with ``fraction`` poisoned."""
    clock = Clock()
    x, y, target, _ = check_common(apply_fn, params, data, target, trigger)
    check_positive(steps=steps, learning_rate=learning_rate, batch_size=batch_size)
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    k_poison, k_train = jax.random.split(key)
    xp, yp = poison(k_poison, x, y, trigger, target, fraction)

    def loss(p: PyTree, _key: jax.Array, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return cross_entropy(apply_fn(p, xb), yb)

    new = minimize(
        loss,
        params,
        [xp, yp],
        key=k_train,
        steps=int(steps),
        batch_size=int(batch_size),
        optimizer=optax.adam(learning_rate),
        desc="badnets",
        progress=progress,
    ).latent
    hyper = dict(
        attack="badnets",
        target=target,
        trigger=trigger._asdict(),
        fraction=float(fraction),
        steps=int(steps),
        learning_rate=float(learning_rate),
        batch_size=int(batch_size),
        optimizer="adam",
    )
    outcome = dict(
        asr=attack_success_rate(apply_fn, new, x, y, trigger, target), ca=clean_accuracy(apply_fn, new, x, y)
    )
    return finish(new, params, hyper, outcome, clock)
