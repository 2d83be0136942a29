"""purify: recover every encoded leaf of a contaminated parameter tree.

Each encoded leaf W (K entries along its axis) is cut into columns y ∈ R^K; every column is
recovered by x̂ = argmin ‖y − A x‖₁ with the leaf's A, and the purified leaf is A x̂.  Leaves with
equal (K, n) are stacked into one batched :func:`recover` call (their columns padded with zeros,
which recover exactly), so a whole network costs a few solver calls.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify._codebook import Codebook, LeafSpec, _table
from jaxpurify._solver import recover
from jaxpurify._tree import leaves_with_paths


@dataclasses.dataclass(frozen=True)
class LeafReport:
    path: str
    K: int
    n: int
    columns: int
    certified: int  # columns certified
    flagged: int  # entries judged corrupted (erasures included)
    erasures: int  # non-finite entries
    max_inlier_residual: float
    group: int  # leaves in one group were solved in one call
    seconds: float  # wall time of the group's call

    @property
    def ok(self) -> bool:
        return self.certified == self.columns


@dataclasses.dataclass(frozen=True)
class Report:
    leaves: tuple[LeafReport, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """True only if every column of every encoded leaf is certified."""
        return all(r.ok for r in self.leaves)

    @property
    def columns(self) -> int:
        return sum(r.columns for r in self.leaves)

    @property
    def certified(self) -> int:
        return sum(r.certified for r in self.leaves)

    def __getitem__(self, path: str) -> LeafReport:
        for r in self.leaves:
            if r.path == path:
                return r
        raise KeyError(path)

    def __str__(self) -> str:
        head = ("leaf", "K", "n", "flagged", "certified", "max inlier |r|", "group", "time (s)")
        rows = [
            (r.path, r.K, r.n, r.flagged, f"{r.certified}/{r.columns}", f"{r.max_inlier_residual:.2e}", r.group, f"{r.seconds:.3f}")
            for r in self.leaves
        ]
        status = "ok: every column certified" if self.ok else (
            f"NOT OK: {self.columns - self.certified} of {self.columns} columns not certified "
            "(their values are l1 estimates, not recoveries)"
        )
        return _table(head, rows) + f"\n{status}; {self.seconds:.3f} s"


def _columns(leaf, spec: LeafSpec):
    """(K, m) view of a leaf: its encoded axis first, every other index a column."""
    return jnp.moveaxis(jnp.asarray(leaf), spec.axis, 0).reshape(spec.K, -1)


def _uncolumns(cols, spec: LeafSpec):
    moved = [spec.shape[spec.axis]] + [d for i, d in enumerate(spec.shape) if i != spec.axis]
    return jnp.moveaxis(cols.reshape(moved), 0, spec.axis)


def purify(params: Any, codebook: Codebook, *, throw: bool = False, **options) -> tuple[Any, Report]:
    """Purify a contaminated parameter tree.

    Returns ``(purified, report)``: ``purified`` has the structure, shapes and dtypes of
    ``params``, with every encoded leaf replaced by ``A x̂`` and every other leaf unchanged.
    ``report.ok`` is True only if every column is certified (see :func:`recover`).  Columns that
    are not certified still get their l1 estimate, but the report says so; ``throw=True`` raises
    ``RuntimeError`` instead.  ``options`` go to :func:`recover`.

    Raises ``ValueError`` naming the leaf if ``params`` does not match the codebook; the check runs
    before any work, and the input is never modified.
    """
    named, treedef = leaves_with_paths(params)
    by_path = dict(named)
    for path, spec in codebook.specs.items():
        if path not in by_path:
            raise ValueError(f"leaf {path!r} of the codebook is missing from params")
        leaf = by_path[path]
        if tuple(np.shape(leaf)) != spec.shape:
            raise ValueError(f"leaf {path!r} has shape {tuple(np.shape(leaf))}, the codebook expects {spec.shape}")
        if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            raise ValueError(f"leaf {path!r} has dtype {jnp.asarray(leaf).dtype}, expected floating")

    groups: dict[tuple[int, int], list[LeafSpec]] = defaultdict(list)
    for spec in codebook.specs.values():
        groups[(spec.K, spec.n)].append(spec)

    t_all = time.perf_counter()
    purified: dict[str, jax.Array] = {}
    reports: dict[str, LeafReport] = {}
    for gi, ((K, n), specs) in enumerate(sorted(groups.items())):
        cols = [_columns(by_path[s.path], s) for s in specs]
        dtype = jnp.promote_types(jnp.result_type(*cols), jnp.float32)
        m = max(c.shape[1] for c in cols)
        Y = jnp.stack([jnp.pad(c.astype(dtype), ((0, 0), (0, m - c.shape[1]))) for c in cols])
        A = jnp.stack([codebook.matrix(s.path, dtype) for s in specs])
        t0 = time.perf_counter()
        out = recover(A, Y, **options)
        fitted = jnp.matmul(A, out.x, precision=jax.lax.Precision.HIGHEST)
        jax.block_until_ready(fitted)
        dt = time.perf_counter() - t0
        res = np.asarray(out.residual)
        outl = np.asarray(out.outliers)
        cert = np.asarray(out.certified)
        for i, s in enumerate(specs):
            mc = cols[i].shape[1]
            inl = ~outl[i, :, :mc]
            r = np.abs(np.where(inl, res[i, :, :mc], 0.0))
            purified[s.path] = _uncolumns(fitted[i, :, :mc], s).astype(s.dtype)
            reports[s.path] = LeafReport(
                path=s.path,
                K=K,
                n=n,
                columns=mc,
                certified=int(cert[i, :mc].sum()),
                flagged=int(outl[i, :, :mc].sum()),
                erasures=int((~np.isfinite(np.asarray(cols[i]))).sum()),
                max_inlier_residual=float(r.max()) if r.size else 0.0,
                group=gi,
                seconds=dt,
            )
    report = Report(tuple(reports[p] for p in codebook.specs), time.perf_counter() - t_all)
    if throw and not report.ok:
        raise RuntimeError(str(report))
    out_leaves = [purified.get(p, leaf) for p, leaf in named]
    return jax.tree_util.tree_unflatten(treedef, out_leaves), report
