"""The train run mode: gin-configured training with periodic evaluation and checkpoints."""

import json
import logging
import os
import time
from typing import Mapping, Optional

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
import tqdm

from t5x_lite import tasks  # noqa: F401  (registers the built-in tasks and mixtures)
from t5x_lite import checkpoints as checkpoints_lib
from t5x_lite import data
from t5x_lite import eval as eval_lib
from t5x_lite import gin_utils
from t5x_lite import models as models_lib
from t5x_lite import optimizers
from t5x_lite import partitioning
from t5x_lite import trainer as trainer_lib
from t5x_lite.summaries import SummaryWriter

log = logging.getLogger(__name__)


def plot_loss_curve(model_dir: str) -> Optional[str]:
  """MODEL_DIR/loss.png from the train (and eval) metric histories (all runs into this MODEL_DIR, resumed ones included)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  plotted = False
  for name in ("train", "eval"):
    path = os.path.join(model_dir, f"{name}_metrics.jsonl")
    if not tf.io.gfile.exists(path):
      continue
    with tf.io.gfile.GFile(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    rows = sorted({r["step"]: r for r in rows if "loss" in r}.values(), key=lambda r: r["step"])
    if rows:
      ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=f"{name} loss",
              marker="o" if name == "eval" else None)
      plotted = True
  if not plotted:
    plt.close(fig)
    return None
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy per target token")
  ax.legend()
  ax.grid(alpha=0.3)
  path = os.path.join(model_dir, "loss.png")
  with tf.io.gfile.GFile(path, "wb") as f:
    fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def _shard_info() -> Optional[seqio.ShardInfo]:
  """Each process reads its own shard; process i holds rows i*B/P ... of the global batch."""
  if jax.process_count() == 1:
    return None
  return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def _global_batches(iterator, partitioner):
  for batch in iterator:
    yield partitioning.host_local_batch_to_global(batch, partitioner)


def restore_or_init(trainer: trainer_lib.Trainer, input_shapes, manager, dataset_iterator,
                    initial_checkpoint_path: Optional[str], restore_optimizer_state: bool):
  """Resume from MODEL_DIR if it has checkpoints, else start from the initial checkpoint, else init.

  Resuming wins over INITIAL_CHECKPOINT_PATH: a preempted finetune must continue, not restart.
  """
  abstract, shardings = trainer.state_shardings(input_shapes)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  latest = manager.latest_step()
  if latest is not None:
    if initial_checkpoint_path:
      log.warning("MODEL_DIR already has checkpoints (latest step %d): resuming from it. "
                  "INITIAL_CHECKPOINT_PATH=%s is ignored.", latest, initial_checkpoint_path)
    else:
      log.info("Resuming from %s/%d.", manager.directory, latest)
    return manager.restore(abstract, latest, dataset_iterator)
  if initial_checkpoint_path:
    path = checkpoints_lib.resolve_checkpoint_path(initial_checkpoint_path)
    if restore_optimizer_state:
      log.info("Starting from %s (parameters and optimizer state).", path)
      return checkpoints_lib.restore_state(path, abstract)
    log.info("Starting from the parameters of %s with a fresh optimizer state.", path)
    params = checkpoints_lib.restore_params(path, abstract.params)
    state = trainer.init_state(input_shapes)
    return state.replace(params=params, step=state.step * 0)
  log.info("No checkpoint in MODEL_DIR and no INITIAL_CHECKPOINT_PATH: initialising from seed %d.",
           trainer.seed)
  return trainer.init_state(input_shapes)


def _report(model_dir, manager, loss_png, eval_writer, predictions_path, rows, metrics,
            print_examples):
  """Prints (process 0) a few infer-eval predictions, the final metrics and where outputs are."""
  lines = []
  if rows and print_examples:
    lines += ["Generated examples (greedy unless DecodingSettings says otherwise):",
              eval_lib.format_examples(rows, print_examples)]
  if metrics:
    lines.append(f"Final eval metrics (all in {eval_writer.history_path}): "
                 f"{eval_lib.brief(metrics)}")
  steps = ", ".join(str(s) for s in manager.all_steps())
  lines += [f"Outputs in {model_dir}:",
            f"  checkpoints   {manager.directory} (steps {steps})",
            f"  TensorBoard   tensorboard --logdir {model_dir}  (train/, eval/)",
            f"  metrics       {os.path.join(model_dir, 'train_metrics.jsonl')}, "
            f"{eval_writer.history_path}",
            f"  loss curve    {loss_png}",
            f"  config        {os.path.join(model_dir, 'config.gin')}"]
  if predictions_path:
    lines.append(f"  predictions   {predictions_path}")
  print("\n".join(lines), flush=True)


@gin.configurable
def train(*, model_dir: str = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          model: Optional[models_lib.EncoderDecoderModel] = None, optimizer=None,
          partitioner: Optional[partitioning.Partitioner] = None, num_microbatches: int = 1,
          seed: int = 0, pack: bool = True, shuffle: bool = True,
          initial_checkpoint_path: Optional[str] = None, restore_optimizer_state: bool = False,
          checkpoint_period: int = 1000, keep_checkpoints: Optional[int] = 3,
          log_period: int = 10, eval_period: int = 0, eval_steps: int = 20,
          eval_split: str = "validation", eval_mixture_or_task_name: Optional[str] = None,
          infer_eval_mixture_or_task_name: Optional[str] = None,
          infer_eval_split: str = "validation", infer_eval_num_examples: Optional[int] = None,
          print_examples: int = 0, progress_bar: bool = True):
  """Trains `model` on a seqio task/mixture; resumable, with checkpoints and summaries.

  Args (gin; the run files gin/runs/*.gin bind the macros in capitals):
    model_dir: MODEL_DIR — checkpoints, summaries, config.gin and loss.png go here.
    train_steps: TRAIN_STEPS — total steps (a resumed run continues up to this step).
    mixture_or_task_name: MIXTURE_OR_TASK_NAME — a registered seqio task or mixture.
    task_feature_lengths: TASK_FEATURE_LENGTHS — e.g. {"inputs": 512, "targets": 114}.
    batch_size: BATCH_SIZE — global batch (all processes together).
    model: an EncoderDecoderModel (its T5Config comes from a gin/models file).
    optimizer: (transform, schedule); default optimizers.adafactor().
    partitioner: mesh + rules; default partitioning.Partitioner().
    num_microbatches: gradient accumulation steps per batch.
    seed: parameter init, dropout and data-shuffle seed.
    pack: pack several examples per row (segment ids) — T5's pretraining default.
    shuffle: shuffle the training data.
    initial_checkpoint_path: INITIAL_CHECKPOINT_PATH — start (finetune) from here when
      MODEL_DIR has no checkpoint yet.
    restore_optimizer_state: also take the optimizer state from the initial checkpoint.
    checkpoint_period, keep_checkpoints: save every N steps, keep the last K.
    log_period: write train summaries every N steps.
    eval_period: teacher-forced eval every N steps (0: only at the end).
    eval_steps: batches per evaluation (0: no teacher-forced eval).
    eval_split, eval_mixture_or_task_name: what to evaluate (default: the training mixture).
    infer_eval_mixture_or_task_name: also decode this task/mixture's infer_eval_split at every
      evaluation and at the end, and compute its metric fns with seqio.Evaluator (decoding
      per DecodingSettings); metrics go to the eval summaries ("<task>/<metric>"), the
      predictions to MODEL_DIR/infer_eval_predictions/<step>.jsonl. None: off.
    infer_eval_split: the split infer-eval decodes.
    infer_eval_num_examples: at most this many examples per task (None: the whole split).
    print_examples: at the end, print this many infer-eval predictions (input / target /
      prediction), the final metrics and where the outputs are.
    progress_bar: show a tqdm bar with loss, tokens/s and ETA.

  Returns:
    (final TrainState, last eval metrics dict).
  """
  model = model or models_lib.EncoderDecoderModel()
  partitioner = partitioner or partitioning.Partitioner()
  trainer = trainer_lib.Trainer(model, optimizer or optimizers.adafactor(), partitioner,
                                num_microbatches=num_microbatches, seed=seed)
  local_batch = batch_size // jax.process_count()
  train_ds = data.get_dataset(mixture_or_task_name, task_feature_lengths, split="train",
                              batch_size=local_batch, shuffle=shuffle, seed=seed, pack=pack,
                              shard_info=_shard_info())
  iterator = data.DatasetIterator(train_ds)
  input_shapes = {k: (batch_size,) + tuple(v.shape[1:])
                  for k, v in train_ds.element_spec.items()}
  manager = checkpoints_lib.CheckpointManager(os.path.join(model_dir, "checkpoints"),
                                              save_period=checkpoint_period, keep=keep_checkpoints)
  state = restore_or_init(trainer, input_shapes, manager, iterator, initial_checkpoint_path,
                          restore_optimizer_state)
  gin_utils.write_operative_config(model_dir)
  train_writer, eval_writer = SummaryWriter(model_dir, "train"), SummaryWriter(model_dir, "eval")
  # Built once: the Evaluator caches the tokenized eval examples for every later evaluation.
  infer_evaluator = infer_eval_mixture_or_task_name and eval_lib.InferEvaluator(
      model, partitioner, infer_eval_mixture_or_task_name, task_feature_lengths, batch_size,
      split=infer_eval_split, num_examples=infer_eval_num_examples)
  predictions = {"path": None, "rows": []}

  def run_eval(step):
    metrics = {}
    if eval_steps:
      eval_ds = data.get_dataset(eval_mixture_or_task_name or mixture_or_task_name,
                                 task_feature_lengths, split=eval_split, batch_size=local_batch,
                                 shuffle=False, seed=seed, pack=pack, shard_info=_shard_info(),
                                 num_epochs=1)
      metrics = trainer_lib.evaluate_loss(
          trainer, state.params, _global_batches(eval_ds.as_numpy_iterator(), partitioner),
          max_batches=eval_steps)
    if infer_evaluator:
      infer_metrics, predictions["rows"] = infer_evaluator.evaluate(state.params, step)
      metrics.update(infer_metrics)
      predictions["path"] = os.path.join(model_dir, "infer_eval_predictions", f"{step}.jsonl")
      eval_lib.write_jsonl(predictions["rows"], predictions["path"])
    eval_writer.write(step, metrics)
    return metrics

  start = int(jax.device_get(state.step))
  bar = tqdm.tqdm(total=train_steps, initial=start, disable=not progress_bar or
                  jax.process_index() != 0, dynamic_ncols=True, desc="train")
  window_tokens, window_start, eval_metrics = [], time.time(), {}
  for step in range(start, train_steps):
    batch = partitioning.host_local_batch_to_global(next(iterator), partitioner)
    state, metrics = trainer.train_step(state, batch)
    window_tokens.append(metrics["num_tokens"])  # Device scalars: no sync until logging.
    done = step + 1
    if done % log_period == 0 or done == train_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      elapsed = max(time.time() - window_start, 1e-9)
      metrics["tokens_per_second"] = float(np.sum(jax.device_get(window_tokens))) / elapsed
      window_tokens, window_start = [], time.time()
      train_writer.write(done, metrics)
      bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}",
                      tok_s=f"{metrics['tokens_per_second']:.0f}")
    bar.update(1)
    evaluating = bool(eval_steps or infer_evaluator) and (
        done == train_steps or bool(eval_period and done % eval_period == 0))
    if evaluating:
      eval_metrics = run_eval(done)
      bar.write(f"step {done}: eval {eval_lib.brief(eval_metrics)}")
    # After evaluating, so keep-best checkpointing (CheckpointManager.keep_best_metric)
    # ranks this step by its eval metrics.
    manager.save(state, iterator, metrics=eval_metrics if evaluating else None,
                 force=done == train_steps)
  bar.close()
  manager.wait()
  if start >= train_steps and (eval_steps or infer_evaluator):  # nothing to train: evaluate
    eval_metrics = run_eval(train_steps)
  if jax.process_index() == 0:
    loss_png = plot_loss_curve(model_dir)
    _report(model_dir, manager, loss_png, eval_writer, predictions["path"], predictions["rows"],
            eval_metrics, print_examples)
  manager.close()
  return state, eval_metrics
