"""Defenses against weight attacks, as plain functions on a deployed model.

Every defense has the signature

    defense(apply_fn, params, codebook, benign, key, **hyper) -> Defended(params, flagged, report, detected)

with ``apply_fn(params, x) -> logits``, ``params`` the deployed (possibly attacked) weights, the
defender's ``codebook`` (secret key included), ``benign = (x, y)`` the defender's clean data (may
be empty for the data-free defenses) and an explicit PRNG ``key``.  ``flagged`` is a bool tree
like ``params`` (True where the defense judged an entry corrupted; None for a defense that flags
nothing by design), ``report`` the :class:`jaxpurify.Report` of purification if any, and
``detected`` the defense's own verdict that the model was changed (None where it has no detector).

* :func:`purify_only` — W ↦ A·argmin‖W − AΘ‖₁ column by column (no data); detection = the keyed seal.
* :func:`purify_finetune` — purify, then fine-tune the latent Θ = encode(purified) through decode.
* :func:`finetune` — plain fine-tuning of the deployed weights (FT).
* :func:`fine_prune` — prune the channels of one layer that are dormant on benign data, then FT
  with the pruned channels held at zero (Liu, Dolan-Gavitt and Garg, 2018).
* :func:`l2_project` — W ↦ A A⁺ W, the least-squares projection onto range(A) (non-finite → 0).
* :func:`checksum` — RADAR-style (Li et al., 2021): per group of G secretly interleaved weights,
  a keyed checksum taken at deployment (:func:`checksum_signatures`); changed groups are zeroed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax  # type: ignore[import-untyped]  # optax ships no py.typed

from jaxpurify import Codebook, Report, purify, recover
from jaxpurify.train import accuracy, cross_entropy, minimize, train

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
Data = tuple[np.ndarray, np.ndarray]

# fine-tuning shared by purify+ft, ft and fp: fixed before any defense was evaluated
EPOCHS, BATCH, LR = 10, 32, 1e-3


class Defended(NamedTuple):
    params: PyTree
    flagged: PyTree | None
    report: Report | None
    detected: bool | None


# -- tree helpers --------------------------------------------------------------------------------
def path_of(keypath: tuple[Any, ...]) -> str:
    """A jax key path as the codebook names leaves: 'hidden/kernel'."""
    return jax.tree_util.keystr(keypath, simple=True, separator="/")


def by_path(tree: PyTree) -> dict[str, Any]:
    """Every leaf of ``tree`` by its path as the codebook names leaves ({'hidden/kernel': leaf, ...})."""
    return {path_of(kp): v for kp, v in jax.tree_util.tree_leaves_with_path(tree)}


def tree_from_paths(params: PyTree, values: dict[str, Any], fill: bool = False) -> PyTree:
    """A tree like ``params`` holding ``values[path]`` where given, else ``fill`` in the leaf's shape."""
    return jax.tree_util.tree_map_with_path(
        lambda kp, v: np.asarray(values[path_of(kp)]) if path_of(kp) in values else np.full(np.shape(v), fill), params
    )


def _floating(v: Any) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(v), jnp.floating))


def _check_benign(benign: Data | None, name: str) -> Data:
    if benign is None or len(benign[0]) == 0:
        raise ValueError(f"{name} needs benign data: benign=(x, y) with at least one example")
    if len(benign[0]) != len(benign[1]):
        raise ValueError(f"benign has {len(benign[0])} inputs but {len(benign[1])} labels")
    return benign


def _steps(n: int, epochs: int, batch_size: int) -> int:
    return epochs * math.ceil(n / min(batch_size, n))


def _adam(
    apply_fn: ApplyFn,
    start: PyTree,
    codebook: Codebook | None,
    benign: Data,
    key: jax.Array,
    epochs: int,
    batch_size: int,
    lr: float,
    progress: bool | None,
) -> PyTree:
    """The fine-tuning purify+ft and ft share: ``train`` from ``start`` (the latent through
    ``codebook``, or the weights themselves with None), Adam at ``lr`` for ``epochs`` passes."""
    x, y = benign
    return train(
        apply_fn,
        start,
        codebook,
        x,
        y,
        key=key,
        steps=_steps(len(x), epochs, batch_size),
        batch_size=batch_size,
        optimizer=optax.adam(lr),
        progress=progress,
    ).latent


def _apply_mask(tree: PyTree, mask: PyTree) -> PyTree:
    """``tree`` with every floating leaf multiplied by its ``mask`` leaf (0 = held at zero)."""
    return jax.tree.map(lambda w, m: w * m.astype(w.dtype) if _floating(w) else w, tree, mask)


# -- purification ----------------------------------------------------------------------------------
def outlier_masks(
    params: PyTree, codebook: Codebook, **overrides: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per protected leaf: the entries ``recover`` flags as outliers, and the entries whose column
    is certified (bool arrays of the leaf's shape).  One ``recover`` per group on
    ``codebook.pack(params)`` with the options purify gets (``overrides``): the report's counts,
    entry by entry."""
    cols = codebook.pack(params)
    flags, cert = {}, {}
    for name, g in codebook.groups.items():
        r = recover(codebook.matrix(name), jnp.asarray(cols[name]), **overrides)
        flags[name] = np.asarray(r.outliers)
        cert[name] = np.broadcast_to(np.asarray(r.certified), (g.K, g.columns))
    return codebook.unpack(flags), codebook.unpack(cert)


def _seal_verdict(report: Report) -> bool | None:
    return (not report.verified) if report.sealed else None


def purify_only(
    apply_fn: ApplyFn, params: PyTree, codebook: Codebook, benign: Data | None, key: jax.Array | None, **overrides: Any
) -> Defended:
    """l1 purification, no data: uncertified columns keep their input (``on_uncertified="input"``).
    ``detected``: the keyed seal failed on the purified tree (None without a seal)."""
    del apply_fn, benign, key
    purified, any_report = purify(params, codebook, on_uncertified="input", **overrides)
    report = cast(Report, any_report)  # concrete (not traced) parameters: a host Report
    flags, _ = outlier_masks(params, codebook, **overrides)
    return Defended(purified, tree_from_paths(params, flags), report, _seal_verdict(report))


def purify_finetune(
    apply_fn: ApplyFn,
    params: PyTree,
    codebook: Codebook,
    benign: Data,
    key: jax.Array,
    *,
    epochs: int = EPOCHS,
    batch_size: int = BATCH,
    lr: float = LR,
    progress: bool | None = None,
    **overrides: Any,
) -> Defended:
    """Purify, then train Θ = encode(purified) through ``codebook.decode`` on the benign data
    (Adam, ``epochs`` passes): the result stays in range(A) and so remains purifiable."""
    benign = _check_benign(benign, "purify_finetune")
    done = purify_only(apply_fn, params, codebook, None, None, **overrides)
    latent = _adam(apply_fn, codebook.encode(done.params), codebook, benign, key, epochs, batch_size, lr, progress)
    return done._replace(params=codebook.decode(latent))


# -- fine-tuning baselines -------------------------------------------------------------------------
def _finetune_masked(
    apply_fn: ApplyFn,
    params: PyTree,
    mask: PyTree,
    benign: Data,
    key: jax.Array,
    epochs: int,
    batch_size: int,
    lr: float,
    progress: bool | None,
) -> PyTree:
    """Adam on the weights with ``mask`` (1 = trainable, 0 = held at zero) applied in the loss."""
    x, y = benign

    def loss(t: PyTree, _key: jax.Array, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return cross_entropy(apply_fn(_apply_mask(t, mask), xb), yb)

    out = minimize(
        loss,
        _apply_mask(params, mask),
        [x, y],
        key=key,
        steps=_steps(len(x), epochs, batch_size),
        batch_size=batch_size,
        optimizer=optax.adam(lr),
        desc="fine-tune",
        progress=progress,
    )
    return _apply_mask(out.latent, mask)


def finetune(
    apply_fn: ApplyFn,
    params: PyTree,
    codebook: Codebook | None,
    benign: Data,
    key: jax.Array,
    *,
    epochs: int = EPOCHS,
    batch_size: int = BATCH,
    lr: float = LR,
    progress: bool | None = None,
) -> Defended:
    """Plain fine-tuning (FT) of the deployed weights on the benign data (Adam, ``epochs`` passes)."""
    benign = _check_benign(benign, "finetune")
    return Defended(_adam(apply_fn, params, None, benign, key, epochs, batch_size, lr, progress), None, None, None)


def dormancy_order(features: Callable[[PyTree, jax.Array], jax.Array], params: PyTree, x: np.ndarray) -> np.ndarray:
    """Channels of ``features(params, x)`` (…, C) sorted by mean activation on ``x``, lowest first."""
    act = np.asarray(features(params, jnp.asarray(x)), np.float64)
    return np.argsort(act.reshape(-1, act.shape[-1]).mean(0), kind="stable")


def fine_prune(
    apply_fn: ApplyFn,
    params: PyTree,
    codebook: Codebook | None,
    benign: Data,
    key: jax.Array,
    *,
    features: Callable[[PyTree, jax.Array], jax.Array],
    layer: str,
    max_drop: float = 0.05,
    step: float = 0.05,
    max_prune: float = 0.9,
    epochs: int = EPOCHS,
    batch_size: int = BATCH,
    lr: float = LR,
    progress: bool | None = None,
) -> Defended:
    """Fine-pruning: ``features(params, x)`` are the post-activation outputs (…, C) of ``layer``
    (a path prefix: its leaves' last axis is the channel). Channels are pruned, least active on
    the benign data first, in steps of ``step``·C, as long as benign accuracy stays within
    ``max_drop`` of the unpruned model's (at most ``max_prune``·C); then FT with them held at zero.
    ``flagged``: the pruned channels' entries."""
    x, y = _check_benign(benign, "fine_prune")
    leaves = {p: v for p, v in by_path(params).items() if p.startswith(layer + "/")}
    if not leaves:
        raise ValueError(f"layer {layer!r}: no leaf of params has a path under it")
    order = dormancy_order(features, params, x)
    C = len(order)
    if any(np.shape(v)[-1] != C for v in leaves.values()):
        raise ValueError(f"layer {layer!r}: features give {C} channels, its leaves' last axes differ")

    def pruned(k: int) -> dict[str, np.ndarray]:
        gone = np.zeros(C, bool)
        gone[order[:k]] = True
        return {p: np.broadcast_to(gone, np.shape(v)) for p, v in leaves.items()}

    def keep_mask(k: int) -> PyTree:
        return tree_from_paths(params, {p: ~m for p, m in pruned(k).items()}, fill=True)

    base = accuracy(apply_fn, params, x, y)
    k, inc = 0, max(1, round(step * C))
    while (
        k + inc <= int(max_prune * C)
        and accuracy(apply_fn, _apply_mask(params, keep_mask(k + inc)), x, y) >= base - max_drop
    ):
        k += inc
    tuned = _finetune_masked(apply_fn, params, keep_mask(k), (x, y), key, epochs, batch_size, lr, progress)
    return Defended(tuned, tree_from_paths(params, pruned(k)), None, None)


# -- projection ------------------------------------------------------------------------------------
def l2_project(
    apply_fn: ApplyFn, params: PyTree, codebook: Codebook, benign: Data | None, key: jax.Array | None
) -> Defended:
    """Least-squares projection of every code column onto range(A): decode(encode(W)), with
    non-finite entries set to 0 first (an l2 fit cannot skip them). No data, no flags."""
    del apply_fn, benign, key
    finite = jax.tree.map(lambda v: jnp.where(jnp.isfinite(v), v, 0) if _floating(v) else v, params)
    return Defended(codebook.decode(codebook.encode(finite)), None, None, None)


# -- RADAR-style checksums -------------------------------------------------------------------------
class Signatures(NamedTuple):
    """What the defender keeps at deployment: the secret (``key``), the group size and, per
    floating leaf, one checksum per group of ``group_size`` secretly interleaved entries."""

    key: jax.Array
    group_size: int
    sums: dict[str, np.ndarray]


def _secret(key: jax.Array, path: str, size: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per leaf, from the key alone: a secret permutation (the interleaving) and XOR masks."""
    seed = np.asarray(jax.random.key_data(jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)))
    rng = np.random.default_rng(seed.astype(np.uint32).ravel())
    udt = np.dtype(f"u{width}")
    return rng.permutation(size), rng.integers(0, np.iinfo(udt).max, size, dtype=udt, endpoint=True)


def _group_sums(value: Any, path: str, key: jax.Array, group_size: int) -> np.ndarray:
    """Σ over each group of (bits XOR mask) mod 2^64: flipping bit b of one entry changes its
    group's sum by ±2^b ≠ 0, so every single change is seen; cancelling changes needs the key."""
    v = np.ascontiguousarray(np.asarray(value)).ravel()
    perm, mask = _secret(key, path, v.size, v.dtype.itemsize)
    words = (v.view(mask.dtype) ^ mask)[perm].astype(np.uint64)
    words = np.concatenate([words, np.zeros((-v.size) % group_size, np.uint64)])
    sums: np.ndarray = words.reshape(-1, group_size).sum(1, dtype=np.uint64)
    return sums


def checksum_signatures(params: PyTree, key: jax.Array, group_size: int = 16) -> Signatures:
    """Take the defender's signatures of the deployed ``params`` (every floating leaf)."""
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    sums = {p: _group_sums(v, p, key, group_size) for p, v in by_path(params).items() if _floating(v)}
    return Signatures(key, group_size, sums)


def checksum(
    apply_fn: ApplyFn,
    params: PyTree,
    codebook: Codebook | None,
    benign: Data | None,
    key: jax.Array | None,
    *,
    signatures: Signatures,
) -> Defended:
    """Recompute every group's checksum; the entries of groups that changed are set to zero.
    ``detected``: some group changed. No data, no codebook (RADAR needs neither)."""
    del apply_fn, codebook, benign, key
    now = by_path(params)
    missing = [p for p in signatures.sums if p not in now]
    if missing:
        raise ValueError(f"leaf {missing[0]!r} was signed but is missing from params")
    flags = {}
    for p, sums in signatures.sums.items():
        v = np.asarray(now[p])
        bad = _group_sums(v, p, signatures.key, signatures.group_size) != sums
        perm, _ = _secret(signatures.key, p, v.size, v.dtype.itemsize)
        hit = np.zeros(v.size, bool)
        hit[perm] = np.repeat(bad, signatures.group_size)[: v.size]
        flags[p] = hit.reshape(v.shape)
    zeroed = jax.tree_util.tree_map_with_path(
        lambda kp, v: jnp.where(flags[path_of(kp)], jnp.zeros((), v.dtype), v) if path_of(kp) in flags else v, params
    )
    return Defended(zeroed, tree_from_paths(params, flags), None, any(bool(f.any()) for f in flags.values()))


DEFENSES: dict[str, Callable[..., Defended]] = {
    "purify": purify_only,
    "purify+ft": purify_finetune,
    "ft": finetune,
    "fp": fine_prune,
    "l2": l2_project,
    "checksum": checksum,
}
NEEDS_DATA = frozenset({"purify+ft", "ft", "fp"})
