"""The exported solver programs kept beside the compilation cache (jaxpurify/_exported.py)."""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import lad_highs

import jaxpurify as jp
from jaxpurify import _exported


@pytest.fixture
def export_dir(tmp_path):
    _exported.use_dir(str(tmp_path))
    yield os.path.join(str(tmp_path), _exported.SUBDIR)
    _exported.use_dir(None)


def _problem(K=12, n=3, m=5, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(K, n)).astype(np.float32)
    Y = A @ rng.normal(size=(n, m)).astype(np.float32)
    Y[[1, 7], :] += 50.0
    return A, Y


def test_a_program_is_exported_stored_and_reloaded(export_dir):
    A, Y = _problem()
    written = jp.recover(A, Y)  # exported, stored, run
    (name,) = os.listdir(export_dir)
    assert os.stat(export_dir).st_mode & 0o077 == 0
    _exported.use_dir(os.path.dirname(export_dir))  # forget the loaded program: read it from disk
    reloaded = jp.recover(A, Y)
    assert os.listdir(export_dir) == [name]
    for field in written._fields:
        np.testing.assert_array_equal(
            np.asarray(getattr(reloaded, field)), np.asarray(getattr(written, field)), err_msg=field
        )
    assert bool(np.all(written.certified))
    for j in range(Y.shape[1]):  # HiGHS is the reference for the l1 solution
        np.testing.assert_allclose(
            np.asarray(written.x[:, j]),
            lad_highs(A.astype(np.float64), Y[:, j].astype(np.float64)),
            rtol=1e-4,
            atol=1e-4,
        )


@pytest.mark.slow
def test_a_reloaded_program_gives_the_traced_solvers_results_bit_for_bit(export_dir):
    # the host path with the cache on must stay bit-identical to the jit and device paths
    A, Y = _problem(K=20, n=5, m=7, seed=1)
    _exported.use_dir(None)
    traced = jp.recover(A, Y)
    _exported.use_dir(os.path.dirname(export_dir))
    exported = jp.recover(A, Y)
    for field in traced._fields:
        np.testing.assert_array_equal(
            np.asarray(getattr(exported, field)), np.asarray(getattr(traced, field)), err_msg=field
        )
    assert bool(np.all(traced.certified))


def _tiny():
    # the mechanism is generic: a cheap program keeps these tests from compiling the solver again
    fn = jax.jit(lambda a, b: (a @ b, jnp.sum(a, axis=0)))
    a, b = jnp.arange(12.0).reshape(4, 3), jnp.ones((3, 2))
    return fn, (a, b), [np.asarray(o) for o in fn(a, b)]


def test_a_damaged_or_mismatched_file_is_exported_again(export_dir):
    fn, args, want = _tiny()
    _exported.call(fn, "tiny", 2, *args)
    (name,) = os.listdir(export_dir)
    path = os.path.join(export_dir, name)
    blob = open(path, "rb").read()
    flipped = bytearray(blob)
    flipped[len(blob) * 3 // 5] ^= 0xFF  # may still deserialize, and then fail to compile
    for damage in (b"not a program", blob[: len(blob) // 2], bytes(flipped)):
        with open(path, "wb") as f:
            f.write(damage)
        _exported.use_dir(os.path.dirname(export_dir))  # forget the loaded program
        got = _exported.call(fn, "tiny", 2, *args)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), w)
        rewritten = jax.export.deserialize(bytearray(open(path, "rb").read()))  # a whole program again
        assert len(rewritten.in_avals) == 2 and len(rewritten.out_avals) == 2
    # a program with another number of outputs under this key is not used
    _exported.use_dir(os.path.dirname(export_dir))
    assert _exported._read(export_dir, name[: -len(".jaxexport")], "cpu", 3, args) is None
    # the key separates shapes, dtypes, platforms and static arguments (the tag)
    a, b = args
    keys = {
        _exported._key("t", "cpu", args),
        _exported._key("t", "cpu", (a, b[:, :1])),
        _exported._key("t", "cpu", (a.astype(jnp.int32), b)),
        _exported._key("u", "cpu", args),
        _exported._key("t", "cuda", args),
    }
    assert len(keys) == 5


def test_a_cache_directory_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(PermissionError, match="writable by others"):
        jp.enable_compilation_cache(str(shared))
    assert not _exported.enabled()


def test_an_unwritable_cache_costs_time_not_the_result(export_dir, monkeypatch):
    fn, args, want = _tiny()

    def refuse(*a, **k):
        raise PermissionError("read-only")

    monkeypatch.setattr(_exported.tempfile, "mkstemp", refuse)
    got = _exported.call(fn, "tiny", 2, *args)  # exported and run, not stored
    np.testing.assert_array_equal(np.asarray(got[0]), want[0])
    assert not os.path.exists(export_dir) or not os.listdir(export_dir)


def test_least_recently_used_programs_and_dead_temporaries_are_swept(export_dir, monkeypatch):
    fn, args, _ = _tiny()
    _exported.call(fn, "tiny", 2, *args)
    (first,) = os.listdir(export_dir)
    now = time.time()

    def place(name, size, hours):
        path = os.path.join(export_dir, name)
        if size is not None:
            with open(path, "wb") as f:
                f.write(b"x" * size)
        os.utime(path, (now - 3600 * hours,) * 2)

    for name, hours in (("a.jaxexport", 4), ("b.jaxexport", 3), ("c.jaxexport", 2)):
        place(name, 10_000, hours)
    place(first, None, 5)  # the oldest file ...
    _exported.use_dir(os.path.dirname(export_dir))
    _exported.call(fn, "tiny", 2, *args)  # ... until this read marks it used
    place(".tmp-dead", 10, 2)  # left by a killed writer
    place(".tmp-live", 10, 0)  # being written now
    limit = 20_000 + 2 * os.path.getsize(os.path.join(export_dir, first)) + 1000  # room for all but one 10 kB file
    monkeypatch.setattr(_exported, "MAX_BYTES", limit)
    _exported.call(fn, "other tag", 2, *args)  # a second program (same size: the tag only changes its key)
    left = set(os.listdir(export_dir))
    (second,) = left - {first, "a.jaxexport", "b.jaxexport", "c.jaxexport", ".tmp-dead", ".tmp-live"}
    # the least recently used (a) went, the one read lately stayed; so did the live temporary
    assert left == {first, second, "b.jaxexport", "c.jaxexport", ".tmp-live"}
    total = sum(os.path.getsize(os.path.join(export_dir, n)) for n in left if n.endswith(".jaxexport"))
    assert total <= limit
