"""jaxpurify: purify contaminated networks by certified robust recovery (JAX).

    W = A Θ  (deployed)      W_c = W + E + Z  (contaminated)
    Θ̂ = argmin_Θ ‖W_c − A Θ‖₁ column by column,   purified = A Θ̂

Public API: :func:`recover` / :class:`Recovery` (the certified l1 solver), :class:`Codebook`
(protected entries, their layout into groups, the secret matrices), :func:`purify` /
:class:`Report`; for Flax NNX, :class:`EncodedModule` / :class:`Latent` (train the latent with
``nnx.Optimizer``).
"""

from jaxpurify._codebook import Codebook, LeafSpec
from jaxpurify._layout import Group
from jaxpurify._purify import UncertifiedError, UncertifiedWarning, purify
from jaxpurify._report import LeafReport, Report
from jaxpurify._solver import Recovery, recover

__all__ = [
    "Codebook", "EncodedModule", "Group", "Latent", "LeafSpec", "LeafReport", "Recovery", "Report",
    "UncertifiedError", "UncertifiedWarning", "purify", "recover",
]


def __getattr__(name):
    # the NNX helpers import flax.nnx: only when asked for
    if name in ("EncodedModule", "Latent"):
        from jaxpurify import _nnx

        return getattr(_nnx, name)
    raise AttributeError(f"module 'jaxpurify' has no attribute {name!r}")
__version__ = "0.1.0"
