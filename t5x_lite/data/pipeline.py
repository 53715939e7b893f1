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

The checks made before reading (`check_task`, `check_feature_lengths`, `check_not_empty`)
and the explanations of empty or unreadable data are in t5x_lite/data/dataset_checks.py;
the names callers use are importable from here too.
"""

import inspect
import logging
import tempfile
from typing import Dict, Iterator, Mapping, Optional

from clu import data as clu_data
from etils import epath
import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.data.dataset_checks import DatasetSource
from t5x_lite.data.dataset_checks import EmptyDatasetError
from t5x_lite.data.dataset_checks import check_feature_lengths
from t5x_lite.data.dataset_checks import check_not_empty
from t5x_lite.data.dataset_checks import check_task
from t5x_lite.runtime import tf_devices


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
  ds.source = DatasetSource(mixture_or_task_name, split, batch_size, task_feature_lengths, seed,
                      shard_info, use_cached)
  return ds


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
    self._source: Optional[DatasetSource] = getattr(dataset, "source", None)
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
