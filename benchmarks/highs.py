"""The exact l1 fit by HiGHS: the one LP reference of the tests and the benchmarks.

    argmin_x ‖y − A x‖₁  =  the x of  min Σ t  s.t.  −t ≤ y − A x ≤ t,  t ≥ 0

solved in float64 by HiGHS (``scipy.optimize.linprog``, method "highs").  It uses SciPy only,
nothing of jaxpurify, so it stays an independent oracle for the solver's tests
(``tests/reference.py`` re-exports it) and the benchmarks' peer and cross-check
(``benchmarks.peers``, ``benchmarks.lp_check``).  SciPy is imported on the first call.
"""

from __future__ import annotations

import numpy as np


def lad_highs(A: np.ndarray, y: np.ndarray, *, strict: bool = True) -> np.ndarray:
    """argmin_x ‖y − A x‖₁ for a K × n ``A`` and a finite (K,) ``y``, in float64.

    If HiGHS does not report an optimum: ``RuntimeError`` with its message when ``strict`` (a
    test's reference must exist), else n NaNs (a benchmark counts the column as failed)."""
    from scipy.optimize import linprog

    A, y = np.asarray(A, np.float64), np.asarray(y, np.float64)
    K, n = A.shape
    I = np.eye(K)
    res = linprog(
        np.concatenate([np.zeros(n), np.ones(K)]),
        A_ub=np.block([[-A, -I], [A, -I]]),
        b_ub=np.concatenate([-y, y]),
        bounds=[(None, None)] * n + [(0, None)] * K,
        method="highs",
    )
    if res.status != 0:
        if strict:
            raise RuntimeError(f"HiGHS found no optimum: {res.message}")
        return np.full(n, np.nan)
    return res.x[:n]
