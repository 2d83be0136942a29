"""Training an encoded Flax NNX model with ``nnx.Optimizer``.

The deployed parameters are ``codebook.decode(latent)``; :class:`EncodedModule` holds the latent
as :class:`Latent` variables next to the model, and on every call writes ``decode(latent)`` into
the model's ``nnx.Param``s before running it, so gradients reach the latent through A::

    encoded = jp.EncodedModule(model, codebook.init_latent(model))
    opt = nnx.Optimizer(encoded, optax.adam(1e-3), wrt=jp.Latent)

    @nnx.jit(static_argnums=4)
    def step(encoded, opt, x, y, decode):
        loss = lambda e: optax.softmax_cross_entropy_with_integer_labels(e(x, decode), y).mean()
        value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, jp.Latent))(encoded)
        opt.update(encoded, grads)
        return value

    step(encoded, opt, x, y, codebook.decode)   # decode is passed in: a static, hashable callable

``encoded.sync(codebook.decode)`` leaves ``model`` holding the decoded weights (deploy it as
usual); purified weights go back with ``nnx.update(model, purified)``.  Non-``Param`` state
(BatchNorm statistics, RNG streams) stays in ``model`` and updates as it would without encoding:
the latent's copies of it (``init_latent`` keeps inference state in the latent) are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from jaxpurify import tree as _tree


class Latent(nnx.Variable[jax.Array]):
    """A latent Θ of the codebook: its own variable type, so an optimizer with ``wrt=Latent``
    trains the latent and nothing else (the model's ``Param``s are overwritten on each call)."""


class EncodedModule(nnx.Module):
    """``model`` whose parameters are ``decode(latent)``; call it as ``encoded(x, decode)``."""

    def __init__(self, model: nnx.Module, latent: dict[str, Any]):
        self.model = model
        # the model's own state (BatchNorm statistics) is not trained through the latent
        state = {leaf.path for leaf in _tree.flatten(model)[0] if leaf.kind != _tree.PARAM}
        self.latent = nnx.data({name: Latent(value) for name, value in latent.items() if name not in state})

    def values(self) -> dict[str, Any]:
        """The latent as the plain dict ``decode`` takes."""
        return {name: var[...] for name, var in self.latent.items()}

    def sync(self, decode: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Write ``decode(latent)`` into the model's parameters."""
        nnx.update(self.model, decode(self.values()))

    def __call__(self, x: Any, decode: Callable[[dict[str, Any]], dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        self.sync(decode)
        return self.model(x, *args, **kwargs)
