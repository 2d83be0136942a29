"""jaxpurify: purify contaminated networks by certified robust recovery (JAX).

    W = A Θ  (deployed)      W_c = W + E + Z  (contaminated)
    Θ̂ = argmin_Θ ‖W_c − A Θ‖₁ column by column,   purified = A Θ̂

Public API: :func:`recover` / :class:`Recovery` / :class:`RESULTS` / :class:`RecoverOptions` (the
certified l1 solver), :class:`Codebook` (protected entries, their layout into groups, the secret
matrices; ``seal`` / ``verify`` for what l1 cannot see, see docs/security.md), :func:`purify` /
:class:`Report` (:class:`DeviceReport` under ``jax.jit``); for Flax NNX, :class:`EncodedModule` /
:class:`Latent` (train the latent with ``nnx.Optimizer``); :data:`ON_UNCERTIFIED` (purify's choices
for a column it cannot certify); :func:`enable_compilation_cache` /
:func:`compilation_cache_disabled_by_env`; checkpoints in :mod:`jaxpurify.io` (and in
:mod:`jaxpurify.checkpoint`, as the command line reads and writes them); a tree's leaves by path in
:mod:`jaxpurify.tree`; progress bars and tables in :mod:`jaxpurify.progress`.
"""

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Codebook",
    "DeviceReport",
    "EncodedModule",
    "Group",
    "Latent",
    "LeafSpec",
    "LeafReport",
    "LeafVerdict",
    "LegacyCodebookWarning",
    "ON_UNCERTIFIED",
    "RESULTS",
    "RecoverOptions",
    "Recovery",
    "Report",
    "Seal",
    "UncertifiedError",
    "UncertifiedWarning",
    "UnsealedCodebookWarning",
    "WeakKeyWarning",
    "compilation_cache_disabled_by_env",
    "enable_compilation_cache",
    "purify",
    "recover",
]


# Public name -> the private module that defines it. Resolved on first access (PEP 562), so that
# `import jaxpurify` (and `jaxpurify --help`/`--version`) does not import JAX; the NNX helpers
# (EncodedModule, Latent) import flax.nnx, also only when asked for.
_LAZY = {
    "Codebook": "_codebook",
    "DeviceReport": "_shard",
    "EncodedModule": "_nnx",
    "Group": "_layout",
    "Latent": "_nnx",
    "LeafReport": "_report",
    "LeafSpec": "_codebook",
    "LeafVerdict": "_seal",
    "LegacyCodebookWarning": "_codebook_file",
    "ON_UNCERTIFIED": "_uncertified",
    "RESULTS": "_solution",
    "RecoverOptions": "_options",
    "Recovery": "_solution",
    "Report": "_report",
    "Seal": "_seal",
    "UncertifiedError": "_purify",
    "UncertifiedWarning": "_purify",
    "UnsealedCodebookWarning": "_codebook",
    "WeakKeyWarning": "_keys",
    "compilation_cache_disabled_by_env": "_cache",
    "enable_compilation_cache": "_cache",
    "purify": "_purify",
    "recover": "_solver",
}

if TYPE_CHECKING:  # what type checkers and IDEs see: the eager imports
    from jaxpurify._cache import compilation_cache_disabled_by_env, enable_compilation_cache
    from jaxpurify._codebook import Codebook, LeafSpec, UnsealedCodebookWarning
    from jaxpurify._codebook_file import LegacyCodebookWarning
    from jaxpurify._keys import WeakKeyWarning
    from jaxpurify._layout import Group
    from jaxpurify._nnx import EncodedModule, Latent
    from jaxpurify._options import RecoverOptions
    from jaxpurify._purify import UncertifiedError, UncertifiedWarning, purify
    from jaxpurify._report import LeafReport, Report
    from jaxpurify._seal import LeafVerdict, Seal
    from jaxpurify._shard import DeviceReport
    from jaxpurify._solution import RESULTS, Recovery
    from jaxpurify._solver import recover
    from jaxpurify._uncertified import ON_UNCERTIFIED


# `jp.io.save(...)` after a bare `import jaxpurify as jp` worked while the package imported
# everything eagerly; these submodules keep working that way
_SUBMODULES = frozenset(
    ("attacks", "checkpoint", "cli", "contamination", "convert", "data", "defenses", "demo", "experiments", "io")
    + ("models", "progress", "train", "tree")
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxpurify.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jaxpurify' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jaxpurify.{module}"), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.3.0.dev0"
