"""How far one optimizer step moves each deployed leaf, plain against encoded (issue 24 §1).

The encoded model's optimizer sees the latent Θ, whose gradient is Aᵀ∂L/∂W, and its update moves
W = AΘ by A·ΔΘ.  For SGD that is ΔW = −η·AAᵀ∂L/∂W: the in-range part of the step is scaled by the
eigenvalues of AAᵀ (A has N(0, 1/n) entries, so they spread around K/n).  Adam normalises each
latent coordinate instead, and ΔW_k = Σ_i A_ki ΔΘ_i has about the size of one plain Adam step.
This script measures it: the multi-layer CNN of ``jaxpurify reproduce digits --arch multi`` (its
codebook layout), the same initial weights and minibatches, ``--steps`` steps of plain training,
encoded training with the optimizer on the latent (``train(space="latent")``, the default) and
on the weights (``space="weights"``: the optimizer's update u on W, Θ moved by A⁺u), for Adam
and for SGD; per leaf the RMS of ΔW per step, relative to the plain model's::

    python -m benchmarks.latent_steps [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._common import write_json
from jaxpurify import Codebook, data
from jaxpurify.experiments.realdata import build, secret
from jaxpurify.train import train
from jaxpurify.tree import leaves_with_paths

OPTIMIZERS = {"adam 1e-3": lambda: optax.adam(1e-3), "sgd 1e-2": lambda: optax.sgd(1e-2)}


def step_sizes(apply, start, codebook, ds, opt, steps: int, space: str) -> dict[str, float]:
    """Per leaf: RMS over entries and steps of W_{t+1} − W_t."""
    decode = codebook.decode if codebook is not None else (lambda t: t)
    seen = [decode(start)]
    train(
        apply,
        start,
        codebook,
        ds.train.x,
        ds.train.y,
        key=jax.random.key(1),
        steps=steps,
        optimizer=opt(),
        callback=lambda _s, _l, t: seen.append(decode(t)) and False,
        log_every=1,
        progress=False,
        space=space,
    )
    out = {}
    for path, _ in leaves_with_paths(seen[0])[0]:
        at = [dict(leaves_with_paths(w)[0])[path] for w in seen]
        out[path] = float(np.sqrt(np.mean([jnp.mean(jnp.square(b - a)) for a, b in zip(at, at[1:])])))
    return out


def run(steps: int) -> dict:
    ds = data.digits()
    model, select = build("multi", ds)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    params0 = model.init(jax.random.key(0), ds.train.x[:1])["params"]
    cb = Codebook.create(params0, secret(0), select=select)
    res = {"steps": steps, "layout": {n: (g.K, g.n) for n, g in cb.groups.items()}, "optimizers": {}}
    for name, opt in OPTIMIZERS.items():
        plain = step_sizes(apply, params0, None, ds, opt, steps, "latent")
        latent = step_sizes(apply, cb.init_latent(params0), cb, ds, opt, steps, "latent")
        weights = step_sizes(apply, cb.init_latent(params0), cb, ds, opt, steps, "weights")
        res["optimizers"][name] = {
            p: {"plain": plain[p], "latent / plain": latent[p] / plain[p], "weights / plain": weights[p] / plain[p]}
            for p in plain
        }
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json")
    a = p.parse_args(argv)
    res = run(a.steps)
    for name, leaves in res["optimizers"].items():
        print(f"\n{name}: RMS of ΔW per step, encoded / plain\n\n| leaf | plain | latent space | weights space |")
        print("|---|---|---|---|")
        for path, v in leaves.items():
            print(f"| {path} | {v['plain']:.2e} | {v['latent / plain']:.2f} | {v['weights / plain']:.2f} |")
    if a.json:
        write_json(a.json, res)


if __name__ == "__main__":
    main()
