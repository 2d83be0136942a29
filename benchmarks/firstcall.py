"""The first ``jaxpurify purify`` of a small checkpoint in a fresh process (issue 9's targets:
≤ 5 s with an empty compilation cache, ≤ 1.5 s with a warm one, on 2 cores).

A CNN written as a Flax user would (Conv16 → Conv32 → Dense64 → Dense10 on 8×8 inputs, 136k
parameters), protected with the default codebook, sealed, saved as ``.safetensors`` with one
64-byte burst of damage, is purified by the command line in new processes: ``--rounds`` times with
an empty cache (a new ``XDG_CACHE_HOME`` each time) and ``--rounds`` times with a warm one.  With
``--against TREE`` each run is paired with the same command from another checkout (put first on
``PYTHONPATH``), interleaved, so that both see the same load.

    python -m benchmarks.firstcall [--rounds 5] [--against /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np

import jaxpurify as jp
from jaxpurify import io


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def make_checkpoint(where: str) -> tuple[str, str]:
    params = CNN().init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
    codebook = jp.Codebook.create(params)
    deployed = codebook.decode(codebook.init_latent(params))
    codebook = codebook.seal(deployed)
    book, model = os.path.join(where, "codebook.json"), os.path.join(where, "model.safetensors")
    codebook.save(book)
    io.save(model, deployed)
    raw = bytearray(open(model, "rb").read())
    raw[-4000:-3936] = os.urandom(64)  # a burst inside the last leaf's bytes
    with open(model, "wb") as f:
        f.write(bytes(raw))
    return book, model


def run_once(tree: str | None, cache_home: str, book: str, model: str, out: str) -> tuple[float, int]:
    env = {**os.environ, "XDG_CACHE_HOME": cache_home}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("JAXPURIFY_NO_COMPILATION_CACHE", None)
    if tree:
        env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "jaxpurify.cli", "purify", model, "--codebook", book, "--out", out],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    return time.perf_counter() - t0, r.returncode


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--against", metavar="TREE", help="another checkout, run interleaved for comparison")
    a = p.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(jp.__file__)))  # the checkout this runs from
    trees = {"this": here, **({"against": os.path.abspath(a.against)} if a.against else {})}
    with tempfile.TemporaryDirectory() as tmp:
        book, model = make_checkpoint(tmp)
        times = {(name, kind): [] for name in trees for kind in ("empty", "warm")}
        codes = set()
        print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
        for i in range(a.rounds):
            for name, tree in trees.items():
                fresh = tempfile.mkdtemp(dir=tmp)
                dt, rc = run_once(tree, fresh, book, model, os.path.join(tmp, "p.safetensors"))
                times[(name, "empty")].append(dt)
                codes.add(rc)
                warm = os.path.join(tmp, f"warm-{name}")
                if i == 0:  # fill the warm cache once, untimed
                    run_once(tree, warm, book, model, os.path.join(tmp, "p.safetensors"))
                dt, rc = run_once(tree, warm, book, model, os.path.join(tmp, "p.safetensors"))
                times[(name, "warm")].append(dt)
                codes.add(rc)
        print(f"load after: {os.getloadavg()[0]:.2f}; exit codes {sorted(codes)} (0: report ok)")
        for (name, kind), ts in times.items():
            ts = sorted(ts)
            print(f"{name:8s} {kind:5s} cache: {ts[0]:.2f}–{ts[-1]:.2f} s over {len(ts)} runs ({trees[name]})")


if __name__ == "__main__":
    main()
