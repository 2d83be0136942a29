"""The notebook runs top to bottom (quick mode) in a real kernel."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

HERE = os.path.dirname(__file__)


@pytest.mark.slow  # repeats the quick experiments of test_experiments.py in a kernel
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nb = nbformat.read(os.path.join(HERE, "..", "notebooks", "reproduce.ipynb"), as_version=4)
    monkeypatch.setenv("JAXPURIFY_NOTEBOOK_OUT", str(tmp_path))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "synthetic" / "phase.png").exists()
    assert (tmp_path / "digits" / "results.json").exists()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
