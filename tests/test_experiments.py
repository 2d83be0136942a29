"""Quick modes of `jaxpurify reproduce …`: files written, and results that could have failed."""

import csv
import json

import pytest

from jaxpurify import cli


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # the paper's experiments end to end: CI runs them with `pytest -m slow`
def test_synthetic_quick(tmp_path, capsys):
    assert cli.main(["reproduce", "synthetic", "--quick", "--out", str(tmp_path)]) == 0
    for leaf in ("weights", "biases"):
        rows = _csv(tmp_path / f"phase_{leaf}.csv")
        assert list(rows[0]) == ["ratio", "rho", "trials", "success_rate", "certified_rate", "lp_success_rate"]
        cell = {(float(r["ratio"]), float(r["rho"])): r for r in rows}
        # deep inside the threshold both our solver and the exact LP always succeed
        assert float(cell[(8.0, 0.1)]["success_rate"]) == 1.0 and float(cell[(8.0, 0.1)]["lp_success_rate"]) == 1.0
        assert float(cell[(4.0, 0.1)]["certified_rate"]) == 1.0
        # far outside (40% at K/n = 2) nothing is recovered, and nothing is certified
        assert float(cell[(2.0, 0.4)]["success_rate"]) == 0.0 and float(cell[(2.0, 0.4)]["certified_rate"]) == 0.0
        for r in rows:  # a certified trial is always a success
            assert float(r["certified_rate"]) <= float(r["success_rate"])
    # per column (quick mode: the same K = 64 instances): a certified column is exact, nothing is
    # certified past the uniqueness bound, and a column succeeds at least as often as a whole trial
    weights = {(float(r["ratio"]), float(r["rho"])): r for r in _csv(tmp_path / "phase_weights.csv")}
    for r in _csv(tmp_path / "phase_columns.csv"):
        assert int(r["K"]) == 64 and int(r["columns"]) == 4 * 16
        assert float(r["certified_exact_rate"]) == float(r["certified_rate"])
        if r["within_bound"] == "False":
            assert float(r["certified_rate"]) == 0.0
        assert float(r["success_rate"]) >= float(weights[(float(r["ratio"]), float(r["rho"]))]["success_rate"])
    func = _csv(tmp_path / "function_check.csv")
    errs = [float(r["output_rel_err"]) for r in func if r["certified"] == "True"]
    assert errs and max(errs) < 1e-4
    assert (tmp_path / "phase.png").stat().st_size > 10_000


def test_uniqueness_bound_is_the_largest_identifiable_error_count():
    import math

    import numpy as np

    from jaxpurify import Codebook
    from jaxpurify.experiments import synthetic

    for K in (64, 256):
        for ratio in (1.5, 2, 3, 4, 6, 8):
            cb = Codebook.create({"w": np.ones((K, 3), np.float32)}, b"k" * 32, redundancy=ratio, select=lambda p, _: 0)
            n = cb.specs["w"].n
            assert synthetic.latent_rows(K, ratio) == n
            k_max = max(k for k in range(K) if 2 * k < K - n + 1)  # by enumeration
            assert math.ceil(synthetic.uniqueness_bound(K, ratio) * K) - 1 == k_max


@pytest.mark.slow
def test_noise_quick(tmp_path):
    assert cli.main(["reproduce", "noise", "--quick", "--out", str(tmp_path)]) == 0
    rows = [{k: float(v) for k, v in r.items()} for r in _csv(tmp_path / "noise.csv")]
    rows = sorted(rows, key=lambda r: r["sigma"])
    pos = [r for r in rows if r["sigma"] > 0]
    # l1 error proportional to sigma: the ratio err/sigma stays within a small band
    ratios = [r["l1_err"] / r["sigma"] for r in pos]
    assert max(ratios) / min(ratios) < 3
    assert rows[0]["l1_err"] < 1e-5  # no dense noise: exact
    # the l2 projection is ruined by the sparse part at every noise level
    assert all(r["l2_err"] > 100 * r["l1_err"] for r in pos)
    assert (tmp_path / "noise.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["one-hidden", "multi"])
def test_digits_quick(tmp_path, arch):
    assert cli.main(["reproduce", "digits", "--quick", "--arch", arch, "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["acc_clean_encoded"] > 0.8
    within = [r for r in res["scenarios"] if r["kind"] == "gross" and r["within_capacity"]]
    assert within, "the quick grid must include gross errors within capacity"
    for r in within:
        assert abs(r["acc_purified"] - res["acc_clean_encoded"]) <= 0.001, r
        assert r["certified_fraction"] == 1.0, r
    at5 = [r for r in res["scenarios"] if r["kind"] == "gross" and r["level"] == 0.05]
    assert at5, "the quick grid must include 5% gross errors"
    for r in at5:
        assert r["acc_contaminated"] <= res["acc_clean_encoded"] - 0.2, r
    assert (tmp_path / "accuracy.png").exists()


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["reproduce", "mnist", "--out", str(tmp_path), "--data-dir", str(tmp_path)]) == 2
    assert "t10k-images-idx3-ubyte" in capsys.readouterr().err
