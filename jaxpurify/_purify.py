"""purify: recover every encoded leaf of a contaminated parameter tree.

Each encoded leaf W (K entries along its axis) is cut into columns y ∈ R^K; every column is
recovered by x̂ = argmin ‖y − A x‖₁ with the leaf's A, and the purified leaf is A x̂.  Leaves with
equal (K, n) form a group: their columns are cut into equal blocks, stacked with their matrices
and solved by batched :func:`recover` calls of one fixed shape (padding columns are zeros, which
recover exactly), so a whole network compiles once per group and its memory stays bounded.
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


# The slicing, padding and stacking around the solver calls is done in NumPy on the host: as
# eager jnp ops every distinct leaf shape compiled its own small XLA executables (~150 of them,
# ~10 s and a few hundred MB on a ResNet-18-sized tree).


def _rows(leaf, spec: LeafSpec) -> np.ndarray:
    """(m, K) view of a leaf: one row per column y ∈ R^K (free when the encoded axis is last)."""
    return np.moveaxis(np.asarray(leaf), spec.axis, -1).reshape(-1, spec.K)


def _unrows(rows: np.ndarray, spec: LeafSpec) -> np.ndarray:
    moved = [d for i, d in enumerate(spec.shape) if i != spec.axis] + [spec.K]
    return np.moveaxis(rows.reshape(moved), -1, spec.axis)


@jax.jit
def _fit_and_stats(A, x, Y, residual, outliers):
    """Per block: the purified rows (A x)ᵀ and per-column counts, so no (K, m) array outlives its call."""
    fitted = jnp.swapaxes(jnp.matmul(A, x, precision=jax.lax.Precision.HIGHEST), -1, -2)
    erased = ~jnp.isfinite(Y)
    inlier_r = jnp.max(jnp.where(outliers, 0.0, jnp.abs(residual)), axis=-2)
    return fitted, jnp.sum(outliers, axis=-2), jnp.sum(erased, axis=-2), inlier_r


def purify(
    params: Any, codebook: Codebook, *, throw: bool = False, max_entries: int = 1 << 21, **options
) -> tuple[Any, Report]:
    """Purify a contaminated parameter tree.

    Returns ``(purified, report)``: ``purified`` has the structure, shapes and dtypes of
    ``params``, with every encoded leaf replaced by ``A x̂`` and every other leaf unchanged.
    ``report.ok`` is True only if every column is certified (see :func:`recover`).  Columns that
    are not certified still get their l1 estimate, but the report says so; ``throw=True`` raises
    ``RuntimeError`` instead.  ``max_entries`` bounds the entries (K × columns) per solver call,
    and so the working memory.  ``options`` go to :func:`recover`.

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
        rows = {s.path: _rows(by_path[s.path], s) for s in specs}
        dtype = np.dtype(jnp.promote_types(np.result_type(*rows.values()), jnp.float32))
        # Columns are cut into blocks of equal width and the blocks, each with its leaf's A, are
        # stacked into calls of a fixed shape: one compilation per group, and memory bounded by
        # max_entries entries per working array whatever the model size.
        per_call = max(1, max_entries // K)
        widest = max(r.shape[0] for r in rows.values())
        block = min(1 << (widest - 1).bit_length(), per_call)
        blocks = [(s.path, j) for s in specs for j in range(0, rows[s.path].shape[0], block)]
        per_batch = max(1, min(per_call // block, len(blocks)))
        mats = {s.path: np.asarray(codebook.matrix(s.path, dtype)) for s in specs}
        parts: dict[str, list] = {s.path: [] for s in specs}
        t0 = time.perf_counter()
        for i in range(0, len(blocks), per_batch):
            chunk = blocks[i : i + per_batch]
            # zero columns and zero blocks pad the call to its fixed shape; they solve at once
            Y = np.zeros((per_batch, K, block), dtype)
            A = np.empty((per_batch, K, n), dtype)
            A[len(chunk) :] = mats[chunk[0][0]]
            for b, (path, j) in enumerate(chunk):
                y = rows[path][j : j + block]
                Y[b, :, : y.shape[0]] = y.T
                A[b] = mats[path]
            A, Y = jnp.asarray(A), jnp.asarray(Y)  # one transfer each, shared by both calls
            out = recover(A, Y, **options)
            stats = _fit_and_stats(A, out.x, Y, out.residual, out.outliers) + (out.certified,)
            del out  # the (K, m) residual and masks go now, not at the end of the group
            fitted, flagged, erased, inlier_r, cert = (np.asarray(v) for v in stats)
            for b, (path, j) in enumerate(chunk):
                w = min(block, rows[path].shape[0] - j)
                parts[path].append((fitted[b, :w], cert[b, :w], flagged[b, :w], erased[b, :w], inlier_r[b, :w]))
        dt = time.perf_counter() - t0
        for s in specs:
            fit, cert, flagged, erased, inl = (np.concatenate(z) for z in zip(*parts.pop(s.path)))
            purified[s.path] = jnp.asarray(_unrows(fit, s).astype(s.dtype))
            del fit
            reports[s.path] = LeafReport(
                path=s.path,
                K=K,
                n=n,
                columns=s.columns,
                certified=int(cert.sum()),
                flagged=int(flagged.sum()),
                erasures=int(erased.sum()),
                max_inlier_residual=float(inl.max()) if inl.size else 0.0,
                group=gi,
                seconds=dt,
            )
        del rows
    report = Report(tuple(reports[p] for p in codebook.specs), time.perf_counter() - t_all)
    if throw and not report.ok:
        raise RuntimeError(str(report))
    out_leaves = [purified.get(p, leaf) for p, leaf in named]
    return jax.tree_util.tree_unflatten(treedef, out_leaves), report
