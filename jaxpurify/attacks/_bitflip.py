"""Bit-flip attacks on float32 deployed weights: progressive, gradient-ranked search.

A flip toggles bit b of weight i's IEEE-754 pattern, w_i ← bits⁻¹(bits(w_i) ⊕ 2^b) (b = 31 the
sign, 23–30 the exponent, 0–22 the mantissa).  Each step of the search (Rakin et al., PBFA):

1. g = ∂L/∂w on an evaluation batch of the attacker's data;
2. the ``candidates`` not-yet-flipped weights of largest |g_i| are tried with each bit in ``bits``
   (default: the top mantissa bit, the exponent and the sign: mostly exponent bits);
3. the single flip that is best for the attacker is kept (a non-finite loss counts as +∞).

* :func:`pbfa` — untargeted: L = mean_i min(CE_i, ``cap``) (a non-finite CE_i counts as ``cap``),
  the flip that *raises* it most; stops after ``flips`` flips or once accuracy on the attacker's
  data is ≤ 1/classes + ``margin``.  The cap matters for float32: one exponent flip can make a
  weight ~1e37 and the plain mean infinite, after which every flip ties; capped, an example
  already ruined stops counting (and stops contributing gradient), so the search moves on to the
  examples still classified correctly.
* :func:`bit_trojan` — targeted: L = trojan loss (clean CE + triggered-to-target CE), the flip
  that *lowers* it most (and only if it does); stops after ``flips`` flips or at ASR ≥ ``goal``.
  ``leaves`` restricts the candidates to the named leaves: ``("readout/kernel",)`` is the
  last-layer search of TBT (Rakin et al., 2020) with the trigger fixed.  With ``craft`` > 0 it is
  TBT-style: TBT's neuron choice and trigger, then this module's float32 greedy search (TBT
  itself fine-tunes the chosen weights of an 8-bit model and flips the bits that differ). Of the
  read-out kernel V (features × classes), the ``neurons`` rows f of largest
  |∂CE(f(x), t)/∂V[f, t]| on the attacker's non-target data are chosen; the trigger's patch is
  then crafted for ``craft`` Adam steps to maximise their summed activation Σ_{f∈S} h_f(stamp(x))
  (read as the target logit of the model with V[:, t] set to the indicator of S), each pixel kept
  within the attacker's data range; and only the weights V[S, t] are flip candidates.  The
  crafted trigger is returned in ``Attack.trigger`` and recorded in ``hyper["outcome"]``.

``hyper["outcome"]["flips"]`` lists every flip kept, as [leaf path, index into the leaf's C-order
entries, bit]; each weight is flipped at most once, so ``changed`` marks exactly those entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax  # type: ignore[import-untyped]  # optax ships no py.typed
from jax.typing import ArrayLike

from jaxpurify.attacks._attack import (
    Attack,
    Clock,
    Flat,
    check_common,
    check_count,
    check_inputs,
    check_positive,
    check_training,
    finish,
    flatten,
    trojan_objective,
)
from jaxpurify.attacks._trigger import ApplyFn, Data, PyTree, Trigger, attack_success_rate, clean_accuracy, predictions
from jaxpurify.progress import Progress
from jaxpurify.train import minimize
from jaxpurify.tree import leaves_with_paths, map_with_path

BITS = tuple(range(22, 32))  # top mantissa bit, the 8 exponent bits, the sign

Logits = tuple[jax.Array, ...]  # the logits of each input batch (clean, and triggered if any)
# forward(values, inputs) -> logits: the network on the flat weights, one output per input batch
Forward = Callable[[jax.Array, tuple[jax.Array, ...]], Logits]
# stop(params) -> (done, outcome numbers)
Stop = Callable[[PyTree], tuple[bool, dict[str, Any]]]
# step(values, frozen, inputs, y) -> (index, bit, loss after, index not frozen)
Step = Callable[[jax.Array, jax.Array, tuple[jax.Array, ...], jax.Array], tuple[jax.Array, ...]]


def flip_bits(values: jax.Array, index: ArrayLike, bit: ArrayLike) -> jax.Array:
    """``values`` (float32) with bit ``bit`` of entry ``index`` toggled."""
    u = jax.lax.bitcast_convert_type(values, jnp.uint32)
    u = u.at[index].set(u[index] ^ jnp.left_shift(jnp.uint32(1), jnp.asarray(bit, jnp.uint32)))
    return jax.lax.bitcast_convert_type(u, jnp.float32)


class Split(NamedTuple):
    """The network as a frozen part and a head: ``apply_fn(params, x) ==
    head(params, features(params, x))``, where ``features`` reads no leaf named in ``leaves`` (paths
    as in the codebook, e.g. ``("readout/kernel", "readout/bias")``).  A flip in one of those
    leaves leaves the features unchanged, so the search computes the features of its batch once
    per step and tries each such flip on the head alone (see ``jaxpurify.models``' ``part``)."""

    features: Callable[[PyTree, jax.Array], jax.Array]
    head: Callable[[PyTree, jax.Array], jax.Array]
    leaves: tuple[str, ...]


def _search_step(
    forward: Forward,
    objective: Callable[..., jax.Array],
    candidates: int,
    bits: tuple[int, ...],
    sign: float,
    allowed: Callable[..., jax.Array] | None = None,
    fast: tuple[Forward, Forward, jax.Array] | None = None,
) -> Step:
    """jit(values, frozen, inputs, y) -> (index, bit, loss after, index not frozen): the best single flip.

    ``forward(values, inputs)`` gives the logits of every input batch, ``objective(*logits, y)``
    the loss; ``frozen`` marks the entries not to try (already flipped, or outside the attack's
    scope); ``sign`` +1 keeps the flip of highest loss (untargeted), −1 the lowest (targeted); a
    flip for which ``allowed(*logits, y)`` is False counts as the worst.  ``fast`` = (features,
    head, in_head): a flip of an entry with ``in_head`` True is tried on ``head(values, hs)``,
    with ``hs = features(values, inputs)`` computed once per step, the same logits without the
    frozen part of the network."""
    bit_arr = jnp.asarray(bits, jnp.uint32)

    def value_of(logits: Logits, y: jax.Array) -> jax.Array:
        value = objective(*logits, y)
        value = jnp.where(jnp.isfinite(value), value, jnp.inf)  # a NaN/Inf loss is the worst model
        if allowed is not None:
            value = jnp.where(allowed(*logits, y), value, -sign * jnp.inf)
        return value

    @jax.jit
    def step(
        values: jax.Array, frozen: jax.Array, inputs: tuple[jax.Array, ...], y: jax.Array
    ) -> tuple[jax.Array, ...]:
        g = jax.grad(lambda v: objective(*forward(v, inputs), y))(values)
        score = jnp.where(frozen | ~jnp.isfinite(g), -1.0, jnp.abs(g))
        _, top = jax.lax.top_k(score, candidates)

        # the loss after flipping each bit of entry i
        def tries(i: jax.Array, run: Callable[[jax.Array], Logits]) -> jax.Array:
            return jax.vmap(lambda b: value_of(run(flip_bits(values, i, b)), y))(bit_arr)

        def whole(v: jax.Array) -> Logits:
            return forward(v, inputs)

        per_entry: Callable[[jax.Array], jax.Array]
        if fast is None:
            per_entry = lambda i: tries(i, whole)
        else:
            features, head, in_head = fast
            hs = features(values, inputs)  # the frozen part: once per step, not once per trial

            def head_or_whole(i: jax.Array) -> jax.Array:
                out: jax.Array = jax.lax.cond(
                    in_head[i], lambda: tries(i, lambda v: head(v, hs)), lambda: tries(i, whole)
                )
                return out

            per_entry = head_or_whole

        losses = jax.lax.map(per_entry, top).reshape(-1)
        idx, bit = jnp.repeat(top, len(bits)), jnp.tile(bit_arr, candidates)
        # fewer unfrozen entries than candidates: top_k fills up with frozen ones, never to be flipped
        losses = jnp.where(frozen[idx], -sign * jnp.inf, losses)
        best = jnp.argmax(sign * losses)  # +inf is the best untargeted and the worst targeted flip
        return idx[best], bit[best], losses[best], ~frozen[idx[best]]

    return step


def _eval_batch(key: jax.Array, x: np.ndarray, y: np.ndarray, size: int) -> tuple[jax.Array, jax.Array]:
    sub = np.sort(np.asarray(jax.random.permutation(key, len(x)))[:size])
    return jnp.asarray(x[sub]), jnp.asarray(y[sub])


def _check_bits(bits: Sequence[int], flips: int, candidates: int, batch_size: int) -> tuple[int, ...]:
    check_positive(flips=flips, candidates=candidates, batch_size=batch_size)
    out = tuple(int(b) for b in bits)
    if not out or any(not 0 <= b < 32 for b in out) or len(set(out)) != len(out):
        raise ValueError(f"bits must be distinct float32 bit positions in 0..31, got {out}")
    return out


def _scope(flat: Flat, leaves: Sequence[str] | None, what: str = "leaves") -> np.ndarray:
    """Bool over the flat entries: True outside the named leaves (None: every leaf in scope)."""
    if leaves is None:
        return np.zeros(flat.values.size, bool)
    unknown = sorted(set(leaves) - set(flat.paths))
    if unknown or not leaves:
        raise ValueError(
            f"{what}: {unknown[0] if unknown else 'empty'!r} is not a leaf of params; "
            f"choose from {', '.join(flat.paths)}"
        )
    out = np.ones(flat.values.size, bool)
    for j, path in enumerate(flat.paths):
        if path in leaves:
            out[flat.bounds[j] : flat.bounds[j + 1]] = False
    return out


def _check_split(split: Split, apply_fn: ApplyFn, params: PyTree, flat: Flat, x: np.ndarray | jax.Array) -> np.ndarray:
    """Validate ``split`` on a few examples; returns the bool mask of the head's flat entries."""
    if not isinstance(split, Split):
        raise TypeError(f"split must be a jaxpurify.attacks.Split, got {type(split).__name__}")
    in_head = ~_scope(flat, tuple(split.leaves), "split.leaves")
    x = jnp.asarray(x[:8])
    try:
        whole = np.asarray(apply_fn(params, x), np.float64)
        parts = np.asarray(split.head(params, split.features(params, x)), np.float64)
        poisoned = flat.unravel(jnp.where(jnp.asarray(in_head), jnp.nan, flat.values))
        blind = np.asarray(split.features(poisoned, x))
    except Exception as e:  # any failure here means the split does not fit params and data
        raise ValueError(f"split: head(features(x)) fails on the attacker's data: {type(e).__name__}: {e}") from None
    scale = max(float(np.max(np.abs(whole))), 1e-30)
    if whole.shape != parts.shape or not np.allclose(parts, whole, rtol=1e-4, atol=1e-5 * scale):
        raise ValueError("split: head(params, features(params, x)) differs from apply_fn(params, x)")
    if not np.all(np.isfinite(blind)):
        raise ValueError("split: features reads a leaf named in split.leaves (NaN written there reached it)")
    return in_head


def _search(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    objective: Callable[..., jax.Array],
    trigger: Trigger | None,
    sign: float,
    stop: Stop,
    hyper: dict[str, Any],
    desc: str,
    progress: bool | None,
    clock: Clock,
    allowed: Callable[[Logits, jax.Array], Callable[..., jax.Array]] | None = None,
    only: tuple[str, np.ndarray] | None = None,
    split: Split | None = None,
) -> Attack:
    """The shared loop: flip, record, ``stop(params)`` → (bool, outcome numbers).  ``trigger``:
    None (the objective sees the clean batch only) or the trigger stamped into a second batch."""
    flat = flatten(params)
    if flat.values.dtype != jnp.float32:
        raise TypeError(f"params: bit flips are defined on float32 weights, got {flat.values.dtype}")
    if only is None:
        outside = _scope(flat, hyper.get("leaves"))
    else:  # (leaf path, entries): the candidates are these entries of that leaf only
        outside = np.ones(flat.values.size, bool)
        outside[flat.bounds[flat.paths.index(only[0])] + np.asarray(only[1])] = False
    if hyper["candidates"] > int((~outside).sum()):
        raise ValueError(f"candidates {hyper['candidates']} exceeds the {int((~outside).sum())} weights in scope")
    xb, yb = _eval_batch(key, x, y, hyper["batch_size"])
    inputs = (xb,) if trigger is None else (xb, trigger.stamp(xb))

    def forward(v: jax.Array, zs: tuple[jax.Array, ...]) -> Logits:
        p = flat.unravel(v)
        return tuple(apply_fn(p, z) for z in zs)

    fast: tuple[Forward, Forward, jax.Array] | None = None
    if split is not None:
        in_head = _check_split(split, apply_fn, params, flat, x)
        fast = (
            lambda v, zs: tuple(split.features(flat.unravel(v), z) for z in zs),
            lambda v, hs: tuple(split.head(flat.unravel(v), h) for h in hs),
            jnp.asarray(in_head),
        )
    step = _search_step(
        forward,
        objective,
        hyper["candidates"],
        hyper["bits"],
        sign,
        None if allowed is None else allowed(forward(flat.values, inputs), yb),
        fast,
    )
    values, flipped = flat.values, jnp.asarray(outside)  # out of scope: never a candidate
    current = float(objective(*forward(values, inputs), yb))
    kept: list[list[Any]] = []
    done: bool = False
    measure: dict[str, Any] = {}
    with Progress(total=hyper["flips"], desc=desc, disable=None if progress is None else not progress) as bar:
        for _ in range(hyper["flips"]):
            done, measure = stop(flat.unravel(values))
            if done:
                break
            at, bit, loss_after, free = step(values, flipped, inputs, yb)
            i, b, after = int(at), int(bit), float(loss_after)
            if not bool(free) or (
                sign < 0 and not after < current
            ):  # nothing left to flip, or (targeted) no flip helps
                break
            values, flipped = flip_bits(values, i, b), flipped.at[i].set(True)
            current = after
            kept.append([*flat.locate(i), b])
            bar.update(1, loss=current)
    new = flat.unravel(values)
    if not done:
        done, measure = stop(new)
    return finish(new, params, hyper, dict(flips=kept, count=len(kept), reached=bool(done), **measure), clock)


def pbfa(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: PyTree,
    data: Data,
    *,
    target: int | None = None,
    trigger: Trigger | None = None,
    flips: int = 20,
    candidates: int = 10,
    bits: tuple[int, ...] = BITS,
    batch_size: int = 256,
    margin: float = 0.01,
    cap: float = 20.0,
    split: Split | None = None,
    progress: bool | None = None,
) -> Attack:
    """Untargeted progressive bit-flip search (``target`` and ``trigger`` are ignored); stops once
    accuracy on the attacker's data is ≤ 1/classes + ``margin`` (11% on ten classes).  ``split``:
    flips in its head are tried without re-running the frozen part (same result, less time)."""
    clock = Clock()
    x, y, classes = check_inputs(apply_fn, params, data)
    bits = _check_bits(bits, flips, candidates, batch_size)
    check_positive(cap=cap)
    chance = 1.0 / classes

    def objective(logits: jax.Array, ys: jax.Array) -> jax.Array:
        finite = jnp.all(jnp.isfinite(logits), axis=-1)
        safe = jnp.where(finite[:, None], logits, 0.0)  # no NaN flows back from a ruined example
        ce = optax.softmax_cross_entropy_with_integer_labels(safe, ys)
        return jnp.mean(jnp.where(finite & jnp.isfinite(ce), jnp.minimum(ce, cap), cap))

    def stop(p: PyTree) -> tuple[bool, dict[str, Any]]:
        ca = clean_accuracy(apply_fn, p, x, y)
        return ca <= chance + margin, dict(ca=ca)

    hyper = dict(
        attack="pbfa",
        flips=int(flips),
        candidates=int(candidates),
        bits=list(bits),
        batch_size=int(batch_size),
        margin=float(margin),
        chance=chance,
        cap=float(cap),
        loss="mean of min(clean cross-entropy, cap), maximised",
    )
    return _search(
        key, apply_fn, params, x, y, objective, None, +1.0, stop, hyper, "pbfa", progress, clock, split=split
    )


def _with_leaf(params: PyTree, path: str, value: Any) -> PyTree:
    return map_with_path(lambda p, v: value if p == path else v, params)


def _readout_kernel(params: PyTree, path: str, target: int, classes: int | None = None) -> jax.Array:
    """The (features, classes) read-out kernel at ``path``; ``classes``: the logits' width, if known."""
    leaves = dict(leaves_with_paths(params)[0])
    if path not in leaves:
        raise ValueError(f"readout: {path!r} is not a leaf of params; choose from {', '.join(leaves)}")
    v = leaves[path]
    check_count("target", target, 0)
    if np.ndim(v) != 2 or target >= np.shape(v)[1] or (classes is not None and np.shape(v)[1] != classes):
        raise ValueError(
            f"readout: {path!r} must be the (features, classes) kernel of the logits"
            + (f" ({classes} classes)" if classes is not None else "")
            + f" with a column for target {target}, got shape {np.shape(v)}"
        )
    return jnp.asarray(v)


def choose_neurons(
    apply_fn: ApplyFn, params: PyTree, readout: str, x: np.ndarray | jax.Array, target: int, neurons: int
) -> np.ndarray:
    """TBT's neuron choice: the ``neurons`` rows f of the read-out kernel V with the largest
    |∂CE(f(x), target)/∂V[f, target]| on ``x`` (sorted row indices)."""
    v = _readout_kernel(params, readout, target)
    neurons = check_count("neurons", neurons, 1)
    if neurons > v.shape[0]:
        raise ValueError(f"neurons {neurons} exceeds the read-out's {v.shape[0]} features")
    to_target = jnp.full((len(x),), target)
    g = jax.grad(
        lambda k: optax.softmax_cross_entropy_with_integer_labels(
            apply_fn(_with_leaf(params, readout, k), jnp.asarray(x)), to_target
        ).mean()
    )(v)
    return np.sort(np.asarray(jax.lax.top_k(jnp.abs(g[:, target]), neurons)[1]))


def craft_trigger(
    apply_fn: ApplyFn,
    params: PyTree,
    readout: str,
    rows: ArrayLike,
    x: ArrayLike,
    target: int,
    trigger: Trigger,
    *,
    steps: int,
    learning_rate: float,
    low: float,
    high: float,
) -> Trigger:
    """A TBT-style trigger: the patch (``trigger``'s size and corner) whose pixels, in [low, high],
    maximise mean_x Σ_{f ∈ rows} h_f(stamp(x)), h the read-out's input features, by ``steps``
    Adam steps from ``trigger``'s own patch (clipped). Σ_f h_f is read as the target logit of the
    model whose read-out column ``target`` is the indicator of ``rows`` (a constant bias does not
    move it).  TBT itself drives the chosen activations toward a set value (an MSE); here their
    sum is maximised, the data range bounding it."""
    x = jnp.asarray(x)
    trigger._check(x.shape)
    v = _readout_kernel(params, readout, target)
    steps = check_count("steps", steps, 0)
    check_positive(learning_rate=learning_rate)
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ValueError(f"low and high must be finite with low ≤ high, got {low!r}, {high!r}")
    rows = np.asarray(rows)
    if (
        rows.ndim != 1
        or not rows.size
        or not np.issubdtype(rows.dtype, np.integer)
        or rows.min() < 0
        or rows.max() >= v.shape[0]
        or len(set(rows.tolist())) != rows.size
    ):
        raise ValueError(f"rows must be distinct row indices of the read-out's {v.shape[0]} features, got {rows!r:.80}")
    probe = _with_leaf(
        params, readout, v.at[:, target].set(jnp.zeros(v.shape[0], v.dtype).at[jnp.asarray(rows)].set(1))
    )
    r, c = trigger._window(x.shape[1], x.shape[2])
    pattern = jnp.broadcast_to(
        jnp.asarray(trigger._patch(np.float32), x.dtype), (trigger.size, trigger.size, x.shape[3])
    )
    pattern = jnp.clip(pattern, low, high)
    opt = optax.adam(learning_rate)

    @jax.jit
    def step(pat: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        g = jax.grad(lambda q: -apply_fn(probe, x.at[:, r, c, :].set(q))[:, target].mean())(pat)
        upd, state = opt.update(g, state)
        return jnp.clip(optax.apply_updates(pat, upd), low, high), state

    state = opt.init(pattern)
    for _ in range(steps):
        pattern, state = step(pattern, state)
    values = np.asarray(pattern, np.float64)
    return trigger._replace(pattern=tuple(tuple(tuple(float(a) for a in col) for col in row) for row in values))


def bit_trojan(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: PyTree,
    data: Data,
    *,
    target: int,
    trigger: Trigger,
    flips: int = 100,
    candidates: int = 10,
    bits: tuple[int, ...] = BITS,
    batch_size: int = 256,
    goal: float = 0.9,
    max_drop: float = 0.02,
    leaves: tuple[str, ...] | None = None,
    craft: int = 0,
    readout: str = "readout/kernel",
    neurons: int = 20,
    craft_rate: float = 0.1,
    tune: int = 0,
    tune_rate: float = 0.01,
    split: Split | None = None,
    progress: bool | None = None,
) -> Attack:
    """Targeted bit trojan: flips that implant ``trigger`` → ``target`` while keeping clean
    accuracy on the evaluation batch within ``max_drop`` of the deployed model's; only in
    ``leaves`` (paths, e.g. ``("readout/kernel",)``) if given.  ``craft`` > 0: TBT-style (the
    module's docstring): ``neurons`` rows of the ``readout`` kernel (the logits' (features,
    classes) kernel) chosen on the attacker's non-target data, the trigger crafted for them in
    ``craft`` Adam steps of rate ``craft_rate``, and only V[rows, target] flipped; ``leaves`` is
    then ignored. ``Attack.trigger`` is the crafted trigger (``hyper["trigger"]`` stays the one
    passed, the crafting's start); without ``craft`` it is None: the trigger passed is the one
    implanted.  ``tune`` > 0 (with ``craft``): TBT's Trojan Bit Search in float32 instead of the
    greedy search: the chosen weights V[rows, target] are trained for ``tune`` Adam steps (rate
    ``tune_rate``) on the trojan loss with the crafted trigger, and each is then set to the float32
    value nearest its trained one among those reachable by flipping a subset of ``bits``
    (:func:`nearest_by_flips`; a weight may get several flips, at most ``flips`` in all, the
    weights that moved most first).  ``split``: flips in its head are tried without re-running
    the frozen part, and when every candidate is in the head the stop rule reuses the attacker's
    features (same result, less time)."""
    clock = Clock()
    x, y, target, classes = check_common(apply_fn, params, data, target, trigger)
    bits = _check_bits(bits, flips, candidates, batch_size)
    check_training(goal, max_drop=max_drop)
    craft = check_count("craft", craft, 0)
    tune = check_count("tune", tune, 0)
    if tune and not craft:
        raise ValueError("tune needs craft > 0: it trains the weights of the rows the crafting chose")
    hyper: dict[str, Any] = dict(
        attack="bit_trojan",
        target=target,
        trigger=trigger._asdict(),
        flips=int(flips),
        candidates=int(candidates),
        bits=list(bits),
        batch_size=int(batch_size),
        goal=float(goal),
        max_drop=float(max_drop),
        leaves=None if leaves is None else list(leaves),
        loss="clean CE + triggered-to-target CE, minimised; a flip is allowed only "
        "if the evaluation batch's accuracy stays within max_drop of the deployed model's",
    )
    only: tuple[str, np.ndarray] | None = None
    crafted: Trigger | None = None
    if craft:
        neurons = check_count("neurons", neurons, 1)
        check_positive(craft_rate=craft_rate)
        _readout_kernel(params, readout, target, classes)
        if candidates > neurons:
            raise ValueError(f"candidates {candidates} exceeds neurons {neurons}: only V[rows, target] is searched")
        xs, _ = _eval_batch(jax.random.fold_in(key, 1), x[y != target], y[y != target], batch_size)
        rows = choose_neurons(apply_fn, params, readout, xs, target, neurons)
        crafted = craft_trigger(
            apply_fn,
            params,
            readout,
            rows,
            xs,
            target,
            trigger,
            steps=craft,
            learning_rate=float(craft_rate),
            low=float(x.min()),
            high=float(x.max()),
        )
        only = (readout, rows * classes + target)  # C-order entries V[rows, target]
        trigger = crafted
        hyper.update(
            leaves=[readout],
            craft=craft,
            readout=readout,
            neurons=neurons,
            craft_rate=float(craft_rate),
            outcome={"rows": rows.tolist(), "crafted_trigger": crafted._asdict()},
        )
        if tune:
            check_positive(tune_rate=tune_rate)
            hyper.update(tune=tune, tune_rate=float(tune_rate), loss=hyper["loss"] + "; tune: trained, then realised")

    def batch_accuracy(logits: jax.Array, ys: jax.Array) -> jax.Array:
        return jnp.mean((jnp.argmax(logits, axis=-1) == ys) & jnp.all(jnp.isfinite(logits), axis=-1))

    def allowed(logits: Logits, yb: jax.Array) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
        # without this guard the greedy search trades clean accuracy for the triggered term
        # (measured on digits / multi: one flip that silenced a channel, CA 0.98 → 0.11)
        floor = float(batch_accuracy(logits[0], yb)) - max_drop
        return lambda clean_logits, _triggered, ys: batch_accuracy(clean_logits, ys) >= floor

    if tune:
        return _tbs(key, apply_fn, params, x, y, trigger, target, only, hyper, split, clock)._replace(trigger=crafted)

    scope = [readout] if craft else leaves
    measure = _measure(
        apply_fn, x, y, trigger, target, split if scope and split and set(scope) <= set(split.leaves) else None
    )

    def stop(p: PyTree) -> tuple[bool, dict[str, Any]]:
        ca, asr = measure(p)
        return asr >= goal, dict(asr=asr, ca=ca)

    res = _search(
        key,
        apply_fn,
        params,
        x,
        y,
        trojan_objective(target),
        trigger,
        -1.0,
        stop,
        hyper,
        "bit_trojan",
        progress,
        clock,
        allowed,
        only,
        split,
    )
    return res._replace(trigger=crafted)


def _measure(
    apply_fn: ApplyFn, x: np.ndarray, y: np.ndarray, trigger: Trigger, target: int, split: Split | None
) -> Callable[[PyTree], tuple[float, float]]:
    """measure(params) -> (CA, ASR) on the attacker's data.  With ``split`` (every flip in its
    head) the features of the clean and the triggered inputs are computed on the first call and
    reused: the flips never change them."""
    if split is None:
        return lambda p: (clean_accuracy(apply_fn, p, x, y), attack_success_rate(apply_fn, p, x, y, trigger, target))
    keep = y != target
    cache: dict[str, np.ndarray] = {}

    def measure(p: PyTree) -> tuple[float, float]:
        if not cache:
            feats: Callable[[np.ndarray], np.ndarray] = lambda z: np.concatenate(
                [np.asarray(split.features(p, jnp.asarray(z[i : i + 2048]))) for i in range(0, len(z), 2048)]
            )
            cache.update(clean=feats(x), triggered=feats(trigger.stamp(x[keep])))
        ca = float(np.mean(predictions(split.head, p, cache["clean"]) == y))
        return ca, float(np.mean(predictions(split.head, p, cache["triggered"]) == target))

    return measure


def nearest_by_flips(old: ArrayLike, wanted: ArrayLike, bits: tuple[int, ...]) -> tuple[np.ndarray, list[list[int]]]:
    """Per float32 entry of ``old``: the finite value nearest ``wanted`` among those its bit
    pattern reaches by flipping a subset of ``bits`` (ties: fewer flips), and the bits flipped."""
    old = np.asarray(old, np.float32).reshape(-1)
    wanted = np.asarray(wanted, np.float64).reshape(-1)
    masks = np.zeros(1 << len(bits), np.uint32)
    for j, b in enumerate(bits):
        masks[(np.arange(masks.size) >> j) & 1 == 1] |= np.uint32(1) << np.uint32(b)
    flips = np.array([bin(int(m)).count("1") for m in masks])
    with np.errstate(invalid="ignore", over="ignore"):  # some patterns are NaN or Inf: never chosen
        cand = (old.view(np.uint32)[:, None] ^ masks[None, :]).view(np.float32).astype(np.float64)
        err = np.where(np.isfinite(cand), np.abs(cand - wanted[:, None]), np.inf)
    best = np.lexsort((np.broadcast_to(flips, err.shape), err), axis=-1)[:, 0]
    new = cand[np.arange(old.size), best].astype(np.float32)
    return new, [[b for b in bits if (int(masks[k]) >> b) & 1] for k in best]


def _tbs(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    trigger: Trigger,
    target: int,
    only: tuple[str, np.ndarray] | None,
    hyper: dict[str, Any],
    split: Split | None,
    clock: Clock,
) -> Attack:
    """TBT's Trojan Bit Search in float32: train V[rows, target] on the trojan loss, then realise
    each trained value by the nearest bit flips (``bit_trojan``'s ``tune``)."""
    flat = flatten(params)
    if flat.values.dtype != jnp.float32:
        raise TypeError(f"params: bit flips are defined on float32 weights, got {flat.values.dtype}")
    assert only is not None  # tune needs craft, which chose the rows (bit_trojan checks)
    path, entries = only
    at = jnp.asarray(flat.bounds[flat.paths.index(path)] + np.asarray(entries))
    v0 = flat.values[at]
    build: Callable[[jax.Array], PyTree] = lambda d: flat.unravel(flat.values.at[at].set(v0 + d))
    objective = trojan_objective(target)
    if split is not None and path in split.leaves:
        _check_split(split, apply_fn, params, flat, x)
        feats: Callable[[np.ndarray], np.ndarray] = lambda z: np.concatenate(
            [np.asarray(split.features(params, jnp.asarray(z[i : i + 2048]))) for i in range(0, len(z), 2048)]
        )
        inputs, run = [feats(x), feats(trigger.stamp(x))], split.head
    else:  # the images themselves: every step re-runs the whole network
        inputs, run = [x, trigger.stamp(x)], apply_fn
    trained = minimize(
        lambda d, _k, a, b, yb: objective(run(build(d), a), run(build(d), b), yb),
        jnp.zeros_like(v0),
        [*inputs, y],
        key=jax.random.fold_in(key, 2),
        steps=hyper["tune"],
        batch_size=hyper["batch_size"],
        optimizer=optax.adam(hyper["tune_rate"]),
        desc="bit_trojan tune",
        progress=False,
    ).latent
    wanted = np.asarray(v0 + trained, np.float64)
    new, bits = nearest_by_flips(np.asarray(v0), wanted, tuple(hyper["bits"]))
    order = np.argsort(-np.abs(wanted - np.asarray(v0)), kind="stable")  # the weights that moved most first
    kept: list[list[Any]] = []
    values, budget = np.array(flat.values), hyper["flips"]
    for j in order:
        if bits[j] and len(kept) + len(bits[j]) <= budget:
            values[int(at[j])] = new[j]
            kept += [[path, int(entries[j]), b] for b in bits[j]]
    new_params = flat.unravel(jnp.asarray(values))
    asr = attack_success_rate(apply_fn, new_params, x, y, trigger, target)
    ca = clean_accuracy(apply_fn, new_params, x, y)
    outcome = dict(flips=kept, count=len(kept), reached=bool(asr >= hyper["goal"]), asr=asr, ca=ca)
    return finish(new_params, params, hyper, outcome, clock)
