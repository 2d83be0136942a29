"""Hardware-relative measurements of the solver, through the public API only: matmul peak,
iteration FLOP rate, compile time, working memory.

* Peak: the best GFLOP/s of a square float32 matmul (1024², 2048²) measured in the same process.
* Iteration rate: ``jaxpurify.recover`` with one finder pass of N iterations that never stops
  early (``admm_tol`` far below float32 resolution) and a one-round polish, timed at two values
  of N; the difference is divided by the difference of the iterations ``Recovery.iterations``
  reports, so the QR, the polish and the certificate cancel.  FLOPs counted are the iteration's
  two matrix products only, 4·K·n·m (the periodic residual checks are not counted), so the rate
  is a lower bound.  v1's figures counted the checks too (+5% at one check in 10 iterations).
* Compile time: ``jax.jit(recover).lower(...).compile()`` for one shape, caches cleared.
* Memory: XLA's buffer assignment for that compiled call (``memory_analysis``: arguments +
  outputs + temporaries).  ``cost_analysis`` is not used for FLOPs: XLA counts a while loop's
  body once, not once per iteration.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxpurify as jp

HIGHEST = jax.lax.Precision.HIGHEST
NEVER_STOP = 1e-30  # an ADMM tolerance no float32 residual reaches: every column runs all N steps
SHORT, LONG = 20, 120  # finder iterations of the two timed calls


def best_of(f, *args, repeat=5) -> float:
    """Seconds of the fastest of ``repeat`` calls ``f(*args)`` after one warm-up call."""
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return min(ts)


def matmul_peak() -> float:
    """GFLOP/s of the fastest square float32 matmul on this machine, now."""
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=HIGHEST))
    best = 0.0
    for N in (1024, 2048):
        a = jax.random.normal(jax.random.key(N), (N, N), jnp.float32)
        best = max(best, 2 * N**3 / best_of(mm, a, a) / 1e9)
    return best


def fixed_iterations(iters: int) -> jp.RecoverOptions:
    """Options under which ``recover`` runs exactly ``iters`` finder iterations on every column,
    once, with the cheapest polish: what differs between two such calls is the iterations."""
    return jp.RecoverOptions(finder_iters=iters, passes=1, admm_tol=NEVER_STOP, polish_rounds=1, max_cg=1, trim=False)


def iteration_rate(K: int, n: int, m: int, seed: int = 0) -> dict:
    """GFLOP/s of the finder iteration (its two matrix products counted) and of the bare pair."""
    rng = np.random.default_rng(seed)
    A = jnp.asarray(rng.standard_normal((K, n)) / np.sqrt(n), jnp.float32)
    Y = jnp.asarray(rng.standard_normal((K, m)), jnp.float32)  # dense noise: no column fits exactly
    t, its = {}, {}
    for N in (SHORT, LONG):
        opts = fixed_iterations(N)
        t[N] = best_of(lambda opts=opts: jp.recover(A, Y, opts).x, repeat=3)
        its[N] = float(np.mean(np.asarray(jp.recover(A, Y, opts).iterations)))
    per_iter = (t[LONG] - t[SHORT]) / (its[LONG] - its[SHORT])
    Q, _ = jnp.linalg.qr(A)
    pair = jax.jit(lambda Q, v: jnp.matmul(Q, jnp.matmul(Q.T, v, precision=HIGHEST), precision=HIGHEST))
    t_pair = best_of(pair, Q, Y)
    return {
        "K": K,
        "n": n,
        "m": m,
        "seconds_per_iteration": per_iter,
        "iteration_gflops": 4 * K * n * m / per_iter / 1e9,
        "product_pair_gflops": 4 * K * n * m / t_pair / 1e9,
        "iterations_timed": [its[SHORT], its[LONG]],
    }


def _lowered(A: jax.ShapeDtypeStruct, Y: jax.ShapeDtypeStruct):
    return jax.jit(lambda A, Y: jp.recover(A, Y)).lower(A, Y)


def compile_and_memory(K: int, n: int, m: int) -> dict:
    """Compile seconds and XLA's memory for ``recover`` on one (K, n) matrix and (K, m) columns."""
    A = jax.ShapeDtypeStruct((K, n), jnp.float32)
    Y = jax.ShapeDtypeStruct((K, m), jnp.float32)
    jax.clear_caches()  # an executable compiled earlier in this process would be reused
    t0 = time.perf_counter()
    lowered = _lowered(A, Y)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out = {"K": K, "n": n, "m": m, "trace_lower_seconds": t1 - t0, "compile_seconds": t2 - t1}
    try:
        ma = compiled.memory_analysis()
        total = ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
        out.update(xla_bytes=int(total), xla_bytes_over_input=total / (K * m * 4))
    except Exception as e:  # not every backend reports it
        out.update(xla_bytes=None, note=f"memory_analysis unavailable: {e}")
    return out


def compile_rss(Ks=(64, 128, 256, 512, 1000), m: int = 1024) -> list[dict]:
    """Resident memory added by compiling ``recover`` for one shape after another, in this process.

    Run it in a fresh process (``python -m benchmarks.roofline``): the first XLA compilation
    of a process pays the compiler's one-time footprint, later ones mostly reuse it.
    """
    from benchmarks.resnet import PeakRSS, rss_mb

    jax.block_until_ready(jnp.ones(3) + 1)  # runtime started; its own first op is tiny
    rows = []
    for K in Ks:
        n = -(-K // 4)
        A = jax.ShapeDtypeStruct((2, K, n), jnp.float32)
        Y = jax.ShapeDtypeStruct((2, K, m), jnp.float32)
        with PeakRSS() as mem:
            _lowered(A, Y).compile()
        rows.append({"K": K, "n": n, "m": m, "peak_added_mb": mem.added, "rss_after_mb": rss_mb()})
    return rows


if __name__ == "__main__":
    for r in compile_rss():
        print(
            f"compile K={r['K']:<5} n={r['n']:<4} m={r['m']}: peak RSS added {r['peak_added_mb']:6.0f} MB, "
            f"RSS after {r['rss_after_mb']:6.0f} MB"
        )
