import json
import os
import subprocess
import sys
import tomllib
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
from flax import serialization
from reference import flat_paths, read_checkpoint

import jaxpurify
from jaxpurify import Codebook, cli, demo, io
from jaxpurify._keys import WeakKeyWarning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = {"orbax": "ckpt", "safetensors": "model.safetensors", "msgpack": "model.msgpack"}


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch):
    # tests must not write compiled programs into the user's cache directory
    monkeypatch.setenv("JAXPURIFY_NO_COMPILATION_CACHE", "1")


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "jaxpurify.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


# -- demo, bench, usage (unchanged behaviour) -----------------------------------------------------


def test_demo_recovers_every_scenario_within_capacity(capsys):
    # small model, few steps: the same scenarios as `jaxpurify demo`
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeakKeyWarning)  # issue 25: the demo protects with a strong key
        assert demo.run(filters=64, steps=60) == 0
    out = capsys.readouterr().out
    assert "gross errors 20%" in out and "beyond capacity" in out
    rows = [line for line in out.splitlines() if line.startswith("gross errors 45%")]
    assert rows and " no " in rows[0]  # beyond capacity: honestly not recovered


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--filters", "2"])
    assert e.value.code == 2 and "--filters" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2


def test_the_benchmark_suite_parses_its_own_arguments(capsys):
    # the suite lives in the checkout's benchmarks/ (not in the package); benchmarks are not timed in tests
    from benchmarks import suite

    with pytest.raises(SystemExit) as e:
        suite.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--only" in out and "--quick" in out and out.startswith("usage: python -m benchmarks.run")


def test_version_is_the_package_and_project_version():
    r = _run("--version")
    assert r.returncode == 0
    name, version = r.stdout.split()
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    assert name == "jaxpurify" and version == jaxpurify.__version__ == declared


# -- reproduce: help per experiment, extras checked first ----------------------------------------


@pytest.mark.parametrize(
    "experiment, has, lacks",
    [
        ("synthetic", ["--no-lp", "--out"], ["--arch", "--data-dir", "--lr"]),
        ("noise", ["--out", "--quick"], ["--no-lp", "--arch", "--data-dir"]),
        ("digits", ["--arch", "--steps", "--lr", "--redundancy"], ["--no-lp", "--data-dir", "--source"]),
        ("mnist", ["--arch", "--data-dir", "--source"], ["--no-lp"]),
    ],
)
def test_each_experiment_has_its_own_help(capsys, experiment, has, lacks):
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", experiment, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: jaxpurify reproduce {experiment}")
    assert all(flag in out for flag in has), out
    assert not any(flag in out for flag in lacks), out


@pytest.mark.parametrize(
    "argv, missing",
    [
        (["digits", "--quick"], {"matplotlib"}),
        (["synthetic", "--quick"], {"scipy"}),
        (["noise"], {"matplotlib"}),
    ],
)
def test_missing_extras_are_reported_before_any_work(tmp_path, monkeypatch, capsys, argv, missing):
    from jaxpurify.experiments import noise, realdata, synthetic

    real_find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util, "find_spec", lambda name, *a: None if name in missing else real_find_spec(name, *a)
    )
    for mod in (noise, realdata, synthetic):
        monkeypatch.setattr(mod, "run", lambda *a, **k: pytest.fail("work started before the extras check"))
    out = tmp_path / "out"
    assert cli.main(["reproduce", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(m in err for m in missing) and 'pip install "jaxpurify[paper]"' in err
    assert not out.exists()


# -- purify ---------------------------------------------------------------------------------------


def _model():
    """An encoded two-layer MLP (every leaf protected) and its codebook."""
    rng = np.random.default_rng(0)
    params = {
        "params": {
            "Dense_0": {
                "kernel": rng.standard_normal((6, 16)).astype(np.float32),
                "bias": rng.standard_normal(16).astype(np.float32),
            },
            "Dense_1": {
                "kernel": rng.standard_normal((16, 12)).astype(np.float32),
                "bias": rng.standard_normal(12).astype(np.float32),
            },
        }
    }
    # Dense_1's kernel in the paper's single-axis layout (K = 16, 12 columns), the rest pooled by
    # the default (one column of 124 entries): damage can then be kept to some columns
    codebook = Codebook.create(
        params,
        b"test-cli-model-secret-0123456789",
        select=lambda path, leaf: 0 if path.endswith("Dense_1/kernel") else None,
    )
    clean = jax.tree.map(np.asarray, codebook.decode(codebook.init_latent(params)))
    codebook = codebook.seal(clean)  # the command line refuses an unsealed codebook unless told --unsealed
    return clean, codebook


def _damage(clean, entries: float, seed: int = 1):
    """Gross errors (±10…100) on a fraction `entries` of each leaf (≥ 1 entry), whatever the layout."""
    rng = np.random.default_rng(seed)
    bad = {}
    for path, w in flat_paths(clean).items():
        flat = w.copy().reshape(-1)
        k = max(1, int(entries * flat.size))
        idx = rng.choice(flat.size, k, replace=False)
        flat[idx] += rng.choice([-1, 1], k) * rng.uniform(10, 100, k)
        bad[path] = flat.reshape(w.shape)
    return io._nest(bad)


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.mark.parametrize("fmt", FORMATS)
def test_purify_a_checkpoint_in_each_format(tmp_path, capsys, model, fmt):
    clean, codebook = model
    book = str(tmp_path / "codebook.json")
    codebook.save(book)
    src, out, rep = (
        str(tmp_path / FORMATS[fmt]),
        str(tmp_path / ("purified" + os.path.splitext(FORMATS[fmt])[1])),
        str(tmp_path / "r.json"),
    )
    io.save(src, _damage(clean, entries=0.01))  # 1 or 2 entries per leaf: within capacity
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--report", rep]) == 0
    printed = capsys.readouterr().out
    assert "ok" in printed
    got, want = read_checkpoint(out, fmt), flat_paths(clean)
    assert sorted(got) == sorted(want)
    for p in want:
        assert got[p].dtype == want[p].dtype
        np.testing.assert_allclose(got[p], want[p], rtol=1e-5, atol=1e-5 * np.abs(want[p]).max(), err_msg=p)
    with open(rep) as f:
        report = json.load(f)
    assert report["ok"] is True and report["format"] == fmt and report["checkpoint"] == src


def test_uncertified_columns_exit_1_and_raise_writes_nothing(tmp_path, capsys, model):
    clean, codebook = model
    book = str(tmp_path / "codebook.json")
    codebook.save(book)
    src, out, rep = str(tmp_path / "m.safetensors"), str(tmp_path / "p.safetensors"), str(tmp_path / "r.json")
    bad = flat_paths(_damage(clean, entries=0.01))
    bad["params/Dense_1/kernel"] = flat_paths(_damage(clean, entries=0.6))["params/Dense_1/kernel"]  # beyond capacity
    bad = io._nest(bad)
    io.save(src, bad)
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--report", rep]) == 1
    with open(rep) as f:
        assert json.load(f)["ok"] is False
    # default 'input': every entry is either recovered (its clean value) or left as it came
    got, c, b = safetensors.numpy.load_file(out), flat_paths(clean), flat_paths(bad)
    for p in c:
        recovered = np.isclose(got[p], c[p], rtol=1e-5, atol=1e-5 * np.abs(c[p]).max())
        assert np.all(recovered | (got[p] == b[p])), p
    assert not np.all(np.isclose(got["params/Dense_1/kernel"], c["params/Dense_1/kernel"]))  # not all certified
    capsys.readouterr()
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--on-uncertified", "estimate"]) == 1
    err = capsys.readouterr().err
    assert "UncertifiedWarning" in err and err.count("\n") == 2  # the warning in one line, then "wrote …"
    os.remove(out)
    assert (
        cli.main(["purify", src, "--codebook", book, "--out", out, "--on-uncertified", "raise", "--report", rep]) == 1
    )
    assert not os.path.exists(out)
    with open(rep) as f:
        assert json.load(f)["on_uncertified"] == "raise"


def test_an_unprotected_leaf_exits_1(tmp_path, capsys, model):
    clean, _ = model
    skip = "params/Dense_1/bias"
    codebook = Codebook.create(
        clean, b"test-cli-skip-secret-0123456789!", select=lambda p, leaf: None if p != skip else False
    )
    encoded = jax.tree.map(np.asarray, codebook.decode(codebook.init_latent(clean)))
    codebook = codebook.seal(encoded)
    book, src, out, rep = (str(tmp_path / f) for f in ("codebook.json", "m.msgpack", "p.msgpack", "r.json"))
    codebook.save(book)
    io.save(src, encoded)
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--report", rep]) == 1
    assert skip in capsys.readouterr().out  # the report names it
    with open(rep) as f:
        report = json.load(f)
    assert report["ok"] is False and report["certified"] == report["columns"]  # every protected column fine


def test_key_file_given_with_key(tmp_path, capsys, model):
    clean, codebook = model
    book, key, src, out = (str(tmp_path / f) for f in ("codebook.json", "secret.key", "m.msgpack", "p.msgpack"))
    codebook.save(book, key_path=key)  # the key kept apart from the codebook's default place
    io.save(src, clean)
    assert cli.main(["purify", src, "--codebook", book, "--out", out]) == 2  # no key beside the codebook
    assert "key" in capsys.readouterr().err and not os.path.exists(out)
    assert cli.main(["purify", src, "--codebook", book, "--key", key, "--out", out]) == 0


def test_a_forged_version_1_codebook_is_refused_unless_allowed(tmp_path, capsys, model):
    # issue 25: a hand-written version-1 codebook (the attacker's key words inside, no MAC) and a
    # model re-encoded with it gave exit 0, "ok", even with --key naming the real key file
    clean, codebook = model
    codebook.save(tmp_path / "real.json")
    leaves = [
        {"path": p, "shape": list(w.shape), "dtype": "float32", "axis": w.ndim - 1, "K": w.shape[-1], "n": 3}
        for p, w in flat_paths(clean).items()
    ]
    forged = {"format": "jaxpurify.codebook", "version": 1, "key": [0, 7], "redundancy": 4.0, "leaves": leaves}
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    with pytest.warns(jaxpurify.LegacyCodebookWarning):
        theirs = Codebook.load(tmp_path / "forged.json", allow_legacy=True)
    latent = {p: np.ones(t.shape, np.float32) for p, t in theirs.encode(clean).items()}
    evil = jax.tree.map(np.asarray, theirs.decode(latent))
    src, out, rep = (str(tmp_path / f) for f in ("evil.msgpack", "p.msgpack", "r.json"))
    io.save(src, {"params": evil["params"]} if "params" in evil else evil)
    book = str(tmp_path / "forged.json")
    for extra in ([], ["--key", str(tmp_path / "real.json.key")]):
        assert cli.main(["purify", src, "--codebook", book, "--out", out, *extra]) == 2
        assert "--allow-legacy" in capsys.readouterr().err and not os.path.exists(out)
    argv = ["purify", src, "--codebook", book, "--out", out, "--allow-legacy"]
    assert cli.main([*argv, "--key", str(tmp_path / "real.json.key")]) == 2
    assert "wrong key" in capsys.readouterr().err and not os.path.exists(out)
    # opted in by name (and to its missing seal): purified, and the report says so
    assert cli.main([*argv, "--unsealed", "--report", rep]) == 0
    printed = capsys.readouterr()
    assert "legacy version-1 file, NOT authenticated" in printed.out
    assert "jaxpurify purify: warning: LegacyCodebookWarning: " in printed.err and "Traceback" not in printed.err
    with open(rep) as f:
        assert json.load(f)["legacy_codebook"] is True


def test_min_seal_counter_refuses_a_replayed_older_codebook(tmp_path, capsys, model):
    clean, codebook = model
    book, src, out = (str(tmp_path / f) for f in ("cb.json", "m.msgpack", "p.msgpack"))
    cb = codebook.seal(clean, counter=1)  # a new codebook: the module's stays as it is
    cb.save(book)
    older = open(book, "rb").read()
    cb = cb.seal(clean)  # counter 2: the weights were re-sealed
    cb.save(book)
    with open(book, "wb") as f:
        f.write(older)  # replayed
    io.save(src, clean)
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--min-seal-counter", "2"]) == 2
    assert "stale codebook: its seal has counter 1" in capsys.readouterr().err and not os.path.exists(out)
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--min-seal-counter", "1"]) == 0


def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path, model):
    clean, codebook = model
    book = str(tmp_path / "codebook.json")
    codebook.save(book)
    r = _run("purify", str(tmp_path / "missing.msgpack"), "--codebook", book, "--out", str(tmp_path / "p.msgpack"))
    assert (
        r.returncode == 2
        and "missing.msgpack" in r.stderr
        and r.stderr.count("\n") == 1
        and "Traceback" not in r.stderr
    )


@pytest.mark.parametrize("case", ["mismatch", "suffix", "codebook"])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, model, case):
    clean, codebook = model
    book = str(tmp_path / "codebook.json")
    codebook.save(book)
    src, out = str(tmp_path / "m.msgpack"), str(tmp_path / "p.msgpack")
    io.save(src, clean)
    if case == "mismatch":  # a checkpoint of another model
        other = dict(
            clean["params"], Dense_1={"kernel": np.zeros((16, 20), np.float32), "bias": np.zeros(20, np.float32)}
        )
        io.save(src, {"params": other})
    elif case == "suffix":
        out = str(tmp_path / "p.safetensors")  # the output keeps the input's format
    else:
        with open(book, "w") as f:
            f.write("{not json")
    assert cli.main(["purify", src, "--codebook", book, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxpurify purify: ")
    assert {"mismatch": "Dense_1", "suffix": "suffix", "codebook": "codebook"}[case] in err
    assert not os.path.exists(out)


# -- compilation cache ----------------------------------------------------------------------------


def test_enable_compilation_cache_stores_compiled_programs(tmp_path):
    code = (
        "import jax, jaxpurify; p = jaxpurify.enable_compilation_cache(); "
        "jax.jit(lambda x: x * 2 + 1)(jax.numpy.ones(3)).block_until_ready(); print(p)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    where = os.path.join(str(tmp_path), "jaxpurify", "xla")
    assert r.stdout.strip() == where and os.listdir(where)  # at least one compiled program on disk
    assert os.stat(where).st_mode & 0o077 == 0  # nobody else may write (or read) the trusted cache


@pytest.mark.parametrize(
    "flag, env, enabled", [([], "0", True), (["--no-compilation-cache"], "0", False), ([], "1", False)]
)
def test_cli_enables_the_cache_unless_told_not_to(tmp_path, monkeypatch, model, flag, env, enabled):
    # whether the CLI asks for the cache; that the cache itself works is the test above
    calls = []
    monkeypatch.setattr(jaxpurify, "enable_compilation_cache", lambda *a, **k: calls.append(a))
    monkeypatch.setenv("JAXPURIFY_NO_COMPILATION_CACHE", env)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # set by conftest for the test run
    clean, codebook = model
    book, src = str(tmp_path / "codebook.json"), str(tmp_path / "m.msgpack")
    codebook.save(book)
    io.save(src, clean)
    assert cli.main(["purify", src, "--codebook", book, "--out", str(tmp_path / "p.msgpack"), *flag]) == 0
    assert len(calls) == int(enabled)


@pytest.mark.parametrize("value, disabled", [("", False), ("0", False), (" Off ", False), ("no", False), ("1", True)])
def test_the_environment_turns_the_cache_off(monkeypatch, value, disabled):
    monkeypatch.setenv("JAXPURIFY_NO_COMPILATION_CACHE", value)
    assert jaxpurify.compilation_cache_disabled_by_env() is disabled


# -- safe by default, outputs, layouts, damaged containers (issue 22) -----------------------------


def _book(tmp_path, codebook, name="codebook.json"):
    book = str(tmp_path / name)
    codebook.save(book)
    return book


def test_an_unsealed_codebook_stops_unless_told_unsealed(tmp_path, capsys, model):
    clean, _ = model
    unsealed = Codebook.create(clean, b"test-cli-unsealed-secret-0123456")
    encoded = jax.tree.map(np.asarray, unsealed.decode(unsealed.init_latent(clean)))
    with pytest.warns(jaxpurify.UnsealedCodebookWarning):
        book = _book(tmp_path, unsealed)
    src, out = str(tmp_path / "m.msgpack"), str(tmp_path / "p.msgpack")
    io.save(src, encoded)
    assert cli.main(["purify", src, "--codebook", book, "--out", out]) == cli.EXIT_UNSEALED == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no keyed seal" in err and "range(A)" in err and "--unsealed" in err
    assert "codebook = codebook.seal(deployed)" in err  # the sealed codebook is seal()'s result
    assert not os.path.exists(out)
    rep = str(tmp_path / "r.json")
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--report", rep, "--unsealed"]) == 0
    printed = capsys.readouterr().out
    assert "keyed seal not checked" in printed and "changes inside range(A) cannot be detected" in printed
    with open(rep) as f:
        report = json.load(f)
    assert report["seal_checked"] is False and "not checked" in report["seal_statement"]
    assert "not checked" in report["status"]


def test_the_report_says_the_seal_was_checked(tmp_path, capsys, model):
    clean, codebook = model
    book, src, out, rep = _book(tmp_path, codebook), *(str(tmp_path / f) for f in ("m.msgpack", "p.msgpack", "r.json"))
    io.save(src, clean)
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--report", rep]) == 0
    assert "keyed seal checked: all 4 sealed leaves verified" in capsys.readouterr().out
    with open(rep) as f:
        report = json.load(f)
    assert report["seal_checked"] is True and report["seal_statement"].startswith("keyed seal checked")
    assert "seal verified" in report["status"]


def test_the_codebook_of_a_same_shaped_other_model_is_called_wrong_and_nothing_written(tmp_path, capsys, model):
    clean, _ = model
    other = Codebook.create(clean, b"test-cli-another-secret-01234567")  # same shapes, another key
    other = other.seal(jax.tree.map(np.asarray, other.decode(other.init_latent(clean))))
    book, src, out, rep = _book(tmp_path, other), *(str(tmp_path / f) for f in ("m.msgpack", "p.msgpack", "r.json"))
    io.save(src, clean)
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--report", rep]) == cli.EXIT_WRONG_CODEBOOK
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "probably not this checkpoint's codebook" in err and "not written" in err
    assert not os.path.exists(out)
    with open(rep) as f:
        report = json.load(f)
    assert report["wrong_codebook"] is True and report["certified"] == 0 and report["out"] is None


@pytest.mark.parametrize(
    "case", ["out-dir", "report-dir", "out-parent", "report-parent", "report-is-out", "orbax-file"]
)
def test_outputs_are_checked_before_any_work(tmp_path, capsys, monkeypatch, model, case):
    import jaxpurify

    clean, codebook = model
    book = _book(tmp_path, codebook)
    fmt = "orbax" if case == "orbax-file" else "msgpack"
    src = str(tmp_path / ("ckpt" if fmt == "orbax" else "m.msgpack"))
    io.save(src, clean)
    out, rep = str(tmp_path / ("purified" if fmt == "orbax" else "p.msgpack")), str(tmp_path / "r.json")
    if case == "out-dir":
        os.mkdir(out)
    elif case == "report-dir":
        os.mkdir(rep)
    elif case == "out-parent":
        out = str(tmp_path / "missing" / "p.msgpack")
    elif case == "report-parent":
        rep = str(tmp_path / "missing" / "r.json")
    elif case == "report-is-out":
        rep = out
    else:
        with open(out, "w") as f:
            f.write("not a checkpoint")
    monkeypatch.setattr(jaxpurify, "purify", lambda *a, **k: pytest.fail("purify ran before the outputs were checked"))
    monkeypatch.setattr(cli, "load_codebook", lambda *a, **k: pytest.fail("work started before the outputs check"))
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--report", rep]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("--out" in err or "--report" in err)
    assert (out if case in ("out-parent",) else rep if case == "report-parent" else tmp_path) and True
    flag_path = {"report-dir": rep, "report-parent": rep, "report-is-out": rep}.get(case, out)
    assert flag_path in err


def _variables(clean):
    rng = np.random.default_rng(5)
    return {
        "params": clean["params"],
        "batch_stats": {"bn": {"mean": rng.standard_normal(16).astype(np.float32), "var": np.ones(16, np.float32)}},
        "step": np.array(300, np.int32),
    }


@pytest.mark.parametrize("made_for, select", [("variables", None), ("inner", "params"), ("inner", None)])
def test_a_subtree_is_purified_and_the_rest_written_back_untouched(tmp_path, capsys, model, made_for, select):
    clean, codebook = model  # made for {"params": …}
    if made_for == "inner":  # made for the params dict itself, as linen's variables["params"]
        codebook = Codebook.create(clean["params"], b"test-cli-inner-secret-0123456789")
        clean = {"params": jax.tree.map(np.asarray, codebook.decode(codebook.init_latent(clean["params"])))}
        codebook = codebook.seal(clean["params"])
    variables = _variables(clean)
    bad = dict(variables, params=_damage(clean, entries=0.01)["params"])
    book, src, out = _book(tmp_path, codebook), str(tmp_path / "m.msgpack"), str(tmp_path / "p.msgpack")
    io.save(src, bad)
    argv = ["purify", src, "--codebook", book, "--out", out] + (["--select", select] if select else [])
    if made_for == "inner" and select is None:
        # a codebook made from the params alone reads the whole variables dict (it knows its params
        # root); the batch statistics beside them are inference state its seal holds no copy of:
        # purified and written, but not ok, and said (``--select params`` leaves them out)
        assert cli.main(argv) == 1
        printed = capsys.readouterr()
        assert "batch_stats/bn/mean" in printed.out and "not checked" in printed.out
    else:
        assert cli.main(argv) == 0
        err = capsys.readouterr().err
        said = "3 other leaves are written back"
        assert (said in err) == (select is None)  # the rule's choice, said in one line
    with open(out, "rb") as f:
        got = flat_paths(serialization.msgpack_restore(f.read()))
    want = flat_paths({"params": clean["params"]})
    for p in want:
        np.testing.assert_allclose(got[p], want[p], rtol=1e-5, atol=1e-5 * np.abs(want[p]).max(), err_msg=p)
    rest = flat_paths({k: v for k, v in variables.items() if k != "params"})
    assert sorted(got) == sorted([*want, *rest])
    for p, v in rest.items():
        assert got[p].dtype == v.dtype and got[p].tobytes() == v.tobytes(), p


def test_an_orbax_checkpoint_manager_directory_and_its_steps(tmp_path, capsys, model):
    clean, codebook = model
    book, root = _book(tmp_path, codebook), str(tmp_path / "run")
    early = _damage(clean, entries=0.01, seed=2)
    late = _damage(clean, entries=0.01, seed=3)
    with ocp.CheckpointManager(root) as m:
        m.save(10, args=ocp.args.StandardSave(jax.tree.map(np.asarray, early)))
        m.save(20, args=ocp.args.StandardSave(jax.tree.map(np.asarray, late)))
        m.wait_until_finished()
    for argv, used in (([root], late), ([root, "--step", "10"], early), ([os.path.join(root, "10")], early)):
        out = str(tmp_path / f"out{len(argv)}")
        rep = out + ".json"
        assert cli.main(["purify", *argv, "--codebook", book, "--out", out, "--report", rep]) == 0
        with ocp.StandardCheckpointer() as c:  # a step directory: its item, restorable by Orbax
            got = flat_paths(jax.tree.map(np.asarray, c.restore(os.path.join(out, "default"))))
        want = flat_paths(clean)
        for p in want:
            np.testing.assert_allclose(got[p], want[p], rtol=1e-5, atol=1e-5 * np.abs(want[p]).max(), err_msg=p)
        with open(rep) as f:
            assert json.load(f)["step"] == (10 if used is early else 20)
        assert os.path.exists(os.path.join(out, "_CHECKPOINT_METADATA"))
    assert cli.main(["purify", root, "--step", "15", "--codebook", book, "--out", str(tmp_path / "x")]) == 2
    assert "no step 15" in capsys.readouterr().err


@pytest.mark.parametrize("header", ["intact", "damaged"])
def test_dot_joined_safetensors_are_read_and_written_back_dot_joined(tmp_path, model, header):
    clean, codebook = model
    book, src, out = _book(tmp_path, codebook), str(tmp_path / "m.safetensors"), str(tmp_path / "p.safetensors")
    bad = flat_paths(_damage(clean, entries=0.01))
    safetensors.numpy.save_file({k.replace("/", "."): v for k, v in bad.items()}, src)  # flatten_dict(sep=".")
    if header == "damaged":
        raw = bytearray(open(src, "rb").read())
        at = raw.find(b'"params.Dense_0.kernel"')
        raw[at : at + 30] = b"\xff" * 30
        with open(src, "wb") as f:
            f.write(bytes(raw))
    assert cli.main(["purify", src, "--codebook", book, "--out", out]) == 0
    got, want = safetensors.numpy.load_file(out), flat_paths(clean)
    assert sorted(got) == sorted(k.replace("/", ".") for k in want)
    for p in want:
        g = got[p.replace("/", ".")]
        np.testing.assert_allclose(g, want[p], rtol=1e-5, atol=1e-5 * np.abs(want[p]).max(), err_msg=p)


def test_a_damaged_container_is_salvaged_and_said_so(tmp_path, capsys, model):
    clean, codebook = model
    book, src, out, rep = _book(tmp_path, codebook), *(str(tmp_path / f) for f in ("m.msgpack", "p.msgpack", "r.json"))
    io.save(src, clean)
    raw = bytearray(open(src, "rb").read())
    kernel = raw.find(clean["params"]["Dense_1"]["kernel"].tobytes())
    raw[kernel - 12 : kernel + 52] = b"\xc1" * 64  # a 64-byte burst over a header and the first floats
    with open(src, "wb") as f:
        f.write(bytes(raw))
    with pytest.raises(Exception):  # noqa: B017 (the format's own reader fails)
        serialization.msgpack_restore(bytes(raw))
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--report", rep]) == 0
    captured = capsys.readouterr()
    assert "damaged msgpack container" in captured.err and "salvaged" in captured.out
    got, want = read_checkpoint(out, "msgpack"), flat_paths(clean)
    for p in want:
        np.testing.assert_allclose(got[p], want[p], rtol=1e-5, atol=1e-5 * np.abs(want[p]).max(), err_msg=p)
    with open(rep) as f:
        report = json.load(f)
    assert report["ok"] is True and report["salvage"]["format"] == "msgpack" and report["salvage"]["container"]


def test_an_unreadable_unprotected_leaf_exits_5_naming_it(tmp_path, capsys, model):
    clean, codebook = model
    variables = _variables(clean)
    codebook = Codebook.create(variables, b"test-cli-variables-secret-012345")
    encoded = dict(
        variables, params=jax.tree.map(np.asarray, codebook.decode(codebook.init_latent(variables)))["params"]
    )
    codebook = codebook.seal(encoded)
    book, src, out = _book(tmp_path, codebook), str(tmp_path / "ckpt"), str(tmp_path / "purified")
    io.save(src, encoded)
    os.remove(os.path.join(src, "batch_stats.bn.var", "0"))  # a chunk of BatchNorm statistics is gone
    r = _run("purify", src, "--codebook", book, "--out", out)
    assert r.returncode == cli.EXIT_UNREADABLE == 5
    assert r.stderr.count("\n") == 1 and "batch_stats/bn/var" in r.stderr and "not protected" in r.stderr
    assert "Traceback" not in r.stderr and not os.path.exists(out)


def test_damaged_orbax_as_flax_docs_write_it_fails_in_lines_not_tracebacks(tmp_path, model):
    clean, codebook = model
    book, src, out = _book(tmp_path, codebook), str(tmp_path / "ckpt"), str(tmp_path / "purified")
    with ocp.StandardCheckpointer() as c:  # OCDBT, compressed
        c.save(src, jax.tree.map(np.asarray, clean))
    for name in os.listdir(os.path.join(src, "d")):  # the b-tree index: every array lost
        _overwrite_middle(os.path.join(src, "d", name))
    r = _run("purify", src, "--codebook", book, "--out", out)
    assert r.returncode == cli.EXIT_UNREADABLE
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxpurify purify: ") and "Traceback" not in r.stderr
    assert "Event loop is closed" not in r.stderr and not os.path.exists(out)


def _overwrite_middle(path):
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64
    with open(path, "wb") as f:
        f.write(bytes(raw))


def test_library_warnings_print_as_one_line(tmp_path, capsys, model):
    clean, codebook = model
    book, src, out = _book(tmp_path, codebook), str(tmp_path / "m.msgpack"), str(tmp_path / "p.msgpack")
    io.save(src, clean)
    os.chmod(book + ".key", 0o644)  # readable by others: a warning, not an error
    assert cli.main(["purify", src, "--codebook", book, "--out", out]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("jaxpurify purify: warning")]
    assert len(warned) == 1 and warned[0].startswith("jaxpurify purify: warning: UserWarning: ")
    assert "key file" in warned[0] and "chmod 600" in warned[0] and "warnings.warn" not in err


def test_help_documents_every_exit_code():
    r = _run("purify", "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0
    for code in range(6):
        assert f"{code} " in text.split("exit status:")[1]
    for flag in ("--select", "--step", "--unsealed"):
        assert flag in text


def test_a_truncated_checkpoint_is_purified_as_far_as_it_goes_and_the_rest_said(tmp_path, capsys, model):
    clean, codebook = model
    book, src, out, rep = _book(tmp_path, codebook), *(str(tmp_path / f) for f in ("m.msgpack", "p.msgpack", "r.json"))
    io.save(src, clean)
    raw = open(src, "rb").read()
    last = clean["params"]["Dense_1"]["kernel"]  # the last leaf in the file: cut off entirely
    with open(src, "wb") as f:
        f.write(raw[: raw.find(last.tobytes())])
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--report", rep]) == 1
    err = capsys.readouterr().err
    assert f"{last.size} entries unreadable in {src} were not recovered: NaN in {out}" in err
    got, want = read_checkpoint(out, "msgpack"), flat_paths(clean)
    assert np.isnan(got["params/Dense_1/kernel"]).all()
    for p in want:
        if p != "params/Dense_1/kernel":
            np.testing.assert_allclose(got[p], want[p], rtol=1e-5, atol=1e-5 * np.abs(want[p]).max(), err_msg=p)
    with open(rep) as f:
        report = json.load(f)
    assert report["salvage"]["leaves"] == [
        {
            "path": "params/Dense_1/kernel",
            "erased": last.size,
            "size": last.size,
            "why": report["salvage"]["leaves"][0]["why"],
        }
    ]
    assert "truncated" in report["salvage"]["leaves"][0]["why"]


def test_a_step_with_several_items_keeps_the_others_as_they_were(tmp_path, model):
    clean, codebook = model
    book, root, out = _book(tmp_path, codebook), str(tmp_path / "run"), str(tmp_path / "purified")
    variables = _variables(clean)
    bad = dict(variables, params=jax.tree.map(np.asarray, _damage(clean, entries=0.01)["params"]))
    with ocp.CheckpointManager(root) as m:
        m.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(bad), metrics=ocp.args.JsonSave({"loss": 0.25})))
        m.wait_until_finished()
    assert cli.main(["purify", root, "--codebook", book, "--out", out]) == 0
    with ocp.StandardCheckpointer() as c:
        got = flat_paths(jax.tree.map(np.asarray, c.restore(os.path.join(out, "state"))))
    want = flat_paths(clean)
    for p in want:
        np.testing.assert_allclose(got[p], want[p], rtol=1e-5, atol=1e-5 * np.abs(want[p]).max(), err_msg=p)
    for p, v in flat_paths({k: v for k, v in variables.items() if k != "params"}).items():
        assert got[p].tobytes() == v.tobytes(), p
    for d, _, files in os.walk(os.path.join(root, "3", "metrics")):  # the other item, byte for byte
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), os.path.join(root, "3"))
            assert open(os.path.join(root, "3", rel), "rb").read() == open(os.path.join(out, rel), "rb").read()
