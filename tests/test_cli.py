import subprocess
import sys

import pytest

from jaxpurify import cli, demo


def test_demo_recovers_every_scenario_within_capacity(capsys):
    # small model, few steps: the same scenarios as `jaxpurify demo`
    assert demo.run(filters=64, steps=60) == 0
    out = capsys.readouterr().out
    assert "gross errors 20%" in out and "beyond capacity" in out
    rows = [line for line in out.splitlines() if line.startswith("gross errors 45%")]
    assert rows and " no " in rows[0]  # beyond capacity: honestly not recovered


def test_cli_usage_errors():
    r = subprocess.run([sys.executable, "-m", "jaxpurify.cli", "demo", "--filters", "2"], capture_output=True, text=True)
    assert r.returncode == 2 and "--filters" in r.stderr
    r = subprocess.run([sys.executable, "-m", "jaxpurify.cli"], capture_output=True, text=True)
    assert r.returncode == 2


def test_bench_subcommand_reaches_the_suite(capsys):
    # `jaxpurify bench ARGS` hands ARGS to the suite's own parser (benchmarks are not timed in tests)
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--only" in out and "--quick" in out and out.startswith("usage: jaxpurify bench")
