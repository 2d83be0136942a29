"""The benchmark problem: y = A x + sparse gross errors, with A Gaussian and x known."""

from __future__ import annotations

import os
import platform

import jax
import numpy as np


def problem(K: int, n: int, m: int, rho: float, seed: int = 0):
    """(A, X, Y) in float64: A (K, n) ~ N(0, 1/n), X (n, m) ~ N(0, 1), and in every column of
    Y = A X exactly round(ρK) entries moved by ±(1 … 1e3)·rms(Y), log-uniform."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, n)) / np.sqrt(n)
    X = rng.standard_normal((n, m))
    Y = A @ X
    k = int(round(rho * K))
    scale = np.sqrt(np.mean(Y**2))
    if k:
        idx = np.argsort(rng.random((K, m)), axis=0)[:k]  # k distinct rows per column
        mag = np.exp(rng.uniform(0, np.log(1e3), (k, m))) * rng.choice([-1.0, 1.0], (k, m)) * scale
        np.put_along_axis(Y, idx, np.take_along_axis(Y, idx, 0) + mag, axis=0)
    return A, X, Y


def rel_err(x, X) -> np.ndarray:
    """Per-column ‖x − X‖ / ‖X‖ in float64."""
    return np.linalg.norm(np.asarray(x, np.float64) - X, axis=0) / np.linalg.norm(X, axis=0)


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return (
        f"{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.default_backend()}"
    )
