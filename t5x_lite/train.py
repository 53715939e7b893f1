"""The train run mode: training with periodic evaluation, checkpoints and summaries."""

import dataclasses
import logging
import time
from typing import Optional

from etils import epath
import jax
import numpy as np
import tqdm

from t5x_lite import checkpoints as checkpoints_lib
from t5x_lite import configs
from t5x_lite import data
from t5x_lite import evaluation as evaluation_lib
from t5x_lite import gin_utils
from t5x_lite import heads
from t5x_lite import models as models_lib
from t5x_lite import optimizers
from t5x_lite import partitioning
from t5x_lite import trainer as trainer_lib
from t5x_lite.run_dir import RunDir
from t5x_lite.summaries import SummaryWriter, read_history

log = logging.getLogger(__name__)


def plot_loss_curve(run_dir: RunDir) -> Optional[str]:
  """loss.png from the train (and eval) metric histories of the run (resumed parts included)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  plotted = False
  for name in ("train", "eval"):
    rows = [r for r in read_history(run_dir.metrics_history(name)) if r.get("loss") is not None]
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
  with epath.Path(run_dir.loss_png).open("wb") as f:
    fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  return run_dir.loss_png


def _global_batches(iterator, partitioner):
  for batch in iterator:
    yield partitioning.host_local_batch_to_global(batch, partitioner)


def restore_or_init(trainer: trainer_lib.Trainer, input_shapes, manager, dataset_iterator,
                    initial_checkpoint: Optional[configs.RestoreConfig]):
  """Resume from MODEL_DIR if it has checkpoints, else start from the initial checkpoint, else init.

  Resuming wins over INITIAL_CHECKPOINT_PATH: a preempted finetune must continue, not restart.
  An encoder head model (t5x_lite/heads.py) takes only the encoder of INITIAL_CHECKPOINT_PATH
  (an orbax checkpoint or a HF directory): decoder dropped, head and optimizer fresh.
  """
  abstract, shardings = trainer.state_shardings(input_shapes)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  latest = manager.latest_step()
  if latest is not None:
    if initial_checkpoint:
      log.warning("MODEL_DIR already has checkpoints (latest step %d): resuming from it. "
                  "INITIAL_CHECKPOINT_PATH=%s is ignored.", latest, initial_checkpoint.path)
    else:
      log.info("Resuming from %s/%d.", manager.directory, latest)
    return manager.restore(abstract, latest, dataset_iterator)
  if initial_checkpoint and isinstance(trainer.model, heads.EncoderHeadModel):
    if initial_checkpoint.restore_optimizer_state:
      raise ValueError("RestoreConfig.restore_optimizer_state=True: an encoder head model "
                       "starts from the encoder of INITIAL_CHECKPOINT_PATH with a fresh "
                       "optimizer; set it False.")
    log.info("Starting from the encoder of %s (decoder dropped, head initialised from seed "
             "%d).", initial_checkpoint.path, trainer.seed)
    state = trainer.init_state(input_shapes)
    return state.replace(params=trainer.model.load_encoder(initial_checkpoint.path,
                                                           state.params))
  if initial_checkpoint:
    path = checkpoints_lib.resolve_checkpoint_path(initial_checkpoint.path)
    if initial_checkpoint.restore_optimizer_state:
      log.info("Starting from %s (parameters and optimizer state).", path)
      return checkpoints_lib.restore_state(path, abstract)
    log.info("Starting from the parameters of %s with a fresh optimizer state.", path)
    return trainer.state_from_params(checkpoints_lib.restore_params(path, abstract.params),
                                     input_shapes)
  log.info("No checkpoint in MODEL_DIR and no INITIAL_CHECKPOINT_PATH: initialising from seed %d.",
           trainer.seed)
  return trainer.init_state(input_shapes)


def _report(run_dir: RunDir, manager, loss_png, eval_writer, predictions_path, rows, metrics,
            print_examples):
  """Prints (process 0) a few infer-eval predictions, the final metrics and where outputs are."""
  lines = []
  if rows and print_examples:
    lines += ["Generated examples (greedy unless DecodingSettings says otherwise):",
              evaluation_lib.format_examples(rows, print_examples)]
  if metrics:
    lines.append(f"Final eval metrics (all in {eval_writer.history_path}): "
                 f"{evaluation_lib.brief(metrics)}")
  steps = ", ".join(str(s) for s in manager.all_steps())
  lines += [f"Outputs in {run_dir.root}:",
            f"  checkpoints   {manager.directory} (steps {steps})",
            f"  TensorBoard   tensorboard --logdir {run_dir.root}  (train/, eval/)",
            f"  metrics       {run_dir.metrics_history('train')}, {eval_writer.history_path}",
            f"  loss curve    {loss_png}",
            f"  config        {run_dir.config_gin}"]
  if predictions_path:
    lines.append(f"  predictions   {predictions_path}")
  print("\n".join(lines), flush=True)


def train(*, model_dir: str, train_steps: int, model: models_lib.EncoderDecoderModel,
          train_dataset: configs.DatasetConfig, optimizer=None,
          partitioner: Optional[partitioning.Partitioner] = None, num_microbatches: int = 1,
          seed: int = 0, checkpoint: configs.CheckpointConfig = configs.CheckpointConfig(),
          initial_checkpoint: Optional[configs.RestoreConfig] = None,
          evaluation: configs.EvalConfig = configs.EvalConfig(), log_period: int = 10,
          progress_bar: bool = True):
  """Trains `model` on a seqio task/mixture; resumable, with checkpoints and summaries.

  Args (gin; the run files gin/runs/*.gin bind the macros in capitals):
    model_dir: MODEL_DIR — checkpoints, summaries, config.gin and loss.png (t5x_lite.run_dir).
    train_steps: TRAIN_STEPS — total steps (a resumed run continues up to this step).
    model: an EncoderDecoderModel, or an encoder head model (t5x_lite/heads.py); its
      T5Config comes from a gin/models file.
    train_dataset: what to train on (MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, BATCH_SIZE).
    optimizer: (transform, schedule); default optimizers.adafactor().
    partitioner: mesh + rules; default partitioning.Partitioner().
    num_microbatches: gradient accumulation steps per batch.
    seed: parameter init and dropout seed (the data order has DatasetConfig.seed).
    checkpoint: save period, how many to keep, keep-best, async saving.
    initial_checkpoint: INITIAL_CHECKPOINT_PATH — start (finetune) from here when MODEL_DIR
      has no checkpoint yet; None: from `seed`.
    evaluation: teacher-forced eval and infer-eval (seqio metric fns) during training.
    log_period: write train summaries every N steps.
    progress_bar: show a tqdm bar with loss, tokens/s and ETA.

  Returns:
    (final TrainState, last eval metrics dict).
  """
  if train_steps <= 0 or log_period <= 0:
    raise ValueError(f"train.train_steps={train_steps} and train.log_period={log_period} must "
                     "be positive (gin: TRAIN_STEPS, train.log_period).")
  run_dir = RunDir(model_dir)
  partitioner = partitioner or partitioning.Partitioner()
  trainer = trainer_lib.Trainer(model, optimizer or optimizers.adafactor(), partitioner,
                                num_microbatches=num_microbatches, seed=seed)
  local_batch = train_dataset.batch_size // jax.process_count()

  def dataset(config: configs.DatasetConfig, num_epochs=None):
    return data.get_dataset(config.mixture_or_task_name, config.task_feature_lengths,
                            split=config.split, batch_size=local_batch, shuffle=config.shuffle,
                            seed=config.seed, pack=config.pack, use_cached=config.use_cached,
                            shard_info=data.host_shard_info(), num_epochs=num_epochs,
                            feature_converter=model.feature_converter(config.pack))

  train_ds = dataset(train_dataset)
  iterator = data.DatasetIterator(train_ds)
  input_shapes = {k: (train_dataset.batch_size,) + tuple(v.shape[1:])
                  for k, v in train_ds.element_spec.items()}
  manager = checkpoints_lib.CheckpointManager(run_dir, checkpoint)
  state = restore_or_init(trainer, input_shapes, manager, iterator, initial_checkpoint)
  gin_utils.write_operative_config(run_dir.config_gin)
  train_writer = SummaryWriter(run_dir.root, "train")
  eval_writer = SummaryWriter(run_dir.root, "eval")
  # Built once: the Evaluator caches the tokenized eval examples for every later evaluation.
  infer_evaluator = evaluation.infer_eval_mixture_or_task_name and evaluation_lib.InferEvaluator(
      model, partitioner, evaluation.infer_eval_mixture_or_task_name,
      train_dataset.task_feature_lengths, train_dataset.batch_size,
      split=evaluation.infer_eval_split, num_examples=evaluation.infer_eval_num_examples)
  predictions = {"path": None, "rows": []}

  def run_eval(step):
    metrics = {}
    if evaluation.steps:
      eval_config = dataclasses.replace(
          train_dataset, split=evaluation.split, shuffle=False,
          mixture_or_task_name=(evaluation.mixture_or_task_name or
                                train_dataset.mixture_or_task_name))
      eval_ds = dataset(eval_config, num_epochs=1)
      metrics = trainer_lib.evaluate_loss(
          trainer, state.params, _global_batches(eval_ds.as_numpy_iterator(), partitioner),
          max_batches=evaluation.steps)
    if infer_evaluator:
      infer_metrics, predictions["rows"] = infer_evaluator.evaluate(state.params, step)
      metrics.update(infer_metrics)
      predictions["path"] = run_dir.predictions("infer_eval", step)
      evaluation_lib.write_jsonl(predictions["rows"], predictions["path"])
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
      bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.1f}%",
                      tok_s=f"{metrics['tokens_per_second']:.0f}")
    bar.update(1)
    evaluating = evaluation.enabled and (
        done == train_steps or bool(evaluation.period and done % evaluation.period == 0))
    if evaluating:
      eval_metrics = run_eval(done)
      bar.write(f"step {done}: eval {evaluation_lib.brief(eval_metrics)}")
    # After evaluating, so keep-best checkpointing (CheckpointConfig.keep_best_metric)
    # ranks this step by its eval metrics.
    manager.save(state, iterator, metrics=eval_metrics if evaluating else None,
                 force=done == train_steps)
  bar.close()
  manager.wait()
  if start >= train_steps and evaluation.enabled:
    # Nothing left to train: report the last evaluation instead of appending a duplicate.
    history = read_history(eval_writer.history_path)
    if history and history[-1]["step"] == train_steps:
      eval_metrics = {k: v for k, v in history[-1].items() if k != "step"}
    else:
      eval_metrics = run_eval(train_steps)
  if jax.process_index() == 0:
    loss_png = plot_loss_curve(run_dir)
    _report(run_dir, manager, loss_png, eval_writer, predictions["path"], predictions["rows"],
            eval_metrics, evaluation.print_examples)
  manager.close()
  return state, eval_metrics
