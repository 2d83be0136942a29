"""Hardware-relative measurements of the solver: matmul peak, iteration FLOP rate, compile time,
working memory.

* Peak: the best GFLOP/s of a square float32 matmul (1024², 2048²) measured in the same process.
* Iteration rate: ADMM run for exactly N iterations (``tol = 0`` never stops it), timed at two
  values of N so that setup cancels; FLOPs counted are the matrix products only, 4·K·n·m per
  iteration plus 2·K·n·m per residual check (every ``CHECK_EVERY``), so the rate is a lower bound.
* Compile time: ``lower(...).compile()`` of the whole ``recover`` for one shape.
* Memory: XLA's buffer assignment for that compiled call (arguments + outputs + temporaries).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpurify._admm import CHECK_EVERY, HIGHEST, admm
from jaxpurify._options import RecoverOptions, default_rtol
from jaxpurify._solver import Tolerances, _recover_jit


def _best(f, *args, repeat=5) -> float:
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
        best = max(best, 2 * N**3 / _best(mm, a, a) / 1e9)
    return best


def iteration_rate(K: int, n: int, m: int, seed: int = 0) -> dict:
    """GFLOP/s of the ADMM iteration (matrix products counted) and of the bare product pair."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((K, n)))
    Q = jnp.asarray(Q, jnp.float32)
    y = jnp.asarray(rng.standard_normal((K, m)), jnp.float32)
    usable = jnp.ones((K, m), bool)
    active = jnp.ones((m,), bool)
    z = jnp.asarray(0.0, jnp.float32)

    def run(iters):
        return jax.jit(lambda Q, y: admm(Q, y, usable, active, iters, z, z + 1.6)[0])

    short, long = 2 * CHECK_EVERY, 12 * CHECK_EVERY
    t_short, t_long = _best(run(short), Q, y, repeat=3), _best(run(long), Q, y, repeat=3)
    per_iter = (t_long - t_short) / (long - short)
    flops = 4 * K * n * m + 2 * K * n * m / CHECK_EVERY
    pair = jax.jit(lambda Q, v: jnp.matmul(Q, jnp.matmul(Q.T, v, precision=HIGHEST), precision=HIGHEST))
    t_pair = _best(pair, Q, y)
    return {"K": K, "n": n, "m": m, "seconds_per_iteration": per_iter, "iteration_gflops": flops / per_iter / 1e9,
            "product_pair_gflops": 4 * K * n * m / t_pair / 1e9}


def compile_and_memory(K: int, n: int, m: int) -> dict:
    """Compile seconds and XLA's memory for ``recover`` on one (K, n) matrix and (K, m) columns."""
    f = lambda v: jnp.asarray(v, jnp.float32)
    tols = Tolerances(f(1e-3), f(default_rtol(jnp.float32)), f(0.0), f(1.6))
    A = jax.ShapeDtypeStruct((K, n), jnp.float32)
    Y = jax.ShapeDtypeStruct((K, m), jnp.float32)
    jax.clear_caches()  # an executable compiled earlier in this process would be reused
    t0 = time.perf_counter()
    lowered = _recover_jit.lower(A, Y, tols, RecoverOptions(), False)
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

    Run it in a fresh process (``python -m jaxpurify.bench.roofline``): the first XLA compilation
    of a process pays the compiler's one-time footprint, later ones mostly reuse it.
    """
    from jaxpurify.bench.resnet import PeakRSS, rss_mb

    f = lambda v: jnp.asarray(v, jnp.float32)
    tols = Tolerances(f(1e-3), f(default_rtol(jnp.float32)), f(0.0), f(1.6))
    jax.block_until_ready(jnp.ones(3) + 1)  # runtime started; its own first op is tiny
    rows = []
    for K in Ks:
        n = -(-K // 4)
        A = jax.ShapeDtypeStruct((2, K, n), jnp.float32)
        Y = jax.ShapeDtypeStruct((2, K, m), jnp.float32)
        with PeakRSS() as mem:
            _recover_jit.lower(A, Y, tols, RecoverOptions(), False).compile()
        rows.append({"K": K, "n": n, "m": m, "peak_added_mb": mem.added, "rss_after_mb": rss_mb()})
    return rows


if __name__ == "__main__":
    for r in compile_rss():
        print(f"compile K={r['K']:<5} n={r['n']:<4} m={r['m']}: peak RSS added {r['peak_added_mb']:6.0f} MB, "
              f"RSS after {r['rss_after_mb']:6.0f} MB")
