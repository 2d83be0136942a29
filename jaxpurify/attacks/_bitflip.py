"""Bit-flip attacks on float32 deployed weights: progressive, gradient-ranked search.

A flip toggles bit b of weight i's IEEE-754 pattern, w_i ← bits⁻¹(bits(w_i) ⊕ 2^b) (b = 31 the
sign, 23–30 the exponent, 0–22 the mantissa).  Each step of the search (Rakin et al., PBFA):

1. g = ∂L/∂w on an evaluation batch of the attacker's data;
2. the ``candidates`` not-yet-flipped weights of largest |g_i| are tried with each bit in ``bits``
   (default: the top mantissa bit, the exponent and the sign: mostly exponent bits);
3. the single flip that is best for the attacker is kept (a non-finite loss counts as +∞).

* :func:`pbfa` — untargeted: L = clean cross-entropy, the flip that *raises* it most; stops after
  ``flips`` flips or once accuracy on the attacker's data is ≤ 1/classes + ``margin``.
* :func:`bit_trojan` — targeted: L = trojan loss (clean CE + triggered-to-target CE), the flip
  that *lowers* it most (and only if it does); stops after ``flips`` flips or at ASR ≥ ``goal``.

``hyper["outcome"]["flips"]`` lists every flip kept, as [leaf path, index into the leaf's C-order
entries, bit]; each weight is flipped at most once, so ``changed`` marks exactly those entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpurify._progress import Progress
from jaxpurify.attacks._attack import Attack, Clock, changed_mask, check_common, check_positive, flatten, trojan_loss
from jaxpurify.attacks._trigger import ApplyFn, PyTree, Trigger, attack_success_rate, clean_accuracy

BITS = tuple(range(22, 32))  # top mantissa bit, the 8 exponent bits, the sign


def flip_bits(values: jax.Array, index, bit) -> jax.Array:
    """``values`` (float32) with bit ``bit`` of entry ``index`` toggled."""
    u = jax.lax.bitcast_convert_type(values, jnp.uint32)
    u = u.at[index].set(u[index] ^ jnp.left_shift(jnp.uint32(1), jnp.asarray(bit, jnp.uint32)))
    return jax.lax.bitcast_convert_type(u, jnp.float32)


def _search_step(loss_of_flat, candidates: int, bits: tuple[int, ...], sign: float):
    """jit(values, flipped, x, y) -> (index, bit, loss after): the best single flip.

    ``sign`` +1 keeps the flip of highest loss (untargeted), −1 the lowest (targeted)."""
    bit_arr = jnp.asarray(bits, jnp.uint32)

    @jax.jit
    def step(values, flipped, x, y):
        g = jax.grad(loss_of_flat)(values, x, y)
        score = jnp.where(flipped | ~jnp.isfinite(g), -1.0, jnp.abs(g))
        _, top = jax.lax.top_k(score, candidates)
        idx = jnp.repeat(top, len(bits))
        bit = jnp.tile(bit_arr, candidates)

        def trial(ib):
            value = loss_of_flat(flip_bits(values, ib[0], ib[1]), x, y)
            return jnp.where(jnp.isfinite(value), value, jnp.inf)  # a NaN/Inf loss is the worst model

        losses = jax.lax.map(trial, (idx, bit), batch_size=len(bits))
        best = jnp.argmax(sign * losses)  # +inf is the best untargeted and the worst targeted flip
        return idx[best], bit[best], losses[best]

    return step


def _eval_batch(key, x, y, size):
    sub = np.sort(np.asarray(jax.random.permutation(key, len(x)))[:size])
    return jnp.asarray(x[sub]), jnp.asarray(y[sub])


def _check_bits(bits, flips, candidates, batch_size):
    check_positive(flips=flips, candidates=candidates, batch_size=batch_size)
    bits = tuple(int(b) for b in bits)
    if not bits or any(not 0 <= b < 32 for b in bits) or len(set(bits)) != len(bits):
        raise ValueError(f"bits must be distinct float32 bit positions in 0..31, got {bits}")
    return bits


def _search(key, apply_fn, params, x, y, loss, sign, stop, hyper, desc, progress, clock):
    """The shared loop: flip, record, ``stop(params)`` → (bool, outcome numbers)."""
    flat = flatten(params)
    if flat.values.dtype != jnp.float32:
        raise TypeError(f"params: bit flips are defined on float32 weights, got {flat.values.dtype}")
    if hyper["candidates"] > flat.values.size:
        raise ValueError(f"candidates {hyper['candidates']} exceeds the {flat.values.size} weights")
    xb, yb = _eval_batch(key, x, y, hyper["batch_size"])
    step = _search_step(lambda v, xs, ys: loss(flat.unravel(v), xs, ys), hyper["candidates"], hyper["bits"], sign)
    values, flipped = flat.values, jnp.zeros(flat.values.size, bool)
    current = float(loss(params, xb, yb))
    kept, done, measure = [], False, {}
    with Progress(total=hyper["flips"], desc=desc, disable=None if progress is None else not progress) as bar:
        for _ in range(hyper["flips"]):
            done, measure = stop(flat.unravel(values))
            if done:
                break
            i, b, after = step(values, flipped, xb, yb)
            i, b, after = int(i), int(b), float(after)
            if sign < 0 and not after < current:  # targeted: no flip helps any more
                break
            values, flipped = flip_bits(values, i, b), flipped.at[i].set(True)
            current = after
            kept.append([*flat.locate(i), b])
            bar.update(1, loss=current)
    new = flat.unravel(values)
    if not done:
        done, measure = stop(new)
    hyper["outcome"] = dict(flips=kept, count=len(kept), reached=bool(done), **measure)
    return Attack(new, changed_mask(new, params), hyper, clock())


def pbfa(
    key,
    apply_fn: ApplyFn,
    params: PyTree,
    data,
    *,
    target: int | None = None,
    trigger: Trigger | None = None,
    flips: int = 20,
    candidates: int = 10,
    bits: tuple[int, ...] = BITS,
    batch_size: int = 256,
    margin: float = 0.02,
    progress: bool | None = None,
) -> Attack:
    """Untargeted progressive bit-flip search (``target`` and ``trigger`` are ignored)."""
    clock = Clock()
    x, y, _ = check_common(apply_fn, params, data, target, trigger, need_trigger=False)
    bits = _check_bits(bits, flips, candidates, batch_size)
    classes = int(jax.eval_shape(lambda p: apply_fn(p, jnp.asarray(x[:1])), params).shape[-1])
    chance = 1.0 / classes

    def loss(p, xs, ys):
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, xs), ys).mean()

    def stop(p):
        ca = clean_accuracy(apply_fn, p, x, y)
        return ca <= chance + margin, dict(ca=ca)

    hyper = dict(attack="pbfa", flips=int(flips), candidates=int(candidates), bits=list(bits),
                 batch_size=int(batch_size), margin=float(margin), chance=chance, loss="clean cross-entropy, maximised")
    return _search(key, apply_fn, params, x, y, loss, +1.0, stop, hyper, "pbfa", progress, clock)


def bit_trojan(
    key,
    apply_fn: ApplyFn,
    params: PyTree,
    data,
    *,
    target: int,
    trigger: Trigger,
    flips: int = 100,
    candidates: int = 10,
    bits: tuple[int, ...] = BITS,
    batch_size: int = 256,
    goal: float = 0.9,
    progress: bool | None = None,
) -> Attack:
    """Targeted bit trojan: flips that implant ``trigger`` → ``target`` while keeping clean loss."""
    clock = Clock()
    x, y, target = check_common(apply_fn, params, data, target, trigger)
    bits = _check_bits(bits, flips, candidates, batch_size)
    if not 0.0 < float(goal) <= 1.0:
        raise ValueError(f"goal must be an ASR in (0, 1], got {goal!r}")

    def stop(p):
        asr = attack_success_rate(apply_fn, p, x, y, trigger, target)
        return asr >= goal, dict(asr=asr, ca=clean_accuracy(apply_fn, p, x, y))

    hyper = dict(attack="bit_trojan", target=target, trigger=trigger._asdict(), flips=int(flips),
                 candidates=int(candidates), bits=list(bits), batch_size=int(batch_size), goal=float(goal),
                 loss="clean CE + triggered-to-target CE, minimised")
    return _search(key, apply_fn, params, x, y, trojan_loss(apply_fn, trigger, target), -1.0, stop, hyper,
                   "bit_trojan", progress, clock)
