"""Evaluation plumbing shared by training's infer-eval and the eval / infer / score run modes.

`InferEvaluator` binds a seqio.Evaluator to a model: batches come from the model's
`feature_converter`, predictions from `predict_batch_with_aux` (decoding set by
`DecodingSettings` for the encoder-decoder; class ids, tags or spans for the encoder heads),
log-likelihoods (rank classification) from `score_batch`. `run_batches` feeds host batches
of any size to a jitted function on the mesh. Also: metric flattening ("task/metric",
"average/metric"), JSONL rows of predictions and their printing.
"""

import difflib
import json
import zlib
from typing import Iterable, Mapping, Optional, Sequence, Union

from etils import epath
import jax
import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.data import pipeline
from t5x_lite.data.text import as_text
from t5x_lite.model import model_interface
from t5x_lite.parallel import partitioning

# The batch entry that carries each row's sampling key to the predict fn.
KEYS = "sampling_keys"


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


def check_split(mixture_or_task_name: str, split: str, binding: str = "SPLIT") -> None:
  """Raises ValueError, naming the splits there are, when no task of the name has `split`.

  A misspelt split would otherwise give no examples: an empty output recorded as complete.

  Args:
    binding: the gin binding that set `split`, named in the message.
  """
  tasks = seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))
  splits = sorted({s for task in tasks for s in task.splits})
  if split not in splits:
    closest = difflib.get_close_matches(split, splits, n=1)
    hint = f" Did you mean {closest[0]!r}?" if closest else ""
    raise ValueError(f"split={split!r} (gin: {binding}): no task of {mixture_or_task_name!r} has "
                     f"it; its splits are {splits}.{hint}")


def _task_number(task_name: str) -> int:
  """A stable 31-bit number of a task name (Python's hash() changes from process to process)."""
  return zlib.crc32(task_name.encode("utf-8")) & 0x7FFFFFFF


@jax.jit
def _keys(seed, task_numbers, indices, subs):
  fold = jax.random.fold_in
  return jax.vmap(lambda t, i, s: fold(fold(fold(jax.random.PRNGKey(seed), t), i), s))(
      task_numbers, indices, subs)


def example_keys(seed: int, task_names: Union[str, Sequence[str]], indices: Sequence[int],
                 subs: Optional[Sequence[int]] = None) -> np.ndarray:
  """The sampling key of each example: a function of (seed, task, example index) only.

  The same example draws the same sample in eval, infer and training's infer-eval, in any
  shard, batch or batch position and after a resume; two examples never share a stream.

  Args:
    seed: DecodingSettings.seed.
    task_names: the examples' task (one name for all, or [B] names).
    indices: [B] the examples' indices in their task's split (eval: position in the
      seqio.Evaluator's dataset; infer: position in the source split; the same when the
      task's preprocessors neither drop nor split examples).
    subs: [B] which of the rows of one source example (a preprocessor may make several); 0
      (the default) for the first.

  Returns:
    uint32 [B, 2] PRNG keys: fold_in(fold_in(fold_in(PRNGKey(seed), crc32(task)), index), sub).
  """
  indices = np.asarray(indices, np.int32)
  names = [task_names] * len(indices) if isinstance(task_names, str) else task_names
  numbers = np.array([_task_number(name) for name in names], np.int32).reshape(indices.shape)
  subs = np.zeros_like(indices) if subs is None else np.asarray(subs, np.int32)
  return np.asarray(_keys(seed, numbers, indices, subs))


def make_predict_fn(model: model_interface.Model):
  """fn(params, batch) -> (tokens [B, L], scores [B]); batch[KEYS] holds each row's sampling
  key (uint32 [B, 2], `example_keys`): a row's sample depends on its example alone."""

  def predict(params, batch):
    batch = dict(batch)
    keys = batch.pop(KEYS)
    tokens, aux = model.predict_batch_with_aux(params, batch, keys)
    return tokens, aux["scores"]
  return predict


def sampling_seed(model) -> int:
  """The model's DecodingSettings.seed (0 for a model that samples nothing: decoding None)."""
  return model.decoding.seed if model.decoding is not None else 0


def make_score_fn(model: model_interface.Model):
  """fn(params, batch) -> [B] summed target log-likelihood (jitted)."""
  return jax.jit(model.score_batch)


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
    model, partitioner: the model (a model_interface.Model) and its Partitioner.
    mixture_or_task_name: task or mixture whose metric fns are computed.
    task_feature_lengths: {"inputs": Li, "targets": Lt}; Lt is the default decode length.
    batch_size: global batch for decoding / scoring.
    split: the split to evaluate.
    num_examples: at most this many examples per task (None: all).
  """

  def __init__(self, model: model_interface.Model,
               partitioner: partitioning.Partitioner, mixture_or_task_name: str,
               task_feature_lengths: Mapping[str, int], batch_size: int,
               split: str = "validation", num_examples: Optional[int] = None):
    self.model, self.partitioner, self.batch_size = model, partitioner, batch_size
    provider = pipeline.check_task(mixture_or_task_name, model)
    check_split(mixture_or_task_name, split, "SPLIT (training: EvalConfig.infer_eval_split)")
    pipeline.check_not_empty(mixture_or_task_name, split, task_feature_lengths)  # else no metric
    # Training's truncation rule (pipeline.TruncatingFeatureConverter), not seqio's trimming:
    # without a sequence_length the Evaluator leaves examples whole. Tasks whose
    # preprocessors need the lengths get them (they fit their examples themselves).
    converter = pipeline.TruncatingFeatureConverter(
        model.feature_converter(pack=False), pipeline.TruncationStats(task_feature_lengths),
        provider.output_features)
    needs_lengths = any(pipeline.needs_sequence_length(t) for t in seqio.get_subtasks(provider))
    self.evaluator = seqio.Evaluator(
        mixture_or_task_name, converter, eval_split=split,
        sequence_length=dict(task_feature_lengths) if needs_lengths else None,
        num_examples=num_examples, async_compute_metrics=False, use_memory_cache=True)
    if not self.evaluator.eval_tasks:
      raise ValueError(f"No task of {mixture_or_task_name!r} has metric fns and a {split!r} "
                       "split: nothing to evaluate (gin: the eval/infer-eval task name and split).")
    self._predict = make_predict_fn(model)
    self._score = make_score_fn(model)
    self._seed = sampling_seed(model)

  @property
  def has_predictions(self) -> bool:
    """Whether `evaluate` returns prediction rows (some task has a prediction metric)."""
    kinds = (seqio.metrics.ModelOutputType.PREDICTION,
             seqio.metrics.ModelOutputType.PREDICTION_WITH_AUX)
    return any(metric.model_output_type in kinds
               for task in self.evaluator.eval_tasks for metric in task.metric_objs)

  def _batches(self, dataset: tf.data.Dataset) -> Iterable:
    for indices, features in dataset.batch(self.batch_size).as_numpy_iterator():
      yield indices, {k: v for k, v in features.items()}

  def _predict_fn(self, params):
    # seqio passes each task's cached dataset itself: it names the task of the examples.
    task_of = {id(ds): name for name, ds in self.evaluator.cached_model_datasets.items()}

    def predict_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      task_name = task_of[id(dataset)]
      out, aux_scores = [], []
      for indices, batch in self._batches(dataset):
        batch[KEYS] = example_keys(self._seed, task_name, indices)
        tokens, scores = run_batches(lambda b: self._predict(params, b), batch,
                                     self.batch_size, self.partitioner)
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
            # Token ids, or the heads' class ids / real values: as seqio decodes them.
            "prediction": vocabulary.decode(list(predicted))})
    return flatten_metrics(metrics_future.result()), rows


def brief(metrics: Mapping[str, float]) -> str:
  """One printable line: per-task metrics are left out when their averages are present."""
  averaged = {k.split("/", 1)[1] for k in metrics if k.startswith("average/")}
  keep = {k: v for k, v in metrics.items()
          if k.startswith("average/") or "/" not in k or k.split("/", 1)[1] not in averaged}
  return ", ".join(f"{k}={v:.4g}" for k, v in keep.items())


def write_jsonl(rows: Sequence[Mapping], path: str) -> None:
  """Writes rows as JSON lines (process 0 only), replacing the file."""
  if jax.process_index() != 0:
    return
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


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
