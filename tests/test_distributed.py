"""purify across two processes (``jax.distributed`` on 127.0.0.1, CPU collectives): each holds
half of every protected leaf; the purified tree must equal the single-process host path's bit for
bit, and the clean tree to float precision."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from shard_case import COLUMNS, MAX_ENTRIES, case

import jaxpurify as jp

TESTS = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh processes compile the solver (~30 s on a quiet machine)
def test_two_processes_match_one(tmp_path):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(TESTS), XLA_FLAGS="")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(TESTS, "distributed_case.py"),
                str(i),
                "2",
                str(port),
                str(tmp_path / f"p{i}.npz"),
            ],
            env=env,
        )
        for i in range(2)
    ]
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    cb, clean, bad = case()
    ref, rep = jp.purify(bad, cb, max_entries=MAX_ENTRIES, device=False)
    assert rep.certified == COLUMNS
    for i in range(2):
        with np.load(tmp_path / f"p{i}.npz", allow_pickle=False) as z:
            assert str(z["report"]) == "DeviceReport" and int(z["certified"]) == COLUMNS
            for k in cb.protected:
                np.testing.assert_array_equal(z[f"leaf/{k}"], np.asarray(ref[k]))
                np.testing.assert_allclose(z[f"leaf/{k}"], np.asarray(clean[k]), rtol=1e-5, atol=1e-5)
