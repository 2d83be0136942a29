"""Protect a pretrained model: a digits CNN trained the usual way, then converted.

    python examples/convert_pretrained.py            # prints the three accuracies and the time
    python examples/convert_pretrained.py --fixed-key --seed 0   # the table of docs/guides/pretrained.md, reproducibly

1. A CNN written as a Flax user would (Conv → Conv → Dense → Dense(10)) is trained on
   scikit-learn's digits with plain optax: no codebook, the model you already have.
2. ``Codebook.create(params)``, the default layout and a 256-bit key from the OS (``--fixed-key``:
   a key derived from ``--seed`` instead, to reproduce a run; guessable, so research only).
3. ``jaxpurify.convert.convert``: project onto the codebook, then distill the latent on the
   training images without their labels, the trained model as the teacher.

It prints the test accuracy of the trained model, of its projection alone (``encode``), and of
the converted model, with the conversion's wall time and step count.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import optax

import jaxpurify as jp
from jaxpurify import data
from jaxpurify.convert import convert, default_optimizer
from jaxpurify.train import accuracy, train


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(10)(x)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1200, help="conversion steps")
    ap.add_argument("--loss", choices=["kl", "mse"], default="kl")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mixup", type=float, default=0.0)
    ap.add_argument(
        "--fixed-key", action="store_true", help="codebook key from --seed (reproducible, guessable: research only)"
    )
    args = ap.parse_args(argv)

    ds = data.digits(seed=args.seed)
    key = jax.random.key(args.seed)
    model = CNN()
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    params = model.init(jax.random.fold_in(key, 0), ds.train.x[:1])["params"]
    # the pretrained model: trained with no codebook
    params = train(
        apply,
        params,
        None,
        ds.train.x,
        ds.train.y,
        key=jax.random.fold_in(key, 1),
        steps=1000,
        optimizer=optax.adam(3e-3),
    ).latent
    acc = lambda p: accuracy(apply, p, ds.test.x, ds.test.y)

    # the default layout; the default key=None is the one that protects (a seed is found in a few dozen tries)
    codebook = jp.Codebook.create(params, jax.random.fold_in(key, 2) if args.fixed_key else None)
    projected = codebook.decode(codebook.encode(params))

    t0, c0 = time.perf_counter(), time.process_time()
    latent, losses = convert(
        apply,
        params,
        codebook,
        ds.train.x,
        key=jax.random.fold_in(key, 3),
        steps=args.steps,
        batch_size=args.batch_size,
        loss=args.loss,
        temperature=args.temperature,
        mixup=args.mixup,
        optimizer=default_optimizer(args.steps, args.lr),
    )
    protected = codebook.decode(latent)
    jax.block_until_ready(protected)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0

    res = {
        "unprotected": acc(params),
        "encode_only": acc(projected),
        "converted": acc(protected),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "steps": len(losses),
        "loss_first": float(losses[0]),
        "loss_last": float(losses[-1]),
    }
    print(
        f"test accuracy: unprotected {res['unprotected']:.3f} | encode only {res['encode_only']:.3f} | "
        f"converted {res['converted']:.3f} ({res['steps']} steps, {seconds:.1f} s wall, {cpu:.1f} s CPU, "
        f"loss {res['loss_first']:.3g} -> {res['loss_last']:.3g})"
    )
    return res


if __name__ == "__main__":
    main()
