"""Shared helpers for the experiments: LP reference, the first examples of a data set, CSV/JSON
output (progress: jaxpurify.progress)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from jaxpurify import data
from jaxpurify.io import write_atomic

# One record as the experiments write it: a CSV row or a JSON object (str keys, JSON-able values:
# numbers, NumPy scalars, strings, bools, None, lists and nested records).
Record = dict[str, Any]

# The examples a quick run keeps of a data set: the first 2000 training and 1000 test examples.
QUICK_EXAMPLES = (2000, 1000)


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
    x: np.ndarray = res.x[:n]  # scipy ships no types: linprog's result is Any
    return x


def first(ds: data.Dataset, train: int, test: int) -> data.Dataset:
    """The first ``train`` training and ``test`` test examples (a reduced run, stated in its output)."""
    if train < 2 or test < 1:
        raise ValueError(f"limit: need at least 2 training and 1 test examples, got {train}, {test}")
    return data.Dataset(
        data.Split(ds.train.x[:train], ds.train.y[:train]), data.Split(ds.test.x[:test], ds.test.y[:test]), ds.name
    )


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, buf.getvalue().encode())


def write_json(path: str, obj: object) -> None:
    write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def rel_fro(x: ArrayLike, ref: ArrayLike) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(float(np.linalg.norm(ref)), 1e-300))
