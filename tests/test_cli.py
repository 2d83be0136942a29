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
    """An encoded two-layer MLP (every leaf protected along an axis of ≥ 8 entries) and its codebook."""
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
    codebook = Codebook.create(params, jax.random.key(0))
    clean = jax.tree.map(np.asarray, codebook.decode(codebook.init_latent(params)))
    return clean, codebook


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": np.asarray(v)})
    return out


def _read(fmt, path):
    """The purified checkpoint, read by its format's own reader."""
    if fmt == "safetensors":
        return safetensors.numpy.load_file(path)
    if fmt == "msgpack":
        with open(path, "rb") as f:
            return _flat(serialization.msgpack_restore(f.read()))
    with ocp.StandardCheckpointer() as c:
        return _flat(c.restore(os.path.abspath(path)))


def _damage(clean, entries: float, seed: int = 1):
    """Gross errors (±10…100) on a fraction `entries` of each leaf (≥ 1 entry), whatever the layout."""
    rng = np.random.default_rng(seed)
    bad = {}
    for path, w in _flat(clean).items():
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
    got, want = _read(fmt, out), _flat(clean)
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
    bad = _damage(clean, entries=0.6)  # most entries of every column: beyond any capacity
    io.save(src, bad)
    assert cli.main(["purify", src, "--codebook", book, "--out", out, "--report", rep]) == 1
    with open(rep) as f:
        assert json.load(f)["ok"] is False
    # default 'input': every entry is either recovered (its clean value) or left as it came
    got, c, b = safetensors.numpy.load_file(out), _flat(clean), _flat(bad)
    for p in c:
        recovered = np.isclose(got[p], c[p], rtol=1e-5, atol=1e-5 * np.abs(c[p]).max())
        assert np.all(recovered | (got[p] == b[p])), p
        assert np.any(got[p] == b[p]), p  # and not everything was certified
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
    codebook = Codebook.create(clean, jax.random.key(3), select=lambda p, leaf: False if p == skip else None)
    encoded = jax.tree.map(np.asarray, codebook.decode(codebook.init_latent(clean)))
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
        for p, w in _flat(clean).items()
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
    assert cli.main([*argv, "--report", rep]) == 0  # opted in by name: purified, and the report says so
    printed = capsys.readouterr()
    assert "legacy version-1 file, NOT authenticated" in printed.out
    assert "jaxpurify purify: LegacyCodebookWarning: " in printed.err and "Traceback" not in printed.err
    with open(rep) as f:
        assert json.load(f)["legacy_codebook"] is True


def test_min_seal_counter_refuses_a_replayed_older_codebook(tmp_path, capsys, model):
    clean, codebook = model
    book, src, out = (str(tmp_path / f) for f in ("cb.json", "m.msgpack", "p.msgpack"))
    codebook.save(book)
    cb = Codebook.load(book)  # a copy: the module's codebook stays unsealed
    cb.seal(clean)
    cb.save(book)
    older = open(book, "rb").read()
    cb.seal(clean)  # counter 2: the weights were re-sealed
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


@pytest.mark.parametrize("case", ["mismatch", "truncated", "suffix", "codebook"])
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
    elif case == "truncated":
        data = open(src, "rb").read()
        with open(src, "wb") as f:
            f.write(data[: len(data) // 2])
    elif case == "suffix":
        out = str(tmp_path / "p.safetensors")  # the output keeps the input's format
    else:
        with open(book, "w") as f:
            f.write("{not json")
    assert cli.main(["purify", src, "--codebook", book, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxpurify purify: ")
    assert {"mismatch": "Dense_1", "truncated": "cannot read", "suffix": "suffix", "codebook": "codebook"}[case] in err
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
    from jaxpurify import _cache

    calls = []
    monkeypatch.setattr(_cache, "enable_compilation_cache", lambda *a, **k: calls.append(a))
    monkeypatch.setenv("JAXPURIFY_NO_COMPILATION_CACHE", env)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # set by conftest for the test run
    clean, codebook = model
    book, src = str(tmp_path / "codebook.json"), str(tmp_path / "m.msgpack")
    codebook.save(book)
    io.save(src, clean)
    assert cli.main(["purify", src, "--codebook", book, "--out", str(tmp_path / "p.msgpack"), *flag]) == 0
    assert len(calls) == int(enabled)
