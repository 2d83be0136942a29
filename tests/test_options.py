"""RecoverOptions: every field declares whether it keys the solver's compilation or is traced."""

import dataclasses

import numpy as np
import pytest
from reference import instance

import jaxpurify as jp
from jaxpurify import _exported, _options, _solver
from jaxpurify._solution import RESULTS


def test_every_option_is_declared_static_or_traced():
    fields = dataclasses.fields(jp.RecoverOptions)
    undeclared = [f.name for f in fields if not isinstance(f.metadata.get("static"), bool)]
    assert undeclared == []
    traced = {f.name for f in fields if f.metadata["static"] is False}
    assert set(jp.RecoverOptions.TRACED) == traced
    # the traced ones reach the solver as scalars: each has its slot in the solver's Traced
    assert set(_solver.Traced._fields) == traced
    assert traced == {f.name for f in fields} - {"trim", "pivots"}
    # ... and none is part of the compile key
    opts = jp.RecoverOptions(admm_tol=0.5, relax=1.1, rtol=1e-3, atol=2.0, max_cg=7)
    key = opts.compile_key()
    assert all(getattr(key, name) == f.default for f in fields if (name := f.name) in traced)
    assert all(getattr(key, f.name) == getattr(opts, f.name) for f in fields if f.name not in traced)


def test_an_undeclared_field_is_refused():
    """A new option added without saying static or traced is an error, not a silent compile key."""

    @dataclasses.dataclass(frozen=True)
    class WithNewOption(jp.RecoverOptions):
        damping: float = 0.5

    with pytest.raises(TypeError, match="damping"):
        _options._check_declared(WithNewOption)


def test_traced_options_share_one_compilation_static_ones_do_not(monkeypatch):
    """Counted on the jitted solver's own cache.  The traced values still reach the solver: with
    atol at the noise level the noisy columns are certified, without it they are inexact fits;
    with one finder iteration, one polish round and one CG step, columns the defaults certify
    are not."""
    monkeypatch.setattr(_exported, "_dir", None)  # the plain jitted path, whatever ran before
    rng = np.random.default_rng(21)
    A, X, Y, _ = instance(rng, 23, 5, 3, 0)  # a shape no other test uses: its compilations are ours
    Yn = (Y + 1e-3 * rng.standard_normal(Y.shape)).astype(np.float32)
    A = A.astype(np.float32)
    size = _solver._recover_jit._cache_size
    before = size()
    # the passes alone (the simplex stage, a static option, compiles programs of its own)
    strict = jp.recover(A, Yn, pivots=0)
    assert size() == before + 1
    loose = jp.recover(A, Yn, atol=0.05, rtol=1e-3, admm_tol=1e-2, relax=1.2, pivots=0)
    assert size() == before + 1
    assert (np.asarray(strict.result) == RESULTS.inexact_fit).all()
    assert np.asarray(loose.certified).all()
    Yo = Y.astype(np.float32)
    Yo[:4] += 100.0  # 4 gross errors per column, within the capacity ⌊(23 − 5)/2⌋ = 9
    assert np.asarray(jp.recover(A, Yo, pivots=0).certified).all()
    capped = jp.recover(A, Yo, max_cg=1, passes=1, finder_iters=1, retry_iters=1, polish_rounds=1, pivots=0)
    assert size() == before + 1
    assert not np.asarray(capped.certified).any()
    jp.recover(A, Yn, trim=False, pivots=0)
    assert size() == before + 2
