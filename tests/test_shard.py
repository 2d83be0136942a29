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
