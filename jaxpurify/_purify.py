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


def _columns(leaf, spec: LeafSpec):
    """(K, m) view of a leaf: its encoded axis first, every other index a column."""
    return jnp.moveaxis(jnp.asarray(leaf), spec.axis, 0).reshape(spec.K, -1)


def _uncolumns(cols, spec: LeafSpec):
    moved = [spec.shape[spec.axis]] + [d for i, d in enumerate(spec.shape) if i != spec.axis]
    return jnp.moveaxis(cols.reshape(moved), 0, spec.axis)


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
        cols = {s.path: _columns(by_path[s.path], s) for s in specs}
        dtype = jnp.promote_types(jnp.result_type(*cols.values()), jnp.float32)
        # Columns are cut into blocks of equal width and the blocks, each with its leaf's A, are
        # stacked into calls of a fixed shape: one compilation per group, and memory bounded by
        # max_entries entries per working array whatever the model size.
        per_call = max(1, max_entries // K)
        widest = max(c.shape[1] for c in cols.values())
        block = min(1 << (widest - 1).bit_length(), per_call)
        blocks = [(s.path, j) for s in specs for j in range(0, cols[s.path].shape[1], block)]
        per_batch = max(1, min(per_call // block, len(blocks)))
        mats = {s.path: codebook.matrix(s.path, dtype) for s in specs}
        fitted = {s.path: [] for s in specs}
        res_parts = {s.path: [] for s in specs}
        t0 = time.perf_counter()
        for i in range(0, len(blocks), per_batch):
            chunk = blocks[i : i + per_batch]
            Ys, As = [], []
            for path, j in chunk:
                y = cols[path][:, j : j + block].astype(dtype)
                Ys.append(jnp.pad(y, ((0, 0), (0, block - y.shape[1]))))
                As.append(mats[path])
            pad = per_batch - len(chunk)  # keep the call shape fixed: zero blocks solve at once
            A = jnp.stack(As + [As[0]] * pad)
            Y = jnp.stack(Ys + [jnp.zeros_like(Ys[0])] * pad)
            out = recover(A, Y, **options)
            AX = jnp.matmul(A, out.x, precision=jax.lax.Precision.HIGHEST)
            res, outl, cert = (np.asarray(v) for v in (out.residual, out.outliers, out.certified))
            for b, (path, j) in enumerate(chunk):
                w = min(block, cols[path].shape[1] - j)
                fitted[path].append(AX[b, :, :w])
                res_parts[path].append((res[b, :, :w], outl[b, :, :w], cert[b, :w]))
        jax.block_until_ready([f for v in fitted.values() for f in v])
        dt = time.perf_counter() - t0
        for s in specs:
            r = np.concatenate([p[0] for p in res_parts[s.path]], axis=1)
            o = np.concatenate([p[1] for p in res_parts[s.path]], axis=1)
            c = np.concatenate([p[2] for p in res_parts[s.path]])
            inl_r = np.abs(np.where(o, 0.0, r))
            purified[s.path] = _uncolumns(jnp.concatenate(fitted[s.path], axis=1), s).astype(s.dtype)
            reports[s.path] = LeafReport(
                path=s.path,
                K=K,
                n=n,
                columns=s.columns,
                certified=int(c.sum()),
                flagged=int(o.sum()),
                erasures=int((~np.isfinite(np.asarray(cols[s.path]))).sum()),
                max_inlier_residual=float(inl_r.max()) if inl_r.size else 0.0,
                group=gi,
                seconds=dt,
            )
    report = Report(tuple(reports[p] for p in codebook.specs), time.perf_counter() - t_all)
    if throw and not report.ok:
        raise RuntimeError(str(report))
    out_leaves = [purified.get(p, leaf) for p, leaf in named]
    return jax.tree_util.tree_unflatten(treedef, out_leaves), report
