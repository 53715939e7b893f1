"""The train run mode: training with periodic evaluation, checkpoints and summaries."""

import dataclasses
import logging
import time
from typing import Any, Callable, Optional

from etils import epath
import jax
import numpy as np
import tqdm

from t5x_lite import settings
from t5x_lite.checkpointing import checkpoints as checkpoints_lib
from t5x_lite.checkpointing import restore
from t5x_lite.checkpointing import step_record
from t5x_lite.checkpointing import storage
from t5x_lite.checkpointing.run_dir import RunDir
from t5x_lite.checkpointing.summaries import SummaryWriter, read_history
from t5x_lite.data import pipeline
from t5x_lite.interop import initial_params
from t5x_lite.interop import t5x_format
from t5x_lite.model import model_interface
from t5x_lite.modes import prediction as evaluation_lib
from t5x_lite.parallel import partitioning
from t5x_lite.runtime import agreement
from t5x_lite.training import optimizers
from t5x_lite.training import preemption
from t5x_lite.training import trainer as trainer_lib

log = logging.getLogger(__name__)

NONFINITE_POLICIES = ("skip", "stop")
# Room for the summaries and metadata a run writes beside its checkpoints.
_SUMMARY_BYTES = 16 * 2**20


def plot_loss_curve(run_dir: RunDir) -> Optional[str]:
  """loss.png from the train (and eval) metric histories of the run (resumed parts included)."""
  # A bare Figure (no pyplot): the global backend stays as the user (or a notebook) set it.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(7, 4))
  ax = fig.add_subplot()
  plotted = False
  for name in ("train", "eval"):
    rows = [r for r in read_history(run_dir.metrics_history(name)) if r.get("loss") is not None]
    if rows:
      ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=f"{name} loss",
              marker="o" if name == "eval" else None)
      plotted = True
  if not plotted:
    return None
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy per target token")
  ax.legend()
  ax.grid(alpha=0.3)
  with epath.Path(run_dir.loss_png).open("wb") as f:
    fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
  return run_dir.loss_png


def _global_batches(iterator, partitioner):
  for batch in iterator:
    yield partitioning.host_local_batch_to_global(batch, partitioner)


def restore_or_init(trainer: trainer_lib.Trainer, abstract, input_shapes, manager,
                    dataset_iterator, initial_checkpoint: Optional[settings.RestoreConfig]):
  """Resume from MODEL_DIR if it has checkpoints, else start from the initial checkpoint, else init.

  Resuming wins over INITIAL_CHECKPOINT_PATH: a preempted finetune must continue, not restart.
  INITIAL_CHECKPOINT_PATH (an orbax or t5x checkpoint, or a HF directory) gives the model's
  `initial_checkpoint_params` (t5x_lite.interop.initial_params): all parameters, or some entries (an
  encoder head takes the encoder: decoder dropped, head fresh), with a fresh optimizer state
  unless RestoreConfig.restore_optimizer_state (full orbax states only).
  A damaged latest step is skipped for the newest readable one (CheckpointManager.restore).

  Args:
    abstract: the TrainState's ShapeDtypeStructs with their shardings.
  """
  latest = manager.latest_step()
  if latest is not None:
    if initial_checkpoint:
      log.warning("MODEL_DIR already has checkpoints (latest step %d): resuming from it. "
                  "INITIAL_CHECKPOINT_PATH=%s is ignored.", latest, initial_checkpoint.path)
    state = manager.restore(abstract, dataset_iterator)
    log.info("Resumed from %s/%d.", manager.directory, int(jax.device_get(state.step)))
    return state
  model = trainer.model
  if initial_checkpoint and initial_checkpoint.restore_optimizer_state:
    why_not = initial_params.restores_optimizer_state(model, initial_checkpoint.path)
    if why_not:
      raise ValueError(f"RestoreConfig.restore_optimizer_state=True: {why_not}; set it False.")
    if t5x_format.is_t5x_checkpoint(initial_checkpoint.path):
      log.info("Continuing the t5x run of %s (parameters, Adafactor state and step).",
               initial_checkpoint.path)
      return initial_params.t5x_train_state(model, initial_checkpoint.path, abstract)
    path = restore.resolve_checkpoint_path(initial_checkpoint.path)
    log.info("Starting from %s (parameters and optimizer state).", path)
    return restore.restore_state(path, abstract, manager.vocabulary)
  if initial_checkpoint and model.initial_checkpoint_params is not None:
    log.info("Starting from the %s parameters of %s (the others initialised from seed %d).",
             "/".join(model.initial_checkpoint_params), initial_checkpoint.path, trainer.seed)
    state = trainer.init_state(input_shapes)
    return state.replace(params=initial_params.load(model, initial_checkpoint.path,
                                                    state.params, manager.vocabulary))
  if initial_checkpoint:
    log.info("Starting from the parameters of %s with a fresh optimizer state.",
             initial_checkpoint.path)
    # Read straight into their shardings: no fresh parameters are made and discarded.
    return trainer.state_from_params(
        initial_params.load(model, initial_checkpoint.path, abstract.params, manager.vocabulary),
        input_shapes)
  log.info("No checkpoint in MODEL_DIR and no INITIAL_CHECKPOINT_PATH: initialising from seed %d.",
           trainer.seed)
  return trainer.init_state(input_shapes)


class NonFiniteError(RuntimeError):
  """Training stopped on non-finite losses or updates (train.nonfinite_policy)."""


class _NonFiniteWatch:
  """Applies train.nonfinite_policy to each step's "nonfinite" flag.

  The flag of a step is read when the next step has been dispatched (the device has
  finished it by then, so the loop does not stall), or at once by `flush()` where the loop
  waits for the device anyway: before logging and before saving. The train step itself
  already dropped the update, so the state, and every checkpoint of it, stays finite.
  """

  def __init__(self, policy: str, max_consecutive: int):
    self.policy, self.max_consecutive = policy, max_consecutive
    self.skipped, self.consecutive = 0, 0
    self._pending = None

  def push(self, step: int, flag) -> None:
    previous, self._pending = self._pending, (step, flag)
    if previous is not None:
      self._observe(*previous)

  def flush(self) -> None:
    if self._pending is not None:
      pending, self._pending = self._pending, None
      self._observe(*pending)

  def _observe(self, step: int, flag) -> None:
    if not float(flag):
      self.consecutive = 0
      return
    self.skipped += 1
    self.consecutive += 1
    if self.policy == "stop":
      raise NonFiniteError(
          f"Step {step}: the loss or the update is not finite (NaN or inf); stopping "
          "(train.nonfinite_policy = 'stop'). The update was not applied and the checkpoints "
          "hold finite values; lower the learning rate, check the data, or set "
          "train.nonfinite_policy = 'skip' to drop such steps.")
    log.warning("Step %d: the loss or the update is not finite; the update was skipped (%d in "
                "a row, %d in all; training stops after train.max_consecutive_nonfinite = %d "
                "in a row).", step, self.consecutive, self.skipped, self.max_consecutive)
    if self.consecutive >= self.max_consecutive:
      raise NonFiniteError(
          f"Steps {step - self.consecutive + 1}-{step}: the loss or the update was not finite "
          f"{self.consecutive} times in a row (train.max_consecutive_nonfinite = "
          f"{self.max_consecutive}); stopping. Those updates were skipped and the checkpoints "
          "hold finite values; lower the learning rate or check the data, then re-run to "
          "resume from the last checkpoint.")


@dataclasses.dataclass(frozen=True)
class TrainRun:
  """The settings of one train() call, gathered once with their defaults filled in.

  train() builds it from its gin arguments (documented there); _train and _loop read it.
  """
  run_dir: RunDir
  train_steps: int
  model: model_interface.Model
  train_dataset: settings.DatasetConfig
  optimizer: Any  # (optax transform, learning-rate schedule)
  partitioner: partitioning.Partitioner
  num_microbatches: int
  seed: int
  checkpoint: settings.CheckpointConfig
  initial_checkpoint: Optional[settings.RestoreConfig]
  evaluation: settings.EvalConfig
  log_period: int
  progress_bar: bool
  nonfinite_policy: str
  max_consecutive_nonfinite: int
  force_lock: bool
  run_config: Optional[Callable[[], str]]

  @property
  def local_batch_size(self) -> int:
    """The rows of each batch this process reads (BATCH_SIZE over the processes)."""
    return self.train_dataset.batch_size // jax.process_count()


def _check_settings(run: TrainRun):
  """Every setting a typo can break, checked before any expensive start-up work."""
  settings.check_int("train.train_steps", run.train_steps, gin="TRAIN_STEPS")
  settings.check_int("train.log_period", run.log_period)
  settings.check_int("train.num_microbatches", run.num_microbatches)
  settings.check_int("train.max_consecutive_nonfinite", run.max_consecutive_nonfinite)
  if run.nonfinite_policy not in NONFINITE_POLICIES:
    raise ValueError(f"train.nonfinite_policy={run.nonfinite_policy!r}: choose one of "
                     f"{NONFINITE_POLICIES}.")
  batch, processes = run.train_dataset.batch_size, jax.process_count()
  data_parallel = run.partitioner.data_parallel_size
  for count, what in ((processes, "processes"), (data_parallel, "data-parallel devices"),
                      (run.num_microbatches, "microbatches (train.num_microbatches)")):
    if batch % count:
      raise ValueError(f"BATCH_SIZE={batch} does not divide over the {count} {what}: set "
                       f"BATCH_SIZE to a multiple of {count}.")
  evaluation = run.evaluation
  names = [run.train_dataset.mixture_or_task_name, evaluation.infer_eval_mixture_or_task_name]
  if evaluation.steps:
    names.append(evaluation.mixture_or_task_name)
  for name in filter(None, names):
    pipeline.check_task(name, run.model)
    pipeline.check_feature_lengths(name, run.train_dataset.task_feature_lengths)


def _take_lock(run_dir: RunDir, force: bool) -> Optional[storage.RunLock]:
  """Process 0 probes MODEL_DIR and takes its lock; every process raises if that failed."""

  def take() -> Optional[storage.RunLock]:
    if jax.process_index() != 0:
      return None
    storage.check_writable(run_dir.root)
    lock = storage.RunLock(run_dir.lock)
    lock.acquire(force=force)
    return lock

  return agreement.all_succeed(take, f"Taking MODEL_DIR={run_dir.root}", storage.StorageError)


def _close_quietly(closeable) -> None:
  """Closes after an error without hiding it (a failed save raises again when closed)."""
  try:
    closeable.close()
  except Exception as e:  # pylint: disable=broad-except
    log.warning("While stopping: %s", storage.write_error_reason(e))


def _report(run_dir: RunDir, manager, loss_png, eval_writer, predictions_path, rows, metrics,
            print_examples, examples_heading: str = "Predicted examples:"):
  """Prints (process 0) a few infer-eval predictions, the final metrics and where outputs are.

  `examples_heading`: the model's line above the examples (model_interface.Model).
  """
  lines = []
  if rows and print_examples:
    lines += [examples_heading, evaluation_lib.format_examples(rows, print_examples)]
  if metrics:
    lines.append(f"Final eval metrics (all in {eval_writer.history_path}): "
                 f"{evaluation_lib.brief(metrics)}")
  steps = ", ".join(str(s) for s in manager.all_steps())
  # Only files this run has written: no eval_metrics.jsonl when no evaluation ran.
  exists = lambda path: path and epath.Path(path).exists()
  histories = [p for p in (run_dir.metrics_history("train"), eval_writer.history_path)
               if exists(p)]
  lines += [f"Outputs in {run_dir.root}:",
            f"  checkpoints   {manager.directory} (steps {steps})",
            f"  TensorBoard   tensorboard --logdir {run_dir.root}  (train/, eval/)"]
  for label, paths in (("metrics", histories), ("loss curve", [loss_png]),
                       ("config", [run_dir.config_gin]), ("predictions", [predictions_path])):
    if any(exists(p) for p in paths):
      lines.append(f"  {label:13s} {', '.join(p for p in paths if exists(p))}")
  print("\n".join(lines), flush=True)


def train(*, model_dir: str, train_steps: int, model: model_interface.Model,
          train_dataset: settings.DatasetConfig, optimizer=None,
          partitioner: Optional[partitioning.Partitioner] = None, num_microbatches: int = 1,
          seed: int = 0, checkpoint: settings.CheckpointConfig = settings.CheckpointConfig(),
          initial_checkpoint: Optional[settings.RestoreConfig] = None,
          evaluation: settings.EvalConfig = settings.EvalConfig(), log_period: int = 10,
          progress_bar: bool = True, nonfinite_policy: str = "skip",
          max_consecutive_nonfinite: int = 10, force_lock: bool = False,
          run_config: Optional[Callable[[], str]] = None):
  """Trains `model` on a seqio task/mixture; resumable, with checkpoints and summaries.

  Args (gin; the run files gin/runs/*.gin bind the macros in capitals):
    model_dir: MODEL_DIR — checkpoints, summaries, config.gin and loss.png (t5x_lite.checkpointing.run_dir).
    train_steps: TRAIN_STEPS — total steps (a resumed run continues up to this step).
    model: MODEL — a model_interface.Model: the EncoderDecoderModel or an encoder head
      model (t5x_lite/model/heads.py); its T5Config comes from a gin/models file.
    train_dataset: what to train on (MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, BATCH_SIZE).
    optimizer: (transform, schedule); default optimizers.adafactor().
    partitioner: mesh + rules; default partitioning.Partitioner().
    num_microbatches: gradient accumulation steps per batch.
    seed: parameter init and dropout seed (the data order has DatasetConfig.seed).
    checkpoint: save period, how many to keep, keep-best, async saving, restore fallback.
    initial_checkpoint: INITIAL_CHECKPOINT_PATH — start (finetune) from here when MODEL_DIR
      has no checkpoint yet; None: from `seed`.
    evaluation: teacher-forced eval and infer-eval (seqio metric fns) during training.
    log_period: write train summaries every N steps.
    progress_bar: show a tqdm bar with loss, tokens/s and ETA.
    nonfinite_policy: a step whose loss or update is NaN/inf never reaches the parameters;
      "skip" drops it, logs it and goes on (stopping after `max_consecutive_nonfinite` in
      a row), "stop" raises naming the step.
    max_consecutive_nonfinite: with "skip", stop after this many non-finite steps in a row.
    force_lock: take MODEL_DIR's lock even if another process seems to hold it (a lock
      left by a process that is gone; see t5x_lite.checkpointing.storage).
    run_config: returns the run's configuration as text, written to MODEL_DIR/config.gin once
      the model is built (the entry point passes gin's operative config); None: not written.

  SIGTERM / SIGINT finish the current step, save it and return (t5x_lite.training.preemption).

  Returns:
    (final TrainState, last eval metrics dict).
  """
  run = TrainRun(
      run_dir=RunDir(model_dir), train_steps=train_steps, model=model,
      train_dataset=train_dataset, optimizer=optimizer or optimizers.adafactor(),
      partitioner=partitioner or partitioning.Partitioner(), num_microbatches=num_microbatches,
      seed=seed, checkpoint=checkpoint, initial_checkpoint=initial_checkpoint,
      evaluation=evaluation, log_period=log_period, progress_bar=progress_bar,
      nonfinite_policy=nonfinite_policy, max_consecutive_nonfinite=max_consecutive_nonfinite,
      force_lock=force_lock, run_config=run_config)
  _check_settings(run)
  if run.initial_checkpoint and not run.run_dir.checkpoint_steps():
    # Fails fast if wrong: an orbax checkpoint or a HF directory (t5x_lite.interop.initial_params).
    initial_params.check_path(run.initial_checkpoint.path)
  lock = _take_lock(run.run_dir, run.force_lock)
  try:
    with preemption.StopRequest() as stop_request:
      return _train(run, lock, stop_request)
  finally:
    if lock is not None:
      lock.release()


def _eval_dataset(train_dataset: settings.DatasetConfig,
                  evaluation: settings.EvalConfig) -> settings.DatasetConfig:
  """What teacher-forced eval reads: EvalConfig's task (default: the training one) and split."""
  return dataclasses.replace(
      train_dataset, split=evaluation.split, shuffle=False,
      mixture_or_task_name=(evaluation.mixture_or_task_name or
                            train_dataset.mixture_or_task_name))


class _Evaluation:
  """Teacher-forced eval and infer-eval of params at a step (EvalConfig); writes summaries."""

  def __init__(self, run_dir: RunDir, trainer, evaluation: settings.EvalConfig,
               train_dataset: settings.DatasetConfig, dataset_fn, writer: SummaryWriter):
    self.run_dir, self.trainer, self.config = run_dir, trainer, evaluation
    self.writer, self.dataset_fn = writer, dataset_fn
    self.eval_dataset = _eval_dataset(train_dataset, evaluation)
    # Built once: the Evaluator caches the tokenized eval examples for every later evaluation.
    self.infer_evaluator = evaluation.infer_eval_mixture_or_task_name and (
        evaluation_lib.InferEvaluator(
            trainer.model, trainer.partitioner, evaluation.infer_eval_mixture_or_task_name,
            train_dataset.task_feature_lengths, train_dataset.batch_size,
            split=evaluation.infer_eval_split, num_examples=evaluation.infer_eval_num_examples))
    self.predictions_path, self.predictions = None, []

  def load_predictions(self, step: int) -> None:
    """Reads back the infer-eval predictions written at `step`, if there are any."""
    path = self.run_dir.predictions("infer_eval", step)
    if self.infer_evaluator and epath.Path(path).exists():
      self.predictions_path, self.predictions = path, read_history(path, by_step=False)

  def due(self, step: int, train_steps: int) -> bool:
    return self.config.enabled and (
        step == train_steps or bool(self.config.period and step % self.config.period == 0))

  def __call__(self, step: int, params) -> dict:
    metrics = {}
    if self.config.steps:
      batches = self.dataset_fn(self.eval_dataset, num_epochs=1).as_numpy_iterator()
      metrics = trainer_lib.evaluate_loss(
          self.trainer, params, _global_batches(batches, self.trainer.partitioner),
          max_batches=self.config.steps)
    if self.infer_evaluator:
      infer_metrics, self.predictions = self.infer_evaluator.evaluate(params, step)
      metrics.update(infer_metrics)
      self.predictions_path = self.run_dir.predictions("infer_eval", step)
      evaluation_lib.write_jsonl(self.predictions, self.predictions_path)
    self.writer.write(step, metrics)
    return metrics


def _loop(run: TrainRun, state, *, trainer, iterator, manager, lock, stop_request, watch,
          run_eval: _Evaluation, train_writer: SummaryWriter):
  """The training steps from state.step on; returns (state, last eval metrics, last step)."""
  train_steps, log_period = run.train_steps, run.log_period
  start = int(jax.device_get(state.step))
  bar = tqdm.tqdm(total=train_steps, initial=start, disable=not run.progress_bar or
                  jax.process_index() != 0, dynamic_ncols=True, desc="train")
  window_tokens, window_start, eval_metrics, done = [], time.time(), {}, start
  input_seconds = 0.0  # Host time waiting for batches: large when the input starves the step.
  for step in range(start, train_steps):
    wait_start = time.time()
    batch = partitioning.host_local_batch_to_global(next(iterator), trainer.partitioner)
    input_seconds += time.time() - wait_start
    state, metrics = trainer.train_step(state, batch)
    watch.push(step + 1, metrics["nonfinite"])
    window_tokens.append(metrics["num_tokens"])  # Device scalars: no sync until logging.
    done = step + 1
    if done % log_period == 0 or done == train_steps:
      watch.flush()
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      elapsed = max(time.time() - window_start, 1e-9)
      metrics["tokens_per_second"] = float(np.sum(jax.device_get(window_tokens))) / elapsed
      metrics["input_seconds_per_step"] = input_seconds / len(window_tokens)
      metrics["input_wait_fraction"] = min(input_seconds / elapsed, 1.0)
      metrics["skipped_nonfinite_steps"] = watch.skipped
      window_tokens, window_start, input_seconds = [], time.time(), 0.0
      train_writer.write(done, metrics)
      bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.1f}%",
                      tok_s=f"{metrics['tokens_per_second']:.0f}")
      if lock is not None:
        lock.check()
    manager.check_for_errors()  # A failed background save stops training at once.
    bar.update(1)
    evaluating = run_eval.due(done, train_steps)
    if evaluating:
      eval_metrics = run_eval(done, state.params)
      bar.write(f"step {done}: eval {evaluation_lib.brief(eval_metrics)}")
    stopping = stop_request.should_stop()
    force = stopping or done == train_steps
    if force or manager.should_save(done):
      watch.flush()  # A 'stop' policy raises before the step is saved.
      # After evaluating, so keep-best checkpointing (CheckpointConfig.keep_best_metric)
      # ranks this step by its eval metrics.
      manager.save(state, iterator, metrics=eval_metrics if evaluating else None, force=force)
    if stopping:
      break
  bar.close()
  manager.wait()
  return state, eval_metrics, done


def _train(run: TrainRun, lock: Optional[storage.RunLock],
           stop_request: preemption.StopRequest):
  """train() once the settings are checked and MODEL_DIR is this process's."""
  run_dir, model, train_dataset, evaluation = (run.run_dir, run.model, run.train_dataset,
                                               run.evaluation)
  trainer = trainer_lib.Trainer(model, run.optimizer, run.partitioner,
                                num_microbatches=run.num_microbatches, seed=run.seed)
  if train_dataset.pack and not model.can_pack:
    log.info("%s keeps one example per row: training unpacked (DatasetConfig.pack = True "
             "ignored).", type(model).__name__)

  def dataset(config: settings.DatasetConfig, num_epochs=None):
    pack = config.pack and model.can_pack
    return pipeline.get_dataset(config.mixture_or_task_name, config.task_feature_lengths,
                                split=config.split, batch_size=run.local_batch_size,
                                shuffle=config.shuffle, seed=config.seed, pack=pack,
                                use_cached=config.use_cached,
                                shard_info=pipeline.host_shard_info(), num_epochs=num_epochs,
                                feature_converter=model.feature_converter(pack))

  if evaluation.steps:
    # Else an empty eval split is found only at the first evaluation, after training steps.
    eval_dataset = _eval_dataset(train_dataset, evaluation)
    pipeline.check_not_empty(eval_dataset.mixture_or_task_name, eval_dataset.split,
                             eval_dataset.task_feature_lengths,
                             shard_info=pipeline.host_shard_info(), seed=eval_dataset.seed,
                             use_cached=eval_dataset.use_cached)
  train_ds = dataset(train_dataset)  # Raises EmptyDatasetError if the train split is empty.
  iterator = pipeline.DatasetIterator(train_ds)
  input_shapes = {k: (train_dataset.batch_size,) + tuple(v.shape[1:])
                  for k, v in train_ds.element_spec.items()}
  abstract = trainer.abstract_state(input_shapes)
  if jax.process_index() == 0:
    # Room for one more checkpoint (+10%) and the summaries, before any minute is spent.
    needed = int(checkpoints_lib.state_bytes(abstract) * 1.1) + _SUMMARY_BYTES
    storage.check_free_space(run_dir.root, needed, "a checkpoint of this model and its summaries")
  manager = checkpoints_lib.CheckpointManager(  # Steps record (and check) the vocabulary.
      run_dir, run.checkpoint,
      step_record.task_vocabulary(train_dataset.mixture_or_task_name))
  writers = []
  try:
    state = restore_or_init(trainer, abstract, input_shapes, manager, iterator,
                            run.initial_checkpoint)
    start = int(jax.device_get(state.step))
    if run.run_config is not None:
      epath.Path(run_dir.config_gin).write_text(run.run_config())
    train_writer = SummaryWriter(run_dir.root, "train")
    eval_writer = SummaryWriter(run_dir.root, "eval")
    writers = [train_writer, eval_writer]
    run_eval = _Evaluation(run_dir, trainer, evaluation, train_dataset, dataset, eval_writer)
    state, eval_metrics, done = _loop(
        run, state, trainer=trainer, iterator=iterator, manager=manager, lock=lock,
        stop_request=stop_request,
        watch=_NonFiniteWatch(run.nonfinite_policy, run.max_consecutive_nonfinite),
        run_eval=run_eval, train_writer=train_writer)
    if stop_request.signal_name is not None and done < run.train_steps:
      if jax.process_index() == 0:
        print(f"Stopped by {stop_request.signal_name} after step {done}: saved the checkpoint "
              f"{run_dir.checkpoint(done)}. Re-run the same command to resume from step "
              f"{done}.", flush=True)
    else:
      if start >= run.train_steps and evaluation.enabled:
        # Nothing left to train: report the last evaluation instead of appending a duplicate.
        history = read_history(eval_writer.history_path)
        if history and history[-1]["step"] == run.train_steps:
          eval_metrics = {k: v for k, v in history[-1].items() if k != "step"}
          run_eval.load_predictions(run.train_steps)
        else:
          eval_metrics = run_eval(run.train_steps, state.params)
      if jax.process_index() == 0:
        _report(run_dir, manager, plot_loss_curve(run_dir), eval_writer,
                run_eval.predictions_path, run_eval.predictions, eval_metrics,
                evaluation.print_examples, model.examples_heading)
    manager.close()
    return state, eval_metrics
  except BaseException:
    _close_quietly(manager)
    raise
  finally:
    for writer in writers:
      _close_quietly(writer)
