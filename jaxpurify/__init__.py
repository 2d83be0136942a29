"""jaxpurify: purify contaminated networks by certified robust recovery (JAX).

    W = A Θ  (deployed)      W_c = W + E + Z  (contaminated)
    Θ̂ = argmin_Θ ‖W_c − A Θ‖₁ column by column,   purified = A Θ̂

Public API: :func:`recover` / :class:`Recovery` / :class:`RESULTS` / :class:`RecoverOptions` (the
certified l1 solver), :class:`Codebook` (protected entries, their layout into groups, the secret
matrices; ``seal`` / ``verify`` for what l1 cannot see, see SECURITY.md), :func:`purify` /
:class:`Report`; for Flax NNX, :class:`EncodedModule` / :class:`Latent` (train the latent with
``nnx.Optimizer``); :func:`enable_compilation_cache`; checkpoints in :mod:`jaxpurify.io`; a tree's
leaves by path in :mod:`jaxpurify.tree`; progress bars and tables in :mod:`jaxpurify.progress`.
"""

from jaxpurify._cache import enable_compilation_cache
from jaxpurify._codebook import Codebook, LeafSpec
from jaxpurify._codebook_file import LegacyCodebookWarning
from jaxpurify._keys import WeakKeyWarning
from jaxpurify._layout import Group
from jaxpurify._options import RecoverOptions
from jaxpurify._purify import UncertifiedError, UncertifiedWarning, purify
from jaxpurify._report import LeafReport, Report
from jaxpurify._seal import LeafVerdict, Seal
from jaxpurify._solution import RESULTS, Recovery
from jaxpurify._solver import recover

__all__ = [
    "Codebook",
    "EncodedModule",
    "Group",
    "Latent",
    "LeafSpec",
    "LeafReport",
    "LeafVerdict",
    "LegacyCodebookWarning",
    "RESULTS",
    "RecoverOptions",
    "Recovery",
    "Report",
    "Seal",
    "UncertifiedError",
    "UncertifiedWarning",
    "WeakKeyWarning",
    "enable_compilation_cache",
    "purify",
    "recover",
]


def __getattr__(name):
    # the NNX helpers import flax.nnx: only when asked for
    if name in ("EncodedModule", "Latent"):
        from jaxpurify import _nnx

        return getattr(_nnx, name)
    raise AttributeError(f"module 'jaxpurify' has no attribute {name!r}")


__version__ = "0.2.0"
