"""Runs a notebook of notebooks/ top to bottom with nbclient and returns what it printed."""

import os
import re

import nbformat
from nbclient import NotebookClient

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks")

# Third-party lines a notebook must not show (t5x_lite.runtime.logs.quiet() in its first cell): CUDA
# probing by TensorFlow, seqio's packing and FunctionDataset warnings, orbax's metadata one.
STDERR_NOISE = ("cuInit", "cudart_stub", "oneDNN", "absl::InitializeLog",
                "will be removed during packing", "uncached FunctionDataset",
                "Metadata file does not exist", "'logger_cls' is empty")


def notebook_path(name: str) -> str:
  return os.path.join(NOTEBOOK_DIR, f"{name}.ipynb")


def run_notebook(name: str, tmp_path) -> str:
  """Executes notebooks/<name>.ipynb in tmp_path (its working directory); returns its text.

  The text is every code cell's stdout and the text/plain of its displayed values, in order,
  without terminal colour codes (rich colours the numbers in what it displays).
  A cell that raises fails the test with the cell and its traceback (nbclient's error), and
  so does a STDERR_NOISE line in any cell's stderr.
  The kernel inherits this process's environment (PYTHONPATH, HF_HUB_OFFLINE).
  """
  notebook = nbformat.read(notebook_path(name), as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  parts, stderr = [], []
  for cell in notebook.cells:
    if cell.cell_type != "code":
      continue
    for output in cell.get("outputs", []):
      if output.get("output_type") == "stream" and output.get("name") == "stdout":
        parts.append(output["text"])  # a print may arrive in several chunks
      elif output.get("output_type") == "stream" and output.get("name") == "stderr":
        stderr.append(output["text"])
      elif "data" in output:
        parts.append(output["data"].get("text/plain", "") + "\n")
  noise = [line for line in "".join(stderr).splitlines()
           if any(text in line for text in STDERR_NOISE)]
  assert not noise, f"{name}.ipynb printed third-party noise to stderr: {noise}"
  return re.sub(r"\x1b\[[0-9;]*m", "", "".join(parts))
