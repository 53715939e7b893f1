"""Metric summaries: TensorBoard scalars (clu.metric_writers) plus a JSONL history.

Every run mode writes through `SummaryWriter`: TensorBoard event files in
MODEL_DIR/<name>/ and one JSON object per write in MODEL_DIR/<name>_metrics.jsonl
(`{"step": s, metric: value, ...}`), on process 0 only: appended to locally, and on an
object store one new object per flush (the file, then `<file>.parts/NNNNNN.jsonl`).
Non-finite values are written as null (JSON has no NaN). `read_history` reads such a
history tolerantly, whatever its layout: a torn line (a run
killed mid-write; the next writer ends it with a newline) is skipped with a warning, and a
step written twice keeps its latest row. That is the de-duplication rule of resumed runs:
a run resumed from checkpoint N redoes the steps after N, and their new rows, identical in a
deterministic run, supersede those the stopped run wrote.
"""

import json
import logging
import math
import os
from typing import Dict, List, Mapping

from clu import metric_writers
from etils import epath
import jax

from t5x_lite.checkpointing import storage
from t5x_lite.checkpointing.run_dir import RunDir

log = logging.getLogger(__name__)


def _json_value(value):
  value = float(value)
  return value if math.isfinite(value) else None


def parts_dir(path) -> epath.Path:
  """Where the later writes of a metrics history on an object store go: `<file>.parts/`."""
  path = epath.Path(path)
  return path.parent / f"{path.name}.parts"


def _part_numbers(parts: epath.Path) -> List[int]:
  """Numbers of the `NNNNNN.jsonl` objects under `parts`, ascending."""
  if not parts.exists():
    return []
  names = (p.name for p in parts.iterdir())
  return sorted(int(n[:-len(".jsonl")]) for n in names
                if n.endswith(".jsonl") and n[:-len(".jsonl")].isdigit())


class _JsonlWriter(metric_writers.MetricWriter):
  """Writes one JSON object per write_scalars call (clu writes TensorBoard beside it).

  Every write costs the bytes of its own rows, never the file so far. A local file is
  appended to. Object stores (gs://) have no append (TensorFlow's gs:// append downloads
  and uploads the whole object): each flush writes one new object, the first of a history
  `<file>` itself, later ones `<file>.parts/000001.jsonl`, `000002.jsonl`, ...;
  `read_history` reads them in that order. An object is written whole, so never torn.
  """

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._local = storage.is_local(self.path)
    self._pending: List[str] = []
    if not self._local:
      # Numbered after every existing part: a resumed run's rows come after the stopped one's.
      self._base_exists = self.path.exists()
      self._next_part = (_part_numbers(parts_dir(self.path)) or [0])[-1] + 1
    # A run killed mid-write leaves a torn last line: end it, so the rows of the resumed
    # run start on lines of their own (read_history skips the torn one).
    elif self.path.exists() and self.path.stat().length:
      with self.path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        torn = f.read(1) != b"\n"
      if torn:
        self._append("\n")

  def _append(self, text: str):
    with self.path.open("a") as f:
      f.write(text)

  def write_scalars(self, step, scalars):
    row = {"step": int(step), **{k: _json_value(v) for k, v in scalars.items()}}
    if self._local:
      self._append(json.dumps(row) + "\n")
    else:
      self._pending.append(json.dumps(row) + "\n")

  def flush(self):
    if not self._pending:
      return
    if not self._base_exists:
      target = self.path
    else:
      target = parts_dir(self.path) / f"{self._next_part:06d}.jsonl"
      target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(self._pending))
    self._pending = []
    if target == self.path:
      self._base_exists = True
    else:
      self._next_part += 1

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def close(self):
    self.flush()


class SummaryWriter:
  """Scalars to MODEL_DIR/<name>/ (TensorBoard) and MODEL_DIR/<name>_metrics.jsonl."""

  def __init__(self, model_dir: str, name: str):
    run = RunDir(model_dir)
    self.history_path = run.metrics_history(name)
    self.tensorboard_dir = run.tensorboard(name)
    self.enabled = jax.process_index() == 0
    if self.enabled:
      self._writer = metric_writers.MultiWriter([
          metric_writers.SummaryWriter(self.tensorboard_dir), _JsonlWriter(self.history_path)])

  def write(self, step: int, scalars: Mapping[str, float]):
    """Writes one row; raises storage.StorageError naming the file if the disk refuses it."""
    if self.enabled:
      try:
        self._writer.write_scalars(step, {k: float(v) for k, v in scalars.items()})
        self._writer.flush()
      except OSError as e:
        raise storage.StorageError(f"Writing the metrics of step {step} to {self.history_path} "
                                   f"failed: {storage.write_error_reason(e)}.") from e

  def close(self):
    if self.enabled:
      self._writer.close()


def history_files(path) -> List[epath.Path]:
  """The files of a metrics history in row order: `path`, then its parts (object stores)."""
  path = epath.Path(path)
  files = [path] if path.exists() else []
  return files + [parts_dir(path) / f"{n:06d}.jsonl" for n in _part_numbers(parts_dir(path))]


def read_history(path: str, by_step: bool = True) -> List[Dict]:
  """Rows of a JSONL file; unreadable lines (a torn last line) are skipped with a warning.

  Args:
    path: a metrics history (or any JSONL file of objects); on an object store its rows are
      in the file and the parts beside it (`history_files`), read in that order.
    by_step: one row per "step" (the latest row of a step: a resumed run rewrites the steps
      after its last checkpoint), sorted by step; False: every row in file order.
  """
  rows = []
  for file in history_files(path):
    for number, line in enumerate(file.read_text().splitlines(), 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        log.warning("Skipping unreadable line %d of %s (a run stopped while writing it?).",
                    number, file)
  if not by_step:
    return rows
  latest = {row["step"]: row for row in rows}
  return [latest[s] for s in sorted(latest)]
