"""purify's device path (jaxpurify._shard): under jax.jit, on 1 and 8 devices, against the host path.

References: the host path (NumPy pack, one ``recover`` per call) on one device, bit for bit; the
clean parameters the contaminated tree came from; and a 1-device process for the 8-device one
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX is imported, so
each device count runs in its own subprocess).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from shard_case import COLUMNS, MAX_ENTRIES, case

import jaxpurify as jp
from jaxpurify._shard import DeviceReport

TESTS = os.path.dirname(os.path.abspath(__file__))


def _run(devices: int, path) -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.path.dirname(TESTS),
    )
    subprocess.run([sys.executable, os.path.join(TESTS, "shard_case.py"), str(path)], env=env, check=True, timeout=900)
    with np.load(path, allow_pickle=False) as z:
        return dict(z)


@pytest.mark.slow
def test_eight_devices_bit_identical_to_one_and_sharded(tmp_path):
    one = _run(1, tmp_path / "one.npz")
    eight = _run(8, tmp_path / "eight.npz")
    _, clean, _ = case()
    for k in ("a", "b"):
        np.testing.assert_array_equal(eight[f"device/{k}"], one[f"device/{k}"])
        np.testing.assert_array_equal(one[f"device/{k}"], one[f"host/{k}"])
        np.testing.assert_allclose(eight[f"device/{k}"], clean[k], rtol=1e-5, atol=1e-5)
        assert int(eight[f"devices/{k}"]) == 8 and not bool(eight[f"replicated/{k}"])
        assert int(one[f"devices/{k}"]) == 1
    assert int(eight["certified"]) == int(one["certified"]) == COLUMNS


# the one jit/device-path purify of the default suite (~15 s on a quiet core: two compilations)
def test_device_path_and_jit_bit_identical_to_host_path():
    cb, clean, bad = case()
    host, rep = jp.purify(bad, cb, max_entries=MAX_ENTRIES, device=False)
    dev, drep = jp.purify(bad, cb, max_entries=MAX_ENTRIES, device=True)
    jitted, jrep = jax.jit(lambda p: jp.purify(p, cb, max_entries=MAX_ENTRIES))(bad)
    assert rep.certified == rep.columns == COLUMNS
    assert drep.as_dict() | {"seconds": 0} == rep.as_dict() | {"seconds": 0}
    assert isinstance(jrep, DeviceReport) and bool(jrep.all_certified)
    cols = cb.pack(bad)
    for name in cb.groups:
        # a flagged entry is one the contamination changed (independent of the solver)
        changed = np.asarray(cols[name]) != np.asarray(cb.pack(clean)[name])
        np.testing.assert_array_equal(np.asarray(jrep.outliers[name]), changed)
    for k in cb.protected:
        np.testing.assert_array_equal(np.asarray(dev[k]), np.asarray(host[k]))
        np.testing.assert_array_equal(np.asarray(jitted[k]), np.asarray(host[k]))
        np.testing.assert_allclose(np.asarray(jitted[k]), np.asarray(clean[k]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_jit_keeps_uncertified_input_and_raises_on_request():
    cb, clean, _ = case()
    cols = {k: np.array(v) for k, v in cb.pack(clean).items()}
    name = next(iter(cols))
    cols[name][: cols[name].shape[0] // 2 + 1, 0] += 1e3  # over half the rows of column 0: never certified
    bad = cb.replace(clean, cb.unpack(cols))
    pur, rep = jax.jit(lambda p: jp.purify(p, cb, max_entries=MAX_ENTRIES))(bad)
    assert not bool(rep.certified[name][0]) and int(rep.result[name][0]) != 0
    np.testing.assert_array_equal(np.asarray(cb.pack(pur)[name])[:, 0], cols[name][:, 0])
    with pytest.raises(Exception, match="not certified"):
        jax.block_until_ready(jax.jit(lambda p: jp.purify(p, cb, max_entries=MAX_ENTRIES, on_uncertified="raise"))(bad))


def test_device_false_refuses_traced_leaves():
    cb, clean, _ = case()
    with pytest.raises(ValueError, match="device=False"):
        jax.jit(lambda p: jp.purify(p, cb, device=False))(clean)
    with pytest.raises(TypeError, match="device"):
        jp.purify(clean, cb, device="yes")


def _stack_loop(items, slots, K, n, width, cols, matrices):
    """The stacking rule slot by slot: slot s holds item min(s, last); rows past the group's K are
    NaN in Y and 0 in A, columns of A past its n are 0, places past an item's width repeat its columns."""
    A, Y, ns = np.zeros((slots, K, n), np.float32), np.full((slots, K, width), np.nan, np.float32), []
    for s in range(slots):
        it = items[min(s, len(items) - 1)]
        a, y = matrices[it.group], cols[it.group]
        A[s, : a.shape[0], : a.shape[1]] = a
        Y[s, : a.shape[0]] = [
            [y[k, it.start + j % (it.stop - it.start)] for j in range(width)] for k in range(a.shape[0])
        ]
        ns.append(a.shape[1])
    return A, Y, np.array(ns, np.int32)


def test_host_and_device_stack_fill_slots_as_a_plain_loop():
    """``_shard.stack`` with NumPy (the host path, per call) and with jax.numpy (the device path, per
    batch, padded to a device count of 3) against the rule applied slot by slot, bit for bit."""
    import jax.numpy as jnp

    from jaxpurify import _shard
    from jaxpurify._plan import Call, Item

    rng = np.random.default_rng(0)
    shapes = {"a": (24, 6, 37, "float32"), "b": (20, 5, 11, "float16"), "c": (22, 4, 3, "float32")}
    cols = {g: rng.standard_normal((K, m)).astype(dt) for g, (K, n, m, dt) in shapes.items()}
    matrices = {g: rng.standard_normal((K, n)).astype(np.float32) for g, (K, n, m, dt) in shapes.items()}
    # narrow items inside and at the end of a group, runs of one group, fewer rows / latent rows than
    # the call, empty slots; two calls of one shape (one device batch)
    its = lambda g, *spans: [Item(g, lo, hi) for lo, hi in spans]  # noqa: E731
    calls = [
        Call(
            "float32", 24, 6, 8, 6, tuple(its("a", (0, 8), (8, 16), (16, 20)) + its("c", (0, 3)) + its("a", (20, 24)))
        ),
        Call("float16", 20, 5, 8, 3, tuple(its("b", (0, 8), (8, 11)))),
        Call("float32", 24, 6, 8, 2, tuple(its("a", (24, 32), (32, 37)))),
    ]
    for c in calls:
        got = _shard.stack(c, cols, matrices, c.slots, xp=np)
        for g, r in zip(got, _stack_loop(c.items, c.slots, c.K, c.n, c.width, cols, matrices)):
            np.testing.assert_array_equal(g, r)
    batches = _shard.batches(calls)
    assert len(batches) < len(calls)
    for b in batches:
        slots = _shard.slots_for(b, 3)
        got = _shard.stack(b, {g: jnp.asarray(v) for g, v in cols.items()}, matrices, slots, xp=jnp)
        for g, r in zip(got, _stack_loop(b.items, slots, b.K, b.n, b.width, cols, matrices)):
            np.testing.assert_array_equal(np.asarray(g), r)
