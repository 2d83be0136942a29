"""The report of :func:`jaxpurify.purify`: what was certified, what was not, what is unprotected.

Counts are per protected leaf (the code's columns that hold any of its entries, and how many of
those are certified; entries flagged as corrupted; erasures), per group (one code), and for
every leaf the codebook does not protect.  ``Report.ok`` is True only if every protected column
is certified and no floating parameter is unprotected.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxpurify import tree as _tree
from jaxpurify.progress import table as _table

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
        return self.certified == self.columns

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(
            groups=list(self.groups), max_inlier_residual=_num(self.max_inlier_residual), max_bound=_num(self.max_bound)
        )
        return d


@dataclasses.dataclass(frozen=True)
class GroupReport:
    """One code: K × columns, certified columns, the leaves it holds."""

    name: str
    K: int
    n: int
    columns: int
    certified: int
    members: tuple[str, ...]

    @classmethod
    def of(cls, group, result) -> GroupReport:
        return cls(group.name, group.K, group.n, group.columns, int(result.certified.sum()), tuple(group.members))

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), members=list(self.members))


@dataclasses.dataclass(frozen=True)
class UnprotectedLeaf:
    """A leaf the codebook does not protect.  A floating *parameter* makes the report not ok;
    non-parameter state (batch statistics, RNG keys, counters) and integer leaves are listed only."""

    path: str
    size: int
    reason: str
    parameter: bool
    floating: bool
    nonfinite: bool  # holds NaN or ±Inf (no purification can repair it)

    @property
    def counts(self) -> bool:
        """Does it keep the report from being ok?"""
        return self.parameter and self.floating

    @classmethod
    def of(cls, params: Any, codebook) -> list[UnprotectedLeaf]:
        by_path = {leaf.path: leaf for leaf in _tree.flatten(params)[0]}
        out = []
        for path, size, reason in codebook.unprotected(params):
            leaf = by_path[path]
            dt = getattr(leaf.value, "dtype", None)
            dt = np.asarray(leaf.value).dtype if dt is None else dt
            floating = _is_numpy_dtype(dt) and bool(np.issubdtype(np.dtype(dt), np.floating))
            nonfinite = floating and not bool(np.isfinite(np.asarray(leaf.value)).all())
            out.append(cls(path, int(size), str(reason), leaf.kind == "param", floating, nonfinite))
        return out

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), counts=self.counts)


def _is_numpy_dtype(dt) -> bool:
    try:
        np.dtype(dt)
    except TypeError:  # e.g. a typed PRNG key's dtype
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Report:
    leaves: tuple[LeafReport, ...]
    groups: tuple[GroupReport, ...]
    unprotected: tuple[UnprotectedLeaf, ...]
    on_uncertified: str
    calls: int  # solver calls
    solver_shapes: int  # distinct call shapes (each compiles once per process)
    solved_columns: int  # columns solved, padding included
    seconds: float
    seal: tuple = ()  # LeafVerdicts of the keyed seal, when the codebook has one (see SECURITY.md)
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
    def verified(self) -> bool:
        """Every sealed leaf verified (True when there is no seal: nothing to check)."""
        return all(v.verified for v in self.seal)

    @property
    def ok(self) -> bool:
        """True only if every protected column is certified, no floating parameter is unprotected
        and, with a seal, every sealed leaf of the purified tree verified."""
        return self.all_certified and not self.unprotected_parameters and self.verified

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
                f"ok: all {self.columns} columns certified; every floating parameter protected"
                + ("; the keyed seal verified" if self.seal else "")
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
        failed = [v.path for v in self.seal if not v.verified]
        if failed:
            problems.append(
                f"{len(failed)} leaves fail the keyed seal ({', '.join(failed[:3])}"
                + (", …" if len(failed) > 3 else "")
                + "): changed beyond the purification's error bound"
            )
        return "NOT OK: " + "; ".join(problems) + legacy

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
        if self.unprotected:
            text += "\n\nnot protected:\n" + _table(
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
        return text + f"\n{self.status()}; uncertified columns: {self.on_uncertified}; {self.seconds:.3f} s"

    def as_dict(self) -> dict:
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
            "seal": [v.as_dict() for v in self.seal],
            "legacy_codebook": self.legacy_codebook,
        }


def leaf_columns(codebook) -> dict[str, np.ndarray]:
    """Per protected leaf, the ids of the code columns that hold its entries (the groups' columns
    numbered one after another, in order).  A group's (K, m) code is filled row by row from its
    segments, so entry f of it lies in column f mod m: found from the segments alone, without
    unpacking anything leaf-sized."""
    out: dict[str, list] = {}
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
    codebook, protected: dict[str, Any], results: dict, columns: dict[str, np.ndarray]
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
