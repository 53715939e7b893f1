"""Every notebook runs top to bottom on a CPU (executed with nbclient)."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path):
  notebook = nbformat.read(path, as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                    for o in cell.get("outputs", []))
  assert "Error" not in outputs
  if path.endswith("quickstart.ipynb"):
    assert "T5-Efficient-TINY: 15,570,688 parameters" in outputs
    assert "'loss':" in outputs


def test_there_is_a_notebook():
  assert NOTEBOOKS
