"""The report of :func:`jaxpurify.purify`: what was certified, what was not, what is unprotected,
and what happened to the state.

Counts are per protected leaf (the code's columns that hold any of its entries, and how many of
those are certified; entries flagged as corrupted; erasures), per group (one code), for every
parameter the codebook does not protect, and for every leaf of state (inference, training, RNG,
other: :data:`jaxpurify.tree.KINDS`).  ``Report.ok`` is True only if every protected column is
certified, no floating parameter is unprotected, every sealed leaf verified, and every leaf of
inference state is known good: restored from (or equal to) the codebook's sealed copy, or verified
by an older seal's sketch.  Inference state the codebook cannot check (no seal, or sealed without
it) makes the report not ok: nothing vouches for it.  Training and RNG state are listed only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from jaxpurify import tree as _tree
from jaxpurify._bind import Entry
from jaxpurify._numerics import is_numpy_dtype, leaf_dtype, leaf_shape
from jaxpurify._table import table as _table

if TYPE_CHECKING:  # both import this module
    from jaxpurify._layout import Group
    from jaxpurify._purify import GroupResult
    from jaxpurify._seal import LeafVerdict


class Coded(Protocol):
    """What a report reads of a codebook (a :class:`jaxpurify.Codebook`; the tests' layout-only
    doubles have these and no ``classify``)."""

    @property
    def groups(self) -> Mapping[str, Group]: ...
    @property
    def protected(self) -> tuple[str, ...]: ...
    def unpack(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def unprotected(self, params: Any) -> list[tuple[str, int, str]]: ...


_KEPT = {
    "input": "kept as they came in",
    "estimate": "l1 estimates written in, not recoveries",
    "raise": "nothing returned",
}


def _num(x: float | None) -> float | None:
    """A JSON-ready float: None for a missing or non-finite value."""
    return None if x is None or not math.isfinite(x) else float(x)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


@dataclasses.dataclass(frozen=True)
class LeafReport:
    """One protected leaf.  ``columns``: code columns holding any of its entries; ``certified``:
    how many of those are certified; ``flagged``: its entries judged corrupted (erasures
    included); ``erasures``: its non-finite entries on input; ``max_inlier_residual``: the
    largest inlier |y − A x̂| over its columns; ``max_bound``: the largest of recover's error
    bounds (‖x̂ − x‖₂ / ‖x̂‖₂ of a column's latent) over its certified columns (None if none)."""

    path: str
    columns: int
    certified: int
    flagged: int
    erasures: int
    max_inlier_residual: float
    max_bound: float | None
    groups: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Is every code column holding an entry of this leaf certified?"""
        return self.certified == self.columns

    def as_dict(self) -> dict[str, Any]:
        """The fields, JSON-ready: ``groups`` a list, a non-finite residual or bound None."""
        d = dataclasses.asdict(self)
        d.update(
            groups=list(self.groups), max_inlier_residual=_num(self.max_inlier_residual), max_bound=_num(self.max_bound)
        )
        return d


@dataclasses.dataclass(frozen=True)
class GroupReport:
    """One code: K × columns, certified columns, the leaves it holds; ``certified_mask`` says
    which of its columns (in the order of ``codebook.pack``) are certified."""

    name: str
    K: int
    n: int
    columns: int
    certified: int
    members: tuple[str, ...]
    certified_mask: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, group: Group, result: GroupResult) -> GroupReport:
        mask = np.asarray(result.certified, bool).copy()
        mask.flags.writeable = False
        return cls(group.name, group.K, group.n, group.columns, int(mask.sum()), tuple(group.members), mask)

    def as_dict(self) -> dict[str, Any]:
        """The fields but ``certified_mask``, JSON-ready (``members`` a list)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "certified_mask"}
        return dict(d, members=list(self.members))


@dataclasses.dataclass(frozen=True)
class UnprotectedLeaf:
    """A parameter the codebook does not protect (skipped by ``select``, not floating, too
    small).  A floating one makes the report not ok.  (State is a :class:`StateLeaf`.)"""

    path: str
    size: int
    reason: str
    parameter: bool  # always True since state is reported apart; kept for the JSON's readers
    floating: bool
    nonfinite: bool  # holds NaN or ±Inf (no purification can repair it)

    @property
    def counts(self) -> bool:
        """Does it keep the report from being ok?"""
        return self.parameter and self.floating

    def as_dict(self) -> dict[str, Any]:
        """The fields and ``counts``, JSON-ready."""
        return dict(dataclasses.asdict(self), counts=self.counts)


_DID = {
    "restored": "restored {n} from the codebook's sealed copy",
    "unchanged": "matches the codebook's sealed copy",
    "verified": "unchanged: the keyed seal verified (the seal holds no copy of it)",
    "changed": "changed since it was sealed; not restored (the seal holds no copy of it)",
    "unchecked": "not checked: the codebook holds no sealed copy of it (seal the codebook with it)",
    "kept": "kept as it came in (not encoded, not checked)",
}


@dataclasses.dataclass(frozen=True)
class StateLeaf:
    """A leaf that is not a parameter, and what purify did with it.  ``kind``: "inference",
    "training", "rng" or "other" (:data:`jaxpurify.tree.KINDS`); ``status``:

    * ``"restored"``: inference state set back to the codebook's sealed copy (``restored``
      entries differed; None under ``jit``, where they are not counted);
    * ``"unchanged"``: inference state bit for bit equal to the sealed copy;
    * ``"verified"`` / ``"changed"``: the keyed seal's sketch (an older seal without a copy, or
      other state) verified / failed: the leaf is passed through either way;
    * ``"unchecked"``: inference state the codebook holds no sealed copy or sketch of;
    * ``"kept"``: training, RNG or other state, passed through unchecked.

    ``"changed"`` and ``"unchecked"`` keep the report from being ok."""

    path: str
    size: int
    kind: str
    reason: str  # the kind in words
    status: str
    restored: int | None  # entries restored from the sealed copy
    nonfinite: bool

    @property
    def counts(self) -> bool:
        """Does it keep the report from being ok?"""
        return self.status in ("changed", "unchecked")

    def message(self) -> str:
        """What happened to it, in words."""
        if self.status == "restored" and self.restored is None:
            return "set to the codebook's sealed copy"
        return _DID[self.status].format(n=_count(self.restored, "entry", "entries"))

    def as_dict(self) -> dict[str, Any]:
        """The fields, ``counts`` and ``message()``, JSON-ready."""
        return dict(dataclasses.asdict(self), counts=self.counts, message=self.message())


def split_leaves(
    params: Any, codebook: Coded, restored: dict[str, int | None], verdicts: Mapping[str, LeafVerdict]
) -> tuple[tuple[UnprotectedLeaf, ...], tuple[StateLeaf, ...]]:
    """The leaves of ``params`` the code does not protect: parameters (:class:`UnprotectedLeaf`)
    and state (:class:`StateLeaf`).  ``restored``: per path, entries restored from the seal's
    copy (``Codebook.restore_state``); ``verdicts``: the seal's, by the codebook's names."""
    reasons = {p: r for p, _, r in codebook.unprotected(params)}
    params_out: list[UnprotectedLeaf] = []
    state: list[StateLeaf] = []
    for e in _entries(params, codebook):
        if e.path not in reasons:
            continue  # protected
        size = math.prod(leaf_shape(e.value))
        dt = leaf_dtype(e.value)
        floating = is_numpy_dtype(dt) and bool(np.issubdtype(np.dtype(dt), np.floating))
        nonfinite = floating and not bool(np.isfinite(np.asarray(e.value)).all())
        if e.kind == _tree.PARAM:
            params_out.append(UnprotectedLeaf(e.path, size, str(reasons[e.path]), True, floating, nonfinite))
            continue
        verdict = verdicts.get(e.name)
        if e.path in restored:
            status = "unchanged" if restored[e.path] == 0 else "restored"
        elif verdict is not None:
            status = "verified" if verdict.verified else "changed"
        elif e.kind == _tree.INFERENCE:
            status = "unchecked"
        else:
            status = "kept"
        state.append(StateLeaf(e.path, size, e.kind, e.why, status, restored.get(e.path), nonfinite))
    return tuple(params_out), tuple(state)


def _entries(params: Any, codebook: Coded) -> list[Entry]:
    """The codebook's view of every leaf (its ``classify``), or the tree's own for a codebook
    that has none (the layout-only doubles of the tests)."""
    classify = getattr(codebook, "classify", None)
    if classify is not None:
        entries: list[Entry] = classify(params)
        return entries
    return [Entry(leaf.path, leaf.path, leaf.value, leaf.kind, leaf.why) for leaf in _tree.flatten(params)[0]]


@dataclasses.dataclass(frozen=True)
class Report:
    """What :func:`jaxpurify.purify` did, on the host path (under ``jit`` or across processes it
    returns a :class:`DeviceReport` instead).  ``str(report)`` is a table, :meth:`status` one line,
    :meth:`as_dict` the JSON the command line writes; ``report[path]`` is one leaf's report.

    * ``leaves``: one :class:`LeafReport` per protected leaf (its columns, certified columns,
      flagged entries, erasures, error bounds); ``groups``: one :class:`GroupReport` per code;
    * ``unprotected``: every parameter the codebook does not protect (:class:`UnprotectedLeaf`);
    * ``state``: every leaf that is not a parameter, and what purify did with it (:class:`StateLeaf`);
    * ``seal``: the keyed seal's :class:`LeafVerdict` per sealed leaf (empty: the codebook has no
      seal, nothing was checked); ``legacy_codebook``: the codebook came from an unauthenticated
      version-1 file;
    * ``on_uncertified``: what was written into columns not certified; ``calls``, ``solver_shapes``,
      ``solved_columns``: solver calls, their distinct shapes (each compiles once per process) and
      the columns solved, padding included; ``seconds``: the call's wall time.

    :attr:`ok` is True only if every protected column is certified, no floating parameter is
    unprotected, with a seal every sealed leaf verified, and no state is ``"unchecked"`` or
    ``"changed"`` (inference state must be restored from or equal to the seal's copy, or verified
    by its sketch).
    """

    leaves: tuple[LeafReport, ...]
    groups: tuple[GroupReport, ...]
    unprotected: tuple[UnprotectedLeaf, ...]
    on_uncertified: str
    calls: int  # solver calls
    solver_shapes: int  # distinct call shapes (each compiles once per process)
    solved_columns: int  # columns solved, padding included
    seconds: float
    seal: tuple[
        LeafVerdict, ...
    ] = ()  # LeafVerdicts of the keyed seal, when the codebook has one (see docs/security.md)
    state: tuple[StateLeaf, ...] = ()  # every leaf that is not a parameter, and what happened to it
    legacy_codebook: bool = False  # the codebook came from an unauthenticated version-1 file (allow_legacy)

    @property
    def columns(self) -> int:
        """Protected columns (each counted once, however many leaves it touches)."""
        return sum(g.columns for g in self.groups)

    @property
    def certified(self) -> int:
        return sum(g.certified for g in self.groups)

    @property
    def unprotected_parameters(self) -> tuple[UnprotectedLeaf, ...]:
        """Floating parameters the codebook does not protect."""
        return tuple(u for u in self.unprotected if u.counts)

    @property
    def all_certified(self) -> bool:
        """Every protected column certified (whatever is unprotected)."""
        return self.certified == self.columns

    @property
    def sealed(self) -> bool:
        """The codebook had a seal and the purified tree was checked against it."""
        return bool(self.seal)

    @property
    def seal_statement(self) -> str:
        """Whether the keyed seal was checked, in words."""
        if not self.seal:
            return "keyed seal not checked (the codebook has none): changes inside range(A) cannot be detected"
        failed = sum(not v.verified for v in self.seal)
        if failed:
            return f"keyed seal checked: {failed} of {len(self.seal)} leaves fail it"
        return f"keyed seal checked: all {len(self.seal)} sealed leaves verified"

    @property
    def verified(self) -> bool:
        """Every sealed leaf verified (True when there is no seal: nothing to check)."""
        return all(v.verified for v in self.seal)

    @property
    def unverified_state(self) -> tuple[StateLeaf, ...]:
        """State that keeps the report from being ok: inference state nothing checked, and state
        that failed the seal's sketch."""
        return tuple(s for s in self.state if s.counts)

    @property
    def restored(self) -> int:
        """Entries of inference state restored from the codebook's sealed copy."""
        return sum(s.restored or 0 for s in self.state if s.status == "restored")

    @property
    def ok(self) -> bool:
        """True only if every protected column is certified, no floating parameter is unprotected,
        with a seal every sealed leaf of the purified tree verified, and all inference state is
        known good (restored from or equal to the seal's copy, or verified by its sketch)."""
        return self.all_certified and not self.unprotected_parameters and self.verified and not self.unverified_state

    def __getitem__(self, path: str) -> LeafReport:
        for r in self.leaves:
            if r.path == path:
                return r
        raise KeyError(path)

    def status(self) -> str:
        """One line: ok, or what is wrong (and, either way, a legacy codebook file)."""
        legacy = (
            "; codebook: a legacy version-1 file, NOT authenticated (loaded with allow_legacy)"
            if self.legacy_codebook
            else ""
        )
        if self.ok:
            return (
                f"ok: all {self.columns} columns certified; every floating parameter protected; "
                + ("the keyed seal verified" if self.seal else "keyed seal not checked (the codebook has none)")
                + self._state_summary()
                + legacy
            )
        problems = []
        if self.certified != self.columns:
            problems.append(
                f"{self.columns - self.certified} of {self.columns} columns not certified "
                f"({_KEPT[self.on_uncertified]})"
            )
        loose = self.unprotected_parameters
        if loose:
            bad = sum(u.nonfinite for u in loose)
            problems.append(
                f"{len(loose)} floating parameter leaves ({sum(u.size for u in loose)} values) unprotected"
                + (f", {bad} of them with non-finite values" if bad else "")
            )
        purified = {r.path for r in self.leaves}
        failed = [v.path for v in self.seal if not v.verified]
        for paths, what in (
            ([p for p in failed if p in purified], "changed beyond the purification's error bound"),
            (
                [p for p in failed if p not in purified and p not in {s.path for s in self.state}],
                "changed since they were sealed (not protected: kept as they came in)",
            ),
        ):
            if paths:
                problems.append(f"{len(paths)} leaves fail the keyed seal ({_some(paths)}): {what}")
        unchecked = [s for s in self.state if s.status == "unchecked"]
        if unchecked:
            problems.append(
                f"{_count(len(unchecked), 'leaf', 'leaves')} of inference state "
                f"({sum(s.size for s in unchecked)} values: {_some([s.path for s in unchecked])}) "
                "not checked: the codebook holds no sealed copy of them"
            )
        changed = [s for s in self.state if s.status == "changed"]
        if changed:
            problems.append(
                f"{_count(len(changed), 'leaf', 'leaves')} of state changed since sealed and not restored "
                f"({_some([s.path for s in changed])}): the seal holds no copy of them"
            )
        if not self.seal:
            problems.append("keyed seal not checked (the codebook has none)")
        return "NOT OK: " + "; ".join(problems) + self._state_summary() + legacy

    def _state_summary(self) -> str:
        restored = [s for s in self.state if s.status == "restored"]
        if restored:
            n = self.restored
            counted = _count(n, "entry", "entries") + " in " if all(s.restored is not None for s in restored) else ""
            return (
                "; inference state restored from the codebook's sealed copy "
                f"({counted}{_count(len(restored), 'leaf', 'leaves')})"
            )
        if any(s.status == "unchanged" for s in self.state):
            return "; inference state matches the codebook's sealed copy"
        return ""

    def __str__(self) -> str:
        head = ("leaf", "certified", "flagged", "erasures", "max inlier |r|", "max bound")
        rows = [
            (
                r.path,
                f"{r.certified}/{r.columns}",
                r.flagged,
                r.erasures,
                _fmt(r.max_inlier_residual),
                _fmt(r.max_bound),
            )
            for r in self.leaves
        ]
        text = _table(head, rows)
        if self.state:
            text += "\n\nstate (not encoded):\n" + _table(
                ("leaf", "kind", "values", "what happened", "counts against ok"),
                _state_rows(self.state),
            )
        if self.unprotected:
            text += "\n\nparameters not protected:\n" + _table(
                ("leaf", "values", "reason", "non-finite", "counts against ok"),
                [
                    (u.path, u.size, u.reason, "yes" if u.nonfinite else "no", "yes" if u.counts else "no")
                    for u in self.unprotected
                ],
            )
        if self.seal:
            text += (
                "\n\nkeyed seal (a change of one entry by more than 'detectable' is caught with P ≥ 1 − 2^-32):\n"
                + _table(
                    ("leaf", "verified", "statistic", "tolerance", "detectable"),
                    [
                        (
                            v.path,
                            "yes" if v.verified else "NO",
                            _fmt(v.statistic),
                            _fmt(v.tolerance),
                            _fmt(v.detectable),
                        )
                        for v in self.seal
                    ],
                )
            )
        return (
            text
            + f"\n{self.seal_statement}"
            + f"\n{self.status()}; uncertified columns: {self.on_uncertified}; {self.seconds:.3f} s"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (only str, int, float, bool, None, lists and dicts; non-finite floats → None)."""
        return {
            "ok": self.ok,
            "status": self.status(),
            "on_uncertified": self.on_uncertified,
            "columns": self.columns,
            "certified": self.certified,
            "calls": self.calls,
            "solver_shapes": self.solver_shapes,
            "solved_columns": self.solved_columns,
            "seconds": _num(self.seconds),
            "leaves": [r.as_dict() for r in self.leaves],
            "groups": [g.as_dict() for g in self.groups],
            "unprotected": [u.as_dict() for u in self.unprotected],
            "sealed": self.sealed,
            "seal_checked": self.sealed,
            "seal_statement": self.seal_statement,
            "seal": [v.as_dict() for v in self.seal],
            "state": [s.as_dict() for s in self.state],
            "restored": self.restored,
            "legacy_codebook": self.legacy_codebook,
        }


def _count(n: int | None, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _some(paths: list[str], n: int = 3) -> str:
    return ", ".join(paths[:n]) + (", …" if len(paths) > n else "")


def _state_rows(state: tuple[StateLeaf, ...]) -> list[tuple[str, str, int, str, str]]:
    """One row per leaf of inference and other state; training and RNG state that was only
    passed through, one row per kind (a train state has as many optimizer leaves as parameters)."""
    rows: list[tuple[str, str, int, str, str]] = []
    kept: dict[str, tuple[int, int]] = {}
    for s in state:
        if s.kind in (_tree.TRAINING, _tree.RNG) and s.status == "kept":
            n, v = kept.get(s.kind, (0, 0))
            kept[s.kind] = (n + 1, v + s.size)
            continue
        rows.append((s.path, s.kind, s.size, s.message(), "yes" if s.counts else "no"))
    for kind, (n, v) in kept.items():
        rows.append((f"({n} leaves)", kind, v, _DID["kept"], "no"))
    return rows


def leaf_columns(codebook: Coded) -> dict[str, np.ndarray]:
    """Per protected leaf, the ids of the code columns that hold its entries (the groups' columns
    numbered one after another, in order).  A group's (K, m) code is filled row by row from its
    segments, so entry f of it lies in column f mod m: found from the segments alone, without
    unpacking anything leaf-sized."""
    out: dict[str, list[np.ndarray]] = {}
    base = 0
    for g in codebook.groups.values():
        at = 0
        for s in g.segments:
            cols = np.arange(g.columns) if s.size >= g.columns else np.unique((at + np.arange(s.size)) % g.columns)
            out.setdefault(s.path, []).append(base + cols)
            at += s.size
        base += g.columns
    return {p: np.unique(np.concatenate(v)) for p, v in out.items()}


def leaf_reports(
    codebook: Coded, protected: dict[str, Any], results: Mapping[str, GroupResult], columns: dict[str, np.ndarray]
) -> tuple[LeafReport, ...]:
    """Per protected leaf, its columns' statistics (``columns``: :func:`leaf_columns`; flags from
    the unpacked outlier masks, so it holds for any layout)."""
    groups = codebook.groups
    flags = codebook.unpack({name: r.outliers for name, r in results.items()})
    cert = np.concatenate([results[name].certified for name in groups]) if groups else np.zeros(0, bool)
    inlier = np.concatenate([results[name].inlier_residual for name in groups]) if groups else np.zeros(0)
    has_bound = any(r.bound is not None for r in results.values())
    bound = (
        np.concatenate(
            [
                results[n].bound if results[n].bound is not None else np.full(g.columns, np.nan)
                for n, g in groups.items()
            ]
        )
        if has_bound
        else None
    )
    holders: dict[str, list[str]] = {}
    for name, g in groups.items():
        for p in g.members:
            holders.setdefault(p, []).append(name)
    out = []
    for path in codebook.protected:
        cols = columns[path]
        good = cols[cert[cols]]
        bounds = bound[good] if bound is not None else np.zeros(0)
        bounds = bounds[~np.isnan(bounds)]
        leaf = np.asarray(protected[path])
        out.append(
            LeafReport(
                path=path,
                columns=int(cols.size),
                certified=int(good.size),
                flagged=int(flags.pop(path).sum()),
                erasures=int(leaf.size - np.count_nonzero(np.isfinite(leaf))),
                max_inlier_residual=float(inlier[cols].max()) if cols.size else 0.0,
                max_bound=float(bounds.max()) if bounds.size else None,
                groups=tuple(holders.get(path, ())),
            )
        )
    return tuple(out)
