"""jaxpurify: purify contaminated networks by certified robust recovery (JAX).

    W = A Θ  (deployed)      W_c = W + E + Z  (contaminated)
    Θ̂ = argmin_Θ ‖W_c − A Θ‖₁ column by column,   purified = A Θ̂

Public API: :func:`recover` / :class:`Recovery` (the certified l1 solver), :class:`Codebook`
(encoded leaves and their secret matrices; ``seal`` / ``verify`` for what l1 cannot see, see
SECURITY.md), :func:`purify` / :class:`Report`.
"""

from jaxpurify._codebook import Codebook, LeafSpec
from jaxpurify._codebook_file import LegacyCodebookWarning
from jaxpurify._keys import WeakKeyWarning
from jaxpurify._seal import LeafVerdict, Seal
from jaxpurify._purify import LeafReport, Report, purify
from jaxpurify._solver import Recovery, recover

__all__ = [
    "Codebook", "LeafSpec", "LeafReport", "LeafVerdict", "LegacyCodebookWarning", "Recovery", "Report", "Seal",
    "WeakKeyWarning", "purify", "recover",
]
__version__ = "0.1.0"
