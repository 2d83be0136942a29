"""Every product in the solver asks for precision HIGHEST (issue 12 §3).

On TPU the default precision of a float32 dot is one bfloat16 pass, which would make exact
recovery impossible; ``precision=HIGHEST`` asks for full float32.  The reference is the lowered
StableHLO text itself: every ``stablehlo.dot_general`` / ``stablehlo.dot`` of ``recover``, of its gradient and of
``purify``'s device path must carry
``precision = [HIGHEST, HIGHEST]`` (the decompositions, QR, SVD and triangular solves, are
library calls, not dots, and are not covered here).  Lowering only traces: nothing is compiled.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp

DOT = re.compile(r"\bstablehlo\.dot(?:_general)?\b")
HIGHEST = re.compile(r"precision = \[HIGHEST, HIGHEST\]")


def _dots_without_highest(fn, *args):
    text = jax.jit(fn).lower(*args).as_text()
    dots = [line.strip() for line in text.splitlines() if DOT.search(line)]
    return dots, [d for d in dots if not HIGHEST.search(d)]


def _grad_of_recover(A, Y):
    return jax.grad(lambda a, y: jnp.sum(jp.recover(a, y).x ** 2), argnums=(0, 1))(A, Y)


_rng = np.random.default_rng(0)
_A = _rng.standard_normal((32, 8)).astype(np.float32)
_Y = _rng.standard_normal((32, 16)).astype(np.float32)
_params = {"w": _rng.standard_normal((16, 12)).astype(np.float32), "b": np.zeros(12, np.float32)}
_codebook = jp.Codebook.create(_params, b"0123456789abcdef")


def _purify_on_device(params):
    return jp.purify(params, _codebook, device=True)[0]


@pytest.mark.parametrize(
    "name,fn,args",
    [
        ("matrix Y", jp.recover, (_A, _Y)),
        ("batched A, vector Y", jp.recover, (np.stack([_A, 2 * _A]), _Y[:, :2].T)),
        ("gradient w.r.t. A and Y", _grad_of_recover, (_A, _Y)),
        ("purify's device path", _purify_on_device, (_params,)),
    ],
)
def test_every_dot_is_highest(name, fn, args):
    dots, low = _dots_without_highest(fn, *args)
    assert dots, f"{name}: no dot found in the lowered text; the pattern no longer matches it"
    assert not low, f"{name}: {len(low)} of {len(dots)} dots lack precision HIGHEST, e.g. {low[0][:300]}"
