"""The adaptive attacker who stays inside each protected leaf's column span: the attack that l1
purification cannot see, so it tests the keyed seal.

The deployed weights reveal range(A) without the key: a group's deployed columns are
Y = A Θ (K × m), so their span is a subspace of range(A), all of it once rank Θ = n.  The
attacker lays the deployed parameters out into the groups' columns by the *public* layout rule
(the codebook's layout depends on the parameter shapes and ``select`` only; it is rebuilt here
under a throwaway key of the attacker's own, and its secret matrices are never used), estimates
each group's span by an SVD of its columns,

    Y = U Σ Vᵀ,   U_r = the left singular vectors with σ_i > ``rank_tol`` · σ_1,

and fine-tunes only coefficients C_g (r × m) of changes inside it,

    Y_g ← Y_g + U_r C_g          (every column moves within span(U_r) ⊆ range(A)),

on the trojan loss until ASR ≥ ``goal`` on the attacker's data or ``steps`` Adam steps.  Each
changed column is still exactly A θ' for some θ', so l1 purification certifies it and keeps it;
only the keyed seal can tell.  Leaves the layout leaves unprotected are not touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify import Codebook
from jaxpurify.attacks._attack import (
    Attack,
    Clock,
    Finetune,
    Flat,
    check_common,
    check_positive,
    finish,
    flatten,
    trojan_finetune,
)
from jaxpurify.attacks._trigger import ApplyFn, Data, PyTree, Trigger, clean_accuracy

if TYPE_CHECKING:
    from jaxpurify.tree import Select


def public_layout(key: jax.Array, params: PyTree, select: Select | None = None) -> Codebook:
    """The layout a codebook with ``select`` gives ``params``, bound to a throwaway secret drawn
    from ``key`` (what anyone can compute: the layout is a function of the shapes and select)."""
    throwaway = np.asarray(jax.random.bits(key, (8,), jnp.uint32)).tobytes()
    return Codebook.create(params, key=throwaway, select=select)


# per group: (flat indices (K, m) of its entries, −1 at padding; U_r (K, r))
Spans = dict[str, tuple[np.ndarray, np.ndarray]]


def column_spans(
    layout: Codebook, params: PyTree, flat: Flat, rank_tol: float
) -> tuple[Spans, dict[str, tuple[int, int, int]]]:
    """Per group: (flat indices (K, m) with −1 at padding, U_r (K, r)) estimated from the deployed
    columns; and a per-group summary {name: (K, m, r)}."""
    offsets = iter(zip(flat.bounds[:-1], flat.bounds[1:]))
    index = jax.tree.map(lambda leaf: np.arange(*next(offsets), dtype=np.float64).reshape(np.shape(leaf)), params)
    columns, where = layout.pack(params), layout.pack(index)
    spans, summary = {}, {}
    for name, g in layout.groups.items():
        idx = np.where(np.isnan(where[name]), -1, where[name]).astype(np.int64)
        full = (idx >= 0).all(axis=0)  # columns whose last row is real (padding: the last row only)
        u, s, _ = np.linalg.svd(np.asarray(columns[name][:, full], np.float64), full_matrices=False)
        r = int(np.sum(s > rank_tol * s[0])) if s.size and s[0] > 0 else 0
        summary[name] = (g.K, g.columns, r)
        if r:
            spans[name] = (idx, u[:, :r])
    return spans, summary


def _in_span(flat: Flat, spans: Spans) -> Callable[[dict[str, jax.Array]], PyTree]:
    """t = {group: C (r, m)} ↦ params with Y_g + U_r C_g in each group, bit-exact elsewhere."""
    parts = {
        name: (jnp.asarray(idx[idx >= 0]), jnp.asarray(idx >= 0), jnp.asarray(u, flat.values.dtype))
        for name, (idx, u) in spans.items()
    }
    touched = jnp.zeros(flat.values.size, bool)
    for at, _, _ in parts.values():
        touched = touched.at[at].set(True)

    def build(t: dict[str, jax.Array]) -> PyTree:
        delta = jnp.zeros_like(flat.values)
        for name, (at, valid, u) in parts.items():
            delta = delta.at[at].set((u @ t[name])[valid])
        return flat.unravel(jnp.where(touched, flat.values + delta, flat.values))

    return build


def span_trojan(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: PyTree,
    data: Data,
    *,
    target: int,
    trigger: Trigger,
    select: Select | None = None,
    rank_tol: float = 1e-3,
    finetune: Finetune = Finetune(),
    progress: bool | None = None,
) -> Attack:
    """Implant the trigger by fine-tuning inside each group's deployed column span (no secret).

    ``select``: the public layout rule the defender's codebook used (as ``Codebook.create``'s;
    None = the default layout)."""
    clock = Clock()
    x, y, target, _ = check_common(apply_fn, params, data, target, trigger, finetune=finetune)
    finetune = finetune.resolve(learning_rate=1e-2)
    check_positive(rank_tol=rank_tol)
    k_layout, k_train = jax.random.split(key)
    flat = flatten(params)
    spans, summary = column_spans(public_layout(k_layout, params, select), params, flat, float(rank_tol))
    if not spans:
        raise ValueError("params: no protected group has a non-zero column to span")
    build = _in_span(flat, spans)
    t0 = {name: jnp.zeros((u.shape[1], idx.shape[1]), flat.values.dtype) for name, (idx, u) in spans.items()}
    tuned = trojan_finetune(
        k_train, apply_fn, build, t0, x, y, trigger, target, finetune, desc="span_trojan", progress=progress
    )
    new = build(tuned.t)
    hyper = dict(
        attack="span_trojan",
        target=target,
        trigger=trigger._asdict(),
        select="default" if select is None else getattr(select, "__name__", "custom"),
        rank_tol=float(rank_tol),
        **finetune.record(),
        unprotected="frozen",
    )
    outcome = dict(
        **tuned.record(),
        ca=clean_accuracy(apply_fn, new, x, y),
        spans={name: dict(K=K, columns=m, rank=r) for name, (K, m, r) in summary.items()},
    )
    return finish(new, params, hyper, outcome, clock)
