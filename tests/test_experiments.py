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


# -- CIFAR-10 from a tiny fixture in its real binary layout (tests/cifar_fixture.py) ---------------
@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    import cifar_fixture

    root = tmp_path_factory.mktemp("cifar10")
    cifar_fixture.make(str(root))
    return str(root)


def test_the_cifar10_fixture_reads_back_and_trains(cifar10_dir):
    import cifar_fixture
    import jax
    import numpy as np

    from jaxpurify import data
    from jaxpurify.experiments import realdata, recipes

    ds = data.load("cifar10", cifar10_dir)
    assert ds.train.x.shape == (200, 32, 32, 3) and ds.test.x.shape == (40, 32, 32, 3)
    r = recipes.recipe_for("cifar10")
    assert r.shift == 2 and r == recipes.RECIPES["cifar10"]
    for arch in ("one-hidden",):  # the multi CNN at 32 × 32 × 3: the slow end-to-end tests
        model, apply, cb, enc, plain, _ = realdata.train_pair(ds, arch, 0, r._replace(steps=1), progress=False)
        for params in (enc, plain):
            logits = np.asarray(apply(params, ds.test.x))
            assert logits.shape == (40, 10) and np.isfinite(logits).all(), arch
        # the encoded model's protected leaves are in range(A): encode, decode reproduces them
        again = cb.decode(cb.encode(enc))
        for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(enc)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
    # a record written by hand for the fixture is what the reader returns
    other = cifar_fixture.make(str(cifar10_dir) + "-again", per_batch=2, test=3, seed=7)
    again = data.cifar10(str(cifar10_dir) + "-again")
    np.testing.assert_array_equal(np.round(again.test.x * 255), other["test_batch.bin"][0])
    np.testing.assert_array_equal(again.train.y[2:4], other["data_batch_2.bin"][1])


@pytest.mark.slow  # trains, contaminates and purifies at 32 × 32 × 3 (about a minute on 2 cores)
def test_cifar10_quick_runs_end_to_end_on_the_fixture(cifar10_dir, tmp_path):
    argv = ["reproduce", "cifar10", "--quick", "--arch", "one-hidden", "--steps", "150", "--data-dir", cifar10_dir]
    assert cli.main(argv + ["--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["dataset"] == "cifar10" and res["train_examples"] == 200 and res["test_examples"] == 40
    assert res["acc_clean_encoded"] > 0.3  # ten colour-coded classes: chance is 0.1
    within = [r for r in res["scenarios"] if r["kind"] == "gross" and r["within_capacity"]]
    assert within
    for r in within:
        assert r["certified_fraction"] == 1.0 and r["acc_purified"] == res["acc_clean_encoded"], r


# -- reproduce redundancy: accuracy and certified capacity over K/n ------------------------------
def test_redundancy_table_marks_the_default_and_states_the_bound():
    from jaxpurify.experiments import redundancy

    row = lambda ratio, K, k: {
        "ratio": ratio,
        "default": ratio == 4.0,
        "acc_plain": 0.95,
        "acc_encoded": 0.9,
        "largest_K": K,
        "correctable_per_column": k,
        "certified_0.05": 1.0,
        "certified_0.2": 0.25,
    }
    text = redundancy.table({"levels": [0.05, 0.2], "rows": [row(2.0, 64, 16), row(4.0, 64, 24)]})
    lines = text.splitlines()
    assert lines[0].count("|") == 7 and "certified at 5%" in lines[0] and "certified at 20%" in lines[0]
    assert lines[2] == "| 2 | 0.9500 | 0.9000 | 16 of 64 (25.0%) | 1.000 | 0.250 |"
    assert lines[3].startswith("| **4** (default) |")


@pytest.mark.slow  # trains the one-hidden CNN three times and purifies six times (about a minute)
def test_redundancy_quick_on_the_digits(tmp_path):
    import math

    import jax

    from jaxpurify import Codebook, data
    from jaxpurify.experiments import realdata, redundancy

    res = redundancy.run(
        "digits", str(tmp_path), arch="one-hidden", quick=True, steps=40, progress=False, ratios=(1.5, 4.0)
    )
    rows = {r["ratio"]: r for r in res["rows"]}
    assert set(rows) == {1.5, 4.0} and rows[4.0]["default"] and not rows[1.5]["default"]
    ds = data.load("digits", seed=0)
    model, select = realdata.build("one-hidden", ds)
    params0 = model.init(jax.random.key(0), ds.train.x[:1])["params"]
    for ratio, r in rows.items():
        groups = Codebook.create(params0, b"\x00" * 32, redundancy=ratio, select=select).groups.values()
        K = max(g.K for g in groups)  # the layout does not depend on the secret
        n = math.ceil(K / ratio)
        assert r["largest_K"] == K and r["largest_n"] == n
        assert r["correctable_per_column"] == max(k for k in range(K) if 2 * k < K - n + 1)  # by enumeration
    # K/n = 4 corrects up to ~37% of a column: 5-20% gross errors are certified and undone;
    # K/n = 1.5 only ~16%: at 20% no column may be certified
    for level in res["levels"]:
        assert rows[4.0][f"certified_{level:g}"] == 1.0
        assert rows[4.0][f"acc_purified_{level:g}"] == rows[4.0]["acc_encoded"]
    assert rows[1.5]["certified_0.2"] == 0.0
    assert rows[1.5]["acc_plain"] == rows[4.0]["acc_plain"]  # one plain model for every ratio
    assert len(_csv(tmp_path / "redundancy.csv")) == 2
    assert json.loads((tmp_path / "redundancy.json").read_text())["rows"][1]["ratio"] == 4.0


# -- several seeds ---------------------------------------------------------------------------------
def test_realdata_refuses_a_bad_seed_count(tmp_path):
    from jaxpurify.experiments import realdata

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="seeds"):
            realdata.run("digits", str(tmp_path), seeds=bad)


@pytest.mark.slow  # trains two seeds' plain and encoded one-hidden CNNs on the digits (~1 min)
def test_two_seeds_report_each_seed_and_their_spread(tmp_path, capsys):
    import numpy as np

    argv = ["reproduce", "digits", "--quick", "--arch", "one-hidden", "--steps", "60", "--seeds", "2"]
    assert cli.main(argv + ["--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert [s["seed"] for s in res["seeds"]] == [0, 1]
    gaps = [s["acc_encoded"] - s["acc_plain"] for s in res["seeds"]]
    assert res["gap_over_seeds"]["mean"] == pytest.approx(np.mean(gaps))
    assert res["gap_over_seeds"]["min"] == pytest.approx(min(gaps)) and res["gap_over_seeds"]["n"] == 2
    assert res["acc_clean_encoded"] == res["seeds"][0]["acc_encoded"]  # the contaminated model is seed 0's
    assert "2 seeds: encoded" in capsys.readouterr().out
