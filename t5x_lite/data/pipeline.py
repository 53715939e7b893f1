"""SeqIO tasks/mixtures -> batches of numpy arrays for the model.

`get_dataset` runs `seqio.get_dataset` with the model's feature converter
(`model.feature_converter(pack)`; the encoder heads' are in t5x_lite/data/head_features.py)
and returns a batched `tf.data.Dataset`; with `seqio.EncDecFeatureConverter` (the
encoder-decoder's, and the default) it has, per example of a batch of size B:
  encoder_input_tokens     [B, inputs_length]  int32
  decoder_input_tokens     [B, targets_length] int32  (targets shifted right, 0 first)
  decoder_target_tokens    [B, targets_length] int32
  decoder_loss_weights     [B, targets_length] int32
and, when packed, encoder_segment_ids / encoder_positions / decoder_segment_ids /
decoder_positions (same shapes; segment 0 is padding).

Over-long examples are truncated, never dropped or fatal: a feature whose task appends
EOS keeps its EOS as the last token. Truncations are counted per feature
(`TruncationStats`) and a summary is logged by `DatasetIterator`.

`DatasetIterator` yields numpy batches and saves/restores its position (clu's
TfDatasetIterator, tf.train.Checkpoint as t5x does, copied through epath), so resuming at
step N costs no replay.
"""

import difflib
import inspect
import logging
import re
import tempfile
from typing import Dict, Iterator, Mapping, Optional, Sequence

from clu import data as clu_data
from etils import epath
import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.runtime import tf_devices
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


class TruncationStats:
  """Per-feature counters of examples seen and examples truncated.

  Counts live in a tf.Variable updated inside the input pipeline. They cover examples
  the pipeline has processed, which runs ahead of the consumer by the prefetch buffers,
  and are not part of the iterator checkpoint (they restart at 0 after a restore).
  """

  def __init__(self, task_feature_lengths: Mapping[str, int]):
    self.feature_lengths = dict(task_feature_lengths)
    self.features = sorted(self.feature_lengths)
    # [num_features, 2]: (examples seen, examples truncated)
    tf_devices.hide_gpus_from_tf()  # before this first TF op: keep TF off JAX's GPUs
    self._counts = tf.Variable(tf.zeros([len(self.features), 2], tf.int64), trainable=False)

  def counts(self) -> Dict[str, Dict[str, int]]:
    """{feature: {"examples": n, "truncated": n}}."""
    values = self._counts.numpy()
    return {f: {"examples": int(values[i, 0]), "truncated": int(values[i, 1])}
            for i, f in enumerate(self.features)}

  def summary(self) -> str:
    parts = [f"{f}: {c['truncated']} of {c['examples']} examples longer than "
             f"{self.feature_lengths[f]} tokens" for f, c in self.counts().items()]
    return "Truncated examples: " + "; ".join(parts)

  def log_summary(self) -> None:
    logging.info(self.summary())

  def count_and_trim(self, dataset: tf.data.Dataset,
                     output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """Counts and truncates features longer than their length; EOS-features keep EOS."""
    lengths = self.feature_lengths
    features = self.features
    counts = self._counts

    def _fn(ex):
      out = dict(ex)
      seen, truncated = [], []
      for name in features:
        if name not in ex:
          seen.append(tf.constant(0, tf.int64))
          truncated.append(tf.constant(0, tf.int64))
          continue
        value, length = ex[name], lengths[name]
        over = tf.shape(value)[0] > length
        if name in output_features and output_features[name].add_eos:
          value = tf.cond(over, lambda v=value, n=length: tf.concat([v[:n - 1], v[-1:]], 0),
                          lambda v=value: v)
        else:
          value = value[:length]
        out[name] = value
        seen.append(tf.constant(1, tf.int64))
        truncated.append(tf.cast(over, tf.int64))
      update = counts.assign_add(tf.stack([tf.stack(seen), tf.stack(truncated)], axis=1))
      with tf.control_dependencies([update]):
        return {k: tf.identity(v) for k, v in out.items()}

    # Sequential map: concurrent assign_add from parallel calls could race.
    return dataset.map(_fn)


class TruncatingFeatureConverter(seqio.FeatureConverter):
  """The one truncation rule of train, eval, infer and score, then the model's converter.

  Over-long task features are counted and cut to `stats.feature_lengths`, keeping EOS
  (TruncationStats.count_and_trim), whatever lengths the caller passes: seqio.Evaluator
  built without a sequence_length passes the longest lengths it measured, and its own
  trimming (trim_output_features) would drop the EOS that training keeps.
  Only wraps `converter` (seqio accepts FeatureConverter instances only): the wrapped
  converter's own __call__ does every check and conversion.
  """

  def __init__(self, converter: seqio.FeatureConverter, stats: TruncationStats,
               output_features):  # pylint: disable=super-init-not-called
    self._converter = converter
    self._stats = stats
    self._output_features = output_features

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
    del task_feature_lengths  # Always the configured lengths (see the class docstring).
    ds = self._stats.count_and_trim(ds, self._output_features)
    return self._converter(ds, self._stats.feature_lengths)

  def _convert_features(self, ds, task_feature_lengths):
    return self._converter._convert_features(ds, task_feature_lengths)  # pylint: disable=protected-access

  def get_model_feature_lengths(self, task_feature_lengths):
    return self._converter.get_model_feature_lengths(task_feature_lengths)

  @property
  def pack(self) -> bool:
    return self._converter.pack

  @property
  def TASK_FEATURES(self):  # pylint: disable=invalid-name  # seqio.Evaluator reads it
    return self._converter.TASK_FEATURES

  @property
  def MODEL_FEATURES(self):  # pylint: disable=invalid-name
    return self._converter.MODEL_FEATURES


def needs_sequence_length(task: seqio.Task) -> bool:
  """Whether a preprocessor of `task` takes a required `sequence_length` (span corruption,
  SuperNI prompts): such tasks fit their examples to the lengths themselves."""
  for preprocessor in task.preprocessors:
    parameter = inspect.signature(preprocessor).parameters.get("sequence_length")
    if parameter is not None and parameter.default is inspect.Parameter.empty:
      return True
  return False


def host_shard_info() -> seqio.ShardInfo:
  """This host's shard: ShardInfo(index=jax.process_index(), num_shards=jax.process_count()).

  Process i of P reads shard i of P and holds rows i*B/P ... of the global batch.
  """
  import jax  # pylint: disable=g-import-not-at-top  # keep `import t5x_lite.data.pipeline` light
  return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def get_dataset(mixture_or_task_name: str,
                task_feature_lengths: Mapping[str, int],
                split: str = "train",
                batch_size: int = 8,
                shuffle: bool = True,
                seed: Optional[int] = 0,
                pack: bool = True,
                shard_info: Optional[seqio.ShardInfo] = None,
                use_cached: bool = False,
                num_epochs: Optional[int] = None,
                truncation_stats: Optional[TruncationStats] = None,
                feature_converter: Optional[seqio.FeatureConverter] = None
               ) -> tf.data.Dataset:
  """Batched model features for a registered seqio task or mixture.

  Args:
    mixture_or_task_name: a name in seqio.TaskRegistry or seqio.MixtureRegistry.
    task_feature_lengths: {"inputs": Li, "targets": Lt}; longer examples are truncated
      and counted.
    split: dataset split ("train", "validation", ...).
    batch_size: examples (packed rows when `pack`) per batch on this host; the last
      partial batch is dropped.
    shuffle: shuffle examples (the task's shuffle buffer) with `seed`.
    seed: seeds shuffling and seqio's random preprocessors (span corruption): the same
      seed gives the same batches. None: non-deterministic.
    pack: pack several examples per row (adds *_segment_ids and *_positions); used by
      the default converter only (a given feature_converter was built with its own).
    shard_info: this host's shard, e.g. `host_shard_info()`; None reads everything.
      Shards are disjoint and together cover the split.
    use_cached: read the task's offline cache (seqio cache_tasks_main).
    num_epochs: passes over the data; None repeats forever (training).
    truncation_stats: counters to fill; a new one is made if None. Available on the
      result as `dataset.truncation_stats`.
    feature_converter: the model's, `model.feature_converter(pack)`; None:
      seqio.EncDecFeatureConverter(pack=pack).

  Returns:
    tf.data.Dataset of dicts of [batch_size, ...] tensors (see module doc).

  Raises:
    ValueError: unknown name (the message lists the closest registered names).
    EmptyDatasetError: with num_epochs=None, a task gives no example of `split` after its
      preprocessors (`check_not_empty`).
  """
  provider = check_task(mixture_or_task_name)
  check_feature_lengths(mixture_or_task_name, task_feature_lengths)
  if num_epochs is None:
    # seqio repeats a task's examples before its (post-cache) preprocessors: if they remove
    # every one, the endless repeat never yields. A finite pass ends instead, and
    # DatasetIterator names the cause when it gives no batch.
    check_not_empty(mixture_or_task_name, split, task_feature_lengths, shard_info=shard_info,
                    seed=seed, use_cached=use_cached)
  stats = truncation_stats or TruncationStats(task_feature_lengths)
  converter = TruncatingFeatureConverter(
      feature_converter or seqio.EncDecFeatureConverter(pack=pack), stats,
      provider.output_features)
  ds = seqio.get_dataset(
      mixture_or_task_name,
      task_feature_lengths=task_feature_lengths,
      feature_converter=converter,
      dataset_split=split,
      use_cached=use_cached,
      shuffle=shuffle,
      num_epochs=num_epochs,
      shard_info=shard_info,
      seed=seed,
      batch_size=batch_size,
      # Trimming happens in the converter, where it is counted.
      trim_output_features=False,
  )
  # Batches are made while the model runs a step; saved iterator states include the buffer.
  ds = ds.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  # The truncation counter is external state; without this, saving the iterator fails.
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  options.deterministic = True
  ds = ds.with_options(options)
  ds.truncation_stats = stats
  ds.source = _Source(mixture_or_task_name, split, batch_size, task_feature_lengths, seed,
                      shard_info, use_cached)
  return ds


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
    source = _Source(mixture_or_task_name, split, 0, task_feature_lengths, seed, shard_info,
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


class _Source:
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


class DatasetIterator(Iterator[Dict[str, np.ndarray]]):
  """Iterates numpy batches; its position can be saved and restored (no replay).

  clu's TfDatasetIterator does the iterating and writes the tf.data iterator state (shuffle
  buffers, packing state, file offsets) with tf.train.Checkpoint; this class adds one file
  set per host, `<directory>/data_iterator-<process_index>-of-<process_count>.*`, and the
  periodic truncation log.

  Usage:
    it = DatasetIterator(get_dataset(...))
    batch = next(it)          # {"encoder_input_tokens": np.ndarray [B, L], ...}
    it.save(step_dir); ...; it.restore(step_dir)   # continues at the next batch
  """

  def __init__(self, dataset: tf.data.Dataset, process_index: Optional[int] = None,
               process_count: Optional[int] = None, log_every_n_batches: int = 1000):
    if process_index is None or process_count is None:
      shard = host_shard_info()
      process_index, process_count = shard.index, shard.num_shards
    self._prefix = f"data_iterator-{process_index:05d}-of-{process_count:05d}"
    self._iterator = clu_data.TfDatasetIterator(dataset, checkpoint=True)
    self._stats: Optional[TruncationStats] = getattr(dataset, "truncation_stats", None)
    self._source: Optional[_Source] = getattr(dataset, "source", None)
    self._log_every = log_every_n_batches
    self._batches = 0

  @property
  def truncation_stats(self) -> Optional[TruncationStats]:
    return self._stats

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    try:
      batch = next(self._iterator)
    except StopIteration:
      if self._stats is not None:
        self._stats.log_summary()
      if self._batches == 0 and self._source is not None:
        # A bare StopIteration says nothing: name the task, the split and its files.
        examples = self._stats.counts() if self._stats is not None else {}
        seen = max([c["examples"] for c in examples.values()] or [0])
        raise EmptyDatasetError(self._source.explain_empty(seen)) from None
      raise
    except tf.errors.InvalidArgumentError as e:
      # TF names only its op ("Expect 2 fields but have 3 in record 0"): name the file.
      if self._source is None:
        raise
      raise ValueError(self._source.explain_error(e)) from e
    self._batches += 1
    if self._stats is not None and self._log_every and self._batches % self._log_every == 0:
      self._stats.log_summary()
    return batch

  def _path(self, directory: str) -> epath.Path:
    return epath.Path(directory) / self._prefix

  def save(self, directory: str) -> None:
    """Writes the iterator position under `directory` (local or remote).

    tf.train.Checkpoint writes into a local temporary directory and the files are copied
    through epath, so the state reaches every scheme the rest of the run directory does
    (gs:// and fsspec's, e.g. s3:// where TensorFlow itself has no filesystem).
    """
    path = self._path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as local:
      self._iterator.save(epath.Path(local) / self._prefix)
      for file in epath.Path(local).iterdir():
        file.copy(path.parent / file.name, overwrite=True)

  def restore(self, directory: str) -> None:
    """Continues from the position saved in `directory` by `save` (same dataset)."""
    path = self._path(directory)
    saved = list(path.parent.glob(path.name + ".*"))
    if not saved:
      raise FileNotFoundError(
          f"No data iterator checkpoint {path}.* (saved by DatasetIterator.save for "
          f"this host's process index/count).")
    with tempfile.TemporaryDirectory() as local:
      for file in saved:
        file.copy(epath.Path(local) / file.name)
      self._iterator.restore(epath.Path(local) / self._prefix)
