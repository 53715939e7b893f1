"""The eval run mode: seqio.Evaluator metrics of one, several or all checkpoints of a run.

`evaluate` restores the parameters of one checkpoint, of every checkpoint of a run, or of a
given checkpoint path, and runs the task's metric fns (t5x_lite.modes.prediction.InferEvaluator).
Per evaluated step it writes (t5x_lite.checkpointing.run_dir names the files)
  OUTPUT_DIR/eval_<split>/                       TensorBoard scalars "<task>/<metric>"
  OUTPUT_DIR/eval_<split>_metrics.jsonl          one line per step: {"step": s, "<task>/<metric>": v}
  OUTPUT_DIR/eval_<split>_predictions/<step>.jsonl   {"task", "inputs", "targets", "prediction"}
(OUTPUT_DIR defaults to MODEL_DIR, or to the checkpoint's run directory.) When several tasks
are evaluated, "average/<metric>" is the unweighted mean over the tasks that report it.
A step's predictions are written before its metrics row, and a step is done only when both
are there: a run stopped at any point completes what is missing when rerun.
"""

import logging
from typing import List, Mapping, Optional, Sequence, Union

from etils import epath

from t5x_lite.checkpointing import restore
from t5x_lite.checkpointing import step_record
from t5x_lite.checkpointing.run_dir import RunDir
from t5x_lite.checkpointing.summaries import SummaryWriter, read_history
from t5x_lite.model import model_interface
from t5x_lite.modes import prediction
from t5x_lite.parallel import partitioning

log = logging.getLogger(__name__)


def checkpoint_paths(model_dir: Optional[str], checkpoint_path: Optional[str],
                     checkpoint_steps: Union[str, Sequence[int]]) -> List[str]:
  """The checkpoints to evaluate: CHECKPOINT_PATH, or MODEL_DIR's latest / all / listed steps."""
  if checkpoint_path:
    return [restore.resolve_checkpoint_path(checkpoint_path)]
  if not model_dir:
    raise ValueError("Set CHECKPOINT_PATH (one checkpoint) or MODEL_DIR (its checkpoints/) "
                     "for the eval run mode (gin/runs/eval.gin).")
  run = RunDir(model_dir)
  root, steps = run.checkpoints, run.checkpoint_steps()
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
  return [restore.resolve_checkpoint_path(run.checkpoint(s)) for s in steps]


def evaluate(*, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
             batch_size: int, model: model_interface.Model,
             model_dir: Optional[str] = None, checkpoint_path: Optional[str] = None,
             checkpoint_steps: Union[str, Sequence[int]] = "latest", split: str = "validation",
             partitioner: Optional[partitioning.Partitioner] = None,
             output_dir: Optional[str] = None, num_examples: Optional[int] = None,
             write_predictions: bool = True, reevaluate: bool = False) -> dict:
  """Evaluates checkpoints with seqio.Evaluator (the task's metric fns); writes summaries.

  Args (gin; gin/runs/eval.gin binds the macros in capitals):
    mixture_or_task_name: MIXTURE_OR_TASK_NAME — task or mixture with metric fns.
    task_feature_lengths: TASK_FEATURE_LENGTHS — {"inputs": Li, "targets": Lt}; Lt is the
      decode length unless DecodingSettings.max_decode_length is set.
    batch_size: BATCH_SIZE — global batch for decoding and scoring.
    model: MODEL — the model the checkpoints were trained with (a model_interface.Model from
      the model gin file or recipe; the encoder-decoder decodes with DecodingSettings).
    model_dir: MODEL_DIR — a training run; its checkpoints/<step> are evaluated.
    checkpoint_path: CHECKPOINT_PATH — evaluate this one checkpoint (overrides model_dir).
    checkpoint_steps: with model_dir: "latest", "all", or a list of steps.
    split: the split to evaluate ("validation", "test", ...).
    partitioner: mesh and rules; default partitioning.Partitioner().
    output_dir: OUTPUT_DIR — where summaries go; default model_dir, else the run directory
      of checkpoint_path (the parent of its checkpoints/ directory).
    num_examples: at most this many examples per task (None: the whole split).
    write_predictions: also write each step's decoded predictions as JSONL.
    reevaluate: evaluate steps whose metrics are already in the history file again (a new
      row); by default they are reported from the file, so re-running adds no duplicate.

  Returns:
    {step: {"task/metric": value}} for every evaluated step.
  """
  partitioner = partitioner or partitioning.Partitioner()
  paths = checkpoint_paths(model_dir, checkpoint_path, checkpoint_steps)
  output = RunDir(output_dir) if output_dir else (
      RunDir(model_dir) if model_dir else RunDir.of_checkpoint(paths[0]))
  evaluator = prediction.InferEvaluator(model, partitioner, mixture_or_task_name,
                                        task_feature_lengths, batch_size, split=split,
                                        num_examples=num_examples)
  writer = SummaryWriter(output.root, f"eval_{split}")
  done = {row.pop("step"): row for row in read_history(writer.history_path)}
  wants_predictions = write_predictions and evaluator.has_predictions
  results = {}
  for path in paths:
    step = restore.checkpoint_step(path)
    predictions_path = output.predictions(f"eval_{split}", step)
    # A step is done when its metrics row and (if written) its predictions are there: a run
    # stopped between the two completes the step when rerun.
    missing = wants_predictions and not epath.Path(predictions_path).exists()
    if step in done and not reevaluate and not missing:
      log.info("Step %d is already evaluated in %s (evaluate.reevaluate=True redoes it): %s",
               step, writer.history_path, prediction.brief(done[step]))
      results[step] = done[step]
      continue
    if step in done and not reevaluate:
      log.info("Step %d has metrics in %s but no %s: evaluating it again to write them.",
               step, writer.history_path, predictions_path)
    params = restore.restore_model_params(  # Refused if another vocabulary's.
        model, partitioner, path, step_record.task_vocabulary(mixture_or_task_name))
    metrics, rows = evaluator.evaluate(params, step)
    # Predictions first: a metrics row then means the step is complete.
    if write_predictions and rows:
      prediction.write_jsonl(rows, predictions_path)
    if step not in done or reevaluate:
      writer.write(step, metrics)
    log.info("Step %d %s metrics: %s", step, split,
             ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    results[step] = metrics
  log.info("Eval metrics in %s (TensorBoard: %s).", writer.history_path, writer.tensorboard_dir)
  return results
