"""The notebooks run top to bottom on a CPU and print what they claim (executed with nbclient).

quickstart and sharding here; tasks and inference in test_notebooks_tasks_inference.py, so that
`pytest -n 2 --dist loadfile` can run the two halves (about equally long) on different workers.
"""

import os
import re
import subprocess
import sys

import nbformat

from notebook_utils import NOTEBOOK_DIR, notebook_path, run_notebook

NOTEBOOKS = ("quickstart", "tasks", "inference", "sharding")


def test_the_notebooks_are_these_four_saved_without_outputs():
  on_disk = sorted(name[:-len(".ipynb")] for name in os.listdir(NOTEBOOK_DIR)
                   if name.endswith(".ipynb"))
  assert on_disk == sorted(NOTEBOOKS)  # a new notebook needs a test here
  for name in NOTEBOOKS:
    notebook = nbformat.read(notebook_path(name), as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), name


def _install_cell(name):
  notebook = nbformat.read(notebook_path(name), as_version=4)
  cells = [c.source for c in notebook.cells if c.cell_type == "code" and "T5X_LITE_SOURCE" in c.source]
  assert len(cells) == 1, name
  return cells[0]


def test_install_cell_is_shared_and_says_what_to_do_without_a_checkout(tmp_path):
  cells = {name: _install_cell(name) for name in NOTEBOOKS}
  assert len(set(cells.values())) == 1  # one install cell, the same everywhere
  cell = cells["quickstart"]
  # Where t5x_lite cannot be imported (-I -S: no PYTHONPATH, no site-packages), no ../setup.py
  # and no T5X_LITE_SOURCE: the cell stops with the instructions.
  workdir = tmp_path / "notebooks"
  workdir.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "T5X_LITE_SOURCE"}
  result = subprocess.run([sys.executable, "-I", "-S", "-c", cell], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode != 0
  assert "Clone the t5x_lite repository" in result.stderr
  assert "T5X_LITE_SOURCE" in result.stderr
  # A T5X_LITE_SOURCE that is not a clone is refused before pip runs.
  env["T5X_LITE_SOURCE"] = str(tmp_path)
  result = subprocess.run([sys.executable, "-I", "-S", "-c", cell], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=60)
  assert "is not a clone of t5x_lite (no setup.py)" in result.stderr


def test_quickstart(tmp_path):
  out = run_notebook("quickstart", tmp_path)
  assert "t5x_lite from " in out
  assert "T5-Efficient-TINY: 15,570,688 parameters" in out
  assert "435,200 parameters" in out
  assert re.search(r"^'sort: [\d ]+' -> '[\d ]+'$", out, re.M)  # a training example
  # The loss falls: every 20 steps, from about 2.5 to about 0.02.
  losses = [float(x) for x in re.findall(r"^step +\d+: loss (\d+\.\d+)", out, re.M)]
  assert len(losses) == 10, out
  assert losses[-1] < 0.3 * losses[0], losses
  # Exact match on the validation split rises during training (seqio.Evaluator, every 50 steps).
  exact = [float(x) for x in re.findall(r"eval sort_digits/strict_exact_match=([\d.]+)", out)]
  assert len(exact) == 4 and exact[-1] >= 50 and exact[-1] > exact[0], exact
  # Greedy decoding: 8 printed rows, each marked right iff it is the sorted input.
  rows = re.findall(r"^sort: ([\d ]+?) +-> ([\d ]*?) +([✓✗])  \(log p -?\d+\.\d+\)$", out, re.M)
  assert len(rows) == 8, out
  for digits, prediction, mark in rows:
    assert (prediction == " ".join(sorted(digits.split()))) == (mark == "✓"), (digits, prediction)
  assert any(mark == "✓" for _, _, mark in rows)
  assert len({prediction for _, prediction, _ in rows}) > 1  # not one answer for every input
  correct, total = map(int, re.search(r"exact match: (\d+)/(\d+)", out).groups())
  assert total == 64 and correct >= 1


def test_sharding(tmp_path):
  out = run_notebook("sharding", tmp_path)
  assert "t5x_lite from " in out
  assert "CpuDevice(id=7)]" in out
  assert "{'data': 4, 'model': 2}" in out
  # The table: parameter -> shape -> logical axes -> PartitionSpec -> per-device shape.
  table = {m[0]: m[1:] for m in re.findall(
      r"^(\S+) +(\([\d, ]+\)) +(\(.*?\)) +(P\(.*?\)) +(\([\d, ]+\))$", out, re.M)}
  assert table["token_embedder/embedding"] == (
      "(512, 64)", "('vocab', 'embed')", "P('model', None)", "(256, 64)")
  assert table["encoder/layers_0/attention/query/kernel"] == (
      "(64, 8, 8)", "('embed', 'heads', 'kv')", "P(None, 'model', None)", "(64, 4, 8)")
  assert table["decoder/layers_0/mlp/wo/kernel"] == (
      "(128, 64)", "('mlp', 'embed')", "P('model', None)", "(64, 64)")
  assert table["decoder/logits_dense/kernel"][2:] == ("P(None, 'model')", "(64, 256)")
  assert table["encoder/encoder_norm/scale"][2:] == ("P(None,)", "(64,)")
  assert len(table) == 29  # every parameter (one layer per stack)
  # The pictures: 2 column blocks over 'model', then FSDP's 4x2 grid of single devices.
  assert "CPU 0,2,4,6" in out and "CPU 1,3,5,7" in out
  assert "standard rules: P(None, 'model')" in out and "FSDP rules: P('data', 'model')" in out
  assert all(f"│         CPU {i}         │" in out for i in range(8))
  # Layouts: bytes per device (from the shardings), then one training step in three of them.
  layouts = {name.strip(): (float(p), float(o)) for name, p, o in re.findall(
      r"^([\w +-]+? \(\d, \d\)) +(\d+\.\d) +(\d+\.\d)$", out, re.M)}
  assert list(layouts) == ["data parallel (8, 1)", "FSDP (8, 1)", "model parallel (1, 8)",
                           "2-D (4, 2)", "2-D + FSDP (4, 2)"]
  replicated = layouts["data parallel (8, 1)"][0]
  assert layouts["FSDP (8, 1)"][0] < replicated / 6
  assert layouts["model parallel (1, 8)"][0] < replicated / 6
  assert replicated / 2.2 < layouts["2-D (4, 2)"][0] < replicated / 1.8
  assert layouts["2-D + FSDP (4, 2)"][0] < replicated / 6
  assert all(opt < layouts["data parallel (8, 1)"][1] for _, opt in list(layouts.values())[1:])
  steps = {name.strip(): (float(loss), float(held)) for name, loss, held in re.findall(
      r"^([\w +-]+? \(\d, \d\)) +loss (\d+\.\d+) +params on device 0: (\d+\.\d) KiB$", out, re.M)}
  assert list(steps) == ["data parallel (8, 1)", "FSDP (8, 1)", "model parallel (1, 8)"]
  assert all(held == layouts[name][0] for name, (_, held) in steps.items())  # measured = computed
  losses = [loss for loss, _ in steps.values()]
  assert max(losses) - min(losses) < 1e-5 and 5 < losses[0] < 7.5
  diffs = [float(d) for d in re.findall(r"params after one step vs data parallel: max \|difference\| "
                                        r"(\S+)", out)]
  assert len(diffs) == 3 and max(diffs) < 1e-5
  # The memory planner's XXL table, as in the README.
  plan = {name.strip(): tuple(float(x) for x in values) for name, *values in re.findall(
      r"^(\d+ (?:chips|GPUs), .*?) +(\d+\.\d\d)G +(\d+\.\d\d)G +(\d+\.\d\d)G +(\d+\.\d\d)G +"
      r"(\d+\.\d\d)G$", out, re.M)}
  assert plan == {
      "256 chips, 32x8 (data x model)": (5.19, 0.01, 5.19, 1.16, 11.54),
      "256 chips, 256x1 FSDP": (0.16, 0.01, 0.16, 0.24, 2.52),
      "8 GPUs, 1x8 (model only)": (5.19, 0.01, 5.19, 36.97, 47.35),
      "8 GPUs, 8x1 FSDP, 8 microbatches": (5.19, 0.01, 5.19, 0.97, 13.29)}
  assert "11,135,332,352 parameters" in out
