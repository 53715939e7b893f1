"""The eval run mode, and the seqio.Evaluator plumbing that training's infer-eval shares.

`evaluate` restores the parameters of one checkpoint, of every checkpoint of a run, or of a
given checkpoint path, and runs `seqio.Evaluator` on a task or mixture: predictions come
from `EncoderDecoderModel.predict_batch_with_aux` (decoding set by gin `DecodingSettings`),
log-likelihoods (rank classification) from `score_batch`. Per evaluated step it writes
  OUTPUT_DIR/eval_<split>/                       TensorBoard scalars "<task>/<metric>"
  OUTPUT_DIR/eval_<split>_metrics.jsonl          one line per step: {"step": s, "<task>/<metric>": v}
  OUTPUT_DIR/eval_<split>_predictions/<step>.jsonl   {"task", "inputs", "targets", "prediction"}
(OUTPUT_DIR defaults to MODEL_DIR, or to the checkpoint's run directory.) When several tasks
are evaluated, "average/<metric>" is the unweighted mean over the tasks that report it.
"""

import json
import logging
import os
from typing import Iterable, List, Mapping, Optional, Sequence, Union

import flax.linen as nn
import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from t5x_lite import tasks  # noqa: F401  (registers the built-in tasks and mixtures)
from t5x_lite import checkpoints as checkpoints_lib
from t5x_lite import models as models_lib
from t5x_lite import partitioning
from t5x_lite.summaries import SummaryWriter

log = logging.getLogger(__name__)


def restore_params(model: models_lib.EncoderDecoderModel, partitioner: partitioning.Partitioner,
                   checkpoint_path: str):
  """Parameters only (no optimizer state) of a checkpoint, in the partitioner's shardings.

  Args:
    checkpoint_path: MODEL_DIR/checkpoints/<step>, its .../state, or a checkpoints
      directory (its latest step).
  """
  shapes = {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}
  # Parameter shapes do not depend on the batch shapes; eval_shape allocates nothing.
  boxed = jax.eval_shape(lambda r: model.init(r, shapes), jax.random.PRNGKey(0))
  shardings = partitioner.param_shardings(boxed)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed),
      shardings)
  path = checkpoints_lib.resolve_checkpoint_path(checkpoint_path)
  log.info("Restoring parameters from %s.", path)
  return checkpoints_lib.restore_params(path, abstract)


def checkpoint_step(path: str) -> int:
  """The step of MODEL_DIR/checkpoints/<step>[/state] (0 when the path names none)."""
  path = checkpoints_lib.resolve_checkpoint_path(path)
  name = os.path.basename(os.path.dirname(path))
  return int(name) if name.isdigit() else 0


def run_batches(fn, batch: Mapping[str, np.ndarray], batch_size: int,
                partitioner: partitioning.Partitioner):
  """Applies a jitted fn(global_batch) -> pytree of [B, ...] to a host batch of n <= B rows.

  Rows are padded to batch_size (fixed shapes: one compilation) and the outputs cut back
  to n. Every process passes the same rows; each feeds its slice of the global batch and
  gets all rows back (process_allgather), so every process sees every output.
  """
  n = next(iter(batch.values())).shape[0]
  padded = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
            for k, v in batch.items()}
  count, index = jax.process_count(), jax.process_index()
  if batch_size % count or batch_size % partitioner.data_parallel_size:
    raise ValueError(f"batch_size={batch_size} must divide over {count} processes and the "
                     f"{partitioner.data_parallel_size}-way data axis (gin: BATCH_SIZE).")
  local = batch_size // count
  padded = {k: v[index * local:(index + 1) * local] for k, v in padded.items()}
  with partitioner.context():
    out = fn(partitioning.host_local_batch_to_global(padded, partitioner))
  if count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    out = multihost_utils.process_allgather(out, tiled=True)
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[:n], jax.device_get(out))


def make_predict_fn(model: models_lib.EncoderDecoderModel):
  """fn(params, batch, first_index) -> (tokens [B, L], scores [B]); sampling keys depend on
  the batch's first example index, so a resumed or re-run job draws the same samples."""
  def predict(params, batch, first_index):
    rng = jax.random.fold_in(jax.random.PRNGKey(model.decoding.seed), first_index)
    tokens, aux = model.predict_batch_with_aux(params, batch, rng)
    return tokens, aux["scores"]
  return predict


def make_score_fn(model: models_lib.EncoderDecoderModel):
  """fn(params, batch) -> [B] summed target log-likelihood (jitted)."""
  return jax.jit(model.score_batch)


def as_text(value) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def flatten_metrics(all_metrics: Mapping[str, Mapping[str, object]]) -> dict:
  """{task: {metric: value}} -> {"task/metric": float} (+ "average/metric" over tasks).

  Non-scalar metric values (texts, histograms) are left out of the summaries.
  """
  flat, per_metric = {}, {}
  for task_name, task_metrics in sorted(all_metrics.items()):
    for name, value in sorted(task_metrics.items()):
      value = getattr(value, "value", value)
      if np.ndim(value) or not isinstance(value, (int, float, np.number)):
        continue
      flat[f"{task_name}/{name}"] = float(value)
      per_metric.setdefault(name, []).append(float(value))
  if len(all_metrics) > 1:
    flat.update({f"average/{k}": float(np.mean(v)) for k, v in sorted(per_metric.items())})
  return flat


class InferEvaluator:
  """A seqio.Evaluator bound to a model: build once (it caches the eval data), run per step.

  Args:
    model, partitioner: the EncoderDecoderModel and its Partitioner.
    mixture_or_task_name: task or mixture whose metric fns are computed.
    task_feature_lengths: {"inputs": Li, "targets": Lt}; Lt is the default decode length.
    batch_size: global batch for decoding / scoring.
    split: the split to evaluate.
    num_examples: at most this many examples per task (None: all).
  """

  def __init__(self, model: models_lib.EncoderDecoderModel,
               partitioner: partitioning.Partitioner, mixture_or_task_name: str,
               task_feature_lengths: Mapping[str, int], batch_size: int,
               split: str = "validation", num_examples: Optional[int] = None):
    self.model, self.partitioner, self.batch_size = model, partitioner, batch_size
    self.evaluator = seqio.Evaluator(
        mixture_or_task_name, seqio.EncDecFeatureConverter(pack=False), eval_split=split,
        sequence_length=dict(task_feature_lengths), num_examples=num_examples,
        async_compute_metrics=False, use_memory_cache=True)
    if not self.evaluator.eval_tasks:
      raise ValueError(f"No task of {mixture_or_task_name!r} has metric fns and a {split!r} "
                       "split: nothing to evaluate (gin: the eval/infer-eval task name and split).")
    self._predict = make_predict_fn(model)
    self._score = make_score_fn(model)

  def _batches(self, dataset: tf.data.Dataset) -> Iterable:
    for indices, features in dataset.batch(self.batch_size).as_numpy_iterator():
      yield indices, {k: v for k, v in features.items()}

  def _predict_fn(self, params):
    def predict_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      out, aux_scores = [], []
      for indices, batch in self._batches(dataset):
        tokens, scores = run_batches(
            lambda b, i=int(indices[0]): self._predict(params, b, i), batch, self.batch_size,
            self.partitioner)
        out.extend(zip(indices.tolist(), [t.tolist() for t in tokens]))
        aux_scores.extend(scores.tolist())
      return out, {"scores": aux_scores}
    return predict_fn

  def _score_fn(self, params):
    def score_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      out = []
      for indices, batch in self._batches(dataset):
        scores = run_batches(lambda b: self._score(params, b), batch, self.batch_size,
                             self.partitioner)
        out.extend(zip(indices.tolist(), scores.tolist()))
      return out
    return score_fn

  def evaluate(self, params, step: int):
    """Runs every metric fn of the eval tasks at `step`.

    Returns:
      (flat metrics {"task/metric": value}, prediction rows [{"task", "inputs", "targets",
      "prediction"}] in dataset order, for tasks with prediction metrics).
    """
    predict_with_aux = self._predict_fn(params)
    predict = lambda ds, shapes=None: predict_with_aux(ds, shapes)[0]
    metrics_future, outputs = self.evaluator.evaluate(
        compute_metrics=True, step=step, predict_fn=predict, score_fn=self._score_fn(params),
        predict_with_aux_fn=predict_with_aux)
    rows = []
    for task in self.evaluator.eval_tasks:
      task_outputs = outputs[task.name]
      tokens = task_outputs.get(seqio.metrics.ModelOutputType.PREDICTION)
      if tokens is None:
        aux = task_outputs.get(seqio.metrics.ModelOutputType.PREDICTION_WITH_AUX)
        tokens = None if aux is None else aux[0]
      if tokens is None:
        continue
      vocabulary = task.output_features["targets"].vocabulary
      examples = self.evaluator.cached_task_datasets[task.name].as_numpy_iterator()
      for example, predicted in zip(examples, tokens):
        rows.append({
            "task": task.name,
            "inputs": as_text(example.get("inputs_pretokenized", b"")),
            "targets": as_text(example.get("targets_pretokenized", b"")),
            "prediction": vocabulary.decode([int(t) for t in predicted])})
    return flatten_metrics(metrics_future.result()), rows


def brief(metrics: Mapping[str, float]) -> str:
  """One printable line: per-task metrics are left out when their averages are present."""
  averaged = {k.split("/", 1)[1] for k in metrics if k.startswith("average/")}
  keep = {k: v for k, v in metrics.items()
          if k.startswith("average/") or "/" not in k or k.split("/", 1)[1] not in averaged}
  return ", ".join(f"{k}={v:.4g}" for k, v in keep.items())


def write_jsonl(rows: Sequence[Mapping], path: str) -> None:
  """Writes rows as JSON lines (process 0 only)."""
  if jax.process_index() != 0:
    return
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def format_examples(rows: Sequence[Mapping], n: int) -> str:
  """Up to n prediction rows, taken round-robin over tasks, as readable text."""
  by_task = {}
  for row in rows:
    by_task.setdefault(row["task"], []).append(row)
  picked, queues = [], list(by_task.values())
  while len(picked) < n and any(queues):
    for queue in queues:
      if queue and len(picked) < n:
        picked.append(queue.pop(0))
  clip = lambda s: s if len(s) <= 200 else s[:197] + "..."
  return "\n".join(f"[{r['task']}]\n  input:      {clip(r['inputs'])!r}\n"
                   f"  target:     {clip(r['targets'])!r}\n  prediction: {clip(r['prediction'])!r}"
                   for r in picked)


def checkpoint_paths(model_dir: Optional[str], checkpoint_path: Optional[str],
                     checkpoint_steps: Union[str, Sequence[int]]) -> List[str]:
  """The checkpoints to evaluate: CHECKPOINT_PATH, or MODEL_DIR's latest / all / listed steps."""
  if checkpoint_path:
    return [checkpoints_lib.resolve_checkpoint_path(checkpoint_path)]
  if not model_dir:
    raise ValueError("Set CHECKPOINT_PATH (one checkpoint) or MODEL_DIR (its checkpoints/) "
                     "for the eval run mode (gin/runs/eval.gin).")
  root = os.path.join(model_dir, "checkpoints")
  steps = sorted(int(name) for name in (os.listdir(root) if os.path.isdir(root) else [])
                 if name.isdigit())
  if not steps:
    raise ValueError(f"No checkpoints under {root} (MODEL_DIR={model_dir!r}).")
  if checkpoint_steps == "latest":
    steps = steps[-1:]
  elif checkpoint_steps != "all":
    missing = sorted(set(int(s) for s in checkpoint_steps) - set(steps))
    if missing:
      raise ValueError(f"evaluate.checkpoint_steps={list(checkpoint_steps)}: no checkpoint for "
                       f"step(s) {missing} under {root} (it has {steps}).")
    steps = sorted(set(int(s) for s in checkpoint_steps))
  return [checkpoints_lib.resolve_checkpoint_path(os.path.join(root, str(s))) for s in steps]


@gin.configurable
def evaluate(*, mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             batch_size: int = gin.REQUIRED, model_dir: Optional[str] = None,
             checkpoint_path: Optional[str] = None,
             checkpoint_steps: Union[str, Sequence[int]] = "latest", split: str = "validation",
             model: Optional[models_lib.EncoderDecoderModel] = None,
             partitioner: Optional[partitioning.Partitioner] = None,
             output_dir: Optional[str] = None, num_examples: Optional[int] = None,
             write_predictions: bool = True) -> dict:
  """Evaluates checkpoints with seqio.Evaluator (the task's metric fns); writes summaries.

  Args (gin; gin/runs/eval.gin binds the macros in capitals):
    mixture_or_task_name: MIXTURE_OR_TASK_NAME — task or mixture with metric fns.
    task_feature_lengths: TASK_FEATURE_LENGTHS — {"inputs": Li, "targets": Lt}; Lt is the
      decode length unless DecodingSettings.max_decode_length is set.
    batch_size: BATCH_SIZE — global batch for decoding and scoring.
    model_dir: MODEL_DIR — a training run; its checkpoints/<step> are evaluated.
    checkpoint_path: CHECKPOINT_PATH — evaluate this one checkpoint (overrides model_dir).
    checkpoint_steps: with model_dir: "latest", "all", or a list of steps.
    split: the split to evaluate ("validation", "test", ...).
    model: the EncoderDecoderModel (model gin file; decoding via DecodingSettings).
    partitioner: mesh and rules; default partitioning.Partitioner().
    output_dir: OUTPUT_DIR — where summaries go; default model_dir, else the run directory
      of checkpoint_path (the parent of its checkpoints/ directory).
    num_examples: at most this many examples per task (None: the whole split).
    write_predictions: also write each step's decoded predictions as JSONL.

  Returns:
    {step: {"task/metric": value}} for every evaluated step.
  """
  model = model or models_lib.EncoderDecoderModel()
  partitioner = partitioner or partitioning.Partitioner()
  paths = checkpoint_paths(model_dir, checkpoint_path, checkpoint_steps)
  if output_dir is None:
    # .../run/checkpoints/<step>/state -> .../run
    output_dir = model_dir or os.path.dirname(os.path.dirname(os.path.dirname(paths[0])))
  evaluator = InferEvaluator(model, partitioner, mixture_or_task_name, task_feature_lengths,
                             batch_size, split=split, num_examples=num_examples)
  writer = SummaryWriter(output_dir, f"eval_{split}")
  results = {}
  for path in paths:
    step = checkpoint_step(path)
    metrics, rows = evaluator.evaluate(restore_params(model, partitioner, path), step)
    writer.write(step, metrics)
    if write_predictions and rows:
      write_jsonl(rows, os.path.join(output_dir, f"eval_{split}_predictions", f"{step}.jsonl"))
    log.info("Step %d %s metrics: %s", step, split,
             ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    results[step] = metrics
  log.info("Eval metrics in %s (TensorBoard: %s).", writer.history_path, writer.tensorboard_dir)
  return results
