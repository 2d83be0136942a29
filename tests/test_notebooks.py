"""The Colab notebooks run top to bottom in a real kernel, in quick mode, on CPU, without network.

Each notebook asserts its own result in its last cells (report.ok, every leaf back to 1e-5), so an
error output is a failed purification; here we also check what a Colab user sees first: the badge
pointing at the notebook itself and an install cell driven by one REPO variable, skipped because
jaxpurify is importable (the kernel gets this worktree first on PYTHONPATH).
"""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NOTEBOOKS = ["quickstart", "colab_accelerators"]
ALL = NOTEBOOKS + ["reproduce"]


def _run(name, tmp_path, monkeypatch):
    nb = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
    monkeypatch.setenv("JAXPURIFY_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the suite's claim is "on CPU", even on a GPU machine
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(nb):
    return "".join(o.get("text", "") for o in _outputs(nb) if o.get("output_type") == "stream")


@pytest.mark.parametrize("name", ALL)
def test_opens_with_badge_and_one_repo_variable(name):
    nb = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
    first, install = nb.cells[0], nb.cells[1]
    assert first.cell_type == "markdown"
    badge = re.search(r"\]\((https://colab\.research\.google\.com/github/([^)]+))\)", first.source)
    assert badge and badge.group(2).endswith(f"/blob/main/notebooks/{name}.ipynb")
    repo = re.findall(r'^REPO = "(https://github\.com/[^"]+)"', install.source, re.M)
    assert len(repo) == 1 and badge.group(2).startswith(repo[0].removeprefix("https://github.com/") + "/")
    assert 'find_spec("jaxpurify") is None' in install.source and "git+{REPO}" in install.source
    assert "github.com" not in "".join(c.source for c in nb.cells[2:] if c.cell_type == "code")


@pytest.mark.slow  # a kernel, jax, training, and the solver's first compilation: ~30 s on a quiet core
def test_quickstart_runs_and_plots(tmp_path, monkeypatch):
    nb = _run("quickstart", tmp_path, monkeypatch)
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error"]
    assert not nb.cells[1].outputs  # install skipped: nothing printed, nothing fetched
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb))
    text = _text(nb)
    assert "quick mode" in text
    errs = [float(e) for e in re.findall(r"max relative error (\S+)", text)]
    assert len(errs) == 6 and max(errs) <= 1e-5  # the six leaves of the CNN


@pytest.mark.slow  # as above
def test_accelerators_reports_device_and_timings(tmp_path, monkeypatch):
    nb = _run("colab_accelerators", tmp_path, monkeypatch)
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error"]
    text = _text(nb)
    assert re.search(r"^device: cpu \(", text, re.M)
    times = dict(
        re.findall(
            r"^(train \(\d+ steps\)|purify, first call \(compiles\)|purify, second call)\s+([\d.]+) s", text, re.M
        )
    )
    assert len(times) == 3 and all(float(t) > 0 for t in times.values())
    cert = re.search(r"certified columns: (\d+)/(\d+); max relative error per leaf: (\S+)", text)
    assert cert and cert.group(1) == cert.group(2) and float(cert.group(3)) <= 1e-5
