"""What :func:`recover` returns: the solution, per-column result codes and their messages."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class RESULTS:
    """Per-column result codes of :class:`Recovery` (``Recovery.result``), most basic cause first.

    A column is certified iff its code is ``successful``.  ``message(code)`` says why not.
    """

    successful = 0
    rank_deficient = 1
    iteration_cap = 2
    unstable_mask = 3
    inexact_fit = 4
    no_slack = 5
    count_bound = 6
    out_of_range = 7
    no_bound = 8

    messages = {
        0: "certified: exact on its inliers, unique sparsest explanation",
        1: "A does not have full column rank, so no column can be certified",
        2: "the least-squares refit hit its step cap (max_cg) before converging; the fit is not exact",
        3: "the outlier mask still changed in the last polish round",
        4: "the fit is not exact on the inliers (residual above rtol·max|y_inlier| + atol)",
        5: "no redundant row is left after the outliers and erasures (K' − k̂ ≤ n, or K' − k̂ = n + 1 "
        "with an inlier that no other row checks): nothing checks the fit, so it is not certified",
        6: "too many outliers for a certificate: 2·k̂ ≥ K' − n + 1",
        7: "x̂ leaves the float range in the caller's units (overflow, or every entry below the smallest subnormal), "
        "or purify's A x̂ overflows the leaf's dtype",
        8: "no finite error bound: the inlier rows leave σ_min(A_I) at 0 in the solver's precision, or the "
        "bound overflows; a certificate without a bound certifies nothing",
    }

    @classmethod
    def message(cls, code: int) -> str:
        return cls.messages.get(int(code), f"unknown result code {int(code)}")


class Recovery(NamedTuple):
    """Result of :func:`recover`; batch dimensions as the broadcast inputs.

    Attributes:
      x: (..., n[, m]) the recovered latent (the best l1 estimate where not certified).
      residual: (..., K[, m]) ``Y − A x`` (non-finite where ``Y`` was).
      outliers: (..., K[, m]) entries judged corrupted, erasures included.
      certified: (...[, m]) the column's code is ``RESULTS.successful``.
      result: (...[, m]) int8 code from :class:`RESULTS`: why a column is not certified.
      bound: (...[, m]) for a certified column, a bound on ‖x̂ − x‖₂ / ‖x̂‖₂ for any x that
        explains the inliers to within the inlier tolerance (with n+1 inliers: all but any one of
        them; see ``jaxpurify._certify``); inf otherwise.
      iterations: (...[, m]) ADMM iterations the column used in all passes.
      converged: (...[, m]) the finder met its stopping test in the column's last pass.
    """

    x: jax.Array
    residual: jax.Array
    outliers: jax.Array
    certified: jax.Array
    result: jax.Array
    bound: jax.Array
    iterations: jax.Array
    converged: jax.Array

    def messages(self) -> dict[str, int]:
        """{message: number of columns} for every result code present."""
        codes, counts = np.unique(np.asarray(self.result), return_counts=True)
        return {RESULTS.message(c): int(k) for c, k in zip(codes, counts)}

    def raise_if_uncertified(self) -> Recovery:
        """Opt-in throw (outside ``jit``): ``RuntimeError`` listing why columns failed."""
        _raise(np.asarray(self.result))
        return self


def _raise(codes: np.ndarray) -> None:
    codes = np.asarray(codes)
    bad = int(np.sum(codes != RESULTS.successful))
    if bad:
        why = "; ".join(f"{k}× {RESULTS.message(c)}" for c, k in zip(*np.unique(codes[codes != 0], return_counts=True)))
        raise RuntimeError(
            f"{bad} of {codes.size} columns are not certified ({why}); their x is an l1 estimate, not a recovery"
        )


def throw_if_uncertified(result: jax.Array) -> None:
    """Raise from inside ``jax.jit`` too: a host callback checks the codes when they are ready.

    Under ``jit`` the exception reaches the caller wrapped in JAX's runtime error, with this
    message in its text.
    """
    jax.debug.callback(_raise, jnp.asarray(result), ordered=True)
