"""purify: recover every code column of a contaminated parameter tree, and say how it went.

The codebook arranges the protected entries into groups, each a K × m array Y whose columns are
y = A θ for the group's K × n matrix A (``codebook.pack``).  Every column is recovered by

    x̂ = argmin_x ‖y − A x‖₁        (``recover_padded``: :func:`jaxpurify.recover` for a padded batch)

and, if certified, replaced by A x̂.  Three small steps, each a pure function of its inputs:

1. :func:`jaxpurify._plan.plan` lays the columns of all groups into solver calls of a few fixed
   shapes (narrow groups in narrow items, similar K in one row count); each call has at most
   ``max_entries`` entries, so memory is bounded for any model size.
2. :func:`dispatch` / :func:`fetch` run one call: one transfer to the device, ``recover_padded``,
   one back; :func:`solve_all` keeps one call in flight while the next is stacked.
3. :func:`assemble` writes the results into each group's columns (certified: A x̂; otherwise
   what ``on_uncertified`` says) and ``codebook.unpack`` / ``replace`` give the tree back.

State is host-side bookkeeping around these steps: the codebook names the tree's leaves
(``codebook.classify``: a codebook made from the params reads a TrainState, and back), inference
state the seal holds a copy of is set back to it (``codebook.restore_state``), everything else
that is not a protected parameter passes through as it came.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify import _seal_bound, _shard, _working
from jaxpurify._codebook import Codebook
from jaxpurify._layout import Group
from jaxpurify._numerics import leaf_dtype
from jaxpurify._options import RecoverOptions, resolve
from jaxpurify._plan import Call, options_for, plan, solve_dtype
from jaxpurify._report import GroupReport, Report, leaf_columns, leaf_reports, split_leaves
from jaxpurify._shard import DeviceReport, Solved
from jaxpurify._solution import throw_if_uncertified
from jaxpurify._solver import recover_padded
from jaxpurify._threads import single_threaded_blas
from jaxpurify._uncertified import ON_UNCERTIFIED
from jaxpurify.tree import flatten, map_with_path

PyTree = Any


class UncertifiedError(RuntimeError):
    """``purify(..., on_uncertified="raise")`` found columns it could not certify.

    Nothing is returned; ``error.report`` is the full :class:`Report`."""

    def __init__(self, report: Report):
        super().__init__(report.status())
        self.report = report


class UncertifiedWarning(UserWarning):
    """``on_uncertified="estimate"`` wrote l1 estimates into columns that are not certified."""


# -- solve ---------------------------------------------------------------------------------------
def stack(
    call: Call, cols: Mapping[str, np.ndarray], matrices: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host (A, Y, n) of a call, in fresh NumPy buffers: the device path's ``_shard.stack``, one
    call at a time."""
    A, Y, n = _shard.stack(call, cols, matrices, call.slots, xp=np)
    return cast(np.ndarray, A), cast(np.ndarray, Y), n  # xp=np: NumPy arrays


def dispatch(
    call: Call, cols: Mapping[str, np.ndarray], matrices: Mapping[str, np.ndarray], options: RecoverOptions
) -> Solved:
    """Start one call on the device (asynchronously): one host → device transfer."""
    A, Y, n = (jax.device_put(v) for v in stack(call, cols, matrices))  # fresh host arrays: no copy needed
    return Solved.of(A, Y, recover_padded(A, Y, n, options_for(call.dtype, options)), call.dtype)


def fetch(pending: Solved) -> Solved:
    """Wait for a dispatched call: one device → host transfer (the same :class:`Solved`, in NumPy)."""
    fetched: Solved = jax.tree.map(np.asarray, pending)
    return fetched


def solve_all(
    calls: Sequence[Call],
    cols: Mapping[str, np.ndarray],
    matrices: Mapping[str, np.ndarray],
    options: RecoverOptions,
    on_result: Callable[[Call, Solved], None],
) -> None:
    """Run the calls in order with one in flight while the next is stacked on the host."""
    pending = None
    for call in calls:
        nxt = (call, dispatch(call, cols, matrices, options))
        if pending is not None:
            on_result(pending[0], fetch(pending[1]))
        pending = nxt
    if pending is not None:
        on_result(pending[0], fetch(pending[1]))


# -- assemble ------------------------------------------------------------------------------------
@dataclasses.dataclass
class GroupResult:
    """Per group: the purified (K, m) columns and their outlier mask; per column the statistics."""

    values: np.ndarray | None  # freed once the purified tree is built
    outliers: np.ndarray
    certified: np.ndarray
    inlier_residual: np.ndarray
    bound: np.ndarray | None


def empty_results(groups: Mapping[str, Group], cols: Mapping[str, np.ndarray]) -> dict[str, GroupResult]:
    values = _working.working_copies(groups.values(), cols)  # aligned, a split leaf's groups views of one buffer
    return {
        name: GroupResult(
            values[name],
            np.zeros((g.K, g.columns), bool),
            np.zeros(g.columns, bool),
            np.zeros(g.columns),
            None,
        )
        for name, g in groups.items()
    }


# -- the working copy's hand-over (so that purify adds at most 3× a leaf's bytes) ---------------
ALIGN = _working.ALIGN


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    """A fresh, writable copy of ``a`` whose data starts on an ``ALIGN``-byte boundary.

    Why: purify's working copy becomes the purified leaf.  NumPy aligns large buffers to 16
    bytes only, and ``jax.device_put`` copies such a buffer, so the leaf's bytes were held twice
    at the peak (measured 3.05× the leaf at 4096 × 50,000).  An aligned buffer is aliased
    instead (:func:`_hand_over`; the layout of the working copy: ``jaxpurify._working``)."""
    a = np.asarray(a)
    out = _working.aligned_empty(a.size, a.dtype).reshape(a.shape)
    np.copyto(out, a)
    return out


def _hand_over(by_path: dict[str, Any], leaves: dict[str, np.ndarray]) -> dict[str, Any]:
    """Purify's own working copy, handed to JAX without a copy where the leaf is a JAX array.

    Only for arrays unpacked from purify's working copy (never anything the caller passed): the
    JAX array may share their memory, so nothing may write to them afterwards, and purify
    does not.  ``Codebook.replace`` keeps a JAX array of the leaf's dtype as it is."""
    return {
        p: jax.device_put(v, may_alias=True) if isinstance(by_path[p], jax.Array) and v.dtype == by_path[p].dtype else v
        for p, v in leaves.items()
    }


def assemble(call: Call, res: Solved, results: dict[str, GroupResult], keep_input: bool) -> None:
    """Write one call's columns into their groups, slot by slot (``_shard.runs`` as the device path
    assembles them): A x̂ where certified (and everywhere if not ``keep_input``); the input values
    stay in uncertified columns when ``keep_input``."""
    for run in _shard.runs(call):
        r = results[run.group]
        values = cast(np.ndarray, r.values)  # freed only once every call is assembled
        K = values.shape[0]
        for one in run.split(call.width):  # slot by slot: views of the results, never a run's copy
            span = slice(one.start, one.start + one.columns)
            cert = one.take(res.certified, K)
            take = cert if keep_input else np.ones_like(cert)
            values[:, span] = np.where(take, one.take(res.fitted, K), values[:, span])
            r.outliers[:, span] = one.take(res.outliers, K)
            r.certified[span] = cert
            r.inlier_residual[span] = one.take(res.inlier_residual, K)
            if res.bound is not None:
                if r.bound is None:
                    r.bound = np.full(r.certified.shape, np.nan)
                r.bound[span] = one.take(res.bound, K)


# -- the public entry point ----------------------------------------------------------------------
def _names(params: PyTree, codebook: Codebook) -> dict[str, str]:
    """The codebook's name → the leaf's path in ``params`` (``codebook.classify``)."""
    return {e.name: e.path for e in codebook.classify(params)}


def _check(
    params: PyTree, codebook: Codebook, on_uncertified: str, max_entries: int, names: dict[str, str]
) -> dict[str, Any]:
    """Validate everything before any work; returns the protected leaves by the codebook's name."""
    if on_uncertified not in ON_UNCERTIFIED:
        raise ValueError(f"on_uncertified must be one of {ON_UNCERTIFIED}, got {on_uncertified!r}")
    if not isinstance(max_entries, (int, np.integer)) or isinstance(max_entries, bool) or max_entries < 1:
        raise ValueError(f"max_entries must be a positive int, got {max_entries!r}")
    values = {leaf.path: leaf.value for leaf in flatten(params)[0]}
    by_path = {name: values[path] for name, path in names.items()}
    for name, g in codebook.groups.items():
        if not jnp.issubdtype(np.dtype(g.dtype), jnp.floating):
            raise ValueError(f"group {name!r} of the codebook has dtype {g.dtype}; protected entries must be floating")
        for path in g.members:
            if path not in by_path:
                raise ValueError(f"leaf {path!r} of the codebook is missing from params")
            if _deleted(by_path[path]):
                raise ValueError(f"leaf {path!r} has been deleted (its buffer was freed or donated); pass live arrays")
            dt = np.dtype(leaf_dtype(by_path[path]))
            if dt != np.dtype(g.dtype):
                raise ValueError(f"leaf {path!r} has dtype {dt}, the codebook expects {g.dtype}")
    return {p: by_path[p] for p in codebook.protected}


def purify(
    params: PyTree,
    codebook: Codebook,
    *,
    on_uncertified: str = "input",
    max_entries: int = 1 << 21,
    options: RecoverOptions | None = None,
    device: bool | None = None,
    **overrides: Any,
) -> tuple[PyTree, Report | DeviceReport]:
    """Purify a contaminated parameter tree.

    ``params``: the params alone or the whole tree the model was deployed as — linen
    ``variables``, a ``flax.training.train_state.TrainState`` or a dict with
    ``step``/``params``/``opt_state``, an NNX state, module or pure dict, or an Orbax restore of
    them (``codebook.classify`` names its leaves as the codebook does).

    Returns ``(purified, report)``.  ``purified`` has the structure, shapes and dtypes of
    ``params`` (a TrainState stays a TrainState; an ``nnx.Module`` gives an ``nnx.State``): every
    certified column of the code is replaced by its recovery A x̂; inference state (BatchNorm
    statistics) the codebook's seal holds a copy of is set back to that copy, exactly (see
    ``codebook.restore_state``); every other leaf — unprotected parameters, training and RNG
    state — is the same object as in ``params``.  A column that is not certified is
    handled by ``on_uncertified``:

    * ``"input"`` (default): it keeps the values that came in.  Nothing uncertified is laundered
      into range(A), so purifying the result again cannot certify it.
    * ``"estimate"``: it gets the l1 estimate A x̂ (lies in range(A); an :class:`UncertifiedWarning`
      is issued, except under ``jit``).
    * ``"raise"``: :class:`UncertifiedError` (a ``RuntimeError``) carrying the report; nothing is
      returned.  Under ``jit`` a host callback raises when the result is ready (JAX wraps it).

    ``report.ok`` is True only if every protected column is certified, no floating parameter is
    unprotected, and every leaf of inference state is known good (restored from or equal to the
    seal's copy); inference state the codebook cannot check (no seal, or sealed without it)
    makes it not ok.  Training, RNG and other state is listed in ``report.state`` only.
    ``max_entries`` bounds the entries per solver call, and so the working memory;
    the result does not depend on it beyond float rounding.  ``options`` (a :class:`RecoverOptions`)
    and keyword ``overrides`` of its fields (e.g. ``atol=1e-3``) go to :func:`recover`; unless
    ``rtol`` is set, float16 / bfloat16 leaves are judged at their own precision.

    **Device path** (``jaxpurify._shard``): under ``jax.jit`` (close over the codebook:
    ``jax.jit(lambda p: purify(p, codebook))``), with arrays spread over several processes, on an
    accelerator or with more than one device, the columns are packed and solved as JAX
    operations, each solver batch split over all devices (``Mesh`` / ``NamedSharding``), with
    results bit-identical to one device and to the host path; the purified leaves come back laid
    out over the devices.  Under ``jit`` and for multi-process arrays the report is a
    :class:`DeviceReport` of arrays; otherwise the same :class:`Report`.  ``device=True`` /
    ``False`` forces a path (``False`` is refused for traced or multi-process leaves).

    If the codebook has a keyed seal (``codebook = codebook.seal(deployed)``), the purified tree is
    checked against it with a tolerance per seal chunk derived from the certificates' error bounds
    (``jaxpurify._seal_bound``), and
    ``report.ok`` also requires every sealed leaf to verify: this catches what l1 cannot see
    (changes inside range(A)); see docs/security.md.  (Not under ``jit`` or across processes: the
    seal is checked on the host.)

    Raises ``ValueError`` / ``TypeError`` naming the leaf or argument if ``params`` does not match
    the codebook or an argument is invalid; the checks run before any work, and ``params`` is
    never modified.
    """
    t0 = time.perf_counter()
    if not isinstance(codebook, Codebook):  # not duck-typed: the seal check and state restore rely on its methods
        raise TypeError(f"codebook must be a jaxpurify.Codebook, got {type(codebook).__name__}")
    options = resolve(options, overrides)  # TypeError / ValueError naming a bad option, before any work
    names = _names(params, codebook)
    protected = _check(params, codebook, on_uncertified, max_entries, names)
    groups = codebook.groups
    calls = plan(groups.values(), max_entries)
    keep_input = on_uncertified != "estimate"
    on_host = all(_on_host(v) for v in protected.values())
    if device is None:
        device = _shard.wanted(list(protected.values()))
    elif device not in (True, False):
        raise TypeError(f"device must be None, True or False, got {device!r}")
    elif not device and not on_host:
        raise ValueError(
            "device=False: params hold traced or multi-process arrays, which only the device path can read"
        )

    if device:
        leaves, dev = _shard.purify_leaves(protected, codebook, calls, options, keep_input)
        leaves = {names[p]: v for p, v in leaves.items()}
        purified = map_with_path(lambda p, leaf: _like(leaf, leaves[p]) if p in leaves else leaf, params)
        purified, restored = codebook.restore_state(purified)
        if not on_host:  # traced, or spread over processes: the report stays in arrays
            if on_uncertified == "raise":
                throw_if_uncertified(dev.codes())
            return purified, dev
        results = _host_results(groups, dev, codebook.pack(purified))
        matrices = None
    else:
        cols = codebook.pack(params)
        matrices = {name: np.asarray(codebook.matrix(name, solve_dtype(g.dtype))) for name, g in groups.items()}
        results = empty_results(groups, cols)
        with single_threaded_blas():  # see jaxpurify._threads
            solve_all(calls, cols, matrices, options, lambda call, res: assemble(call, res, results, keep_input))
        del cols
        # the working copy becomes the purified leaves (no copy: _hand_over); from here on it is read only
        purified = codebook.replace(
            params, _hand_over(protected, codebook.unpack({n: cast(np.ndarray, r.values) for n, r in results.items()}))
        )
        purified, restored = codebook.restore_state(purified)
    sealed = codebook.seal_record is not None
    if sealed and matrices is None:
        matrices = {name: np.asarray(codebook.matrix(name, solve_dtype(g.dtype))) for name, g in groups.items()}
    known = cast(dict[str, np.ndarray], matrices)  # read only when sealed, and then set
    # the seal's tolerance needs each column's ‖x̂‖₂, read from the purified values (see _seal_bound)
    xnorms = (
        {name: _seal_bound.latent_norms(cast(np.ndarray, r.values), known[name]) for name, r in results.items()}
        if sealed
        else {}
    )
    for r in results.values():
        r.values = None  # the purified tree holds them now: free the working copy before the checks
    columns = leaf_columns(codebook)
    verdicts = {}
    if sealed:
        err = _seal_bound.chunk_errors(codebook, known, results, xnorms, options)
        verdicts = codebook.verify(purified, err)
    unprotected, state = split_leaves(params, codebook, restored, verdicts)
    # paths as the caller's tree names them (a codebook made from the full variables reads the params alone)
    seal = tuple(dataclasses.replace(v, path=names.get(p, p)) for p, v in verdicts.items())
    report = Report(
        leaves=tuple(
            dataclasses.replace(r, path=names.get(r.path, r.path))
            for r in leaf_reports(codebook, protected, results, columns)
        ),
        groups=tuple(GroupReport.of(g, results[name]) for name, g in groups.items()),
        unprotected=unprotected,
        on_uncertified=on_uncertified,
        calls=len(calls),
        solver_shapes=len({c.shape for c in calls}),
        solved_columns=sum(c.slots * c.width for c in calls),
        seconds=time.perf_counter() - t0,
        seal=seal,
        state=state,
        legacy_codebook=codebook.legacy,
    )
    if report.columns != report.certified:
        if on_uncertified == "raise":
            raise UncertifiedError(report)
        if on_uncertified == "estimate":
            warnings.warn(report.status(), UncertifiedWarning, stacklevel=2)
    return purified, report


def _deleted(leaf: object) -> bool:
    return isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.is_deleted()


def _on_host(leaf: object) -> bool:
    """Can the host read this leaf (not traced, not spread over other processes)?"""
    if isinstance(leaf, jax.core.Tracer):
        return False
    return not isinstance(leaf, jax.Array) or leaf.is_fully_addressable


def _like(old: object, new: jax.Array) -> np.ndarray | jax.Array:
    """A purified leaf: a host array where a host array came in, else the device array."""
    return np.asarray(new) if isinstance(old, np.ndarray) else new


def _host_results(
    groups: Mapping[str, Group], dev: DeviceReport, values: dict[str, np.ndarray]
) -> dict[str, GroupResult]:
    """The device path's results as the host path's :class:`GroupResult` (for the same Report)."""
    host: Callable[..., np.ndarray] = lambda a, dt=None: np.asarray(a) if dt is None else np.asarray(a).astype(dt)
    return {
        name: GroupResult(
            np.array(values[name], copy=True),
            host(dev.outliers[name]),
            host(dev.certified[name]),
            host(dev.inlier_residual[name], np.float64),
            host(dev.bound[name], np.float64),
        )
        for name in groups
    }
