"""The README's example and the guides' snippets run as written, each in a fresh interpreter and an
empty folder, and print what the pages say they print. The guides' blocks carry a ``docs-test:
skip`` line so that tests/test_docs.py does not run them a second time without these checks."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import safetensors.numpy

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def page_snippet(page: str, heading: str | None = None) -> str:
    """The first Python block of ``page`` (a path from the checkout's root), after ``heading``."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read()
    if heading is not None:
        text = text[text.index(f"\n## {heading}\n") :]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def run_snippet(page: str, tmp_path, heading: str | None = None) -> subprocess.CompletedProcess:
    return run_code(page_snippet(page, heading), tmp_path)


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


def test_readme_example(tmp_path):
    out = run_snippet("README.md", tmp_path, "Example: protect a pretrained model, then purify it")
    assert out.returncode == 0, out.stderr[-3000:]
    acc = {k: float(v) for k, v in re.findall(r"(pretrained|protected|damaged|purified) ([01]\.\d+)", out.stdout)}
    assert set(acc) == {"pretrained", "protected", "damaged", "purified"}, out.stdout
    # purify gives back the protected model: same accuracy, not merely close; the damage was real
    assert acc["purified"] == acc["protected"] > acc["pretrained"] - 0.03 > 0.9 > 0.5 > acc["damaged"]
    assert out.stdout.startswith("ok: ")  # report.status(), printed first
    assert (tmp_path / "codebook.json.key").stat().st_mode & 0o777 == 0o600


def test_protect_a_model_you_train(tmp_path):
    out = run_snippet("docs/guides/train.md", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    acc = dict(re.findall(r"(damaged|purified|deployed) ([01]\.\d+)", out.stdout))
    assert float(acc["purified"]) == float(acc["deployed"]) > 0.8 > float(acc["damaged"])
    assert (tmp_path / "codebook.json.key").stat().st_mode & 0o777 == 0o600


def test_purify_a_checkpoint(tmp_path):
    out = run_snippet("docs/guides/checkpoint.md", tmp_path)
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
    out = run_snippet("docs/guides/nnx.md", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "bn/mean" in out.stdout and "bn/var" in out.stdout
