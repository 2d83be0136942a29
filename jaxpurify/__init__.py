"""jaxpurify: purify contaminated networks by certified robust recovery (JAX).

    W = A Θ  (deployed)      W_c = W + E + Z  (contaminated)
    Θ̂ = argmin_Θ ‖W_c − A Θ‖₁ column by column,   purified = A Θ̂

Public API: :func:`recover` / :class:`Recovery` / :class:`RESULTS` / :class:`RecoverOptions`
(the certified l1 solver), :class:`Codebook` (encoded leaves and their secret matrices),
:func:`purify` / :class:`Report`.
"""

from jaxpurify._codebook import Codebook, LeafSpec
from jaxpurify._options import RecoverOptions
from jaxpurify._purify import LeafReport, Report, purify
from jaxpurify._solution import RESULTS, Recovery
from jaxpurify._solver import recover

__all__ = ["Codebook", "LeafSpec", "LeafReport", "RESULTS", "RecoverOptions", "Recovery", "Report", "purify", "recover"]
__version__ = "0.2.0"
