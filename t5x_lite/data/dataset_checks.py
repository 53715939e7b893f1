"""The checks and explanations of empty or misconfigured data, made before and while reading.

`check_task` (registered name, TFDS data prepared, vocabulary fits the model) and
`check_feature_lengths` run before any pipeline is built; `check_not_empty` reads one
example per task so that a split with none fails at start (`EmptyDatasetError`) instead of
training on an endless repeat of nothing. `DatasetSource` names what a dataset was read from
when reading it fails (`pipeline.DatasetIterator`): the empty file, the preprocessor that
removes every example, the line with the wrong number of columns.
"""

import difflib
import re
from typing import Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.tasks import vocab


def check_task(name: str, model=None) -> seqio.DatasetProviderBase:
  """The registered task or mixture `name`, checked before any pipeline is built.

  Args:
    name: a task or mixture name.
    model: if given, the vocabulary of every task feature the model reads as tokens
      (`model.token_features`; the encoder heads' targets are labels, not tokens) must pad
      to its embedding size, `model.config.vocab_size` (tasks.vocab.padded_vocab_size).

  Raises:
    ValueError: unknown name (the message lists the closest registered names), or a task
      vocabulary that does not fit the model.
    FileNotFoundError: a TFDS dataset it reads is not prepared (the message says how).
  """
  _check_name(name)
  provider = seqio.get_mixture_or_task(name)
  _check_tfds_prepared(provider)
  if model is not None:
    _check_vocabulary(provider, model.config.vocab_size, model.token_features)
  return provider


def _check_vocabulary(provider, vocab_size: int, token_features: Sequence[str]) -> None:
  """Every task's token vocabulary must be the model's: its size padded to 128 == vocab_size."""
  for task in seqio.get_subtasks(provider):
    for feature_name, feature in task.output_features.items():
      if feature_name not in token_features:
        continue
      padded = vocab.padded_vocab_size(feature.vocabulary)
      if padded != vocab_size:
        raise ValueError(
            f"Task {task.name!r} {feature_name!r} uses a vocabulary of "
            f"{feature.vocabulary.vocab_size} ids (padded: {padded}), but the model has "
            f"T5Config.vocab_size={vocab_size}. Use one vocabulary for both: bind "
            "get_vocabulary.sentencepiece_model_path (the model files size the embedding from "
            "it), or set T5Config.vocab_size to the padded size.")


def check_feature_lengths(name: str, task_feature_lengths: Mapping[str, int],
                          required=tuple(seqio.EncDecFeatureConverter.TASK_FEATURES)) -> None:
  """Raises ValueError if TASK_FEATURE_LENGTHS lacks a feature the model reads."""
  missing = [k for k in sorted(required) if k not in task_feature_lengths]
  if missing:
    raise ValueError(f"TASK_FEATURE_LENGTHS={dict(task_feature_lengths)} has no length for "
                     f"{missing}, which {name!r} feeds the model: set e.g. "
                     "TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 128}.")


def _check_name(name: str) -> None:
  """Raises ValueError naming the closest registered tasks/mixtures if `name` is unknown."""
  registered = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  if name in registered:
    return
  close = difflib.get_close_matches(name, registered, n=5, cutoff=0.5)
  hint = f" Closest registered names: {', '.join(close)}." if close else ""
  if "quickstart_mixture" not in registered:  # importing t5x_lite registers no task
    hint += (" The built-in tasks are not registered: outside the entry point call "
             "t5x_lite.tasks.register_builtin_tasks() first.")
  raise ValueError(
      f"No seqio Task or Mixture named {name!r} (set MIXTURE_OR_TASK_NAME to a registered "
      f"name, or import the module that registers yours).{hint}")


def _check_tfds_prepared(provider) -> None:
  """Raises a clear error if a TFDS source of `provider` is not prepared on disk.

  The built-in TFDS sources are read-only (they never download or prepare data), so a
  missing dataset fails here, before any pipeline is built, with the command that fixes it.
  """
  for task in seqio.get_subtasks(provider):
    source = task.source
    if not isinstance(source, seqio.TfdsDataSource):
      continue
    name = source.tfds_dataset.name
    try:
      builder = source.tfds_dataset.builder
      prepared = builder.is_prepared()
      where = builder.data_dir
    except Exception as e:  # pylint: disable=broad-except  (unknown name, missing module)
      prepared, where = False, f"(no builder: {type(e).__name__}: {e})"
    if not prepared:
      raise FileNotFoundError(
          f"Task {task.name!r} reads the TFDS dataset {name}, which is not prepared at "
          f"{where}. Nothing is downloaded automatically: prepare it once with "
          f"`tfds build {name}` (add --data_dir=DIR to choose where), or set TFDS_DATA_DIR "
          "to a directory that already holds it.")


class EmptyDatasetError(ValueError):
  """A task or mixture split that yields no batch at all (nothing to train or evaluate on)."""


def check_not_empty(mixture_or_task_name: str, split: str,
                    task_feature_lengths: Optional[Mapping[str, int]] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, seed: Optional[int] = 0,
                    use_cached: bool = False) -> None:
  """Raises EmptyDatasetError if a task gives no example of `split` after its preprocessors.

  Reads each task (of a mixture: each task that has `split`) through its preprocessors up
  to the first example that comes out, as seqio.get_dataset would (this shard, this seed),
  once. A split with examples costs one preprocessed example per task; an empty one costs a
  pass over its source, and on failure a few more to name the cause (the file that is empty,
  or the preprocessor that removes every example).

  Args:
    mixture_or_task_name: a registered task or mixture.
    split: the split to read.
    task_feature_lengths: the `sequence_length` preprocessors such as span corruption need.
    shard_info: this host's shard (what it will read); None: the whole split.
    seed: seed of the preprocessors' random ops.
    use_cached: read the task's offline cache, as the dataset will.

  Raises:
    EmptyDatasetError: one line naming the task or mixture, the split, and per empty task
      why (a mixture lists every empty task).
  """
  empty = _empty_tasks(mixture_or_task_name, split, task_feature_lengths, shard_info, seed,
                       use_cached)
  if empty:
    source = DatasetSource(mixture_or_task_name, split, 0, task_feature_lengths, seed, shard_info,
                     use_cached)
    raise EmptyDatasetError(source.explain_empty(0, empty))


def _empty_tasks(name, split, task_feature_lengths, shard_info, seed,
                 use_cached) -> Sequence[seqio.Task]:
  """The tasks of `name` that give no example of `split` after their preprocessors."""
  empty = []
  for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
    if split not in task.splits:
      continue  # A mixture skips it; seqio itself names a task without the split.
    ds = task.get_dataset(task_feature_lengths, split=split, use_cached=use_cached,
                          shuffle=False, seed=seed, shard_info=shard_info, num_epochs=1,
                          trim_output_features=False, try_in_mem_cache=False)
    if not _yields(ds):
      empty.append(task)
  return empty


def _yields(dataset: tf.data.Dataset) -> bool:
  """Whether `dataset` has a first element (reads up to it, no further)."""
  return any(True for _ in dataset.take(1))


class DatasetSource:
  """What a dataset was read from, to name it when reading fails (`DatasetIterator`)."""

  def __init__(self, name: str, split: str, batch_size: int,
               task_feature_lengths: Optional[Mapping[str, int]] = None,
               seed: Optional[int] = 0, shard_info: Optional[seqio.ShardInfo] = None,
               use_cached: bool = False):
    self.name, self.split, self.batch_size = name, split, batch_size
    self.lengths, self.seed = task_feature_lengths, seed
    self.shard_info, self.use_cached = shard_info, use_cached

  def _files(self):
    """[(task name, [file, ...], header lines skipped)] of the file-backed tasks."""
    found = []
    for task in seqio.get_subtasks(seqio.get_mixture_or_task(self.name)):
      source = task.source
      if isinstance(source, seqio.FileDataSource) and self.split in source.splits:
        try:
          files = sorted(source.list_shards(self.split))
        except Exception:  # pylint: disable=broad-except  (a pattern that matches nothing)
          files = []
        found.append((task.name, files, getattr(source, "_skip_header_lines", 0)))
    return found

  @staticmethod
  def _lines(path: str) -> int:
    with tf.io.gfile.GFile(path, "rb") as f:
      return sum(1 for _ in f)

  def explain_empty(self, examples: int, tasks: Optional[Sequence[seqio.Task]] = None) -> str:
    """One line: why `self.split` of `self.name` gave no batch (`examples` it did give).

    Args:
      examples: examples the split gave (fewer than one batch) or 0.
      tasks: the tasks that gave none (`check_not_empty`); None: found here by reading one
        example of each task.
    """
    provider = seqio.get_mixture_or_task(self.name)
    kind = "mixture" if isinstance(provider, seqio.Mixture) else "task"
    where = f"{kind} {self.name!r} split {self.split!r}"
    if examples:
      return (f"{where} has only {examples} example(s), fewer than one batch of "
              f"{self.batch_size} (BATCH_SIZE): add examples or lower BATCH_SIZE.")
    if tasks is None:
      tasks = _empty_tasks(self.name, self.split, self.lengths, self.shard_info, self.seed,
                           self.use_cached)
    if not tasks:  # Each task gives examples when read alone: the converter dropped them.
      return f"{where} yielded no examples from its feature converter."
    reasons = {task.name: self._why_empty(task) for task in tasks}
    if kind == "task":
      return f"{where} yielded no examples ({reasons[self.name]})."
    listed = "; ".join(f"task {name!r}: {reason}" for name, reason in reasons.items())
    return (f"{where} yielded no examples from {len(reasons)} of its tasks ({listed}): fix "
            "them or remove them from the mixture.")

  def _why_empty(self, task: seqio.Task) -> str:
    """Why `task` gives no example of the split: its files, its source, or a preprocessor."""
    source = task.source
    if isinstance(source, seqio.FileDataSource):
      try:
        files = sorted(source.list_shards(self.split))
      except Exception:  # pylint: disable=broad-except  (a pattern that matches nothing)
        files = []
      if not files:
        return f"no file of task {task.name!r} matches its pattern for {self.split!r}"
      header = getattr(source, "_skip_header_lines", 0)
      if all(self._lines(f) <= header for f in files):
        return f"file {', '.join(files)} is empty"
    # The whole split, unshuffled: count its examples, then find the preprocessor after
    # which none is left (a stage that keeps some stops the read at its first example).
    dataset = source.get_dataset(split=self.split, shuffle=False, seed=self.seed)
    count = source.num_input_examples(self.split)
    if count is None:
      count = int(dataset.reduce(np.int64(0), lambda n, _: n + 1))
    if not count:
      return "its source has no examples"
    steps = [p for p in task.preprocessors if not isinstance(p, seqio.CacheDatasetPlaceholder)]
    with seqio.utils.map_seed_manager(self.seed):
      for number, step in enumerate(steps, 1):
        dataset = seqio.utils.add_kwargs_to_transform(
            step, sequence_length=self.lengths, output_features=task.output_features)(dataset)
        if not _yields(dataset):
          name = seqio.utils.function_name(step) or type(step).__name__
          return (f"its source has {count} examples but none after its preprocessors: "
                  f"preprocessor {number} of {len(steps)} ({name}) removes every one")
    shard = self.shard_info
    if shard is not None and shard.num_shards > 1:
      return (f"its source has {count} examples but none after its preprocessors reach shard "
              f"{shard.index} of {shard.num_shards} (this process's)")
    return f"its source has {count} examples but none after its preprocessors"

  def explain_error(self, error: Exception) -> str:
    """One line naming the file (and line) a preprocessor failed on, and TF's reason."""
    # TF's message: "{{function_node ...}} Error in user-defined function ...: REASON [[node]]".
    reason = re.sub(r"\s*\[\[.*", "", error.message, flags=re.S).split(": ")[-1].strip()
    where = f"task {self.name!r} split {self.split!r}"
    columns = re.search(r"Expect (\d+) fields but have (\d+)", reason)
    for task, files, header in self._files():
      if columns is None:
        return f"{where}: reading {', '.join(files)} failed: {reason}"
      have = int(columns.group(2))
      for path in files:
        with tf.io.gfile.GFile(path, "r") as f:
          for number, line in enumerate(f, 1):
            if number > header and line.rstrip("\r\n").count("\t") + 1 == have:
              return (f"{path}, line {number}: {have} tab-separated columns, but task "
                      f"{task!r} parses {columns.group(1)}: fix the line (a tab inside a "
                      "field?) or the task's parser.")
    return f"{where}: reading its data failed: {reason}"
