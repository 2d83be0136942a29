"""Measure every attack with its default hyper-parameters on the digits (no defense):

    python -m jaxpurify.attacks --arch one-hidden|multi [--steps 800] [--only pbfa,span_trojan] [--craft 200]

An encoded model is trained as in ``jaxpurify reproduce digits`` (``experiments.realdata.build``:
the architecture and its codebook layout), the attacker gets the first quarter of the training
split, and each attack's CA / ASR / RA on the test split is printed as a markdown table.  For
``span_trojan`` the attacked model is also purified with the defender's codebook: the row
``span_trojan → purify`` shows what l1 purification leaves of it.  ``--craft N``: the bit trojan
runs TBT-style (its read-out rows chosen, the trigger crafted for them in N Adam steps, only their
target weights flipped), and its row, and a row of the unattacked model, use the crafted trigger.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp

import jaxpurify as jp
from jaxpurify import attacks, data
from jaxpurify.experiments.realdata import build
from jaxpurify.train import train
from jaxpurify.tree import PyTree

ATTACKS = ("badnets", "sparse_trojan", "channel_trojan", "pbfa", "bit_trojan", "span_trojan")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jaxpurify.attacks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="one-hidden", choices=("one-hidden", "multi"))
    ap.add_argument("--steps", type=int, default=800, help="training steps of the encoded model")
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--only", default=",".join(ATTACKS), help="comma-separated attacks to run")
    ap.add_argument(
        "--craft",
        type=int,
        default=0,
        help="bit_trojan TBT-style: Adam steps crafting its trigger (0: the fixed patch)",
    )
    args = ap.parse_args(argv)
    names = args.only.split(",")
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        ap.error(f"unknown attack {unknown[0]!r}; choose from {', '.join(ATTACKS)}")
    if args.craft and "bit_trojan" not in names:
        ap.error("--craft applies to bit_trojan, which --only leaves out")

    ds = data.digits()
    model, select = build(args.arch, ds)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    init = model.init(jax.random.key(0), ds.train.x[:1])["params"]
    # a fixed, public key: a reproducible measurement of the attacks, not a deployment
    codebook = jp.Codebook.create(init, key=b"jaxpurify.attacks measurement", select=select)
    latent = train(
        apply, codebook.init_latent(init), codebook, ds.train.x, ds.train.y, key=jax.random.key(2), steps=args.steps
    ).latent
    deployed = codebook.decode(latent)
    trigger = attacks.Trigger.for_image(ds.train.x.shape[1])
    n = len(ds.train.x) // 4
    mine = (ds.train.x[:n], ds.train.y[:n])

    def row(name: str, params: PyTree, seconds: float, changed: int | str, trigger: attacks.Trigger = trigger) -> None:
        x, y, t = ds.test.x, ds.test.y, args.target
        ca = attacks.clean_accuracy(apply, params, x, y)
        asr = attacks.attack_success_rate(apply, params, x, y, trigger, t)
        ra = attacks.robust_accuracy(apply, params, x, y, trigger, t)
        print(f"| {name} | {ca:.4f} | {asr:.4f} | {ra:.4f} | {changed} | {seconds:.1f} |", flush=True)

    print(f"\ndigits / {args.arch}, target {args.target}, trigger {tuple(trigger)}, attacker data {n} examples\n")
    print("| attack | CA | ASR | RA | entries changed | seconds |\n|---|---|---|---|---|---|")
    row("none", deployed, 0.0, 0)
    for i, name in enumerate(names):
        extra = {"span_trojan": {"select": select}, "bit_trojan": {"craft": args.craft} if args.craft else {}}.get(
            name, {}
        )
        a = getattr(attacks, name)(
            jax.random.key(10 + i), apply, deployed, mine, target=args.target, trigger=trigger, **extra
        )
        if a.trigger is not None:
            row("none, with the crafted trigger", deployed, 0.0, 0, a.trigger)
        row(
            name + (f" (TBT-style, {args.craft} crafting steps)" if a.trigger is not None else ""),
            a.params,
            a.seconds,
            sum(int(c.sum()) for c in jax.tree.leaves(a.changed)),
            a.trigger or trigger,
        )
        if name == "span_trojan":
            purified, report = jp.purify(a.params, codebook)
            moved = max(
                float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v)))
                for u, v in zip(jax.tree.leaves(purified), jax.tree.leaves(a.params))
            )
            row(
                f"span_trojan → purify ({report.certified}/{report.columns} columns certified, "
                f"max change {moved:.1e} of a leaf's max)",
                purified,
                0.0,
                "—",
            )


if __name__ == "__main__":
    main()
