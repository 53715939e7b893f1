"""The settings groups a run mode takes: what data, how to checkpoint, how to evaluate.

Plain frozen dataclasses; gin builds them at the edge (t5x_lite/config/configurables.py), e.g.

  train.train_dataset = @train/DatasetConfig()
  train/DatasetConfig.mixture_or_task_name = %MIXTURE_OR_TASK_NAME
  CheckpointConfig.period = 1000
  EvalConfig.infer_eval_mixture_or_task_name = 'embedded_instructions_mixture'
"""

import dataclasses
import numbers
from typing import Mapping, Optional


def check_int(name: str, value, minimum: int = 1, gin: Optional[str] = None) -> None:
  """Raises TypeError/ValueError naming the gin setting unless value is an int >= minimum.

  Args:
    name: the parameter as gin spells it, e.g. "train.train_steps".
    value: what the user gave.
    minimum: the smallest valid value (1: "must be positive").
    gin: what to change when it is not `name` itself, e.g. the macro "TRAIN_STEPS".
  """
  where = f"gin: {gin or name}"
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name}={value!r} must be an integer ({where}).")
  if value < minimum:
    bound = "positive" if minimum == 1 else f">= {minimum}"
    raise ValueError(f"{name}={value} must be {bound} ({where}).")


def _check_positive(owner: str, **values):
  for name, value in values.items():
    if value is not None:
      check_int(f"{owner}.{name}", value)


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """A seqio task or mixture read into batches.

  Attributes:
    mixture_or_task_name: a registered seqio Task or Mixture (MIXTURE_OR_TASK_NAME).
    task_feature_lengths: {"inputs": Li, "targets": Lt} (TASK_FEATURE_LENGTHS); longer
      examples are truncated, keeping EOS.
    batch_size: global batch, all processes together (BATCH_SIZE).
    split: dataset split.
    shuffle: shuffle examples (the task's shuffle buffer).
    seed: data order and seqio's random preprocessors (span corruption); None: random.
    pack: pack several examples per row (segment ids): T5's pretraining default.
    use_cached: read the task's offline cache (seqio cache_tasks_main).
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int
  split: str = "train"
  shuffle: bool = True
  seed: Optional[int] = 0
  pack: bool = True
  use_cached: bool = False

  def __post_init__(self):
    if not isinstance(self.task_feature_lengths, Mapping):
      raise TypeError(f"DatasetConfig.task_feature_lengths={self.task_feature_lengths!r} must "
                      "be a dict such as {'inputs': 512, 'targets': 128} (gin: "
                      "TASK_FEATURE_LENGTHS).")
    if not isinstance(self.mixture_or_task_name, str):
      raise TypeError(f"DatasetConfig.mixture_or_task_name={self.mixture_or_task_name!r} must "
                      "be a task or mixture name (gin: MIXTURE_OR_TASK_NAME).")
    check_int("DatasetConfig.batch_size", self.batch_size, gin="BATCH_SIZE")
    for key, length in self.task_feature_lengths.items():
      check_int(f"DatasetConfig.task_feature_lengths[{key!r}]", length,
                gin="TASK_FEATURE_LENGTHS")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When training saves and what it keeps.

  Attributes:
    period: save every this many steps (and always at the last step).
    keep: keep this many checkpoints (the most recent, or the best with keep_best_metric);
      None keeps all.
    keep_best_metric: an eval metric name (e.g. "loss", "average/exact_match"): keep the
      `keep` best checkpoints by it instead of the most recent. Only evaluated steps carry
      metrics, so set EvalConfig.period = CheckpointConfig.period.
    keep_best_mode: "min" or "max".
    async_save: write in a background thread while training continues.
    restore_fallback: resuming, skip a damaged latest step (unreadable, partial, non-finite)
      with a warning and take the newest readable one; False makes it an error.
  """
  period: int = 1000
  keep: Optional[int] = 3
  keep_best_metric: Optional[str] = None
  keep_best_mode: str = "min"
  async_save: bool = True
  restore_fallback: bool = True

  def __post_init__(self):
    _check_positive("CheckpointConfig", period=self.period, keep=self.keep)
    if self.keep_best_mode not in ("min", "max"):
      raise ValueError(f"CheckpointConfig.keep_best_mode={self.keep_best_mode!r}: 'min' or 'max'.")


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
  """Where a new run starts from when MODEL_DIR has no checkpoint yet (finetuning).

  Attributes:
    path: INITIAL_CHECKPOINT_PATH: MODEL_DIR/checkpoints/<step> of another run (or its
      checkpoints directory: the latest step). Resuming MODEL_DIR always wins over it.
    restore_optimizer_state: also take the optimizer state (else a fresh one).
  """
  path: str
  restore_optimizer_state: bool = False


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Evaluation during training.

  Attributes:
    period: evaluate every this many steps; 0 only at the end.
    steps: batches of teacher-forced eval (loss, token accuracy); 0 turns it off.
    mixture_or_task_name: what teacher-forced eval reads; None: the training mixture.
    split: its split.
    infer_eval_mixture_or_task_name: also decode this task/mixture's infer_eval_split and
      compute its metric fns with seqio.Evaluator (decoding per DecodingSettings); None: off.
    infer_eval_split: the split infer-eval decodes.
    infer_eval_num_examples: at most this many examples per task (None: the whole split).
    print_examples: at the end, print this many infer-eval predictions.
  """
  period: int = 0
  steps: int = 20
  mixture_or_task_name: Optional[str] = None
  split: str = "validation"
  infer_eval_mixture_or_task_name: Optional[str] = None
  infer_eval_split: str = "validation"
  infer_eval_num_examples: Optional[int] = None
  print_examples: int = 0

  def __post_init__(self):
    for name in ("period", "steps", "print_examples"):
      check_int(f"EvalConfig.{name}", getattr(self, name), minimum=0)
    _check_positive("EvalConfig", infer_eval_num_examples=self.infer_eval_num_examples)

  @property
  def enabled(self) -> bool:
    return bool(self.steps or self.infer_eval_mixture_or_task_name)
