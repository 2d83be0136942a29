"""Shared helpers for the experiments: LP reference, CSV/JSON output (progress: jaxpurify.progress)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np

from jaxpurify.io import write_atomic


def lad_highs(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin_x ‖y − A x‖₁ by HiGHS (scipy.optimize.linprog), in float64: the exact LP."""
    from scipy.optimize import linprog

    K, n = A.shape
    c = np.concatenate([np.zeros(n), np.ones(K)])
    I = np.eye(K)
    res = linprog(
        c,
        A_ub=np.block([[-A, -I], [A, -I]]),
        b_ub=np.concatenate([-y, y]),
        bounds=[(None, None)] * n + [(0, None)] * K,
        method="highs",
    )
    if res.status != 0:
        return np.full(n, np.nan)
    return res.x[:n]


def write_csv(path: str, rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, buf.getvalue().encode())


def write_json(path: str, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def rel_fro(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-300))
