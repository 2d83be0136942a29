"""The benchmark problem and peers: what the suite's ratios rest on."""

import numpy as np
import pytest
from reference import lad_highs

from benchmarks import peers, problems


def test_problem_plants_exactly_k_gross_errors_per_column():
    A, X, Y = problems.problem(64, 16, 50, 0.2, seed=3)
    assert A.shape == (64, 16) and X.shape == (16, 50) and Y.shape == (64, 50)
    moved = np.abs(Y - A @ X) > 1e-9
    np.testing.assert_array_equal(moved.sum(0), round(0.2 * 64))
    scale = np.sqrt(np.mean((A @ X) ** 2))
    # magnitudes in [1, 1e3] × the rms of the clean values (up to the rms of the corrupted Y)
    d = np.abs(Y - A @ X)[moved]
    assert d.min() >= 0.5 * scale and d.max() <= 2e3 * scale
    A2, X2, Y2 = problems.problem(64, 16, 50, 0.2, seed=3)
    np.testing.assert_array_equal(Y, Y2)


def test_peer_timing_reports_the_peers_own_accuracy():
    A, X, Y = problems.problem(48, 12, 6, 0.1, seed=1)
    r = peers.time_peer(peers.highs, A, Y, X, np.array([0, 3, 5]))
    assert r["available"] and r["columns_timed"] == 3 and r["columns_per_s"] > 0
    ref = np.stack([lad_highs(A, Y[:, j]) for j in (0, 3, 5)], axis=1)
    assert r["max_rel_err"] == pytest.approx(float(problems.rel_err(ref, X[:, [0, 3, 5]]).max()), abs=1e-9)
    missing = peers.time_peer(lambda A: __import__("not_a_real_module_xyz"), A, Y, X, np.array([0]))
    assert missing == {"available": False, "reason": "not installed (not_a_real_module_xyz)"}


def _cell(K, ratio, rho, m, cps, cert, exact, wrong=0, highs=None):
    rec = {"columns_per_s": cps, "certified": cert, "exact": exact, "columns": m, "certified_wrong": wrong}
    peers = {"HiGHS (linprog)": {"available": True, "max_rel_err": 1e-12, "columns_per_s": highs}} if highs else {}
    return {
        "K": K,
        "n": K // ratio,
        "ratio": ratio,
        "rho": rho,
        "m": m,
        "recover": rec,
        "peers": peers,
        "ratio_to": {"HiGHS (linprog)": cps / highs} if highs else {},
    }


def test_report_grid_tables_show_the_json_figures_and_the_skipped_cells():
    from benchmarks import report

    grid = [
        _cell(64, 2, 0.2, 64, 500.0, 40, 39, wrong=1, highs=10.0),
        _cell(64, 4, 0.05, 64, 9000.0, 64, 64, highs=30.0),
        {"K": 64, "n": 32, "ratio": 2, "rho": 0.2, "m": 4096, "skipped": "predicted 999 s > budget 150 s"},
    ]
    res = {
        "grid": grid,
        "run": {
            "parts": {
                "grid": {
                    "command": "python -m benchmarks.run",
                    "commit": "abc1234",
                    "seconds": 5.0,
                    "load_before": [1.0, 2.0, 3.0],
                    "load_after": [4.0, 5.0, 6.0],
                }
            }
        },
    }
    rows = report.grid_table(res, None)
    assert "`python -m benchmarks.run`" in rows[0] and "1.0/2.0/3.0 before → 4.0/5.0/6.0 after" in rows[0]
    assert "| 64 | 2 | 0.2 | 64 | 500.0 | 40/64 | 39/64 | 1 | 50× |" in rows[4]
    assert "skipped: predicted 999 s > budget 150 s" in rows[6]
    by_k = report.grid_by_k(res, None)
    # 40 + 64 certified, 39 + 64 exact, 1 certified-not-exact of 128 columns; ratios 50× and 300×; m=4096 not run
    assert "| 64 | 50–300× | — | 104 / 103 / 1 of 128 | 2, 0.2, 64: 500.0 | 1 |" in by_k[2]


def test_report_rewrites_only_the_marked_blocks():
    from benchmarks import report

    text = "intro\n<!-- bench:grid -->\nold table\n<!-- /bench:grid -->\nhand-written prose\n"
    new = report.replace_blocks(text, {"grid": "| new |"})
    assert new == "intro\n<!-- bench:grid -->\n| new |\n<!-- /bench:grid -->\nhand-written prose\n"
    with pytest.raises(ValueError, match="bench:roofline"):
        report.replace_blocks(text, {"roofline": "x"})


def test_the_accelerator_check_passes_on_the_cpu_at_toy_sizes(tmp_path):
    # on a CPU-only machine "device" is the CPU: the script's every check must pass there, so that
    # the first run on a GPU or TPU fails only for what differs on that device
    import jax.numpy as jnp

    from benchmarks import accelerator
    from benchmarks.resnet import resnet18_tree

    gpt2_like = {
        "wte": jnp.zeros((96, 32)),
        "h0": {
            "attn": {"c_attn": {"kernel": jnp.zeros((32, 96)), "bias": jnp.zeros(96)}},
            "ln_1": {"scale": jnp.zeros(32)},
        },
    }
    res = accelerator.run([("resnet18 tiny", resnet18_tree(0.02, classes=10), 0.05), ("gpt2-like", gpt2_like, 0.01)])
    p = res["precision"]
    assert (
        p["recover_dots"] > 0
        and p["recover_dots_without_highest"] == 0
        and p["purify_device_dots_without_highest"] == 0
    )
    assert p["product_rel_err_highest"] <= accelerator.FLOAT32_PRODUCT_RTOL
    assert res["recover"]["same_certified"] and res["recover"]["certified_device"] > 0
    for q in res["purify"]:
        # one CPU: the device path and the host path are documented to be bit-identical
        assert q["bit_identical"] and q["same_certified"] and q["max_rel_err_vs_clean"] < 1e-4, q["tree"]
    assert res["ok"]
    assert "| resnet18 tiny |" in accelerator.table(res)
