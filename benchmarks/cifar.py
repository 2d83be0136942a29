"""What a CIFAR-10 run costs, measured on a CIFAR-10-format fixture and scaled: an estimate.

No CIFAR-10 is needed.  The script writes random images in CIFAR-10's binary record layout (1
label byte, the red, green and blue 32 × 32 planes, row major) into a temporary
``cifar-10-batches-bin`` and measures, on this machine:

* a training step of each architecture at 32 × 32 × 3 (plain and encoded, batch 128, the
  experiments' recipe), median of ``--steps`` steps after a compiled first one;
* one bit flip of the bit-flip searches on the multi-layer CNN (batch 256): PBFA over every
  leaf and the TBT-style bit trojan over the read-out's chosen rows, each with the whole network
  re-run for every tried flip (``split=None``, before) and with the frozen feature extractor run
  once per search step (``split=``, after); per flip = (time for k flips − time for 1) / (k − 1);
* one purify of the encoded model's codebook (5% gross errors per column).

From these it estimates ``jaxpurify reproduce cifar10`` (50,000 / 10,000 images, both models of
both architectures, ten contamination scenarios) and the training and bit-flip parts of
``jaxpurify reproduce backdoor --dataset cifar10``.  Every estimate is labelled as one::

    python -m benchmarks.cifar [--steps 20] [--flips 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np

import jaxpurify as jp
from benchmarks._common import write_json
from jaxpurify import attacks, data
from jaxpurify import contamination as C
from jaxpurify.experiments import backdoor, realdata, recipes
from jaxpurify.train import random_shift, recipe, train

FULL_TRAIN, FULL_TEST, SCENARIOS = 50_000, 10_000, 10


def write_fixture(root: str, per_batch: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    d = os.path.join(root, "cifar-10-batches-bin")
    os.makedirs(d, exist_ok=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, per_batch).astype(np.uint8)
        planes = rng.integers(0, 256, (per_batch, 3 * 32 * 32)).astype(np.uint8)  # R, G, B planes, row major
        np.concatenate([labels[:, None], planes], axis=1).tofile(os.path.join(d, name))
    return root


def step_seconds(apply, params0, codebook, ds, steps: int) -> float:
    """Median wall time of one training step (the first, compiled one, excluded)."""
    r = recipes.RECIPES["cifar10"]
    start = codebook.init_latent(params0) if codebook is not None else params0
    times = []

    def tick(step, _loss, _latent):
        times.append(time.perf_counter())

    train(
        apply,
        start,
        codebook,
        ds.train.x,
        ds.train.y,
        key=jax.random.key(0),
        steps=steps + 1,
        optimizer=recipe(steps + 1),
        augment=random_shift(r.shift),
        callback=tick,
        log_every=1,
        progress=False,
    )
    return statistics.median(np.diff(times))


def flip_seconds(attack, flips: int) -> tuple[float, int]:
    """(seconds per flip, flips made) from a 1-flip and a ``flips``-flip run of ``attack(flips)``."""
    t0 = time.perf_counter()
    attack(1)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = attack(flips)
    many = time.perf_counter() - t0
    made = res.hyper["outcome"]["count"]
    return (many - one) / max(made - 1, 1), made


def run(steps: int, flips: int) -> dict:
    out = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}, "estimates": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ds = data.load("cifar10", write_fixture(tmp, per_batch=300))
    r = recipes.RECIPES["cifar10"]
    out["recipe"] = r.record()
    for arch in ("one-hidden", "multi"):
        model, select = realdata.build(arch, ds)
        apply = jax.jit(lambda p, x, model=model: model.apply({"params": p}, x))
        params0 = model.init(jax.random.key(0), ds.train.x[:1])["params"]
        cb = jp.Codebook.create(params0, realdata.secret(0), select=select)
        plain = step_seconds(apply, params0, None, ds, steps)
        enc = step_seconds(apply, params0, cb, ds, steps)
        bad = C.contaminate(jax.random.key(1), cb.decode(cb.init_latent(params0)), cb, C.gross_errors, rate=0.05)
        jp.purify(bad, cb)  # compile
        t0 = time.perf_counter()
        jp.purify(bad, cb)
        purify_s = time.perf_counter() - t0
        out[arch] = {"step_seconds_plain": plain, "step_seconds_encoded": enc, "purify_seconds": purify_s}
        # each scenario: purify, then three test-set evaluations (a forward pass: about a third of a step)
        evaluation = FULL_TEST / r.batch_size * plain / 3
        out["estimates"][f"reproduce cifar10 --arch {arch} (ESTIMATE)"] = r.steps * (plain + enc) + SCENARIOS * (
            purify_s + 3 * evaluation
        )
    # the bit-flip searches on the multi CNN at CIFAR-10's shape, before and after the split
    model, _ = realdata.build("multi", ds)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    params = model.init(jax.random.key(0), ds.train.x[:1])["params"]
    split = backdoor.split_of(model)
    mine = (ds.train.x, ds.train.y)
    trig = backdoor.tbt_trigger(32)
    for name, fn in (
        ("pbfa", lambda k, s: attacks.pbfa(jax.random.key(3), apply, params, mine, flips=k, margin=-1.0, split=s)),
        (
            "bit_trojan",
            lambda k, s: attacks.bit_trojan(
                jax.random.key(3),
                apply,
                params,
                mine,
                target=0,
                trigger=trig,
                **dict(backdoor.ATTACK_HYPER["bit_trojan"], flips=k, craft=20, goal=1.0, max_drop=1.0, split=s),
            ),
        ),
    ):
        before, made_b = flip_seconds(lambda k, fn=fn: fn(k, None), flips)
        after, made_a = flip_seconds(lambda k, fn=fn: fn(k, split), flips)
        out[f"{name}_seconds_per_flip"] = {"whole network": before, "split": after, "flips": [made_b, made_a]}
    out["machine"]["load_after"] = os.getloadavg()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="training steps timed per model")
    p.add_argument("--flips", type=int, default=4, help="flips per timed search")
    p.add_argument("--json")
    a = p.parse_args(argv)
    res = run(a.steps, a.flips)
    for arch in ("one-hidden", "multi"):
        q = res[arch]
        print(
            f"{arch}: step {1e3 * q['step_seconds_plain']:.0f} ms plain, {1e3 * q['step_seconds_encoded']:.0f} ms "
            f"encoded; purify {q['purify_seconds']:.1f} s"
        )
    for name in ("pbfa", "bit_trojan"):
        q = res[f"{name}_seconds_per_flip"]
        print(f"{name} on the multi CNN: {q['whole network']:.2f} s per flip before, {q['split']:.2f} s after")
    for what, sec in res["estimates"].items():
        print(f"{what}: {sec / 60:.0f} min")
    print(f"load average {res['machine']['load_before']} before, {res['machine']['load_after']} after")
    if a.json:
        write_json(a.json, res)


if __name__ == "__main__":
    main()
