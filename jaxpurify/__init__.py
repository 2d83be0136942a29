"""jaxpurify: purify contaminated networks by certified robust recovery (JAX).

    W = A Θ  (deployed)      W_c = W + E + Z  (contaminated)
    Θ̂ = argmin_Θ ‖W_c − A Θ‖₁ column by column,   purified = A Θ̂

Public API: :func:`recover` / :class:`Recovery` (the certified l1 solver), :class:`Codebook`
(encoded leaves and their secret matrices), :func:`purify` / :class:`Report`,
:func:`enable_compilation_cache`; checkpoints in :mod:`jaxpurify.io`.
"""

from jaxpurify._cache import enable_compilation_cache
from jaxpurify._codebook import Codebook, LeafSpec
from jaxpurify._purify import UncertifiedError, UncertifiedWarning, purify
from jaxpurify._report import LeafReport, Report
from jaxpurify._solver import Recovery, recover

__all__ = [
    "Codebook", "LeafSpec", "LeafReport", "Recovery", "Report", "UncertifiedError", "UncertifiedWarning",
    "enable_compilation_cache", "purify", "recover",
]
__version__ = "0.1.0"
