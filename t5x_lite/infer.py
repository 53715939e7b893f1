"""The infer and score run modes: predictions / target log-likelihoods to resumable JSONL.

Each job writes OUTPUT_DIR/<kind>-<shard_id:05d>-of-<num_shards:05d>.jsonl (kind: predictions
or scores), one JSON object per example:
  infer:  {"index", "task", "inputs", "targets", "prediction", "score"}
  score:  {"index", "task", "inputs", "targets", "score"}
"index" numbers the examples of the split in a fixed order (the tasks of a mixture sorted by
name, each task's examples in dataset order, unshuffled); shard k of n takes the examples
with index % n == k, so n jobs (machines) split the work disjointly and completely. Texts
are the task's pretokenized fields, predictions are detokenized with the task's targets
vocabulary (up to EOS, as seqio.Evaluator decodes them). "score" is the summed
log-probability of the prediction (infer; divided by the length penalty for beam search)
or of the targets (score, for rank classification).

Resuming: rows are appended in chunks of `chunk_batches` batches; after each chunk the file
is flushed and fsync'ed, then `<file>.state.json` (rows and bytes written, replaced
atomically) records it. A restarted job truncates whatever a killed one wrote past the last
recorded chunk and continues at the next example, so the file ends with every row once,
in order. A finished job records "done" and a rerun returns at once. Outputs must be on a
local (or FUSE-mounted) filesystem: truncate and fsync are POSIX calls.
"""

import itertools
import json
import logging
import os
from typing import Dict, Iterator, List, Mapping, Optional

import jax
import numpy as np
import seqio
import tensorflow as tf

from t5x_lite import checkpoints
from t5x_lite import configs
from t5x_lite import data
from t5x_lite import evaluation
from t5x_lite import models as models_lib
from t5x_lite import partitioning

log = logging.getLogger(__name__)


def _commit_state(path: str, state: Mapping) -> None:
  """Atomically replaces the state file (a crash leaves the old or the new one, never half)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(state, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class ResumableJsonl:
  """Appends rows in chunks to a JSONL file whose committed length lives in a state file.

  Args:
    path: the JSONL file.
    run_config: what the rows depend on (task, split, checkpoint, shard, ...); resuming
      with a different config is refused, as its rows would not continue the file's.
  """

  def __init__(self, path: str, run_config: Mapping):
    self.path, self.state_path = path, path + ".state.json"
    self.state = {"rows": 0, "bytes": 0, "chunks": 0, "done": False, "config": dict(run_config)}
    if os.path.exists(self.state_path):
      with open(self.state_path, encoding="utf-8") as f:
        saved = json.load(f)
      if saved["config"] != self.state["config"]:
        changed = sorted(k for k in set(saved["config"]) | set(run_config)
                         if saved["config"].get(k) != run_config.get(k))
        raise ValueError(f"{path} was started with different settings ({changed}: "
                         f"{[saved['config'].get(k) for k in changed]} then, "
                         f"{[run_config.get(k) for k in changed]} now). Use another OUTPUT_DIR "
                         "or delete the file and its .state.json.")
      self.state = saved
    elif os.path.exists(path) and os.path.getsize(path):
      raise ValueError(f"{path} exists without {self.state_path}: refusing to overwrite it.")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "ab") as f:
      size = f.tell()
      if size < self.state["bytes"]:
        raise ValueError(f"{path} is shorter ({size} bytes) than its state file records "
                         f"({self.state['bytes']}): it was modified; delete both to restart.")
      if size > self.state["bytes"]:
        log.info("Dropping %d bytes a stopped run wrote after its last chunk in %s.",
                 size - self.state["bytes"], path)
        f.truncate(self.state["bytes"])

  @property
  def rows(self) -> int:
    return self.state["rows"]

  @property
  def done(self) -> bool:
    return self.state["done"]

  def append(self, rows: List[Mapping]) -> None:
    with open(self.path, "ab") as f:
      f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
      f.flush()
      os.fsync(f.fileno())
      size = f.tell()
    self.state.update(rows=self.state["rows"] + len(rows), bytes=size,
                      chunks=self.state["chunks"] + 1)
    _commit_state(self.state_path, self.state)

  def finish(self) -> None:
    self.state["done"] = True
    _commit_state(self.state_path, self.state)


def task_names(mixture_or_task_name: str, model=None) -> List[str]:
  """The tasks of a task or mixture, sorted by name (the fixed example order).

  Args:
    model: if given, every task's vocabulary is checked against the model's embedding.
  """
  provider = data.check_task(mixture_or_task_name, model)
  return sorted(t.name for t in seqio.get_subtasks(provider))


def examples(mixture_or_task_name: str, split: str, task_feature_lengths: Mapping[str, int],
             shard_id: int = 0, num_shards: int = 1, max_examples: Optional[int] = None,
             feature_converter: Optional[seqio.FeatureConverter] = None) -> Iterator[Dict]:
  """This shard's examples in the fixed order: {"index", "task", "inputs", "targets",
  "features"} with model features as `feature_converter` (the model's, unpacked; default
  EncDecFeatureConverter(pack=False)) makes them, truncated by training's rule
  (data.TruncatingFeatureConverter)."""
  index = 0
  for name in task_names(mixture_or_task_name):
    task = seqio.get_mixture_or_task(name)
    if split not in task.splits:
      continue
    converter = data.TruncatingFeatureConverter(
        feature_converter or seqio.EncDecFeatureConverter(pack=False),
        data.TruncationStats(task_feature_lengths), task.output_features)
    dataset = task.get_dataset(dict(task_feature_lengths), split=split, shuffle=False,
                               num_epochs=1, trim_output_features=False)
    vocabulary = task.output_features["targets"].vocabulary
    # Unpacked conversion maps example i to model example i.
    pairs = tf.data.Dataset.zip((dataset, converter(dataset, dict(task_feature_lengths))))
    for ex, features in pairs.as_numpy_iterator():
      if max_examples is not None and index >= max_examples:
        return
      index += 1
      if (index - 1) % num_shards != shard_id:
        continue
      text = lambda key: evaluation.as_text(
          ex[f"{key}_pretokenized"] if f"{key}_pretokenized" in ex else vocabulary.decode(
              ex[key].tolist()))
      yield {"index": index - 1, "task": name, "inputs": text("inputs"), "targets": text("targets"),
             "features": features}


def _run(kind: str, *, checkpoint_path, output_dir, mixture_or_task_name, task_feature_lengths,
         batch_size, split, model, partitioner, shard_id, num_shards, chunk_batches,
         max_examples, max_chunks) -> str:
  """Shared loop of infer and score: restore, skip what is written, append chunk by chunk."""
  configs.check_int("infer.num_shards", num_shards, gin="NUM_SHARDS")
  configs.check_int("infer.shard_id", shard_id, minimum=0, gin="SHARD_ID")
  if shard_id >= num_shards:
    raise ValueError(f"SHARD_ID={shard_id} must be less than NUM_SHARDS={num_shards} (shards "
                     "are numbered 0 ... NUM_SHARDS - 1).")
  configs.check_int("infer.batch_size", batch_size, gin="BATCH_SIZE")
  configs.check_int("infer.chunk_batches", chunk_batches)
  # Settings a typo breaks fail here, before the checkpoint is read.
  task_names(mixture_or_task_name, model)
  data.check_feature_lengths(mixture_or_task_name, task_feature_lengths)
  partitioner = partitioner or partitioning.Partitioner()
  path = os.path.join(output_dir, f"{kind}-{shard_id:05d}-of-{num_shards:05d}.jsonl")
  run_config = {"checkpoint_path": os.path.abspath(str(checkpoint_path)),
                "mixture_or_task_name": mixture_or_task_name, "split": split,
                "task_feature_lengths": dict(task_feature_lengths), "batch_size": batch_size,
                "max_examples": max_examples, "decoding": repr(model.decoding)}
  writer = ResumableJsonl(path, run_config) if jax.process_index() == 0 else None
  done_rows, done = (writer.rows, writer.done) if writer else (0, False)
  if jax.process_count() > 1:
    # Only process 0 writes; every process must skip the same examples and stop together.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    done_rows, done = (int(x) for x in multihost_utils.broadcast_one_to_all(
        np.array([done_rows, done], np.int64)))
  if done:
    log.info("%s is complete (%d rows); nothing to do.", path, done_rows)
    return path
  params = checkpoints.restore_model_params(model, partitioner, checkpoint_path)
  predict, score = evaluation.make_predict_fn(model), evaluation.make_score_fn(model)
  stream = itertools.islice(examples(mixture_or_task_name, split, task_feature_lengths,
                                     shard_id, num_shards, max_examples,
                                     model.feature_converter(pack=False)), done_rows, None)
  chunks = 0
  while True:
    rows = []
    for _ in range(chunk_batches):
      batch = list(itertools.islice(stream, batch_size))
      if not batch:
        break
      features = {k: np.stack([ex["features"][k] for ex in batch]) for k in batch[0]["features"]}
      if kind == "predictions":
        tokens, scores = evaluation.run_batches(
            lambda b, i=batch[0]["index"]: predict(params, b, i), features, batch_size,
            partitioner)
      else:
        tokens, scores = None, evaluation.run_batches(lambda b: score(params, b), features,
                                                      batch_size, partitioner)
      for j, ex in enumerate(batch):
        row = {k: ex[k] for k in ("index", "task", "inputs", "targets")}
        if tokens is not None:
          vocabulary = seqio.get_mixture_or_task(ex["task"]).output_features["targets"].vocabulary
          row["prediction"] = vocabulary.decode(tokens[j].tolist())
        row["score"] = float(scores[j])
        rows.append(row)
    if not rows:
      break
    if writer:
      writer.append(rows)
    chunks += 1
    done_rows += len(rows)
    log.info("%s: %d rows written.", path, done_rows)
    if max_chunks is not None and chunks >= max_chunks:
      log.info("Stopping after max_chunks=%d; rerun to continue.", max_chunks)
      return path
  if writer:
    writer.finish()
  log.info("Done: %s (%d rows).", path, done_rows)
  return path


def infer(*, checkpoint_path: str, output_dir: str, mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int], batch_size: int,
          model: models_lib.EncoderDecoderModel, split: str = "validation",
          partitioner: Optional[partitioning.Partitioner] = None, shard_id: int = 0,
          num_shards: int = 1, chunk_batches: int = 8, max_examples: Optional[int] = None,
          max_chunks: Optional[int] = None) -> str:
  """Writes each example's prediction (gin DecodingSettings) and its score to resumable JSONL.

  See the module docstring for the file format, sharding and resuming.

  Args (gin; gin/runs/infer.gin binds the macros in capitals):
    checkpoint_path: CHECKPOINT_PATH — MODEL_DIR/checkpoints/<step> (or a checkpoints dir).
    output_dir: OUTPUT_DIR — where the JSONL and its .state.json go (local filesystem).
    mixture_or_task_name: MIXTURE_OR_TASK_NAME — a registered task or mixture.
    task_feature_lengths: TASK_FEATURE_LENGTHS — longer inputs/targets are truncated.
    batch_size: BATCH_SIZE — global batch (all processes of this job together).
    split: SPLIT — the split to read ("validation", "test", ...).
    model: the EncoderDecoderModel or encoder head model (model gin file).
    partitioner: mesh and rules; default partitioning.Partitioner().
    shard_id, num_shards: SHARD_ID / NUM_SHARDS — this job does examples with
      index % num_shards == shard_id and writes its own file.
    chunk_batches: commit (fsync + state file) every this many batches.
    max_examples: only the first N examples of the split (before sharding); None: all.
    max_chunks: stop after this many chunks in this run (a rerun continues); None: all.

  Returns:
    The path of the JSONL file.
  """
  return _run("predictions", **locals())


def score(*, checkpoint_path: str, output_dir: str, mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int], batch_size: int,
          model: models_lib.EncoderDecoderModel, split: str = "validation",
          partitioner: Optional[partitioning.Partitioner] = None, shard_id: int = 0,
          num_shards: int = 1, chunk_batches: int = 8, max_examples: Optional[int] = None,
          max_chunks: Optional[int] = None) -> str:
  """Writes each example's target log-likelihood (summed over target tokens) to resumable
  JSONL: rank classification scores. See the module docstring for format and resuming.

  Args: as `infer` (gin/runs/score.gin binds the same macros); no decoding settings apply.

  Returns:
    The path of the JSONL file.
  """
  return _run("scores", **locals())
