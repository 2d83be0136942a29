"""purify's device path: pack, solve and assemble as JAX operations, the column batch sharded.

The host path (``jaxpurify._purify``) moves each solver call's columns through NumPy.  This path
lays out the same plan (:func:`jaxpurify._plan.plan`) with ``jax.numpy`` only, so ``purify``
traces under ``jax.jit`` and takes device arrays and multi-process (global) arrays as they are:

1. **pack**: each group's (K, m) code from the leaves (``_layout.pack`` with ``xp=jnp``).
2. **stack**: the items of all calls of one solver shape (dtype, K, n, width) form one batch of
   slots (A: (S, K, n), Y: (S, K, width)), padded to a multiple of the device count by repeating
   the last slot, as the host path pads a call.
3. **solve**: ``recover`` under ``jax.shard_map`` on a one-axis :class:`~jax.sharding.Mesh` of all
   devices, the slot axis split.  Each device solves whole slots, and ``recover`` cuts a slot's
   columns into the same chunks whatever the batch, so every column is solved beside the same
   columns as on one device: results are bit-identical for any device count (recover's answer
   for a column may change in the last ulp with the other columns of its chunk).
4. **assemble**: per group, its items' columns in order — A x̂ where certified, otherwise what
   ``on_uncertified`` says — unpacked into leaves, each laid out over the mesh
   (:func:`spread`).

Everything is in one ``jax.jit`` whose static arguments are the layout, the batches and the
options, so a warm call with the same layout does not compile again; the codebook's matrices
are array arguments (the secret never becomes a compiled constant).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxpurify import _layout
from jaxpurify._layout import Group, LeafLayout
from jaxpurify._options import RecoverOptions
from jaxpurify._plan import Call, Item, options_for, solve_dtype
from jaxpurify._solver import recover

AXIS = "slots"  # the mesh's one axis: solver slots (whole items of columns) are split over it


def device_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


class DeviceReport(NamedTuple):
    """purify's report as arrays: what the device path returns under ``jax.jit`` (and for inputs
    spread over several processes, which no single host can read).  A pytree; per group name:

    * ``certified`` (m,) bool, ``result`` (m,) int8 ``RESULTS`` code: why a column is not
      certified;
    * ``inlier_residual`` (m,): largest |y − A x̂| on the inliers; ``bound`` (m,): recover's
      relative error bound on x̂ (inf where not certified);
    * ``outliers`` (K, m) bool: entries judged corrupted (``codebook.unpack`` gives per-leaf masks).
    """

    certified: dict[str, jax.Array]
    result: dict[str, jax.Array]
    inlier_residual: dict[str, jax.Array]
    bound: dict[str, jax.Array]
    outliers: dict[str, jax.Array]

    @property
    def columns(self) -> int:
        return sum(int(c.shape[0]) for c in self.certified.values())

    @property
    def all_certified(self) -> jax.Array:
        """A bool scalar (traced under jit): every protected column certified."""
        return jnp.all(jnp.stack([jnp.all(c) for c in self.certified.values()])) if self.certified else jnp.bool_(True)

    def codes(self) -> jax.Array:
        """All result codes, group after group."""
        return jnp.concatenate([r for r in self.result.values()]) if self.result else jnp.zeros(0, jnp.int8)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The codebook's layout as a hashable value (a static argument of the jitted path)."""

    groups: tuple[Group, ...]
    leaves: tuple[LeafLayout, ...]

    @classmethod
    def of(cls, codebook) -> "Layout":
        return cls(tuple(codebook.groups.values()), tuple(codebook._leaves.values()))

    @property
    def by_path(self) -> dict[str, LeafLayout]:
        return {lay.path: lay for lay in self.leaves}


@dataclasses.dataclass(frozen=True)
class Batch:
    """Every item of the plan with one solver shape, in plan order: one ``recover`` call."""

    dtype: str
    K: int
    n: int
    width: int
    items: tuple[Item, ...]


def batches(calls: Sequence[Call]) -> tuple[Batch, ...]:
    """Merge the plan's calls of one shape: one solver copy per shape in the compiled program."""
    merged: dict[tuple, list[Item]] = {}
    for c in calls:
        merged.setdefault((c.dtype, c.K, c.n, c.width), []).extend(c.items)
    return tuple(Batch(*key, tuple(items)) for key, items in merged.items())


def slots_for(batch: Batch, devices: int) -> int:
    """Slots of a batch: its items, rounded up to a multiple of the device count."""
    return -(-len(batch.items) // devices) * devices


# -- stack, solve ---------------------------------------------------------------------------------
def stack(batch: Batch, cols: dict[str, jax.Array], matrices: dict[str, jax.Array], slots: int):
    """(A, Y) of a batch, as the host path's ``stack``: extra rows are erasures (NaN in Y, 0 in A),
    extra columns repeat the item's own, extra slots repeat the last item."""
    dt = solve_dtype(batch.dtype)
    As, Ys = [], []
    for s in range(slots):
        it = batch.items[min(s, len(batch.items) - 1)]
        a = matrices[it.group].astype(dt)
        rows = ((0, batch.K - a.shape[0]), (0, 0))
        w = it.stop - it.start
        y = cols[it.group]
        y = y[:, it.start : it.stop] if w == batch.width else jnp.take(y, it.start + np.arange(batch.width) % w, axis=1)
        As.append(jnp.pad(a, rows))
        Ys.append(jnp.pad(y.astype(dt), rows, constant_values=np.nan))
    return jnp.stack(As), jnp.stack(Ys)


@jax.jit
def summarize(A, Y, x, outliers):
    """A x̂ and, per column, the largest |y − A x̂| on the inliers (erasures are outliers)."""
    fitted = jnp.matmul(A, x, precision=jax.lax.Precision.HIGHEST)
    inlier = jnp.max(jnp.where(outliers | ~jnp.isfinite(Y), 0.0, jnp.abs(Y - fitted)), axis=-2)
    return fitted, inlier


def _solve_local(A, Y, options: RecoverOptions):
    out = recover(A, Y, options)
    fitted, inlier = summarize(A, Y, out.x, out.outliers)
    return fitted, out.outliers, out.certified, out.result, inlier, out.bound


def solve(A, Y, options: RecoverOptions, mesh: Mesh):
    """``recover`` and its summary on a batch, each device solving whole slots of it."""
    spec = P(AXIS)
    # check_vma off: recover's loops start from unsharded constants, which is right per shard
    f = jax.shard_map(functools.partial(_solve_local, options=options), mesh=mesh,
                      in_specs=(spec, spec), out_specs=spec, check_vma=False)
    return f(A, Y)


# -- assemble -------------------------------------------------------------------------------------
def assemble(groups: Sequence[Group], plan: Sequence[Batch], outs, cols, keep_input: bool):
    """Per group: its purified (K, m) values and a :class:`DeviceReport`'s fields, from the
    batches' results (items concatenated in column order; no scatter)."""
    pieces: dict[str, list] = {g.name: [] for g in groups}
    for batch, out in zip(plan, outs):
        for s, it in enumerate(batch.items):
            pieces[it.group].append((it.start, it.stop - it.start, s, out))
    fields = {k: {} for k in DeviceReport._fields}
    values = {}
    for g in groups:
        parts = sorted(pieces[g.name], key=lambda p: p[0])
        cat = lambda i, rows: jnp.concatenate(
            [o[i][s, : g.K, :w] if rows else o[i][s, :w] for _, w, s, o in parts], axis=-1)
        fitted, cert = cat(0, True), cat(2, False)
        take = cert if keep_input else jnp.ones_like(cert)
        values[g.name] = jnp.where(take, fitted, cols[g.name]).astype(g.dtype)
        fields["outliers"][g.name] = cat(1, True)
        fields["certified"][g.name] = cert
        fields["result"][g.name] = cat(3, False)
        fields["inlier_residual"][g.name] = cat(4, False)
        fields["bound"][g.name] = cat(5, False)
    return values, DeviceReport(**fields)


def spread(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Lay a purified leaf over the mesh: split along its first axis the device count divides,
    replicated if none does."""
    axis = next((i for i, d in enumerate(x.shape) if d % mesh.size == 0), None)
    spec = P() if axis is None else P(*([None] * axis + [AXIS]))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


@functools.partial(jax.jit, static_argnames=("layout", "plan", "options", "keep_input", "mesh"))
def run(values: dict[str, jax.Array], matrices: dict[str, jax.Array], *, layout: Layout, plan: tuple[Batch, ...],
        options: RecoverOptions, keep_input: bool, mesh: Mesh) -> tuple[dict[str, jax.Array], DeviceReport]:
    """The device path on the protected leaves (by path): purified leaves (by path) and the report."""
    leaves = layout.by_path
    cols = _layout.pack(layout.groups, leaves, values, xp=jnp)
    outs = []
    for batch in plan:
        A, Y = stack(batch, cols, matrices, slots_for(batch, mesh.size))
        outs.append(solve(A, Y, options_for(batch.dtype, options), mesh))
    group_values, report = assemble(layout.groups, plan, outs, cols, keep_input)
    purified = _layout.unpack(layout.groups, leaves, group_values, xp=jnp)
    return {p: spread(v.astype(leaves[p].dtype), mesh) for p, v in purified.items()}, report


def purify_leaves(values: dict[str, Any], codebook, calls: Sequence[Call], options: RecoverOptions,
                  keep_input: bool, mesh: Mesh | None = None) -> tuple[dict[str, jax.Array], DeviceReport]:
    """The device path for ``purify``: the protected leaves (by path) → purified leaves, report."""
    matrices = {name: codebook.matrix(name, solve_dtype(g.dtype)) for name, g in codebook.groups.items()}
    return run(values, matrices, layout=Layout.of(codebook), plan=batches(calls), options=options,
               keep_input=keep_input, mesh=device_mesh() if mesh is None else mesh)


def wanted(leaves: Sequence[Any]) -> bool:
    """Take the device path?  Yes for traced leaves and arrays spread over processes (the host
    cannot read them), on an accelerator, and with more than one device; on a single CPU device
    the host path (measured no slower there: README, "jit")."""
    if any(isinstance(v, jax.core.Tracer) for v in leaves):
        return True
    if any(isinstance(v, jax.Array) and not v.is_fully_addressable for v in leaves):
        return True
    return jax.default_backend() != "cpu" or jax.device_count() > 1
