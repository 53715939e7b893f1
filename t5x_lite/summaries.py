"""Metric summaries: TensorBoard scalars (clu.metric_writers) plus a JSONL history.

Every run mode writes through `SummaryWriter`: TensorBoard event files in
MODEL_DIR/<name>/ and one JSON object per write in MODEL_DIR/<name>_metrics.jsonl
(`{"step": s, metric: value, ...}`), on process 0 only. Non-finite values are written as
null (JSON has no NaN). `read_history` reads such a file tolerantly: a torn line (a run
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

from t5x_lite import storage
from t5x_lite.run_dir import RunDir

log = logging.getLogger(__name__)


def _json_value(value):
  value = float(value)
  return value if math.isfinite(value) else None


class _JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per write_scalars call (clu writes TensorBoard beside it)."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    # A run killed mid-write leaves a torn last line: end it, so the rows of the resumed
    # run start on lines of their own (read_history skips the torn one).
    if self.path.exists() and self.path.stat().length:
      with self.path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        torn = f.read(1) != b"\n"
      if torn:
        self._append("\n")

  def _append(self, text: str):
    if storage.is_local(self.path):
      with self.path.open("a") as f:
        f.write(text)
    else:
      # Object stores have no append (TensorFlow's gs:// append also downloads and uploads
      # the whole object); an object is replaced whole, so a write is never torn there.
      before = self.path.read_text() if self.path.exists() else ""
      self.path.write_text(before + text)

  def write_scalars(self, step, scalars):
    row = {"step": int(step), **{k: _json_value(v) for k, v in scalars.items()}}
    self._append(json.dumps(row) + "\n")

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

  def flush(self):
    pass

  def close(self):
    pass


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


def read_history(path: str, by_step: bool = True) -> List[Dict]:
  """Rows of a JSONL file; unreadable lines (a torn last line) are skipped with a warning.

  Args:
    path: a metrics history (or any JSONL file of objects).
    by_step: one row per "step" (the latest row of a step: a resumed run rewrites the steps
      after its last checkpoint), sorted by step; False: every row in file order.
  """
  path = epath.Path(path)
  if not path.exists():
    return []
  rows = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      log.warning("Skipping unreadable line %d of %s (a run stopped while writing it?).",
                  number, path)
  if not by_step:
    return rows
  latest = {row["step"]: row for row in rows}
  return [latest[s] for s in sorted(latest)]
