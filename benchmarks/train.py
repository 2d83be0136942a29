"""What one training step costs in :func:`jaxpurify.train.train`, against what it could cost.

For each model (the paper's one-hidden CNN and the multi-layer CNN, at 8×8 and 28×28 inputs,
batch 128, encoded with the default codebook), three ways to run the same Adam steps, timed side
by side in one process, best of ``--rounds``:

- ``train``: the library's loop (one compiled step per call, dispatched without waiting), timed
  between two of its callbacks, so the compilation every ``train`` call does is left out;
- ``alone``: the floor, the same compiled step called back to back by hand;
- ``fori``: the same steps inside one ``lax.fori_loop`` (how ``train`` ran before 2026-11-26).
  XLA's CPU backend runs convolutions inside a while loop far slower than on their own, which is
  why ``train`` does not fuse its steps; this column shows whether that is still so.

    python -m benchmarks.train [--steps 20] [--rounds 3] [--out benchmarks/results/train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
import optax

import jaxpurify as jp
from benchmarks.roofline import best_of
from jaxpurify.models import OneHiddenCNN, SmallCNN
from jaxpurify.train import cross_entropy, train

MODELS = {"one-hidden": OneHiddenCNN, "multi": SmallCNN}


def measure(arch: str, size: int, steps: int, rounds: int, batch: int = 128) -> dict:
    rng = np.random.default_rng(0)
    x = rng.random((2000, size, size, 1), dtype=np.float32)
    y = rng.integers(0, 10, 2000).astype(np.int32)
    model = MODELS[arch]()
    apply = jax.jit(lambda p, xb: model.apply({"params": p}, xb))
    params = model.init(jax.random.key(0), x[:1])["params"]
    codebook = jp.Codebook.create(params)
    latent0 = codebook.init_latent(params)
    key = jax.random.key(1)
    opt = optax.adam(1e-2)
    xs, ys = jax.numpy.asarray(x), jax.numpy.asarray(y)

    def step(i, carry):
        t, s = carry
        idx = jax.random.choice(jax.random.fold_in(key, i), len(x), (batch,), replace=False)
        g = jax.grad(lambda t: cross_entropy(apply(codebook.decode(t), xs[idx]), ys[idx]))(t)
        u, s = opt.update(g, s, t)
        return optax.apply_updates(t, u), s

    one = jax.jit(step)
    looped = jax.jit(lambda c: jax.lax.fori_loop(0, steps, step, c))
    state0 = opt.init(latent0)

    def alone():
        c = (latent0, state0)
        for i in range(steps):
            c = one(i, c)
        jax.block_until_ready(c)

    def library():
        # train compiles its step on every call, so time the second chunk of `steps` steps,
        # callback to callback (each callback follows the chunk's one host sync)
        marks = []
        train(
            apply,
            latent0,
            codebook,
            x,
            y,
            key=key,
            steps=3 * steps,
            batch_size=batch,
            log_every=steps,
            progress=False,
            callback=lambda *_: marks.append(time.perf_counter()),
        )
        return marks[2] - marks[1]

    times = {
        "train": min(library() for _ in range(rounds)),
        "alone": best_of(alone, repeat=rounds),
        "fori": best_of(looped, (latent0, state0), repeat=rounds),
    }
    ms = {k: 1000 * v / steps for k, v in times.items()}
    return {
        "arch": arch,
        "size": size,
        "batch": batch,
        "steps": steps,
        "ms_per_step": ms,
        "train_over_alone": ms["train"] / ms["alone"],
        "fori_over_alone": ms["fori"] / ms["alone"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    a = p.parse_args(argv)
    load = os.getloadavg()[0]
    rows = [measure(arch, size, a.steps, a.rounds) for arch in MODELS for size in (8, 28)]
    print(
        f"load average {load:.1f} → {os.getloadavg()[0]:.1f}; ms per step, best of {a.rounds} runs of {a.steps} steps"
    )
    print(f"{'model':<16}{'train':>9}{'alone':>9}{'fori':>9}{'train/alone':>13}{'fori/alone':>12}")
    for r in rows:
        ms = r["ms_per_step"]
        print(
            f"{r['arch'] + ' ' + str(r['size']) + 'x' + str(r['size']):<16}{ms['train']:>9.1f}{ms['alone']:>9.1f}"
            f"{ms['fori']:>9.1f}{r['train_over_alone']:>13.2f}{r['fori_over_alone']:>12.1f}"
        )
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"load": load, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
