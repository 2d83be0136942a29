"""The README's usage sections run as written, each in a fresh interpreter and an empty folder."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import safetensors.numpy

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def readme_snippet(heading: str) -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(f"\n## {heading}\n") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_snippet(heading: str, tmp_path) -> subprocess.CompletedProcess:
    return run_code(readme_snippet(heading), tmp_path)


def run_code(code: str, tmp_path) -> subprocess.CompletedProcess:
    """``code`` as a script in ``tmp_path``, with this checkout's package and ``jaxpurify`` command."""
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=ROOT, JAXPURIFY_PROGRESS="0")
    # the console script of this checkout, also when the package is not installed
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "jaxpurify").write_text(
        f"#!{sys.executable}\nimport sys\nfrom jaxpurify.cli import main\nsys.exit(main())\n"
    )
    (bindir / "jaxpurify").chmod(0o755)
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


def test_protect_a_model_you_train(tmp_path):
    out = run_snippet("Protect a model you train", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    acc = dict(re.findall(r"(damaged|purified|deployed) ([01]\.\d+)", out.stdout))
    assert float(acc["purified"]) == float(acc["deployed"]) > 0.8 > float(acc["damaged"])
    assert (tmp_path / "codebook.json.key").stat().st_mode & 0o777 == 0o600


def test_purify_a_checkpoint(tmp_path):
    out = run_snippet("Purify a checkpoint", tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    # the report as the CLI wrote it (JSON), against the damaged file read by safetensors itself:
    # the snippet's 64 bytes of 0xff are 16 float32 NaNs, which purify must count as erasures
    report = json.loads((tmp_path / "report.json").read_text())
    damaged = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    nans = sum(int(np.isnan(v).sum()) for v in damaged.values())
    assert nans == 16
    assert report["ok"] is True and report["certified"] == report["columns"] > 0
    assert sum(leaf["erasures"] for leaf in report["leaves"]) == nans
    assert report["status"].startswith("ok: ") and report["status"] in out.stdout


def test_nnx(tmp_path):
    out = run_snippet("NNX", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "bn/mean" in out.stdout and "bn/var" in out.stdout
