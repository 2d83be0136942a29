"""One validated, frozen set of solver options, shared by :func:`recover` and :func:`purify`.

Two families of tolerance live here and must not be confused:

* ``admm_tol`` — when the *finder* (ADMM) may stop looking for the outliers.  It never decides a
  certificate; a loose value only costs an extra pass.
* ``rtol`` / ``atol`` — the *certificate's* inlier tolerance: a row is an inlier when
  ``|y − A x| ≤ rtol·max|y_inlier| + atol``.  These decide what "exact" means.

  They are also the certificate's detection threshold for a small outlier: a change δ to entry i
  of a column is found (flagged, x̂ exact) once (1 − h_ii)·|δ| > τ = rtol·max|y_inlier| + atol,
  h_ii ≈ n/K the row's leverage in A — in float32 by default |δ| ≳ 7.6e-6 · max|y| / (1 − n/K),
  relative to the column's own scale; a smaller change is inside the tolerance, not flagged, and
  covered by the error bound (tests/test_lp_exact.py measures both sides).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax.numpy as jnp
from jax.typing import DTypeLike

MAX_COUNT = 2**31 - 1  # iteration counts and caps run as int32 loop bounds


def _static(default: Any) -> Any:
    """A field that is part of the solver's compile key: changing it compiles a new solver."""
    return dataclasses.field(default=default, metadata={"static": True})


def _traced(default: Any) -> Any:
    """A field the solver receives as a traced scalar: changing it reuses the compiled solver."""
    return dataclasses.field(default=default, metadata={"static": False})


def default_rtol(dtype: DTypeLike) -> float:
    """64·eps of ``dtype``: 7.6e-6 in float32, 1.4e-14 in float64."""
    return 64.0 * float(jnp.finfo(dtype).eps)


@dataclasses.dataclass(frozen=True)
class RecoverOptions:
    """Options of :func:`jaxpurify.recover` (and of :func:`jaxpurify.purify`, which passes them on).

    The iteration caps and the tolerances (``TRACED``: every field but ``trim`` and ``pivots``)
    reach the compiled solver as traced scalars (int32 loop bounds, float32 tolerances), so
    changing them does not recompile; ``trim`` and ``pivots``, which decide what the solver's
    programs contain, are their compile key (:meth:`compile_key`).

    Attributes:
      finder_iters: ADMM iterations per pass before the polish takes over.  The polish only needs
        the outliers, not an accurate l1 minimizer, so a short finder plus further passes on the
        few columns not yet certified beats one long run (measured: benchmarks/README.md).
      passes: finder passes in all; passes after the first run only on uncertified columns.
      retry_iters: ADMM iterations on the passes after the first.  Shorter than the first pass's,
        which certified far more columns past the l1 boundary (K/n = 2 at 25% errors: 445 → 509 of
        512; ``python -m benchmarks.changes``), presumably because a converged ADMM residual
        points at the l1 minimizer's wrong outliers; past the count bound fewer uncertified
        columns come back exact (README, "Solver v2").
      admm_tol: relative ADMM stopping tolerance on primal and dual residuals (finder only).
      relax: ADMM over-relaxation in (0, 2).
      polish_rounds: cap on refit / re-read-mask rounds of the polish.
      max_cg: cap on conjugate-gradient steps per refit.
      rtol: the certificate's relative inlier tolerance; ``None`` means 64·eps of the dtype.
      atol: the certificate's absolute inlier tolerance, e.g. a known dense-noise bound.
      trim: on passes after the first, also try trimming the ⌊(K'−n)/2⌋ largest residuals and
        refitting (finds outliers where l1 itself fails, e.g. K/n = 2 at 20–25% errors).
      pivots: after the passes, simplex pivots of the l1 LP on the columns left uncertified within
        the count bound, at most ``pivots`` × n per column (0: none; ``jaxpurify._pivot``).  From
        the passes' estimate the columns HiGHS recovers exactly needed at most 15 pivots at
        n = 32 and 9 at n = 16 (``benchmarks.lp_check``'s sets); columns far from any answer
        (dense noise) are not pivoted (``_pivot.hopeful``).  A certified column is never touched.
        Called eagerly, ``recover`` runs the stage as a program of its own, compiled and run only
        when a column needs it; under ``jax.jit`` it is part of the one program.  Either way the
        answer is the same, and with ``pivots=1`` every column HiGHS recovers exactly on the
        measured sets is certified (tests/test_lp_exact.py).  An l1 vertex may fit a small
        corrupted entry as an inlier where that costs less, so the stage's certificates carry a
        bound that covers one corrupted inlier (``jaxpurify._certify``; two or more are assumed
        away, as for the passes' columns): wider, or none where a row is all but unchecked (the
        column comes back as the passes left it).  Its worst case is a code under dense noise above the
        inlier tolerance with no ``atol``: every column is pivoted to its cap and none certified
        (12× the passes' time at K = 128, n = 32; ``benchmarks.greedy_cost --switch pivots``);
        with ``atol`` at the noise level the passes certify those columns and it does not run.
    """

    # Every field says whether it keys the compilation (static: a branch taken at trace time) or
    # reaches the solver as a traced scalar (loop caps, tolerances); a field that says neither is
    # an error at import (``_check_declared``), so a new option cannot silently recompile.
    finder_iters: int = _traced(30)
    passes: int = _traced(4)
    retry_iters: int = _traced(10)
    admm_tol: float = _traced(1e-3)
    relax: float = _traced(1.6)
    polish_rounds: int = _traced(6)
    max_cg: int = _traced(100)
    rtol: float | None = _traced(None)
    atol: float = _traced(0.0)
    trim: bool = _static(True)
    pivots: int = _static(1)

    TRACED: ClassVar[tuple[str, ...]]  # the traced fields' names, in declaration order (set below)

    def __post_init__(self) -> None:
        for name in ("finder_iters", "passes", "retry_iters", "polish_rounds", "max_cg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_COUNT:
                raise ValueError(f"{name} must be a positive int ≤ 2**31 − 1 (an int32 loop count), got {v!r}")
        for name in ("admm_tol", "relax", "atol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not self.admm_tol > 0:
            raise ValueError(f"admm_tol must be > 0, got {self.admm_tol}")
        if not 0.0 < self.relax < 2.0:
            raise ValueError(f"relax must lie in (0, 2), got {self.relax}")
        if self.atol < 0:
            raise ValueError(f"atol must be ≥ 0, got {self.atol}")
        if self.rtol is not None:
            if isinstance(self.rtol, bool) or not isinstance(self.rtol, (int, float)) or not math.isfinite(self.rtol):
                raise ValueError(f"rtol must be a finite number or None, got {self.rtol!r}")
            if not 0 <= self.rtol < 1:
                raise ValueError(f"rtol must lie in [0, 1), got {self.rtol}")
        if isinstance(self.pivots, bool) or not isinstance(self.pivots, int) or not 0 <= self.pivots <= 2**16:
            raise ValueError(f"pivots must be an int in [0, 65536] (times n per column), got {self.pivots!r}")
        if not isinstance(self.trim, bool):
            raise ValueError(f"trim must be a bool, got {self.trim!r}")

    def replace(self, **changes: Any) -> RecoverOptions:
        """A copy with ``changes``; unknown names raise ``TypeError`` naming them.

        Examples:
            >>> from jaxpurify import RecoverOptions
            >>> RecoverOptions().replace(atol=1e-3).atol
            0.001
            >>> RecoverOptions().replace(tolerance=1e-3)
            Traceback (most recent call last):
            ...
            TypeError: unknown solver option(s) ['tolerance']; known: [...]
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown solver option(s) {unknown}; known: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def rtol_for(self, dtype: DTypeLike) -> float:
        return default_rtol(dtype) if self.rtol is None else float(self.rtol)

    def compile_key(self) -> RecoverOptions:
        """These options with every traced field at its default: what the compiled solver depends
        on.  Two options that differ only in traced fields have the same key, so they share one
        compilation."""
        return self.replace(**{f.name: f.default for f in dataclasses.fields(self) if f.name in self.TRACED})

    def traced(self, dtype: DTypeLike) -> dict[str, float]:
        """The traced fields' values for a solve in ``dtype`` (``rtol``'s default resolved)."""
        # as given (an int atol stays an int): the solver casts each to its scalar's dtype
        return {name: self.rtol_for(dtype) if name == "rtol" else getattr(self, name) for name in self.TRACED}


def _check_declared(cls: type[RecoverOptions]) -> tuple[str, ...]:
    """The traced fields of ``cls``; ``TypeError`` if a field is declared neither static nor traced."""
    undeclared = [f.name for f in dataclasses.fields(cls) if not isinstance(f.metadata.get("static"), bool)]
    if undeclared:
        raise TypeError(f"RecoverOptions fields {undeclared} must be declared static or traced (_static / _traced)")
    return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata["static"])


RecoverOptions.TRACED = _check_declared(RecoverOptions)


def resolve(options: RecoverOptions | None, overrides: dict[str, Any]) -> RecoverOptions:
    """``options`` (default ``RecoverOptions()``) with keyword ``overrides`` applied."""
    if options is None:
        options = RecoverOptions()
    elif not isinstance(options, RecoverOptions):
        raise TypeError(f"options must be a RecoverOptions, got {type(options).__name__}")
    return options.replace(**overrides) if overrides else options
