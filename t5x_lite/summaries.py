"""Metric summaries: TensorBoard scalars plus a JSONL history, shared by every run mode."""

import json
import os
from typing import Mapping

import jax
import tensorflow as tf


class SummaryWriter:
  """TensorBoard scalars (tf.summary) + a JSONL history; written by process 0 only.

  `SummaryWriter(dir, name)` writes TensorBoard events to dir/name/ and appends one JSON
  object per `write` ({"step": ..., metric: value, ...}) to dir/name_metrics.jsonl.
  """

  def __init__(self, model_dir: str, name: str):
    self.enabled = jax.process_index() == 0
    self.history_path = os.path.join(model_dir, f"{name}_metrics.jsonl")
    self.tensorboard_dir = os.path.join(model_dir, name)
    if self.enabled:
      self.writer = tf.summary.create_file_writer(self.tensorboard_dir)

  def write(self, step: int, scalars: Mapping[str, float]):
    if not self.enabled:
      return
    with self.writer.as_default():
      for key, value in scalars.items():
        tf.summary.scalar(key, value, step=step)
    self.writer.flush()
    with tf.io.gfile.GFile(self.history_path, "a") as f:
      f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
