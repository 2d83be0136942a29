"""purify's device path (pack, solve and assemble as JAX operations, the column batch sharded),
and the pieces of it that the host path uses too.

The host path (``jaxpurify._purify``) moves each solver call's columns through NumPy, with this
module's :func:`stack` (``xp=np``) to build a call's batch, :func:`runs` / :class:`Run` to map the
batch's slots back to the groups' columns, and :class:`Solved` (:meth:`Solved.of`, through
:func:`summarize`) for the results it assembles from.  The device path lays out the same plan
(:func:`jaxpurify._plan.plan`) with ``jax.numpy`` only, so ``purify`` traces under ``jax.jit``
and takes device arrays and multi-process (global) arrays as they are:

1. **pack**: each group's (K, m) code from the leaves (``_layout.pack`` with ``xp=jnp``).
2. **stack**: the items of all calls of one solver shape (dtype, K, n, width) form one batch of
   slots (A: (S, K, n), Y: (S, K, width)), padded to a multiple of the device count by repeating
   the last slot, as the host path pads a call (both paths stack with :func:`stack` and cut
   calls into the same :func:`runs`; the host writes into NumPy buffers, ``xp=np``).
3. **solve**: ``recover_padded`` under ``jax.shard_map`` on a one-axis :class:`~jax.sharding.Mesh`
   of all devices, the slot axis split.  Each device solves whole slots, and the solver cuts a slot's
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
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpurify import _layout, _units
from jaxpurify._layout import Group, LeafLayout
from jaxpurify._numerics import matmul
from jaxpurify._options import RecoverOptions
from jaxpurify._plan import Call, Item, options_for, solve_dtype
from jaxpurify._solution import RESULTS, Recovery
from jaxpurify._solver import recover_padded

if TYPE_CHECKING:  # it imports purify, which imports this module
    from jaxpurify._codebook import Codebook

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
    def of(cls, codebook: Codebook) -> Layout:
        return cls(tuple(codebook.groups.values()), tuple(codebook._leaves.values()))

    @property
    def by_path(self) -> dict[str, LeafLayout]:
        return {lay.path: lay for lay in self.leaves}


@dataclasses.dataclass(frozen=True)
class Batch:
    """Every item of the plan with one solver shape, in plan order: one ``recover_padded`` call."""

    dtype: str
    K: int
    n: int
    width: int
    items: tuple[Item, ...]


def batches(calls: Sequence[Call]) -> tuple[Batch, ...]:
    """Merge the plan's calls of one shape: one solver copy per shape in the compiled program."""
    merged: dict[tuple[str, int, int, int], list[Item]] = {}
    for c in calls:
        merged.setdefault((c.dtype, c.K, c.n, c.width), []).extend(c.items)
    return tuple(Batch(*key, tuple(items)) for key, items in merged.items())


def slots_for(batch: Batch, devices: int) -> int:
    """Slots of a batch: its items, rounded up to a multiple of the device count."""
    return -(-len(batch.items) // devices) * devices


# -- stack, solve (shared with the host path, ``jaxpurify._purify``) ------------------------------
@dataclasses.dataclass(frozen=True)
class Run:
    """Consecutive slots of a batch holding consecutive columns of one group: ``slots`` items from
    slot ``slot``, columns [start, start + columns); only the last item may be narrower than the
    batch.  Stacking and assembling by runs keeps the program's size in groups, not items."""

    group: str
    slot: int
    slots: int
    start: int
    columns: int

    def items(self, width: int) -> list[tuple[int, int, int]]:
        """(slot, start, stop) of each slot: the group's columns [start, stop) it holds."""
        return [
            (self.slot + j, self.start + j * width, self.start + min((j + 1) * width, self.columns))
            for j in range(self.slots)
        ]

    def split(self, width: int) -> tuple[Run, ...]:
        """The run slot by slot: one-slot runs (the host path assembles one at a time, so that
        :meth:`take` gives views of its results instead of copies)."""
        return tuple(Run(self.group, s, 1, start, stop - start) for s, start, stop in self.items(width))

    def take(self, a: _layout.Array, K: int) -> _layout.Array:
        """This run's columns of one field of a batch's :class:`Solved`, in the group's column
        order: (S, rows, width) → (K, columns), or (S, width) → (columns,).  The one place that
        maps slots back to a group's columns, for NumPy (the host path) and ``jax.numpy`` (the
        device path) alike."""
        o = a[self.slot : self.slot + self.slots]
        o = o[:, :K].transpose(1, 0, 2).reshape(K, -1) if o.ndim == 3 else o.reshape(-1)
        return o[..., : self.columns]

    def index(self, width: int) -> np.ndarray:
        """(slots, width): the group's column in each place of each slot.  A slot's extra places
        repeat its own columns, so padding is as easy to solve as the real columns."""
        return np.stack([start + np.arange(width) % (stop - start) for _, start, stop in self.items(width)])


def runs(batch: Batch | Call) -> tuple[Run, ...]:
    """The items of a batch (or of one host call) as runs, in slot order."""
    out: list[Run] = []
    for s, it in enumerate(batch.items):
        last = out[-1] if out else None
        if (
            last is not None
            and last.group == it.group
            and last.start + last.columns == it.start
            and last.columns == last.slots * batch.width
        ):
            out[-1] = Run(it.group, last.slot, last.slots + 1, last.start, last.columns + it.stop - it.start)
        else:
            out.append(Run(it.group, s, 1, it.start, it.stop - it.start))
    return tuple(out)


def stack(
    batch: Batch | Call,
    cols: Mapping[str, _layout.Array],
    matrices: Mapping[str, _layout.Array],
    slots: int,
    xp: ModuleType = jnp,
) -> tuple[_layout.Array, _layout.Array, np.ndarray]:
    """(A, Y, n) of a batch of ``slots`` slots: its items fill the first ones, in order.

    Extra rows are erasures (NaN in Y, 0 in A), extra columns of A are zero (n: each slot's real
    columns), an item's extra columns repeat its own (:meth:`Run.index`) and extra slots repeat
    the last item, so padding is as easy as the real columns (a duplicate-index scatter in the
    solver's narrow passes once let zero padding overwrite a real column,
    tests/test_certificate.py::test_a_column_beside_zero_columns_…).

    ``xp=np`` (the host path, one call): written slot by slot into fresh NumPy buffers, so no more
    than a slot's columns are ever copied besides them.  ``xp=jnp`` (the device path, traced):
    one slice or gather per run, concatenated."""
    dt = np.dtype(solve_dtype(batch.dtype))
    K, N, w = batch.K, batch.n, batch.width
    host = xp is np
    A: _layout.Array
    Y: _layout.Array
    if host:
        A, Y = np.zeros((slots, K, N), dt), np.empty((slots, K, w), dt)
    As, Ys, ns = [], [], []
    for r in runs(batch):
        a, y = matrices[r.group], cols[r.group]
        k = a.shape[0]
        ns.append(np.full(r.slots, a.shape[1], np.int32))
        if host:
            at = slice(r.slot, r.slot + r.slots)
            A[at, :k, : a.shape[1]] = a
            Y[at, k:] = np.nan
            for s, idx in zip(range(r.slot, r.slot + r.slots), r.index(w)):
                Y[s, :k] = y[:, idx]
            continue
        if r.columns == r.slots * w:
            y = y[:, r.start : r.start + r.columns]
        else:
            y = jnp.take(y, r.index(w).reshape(-1), axis=1)
        rows = ((0, 0), (0, K - k), (0, 0))
        y = jnp.moveaxis(y.astype(dt).reshape(k, r.slots, w), 1, 0)
        Ys.append(jnp.pad(y, rows, constant_values=np.nan))
        a = a.astype(dt)
        As.append(jnp.broadcast_to(jnp.pad(a, (rows[1], (0, N - a.shape[1]))), (r.slots, K, N)))
    n = np.concatenate(ns)
    filled = n.shape[0]
    if not host:
        A, Y = jnp.concatenate(As), jnp.concatenate(Ys)
    if slots > filled:
        n = np.concatenate([n, np.full(slots - filled, n[-1], np.int32)])
        if host:
            A[filled:], Y[filled:] = A[filled - 1], Y[filled - 1]
        else:
            A = jnp.concatenate([A, jnp.broadcast_to(A[-1:], (slots - filled,) + A.shape[1:])])
            Y = jnp.concatenate([Y, jnp.broadcast_to(Y[-1:], (slots - filled,) + Y.shape[1:])])
    return A, Y, n


@jax.jit
def summarize(A: jax.Array, Y: jax.Array, x: jax.Array, outliers: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A x̂ and, per column, the largest |y − A x̂| on the inliers (erasures are outliers).

    Both are computed in the column's own power-of-two units (x̂ scaled exactly to largest entry
    ~1) and rescaled with correct rounding (``_units.unscale``): XLA's CPU arithmetic flushes
    subnormal products and results to zero, which at weight scales below ~1e-30 wrote certified
    columns back up to 25% off."""
    live = jnp.isfinite(x)
    e = jnp.max(_units.exponents(x, live), axis=-2, keepdims=True)
    e = jnp.where(e > _units.ZERO, e, 0)
    fitted = matmul(A, _units.scale(x, e))
    finite = jnp.isfinite(Y)
    gap = jnp.abs(_units.scale(jnp.where(finite, Y, 0.0), e) - fitted)
    inlier = jnp.max(jnp.where(outliers | ~finite, 0.0, gap), axis=-2, keepdims=True)
    return _units.unscale(fitted, e), _units.unscale(inlier, e)[..., 0, :]


class Solved(NamedTuple):
    """One solver batch's results, slot axis first (S slots, K rows, w columns per slot): what the
    host and the device path each assemble from.  A pytree, so it passes through ``shard_map``."""

    fitted: Any  # (S, K, w): A x̂
    outliers: Any  # (S, K, w) bool: entries judged corrupted, erasures included
    certified: Any  # (S, w) bool
    result: Any  # (S, w) int8 RESULTS code
    inlier_residual: Any  # (S, w): largest |y − A x̂| on the inliers
    bound: Any  # (S, w): recover's error bound (inf where not certified)

    @classmethod
    def of(cls, A: jax.Array, Y: jax.Array, out: Recovery, dtype: str | None = None) -> Solved:
        """The batch's results from ``recover_padded``'s answer ``out`` on (A, Y), the leaves of
        ``dtype`` (default: the solve's).  A certified x̂ whose A x̂ overflows in that dtype (weights
        within rounding of its largest float) is not what was certified: ``out_of_range``."""
        fitted, inlier = summarize(A, Y, out.x, out.outliers)
        lost = out.certified & ~jnp.all(jnp.isfinite(fitted.astype(dtype or fitted.dtype)), axis=-2)
        return cls(
            fitted=fitted,
            outliers=out.outliers,
            certified=out.certified & ~lost,
            result=jnp.where(lost, jnp.int8(RESULTS.out_of_range), out.result),
            inlier_residual=inlier,
            bound=jnp.where(lost, jnp.inf, out.bound),
        )


def _solve_local(A: jax.Array, Y: jax.Array, n: jax.Array, options: RecoverOptions, dtype: str | None = None) -> Solved:
    return Solved.of(A, Y, recover_padded(A, Y, n, options), dtype)


def solve(
    A: jax.Array, Y: jax.Array, n: np.ndarray, options: RecoverOptions, mesh: Mesh, dtype: str | None = None
) -> Solved:
    """``recover_padded`` and its summary on a batch, each device solving whole slots of it."""
    spec = P(AXIS)
    # check_vma off: recover's loops start from unsharded constants, which is right per shard
    f = jax.shard_map(
        functools.partial(_solve_local, options=options, dtype=dtype),
        mesh=mesh,
        in_specs=(spec, spec, spec),
        out_specs=spec,
        check_vma=False,
    )
    return f(A, Y, jnp.asarray(n))


# -- assemble -------------------------------------------------------------------------------------
def assemble(
    groups: Sequence[Group],
    plan: Sequence[Batch],
    outs: Sequence[Solved],
    cols: Mapping[str, _layout.Array],
    keep_input: bool,
) -> tuple[dict[str, jax.Array], DeviceReport]:
    """Per group: its purified (K, m) values and a :class:`DeviceReport`'s fields, from the
    batches' results (runs concatenated in column order; no scatter)."""
    pieces: dict[str, list[tuple[Run, Solved]]] = {g.name: [] for g in groups}
    for batch, out in zip(plan, outs):
        for r in runs(batch):
            pieces[r.group].append((r, out))
    fields: dict[str, dict[str, jax.Array]] = {k: {} for k in DeviceReport._fields}
    values: dict[str, jax.Array] = {}
    for g in groups:
        parts = sorted(pieces[g.name], key=lambda p: p[0].start)

        def cat(field: str) -> jax.Array:  # one field of the batches' Solved, the group's columns in order
            return jnp.concatenate([r.take(getattr(out, field), g.K) for r, out in parts], axis=-1)

        for field in DeviceReport._fields:  # certified, result, inlier_residual, bound, outliers: as in Solved
            fields[field][g.name] = cat(field)
        cert = fields["certified"][g.name]
        take = cert if keep_input else jnp.ones_like(cert)
        values[g.name] = jnp.where(take, cat("fitted"), cols[g.name]).astype(g.dtype)
    return values, DeviceReport(**fields)


def spread(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Lay a purified leaf over the mesh: split along its first axis the device count divides,
    replicated if none does."""
    axis = next((i for i, d in enumerate(x.shape) if d % mesh.size == 0), None)
    spec = P() if axis is None else P(*([None] * axis + [AXIS]))
    out: jax.Array = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return out


@functools.partial(jax.jit, static_argnames=("layout", "plan", "options", "keep_input", "mesh"))
def run(
    values: dict[str, jax.Array],
    matrices: dict[str, jax.Array],
    *,
    layout: Layout,
    plan: tuple[Batch, ...],
    options: RecoverOptions,
    keep_input: bool,
    mesh: Mesh,
) -> tuple[dict[str, jax.Array], DeviceReport]:
    """The device path on the protected leaves (by path): purified leaves (by path) and the report."""
    leaves = layout.by_path
    cols = _layout.pack(layout.groups, leaves, values, xp=jnp)
    outs = []
    for batch in plan:
        A, Y, n = stack(batch, cols, matrices, slots_for(batch, mesh.size))  # xp=jnp: JAX arrays
        outs.append(
            solve(cast(jax.Array, A), cast(jax.Array, Y), n, options_for(batch.dtype, options), mesh, batch.dtype)
        )
    group_values, report = assemble(layout.groups, plan, outs, cols, keep_input)
    purified = cast(dict[str, jax.Array], _layout.unpack(layout.groups, leaves, group_values, xp=jnp))  # traced
    return {p: spread(v.astype(leaves[p].dtype), mesh) for p, v in purified.items()}, report


def purify_leaves(
    values: dict[str, Any],
    codebook: Codebook,
    calls: Sequence[Call],
    options: RecoverOptions,
    keep_input: bool,
    mesh: Mesh | None = None,
) -> tuple[dict[str, jax.Array], DeviceReport]:
    """The device path for ``purify``: the protected leaves (by path) → purified leaves, report."""
    # host arrays: every process passes the same ones (a multi-process jit takes them as replicated);
    # computed eagerly even while purify is being traced
    with jax.ensure_compile_time_eval():
        matrices = {
            name: np.asarray(codebook.matrix(name, solve_dtype(g.dtype))) for name, g in codebook.groups.items()
        }
    out: tuple[dict[str, jax.Array], DeviceReport] = run(
        values,
        matrices,
        layout=Layout.of(codebook),
        plan=batches(calls),
        options=options,
        keep_input=keep_input,
        mesh=device_mesh() if mesh is None else mesh,
    )
    return out


def wanted(leaves: Sequence[Any]) -> bool:
    """Take the device path?  Yes for traced leaves and arrays spread over processes (the host
    cannot read them), on an accelerator, and with more than one device.  On a single CPU device
    the host path: its memory is bounded by ``max_entries``, and there it was faster and lighter
    (``python -m benchmarks.gpt2 --size 0.05 --path host`` against ``--path device``)."""
    if any(isinstance(v, jax.core.Tracer) for v in leaves):
        return True
    if any(isinstance(v, jax.Array) and not v.is_fully_addressable for v in leaves):
        return True
    return jax.default_backend() != "cpu" or jax.device_count() > 1
