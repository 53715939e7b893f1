"""Pretraining objectives (T5 span corruption, prefix LM) as seqio preprocessors, and tasks.

Span corruption is T5's `span_corruption` preprocessor chain (Raffel et al. 2020, section
3.1.4; `t5.data.preprocessors`), step for step and seed for seed:

  select_random_chunk   drop empty documents, then keep one random chunk of at most
                        65,536 tokens of each (cut at multiples of 65,536)
  reduce_concat_tokens  concatenate 128 documents at a time
  split_tokens          chunks of `tokens_length` tokens, chosen from the batch-time
                        `sequence_length["inputs"]` so that the corrupted inputs plus EOS
                        fill it exactly (568 tokens for 512)
  denoise               15% of each chunk's tokens masked in spans of mean length 3; every
                        noise span becomes one sentinel in the inputs (`<extra_id_0>` =
                        vocab_size - 1, then counting down) and the targets are the noise
                        spans each preceded by its sentinel; noise density 0 masks nothing

Randomness is stateless and drawn from seqio's per-preprocessor seeds exactly as T5 draws
it (`seqio.map_over_dataset(num_seeds=1)` in each of the three seeded steps, T5's splits of
each seed), and the text tasks keep T5's cache-placeholder position, so a task with the
same seed yields the same examples as T5's (checked against `t5` 0.9.4 in the tests).

Deliberate differences from T5:
* `random_spans_helper` counts noise spans as the mask does (at least one span, at least
  one noise token). T5's helper rounds the span count to 0 when the mean span is long
  for the chunk (e.g. mean span 64 at 128 inputs), so its inputs come out one token too
  long; the two agree everywhere else (512 -> 568/114 as in T5).
* More noise spans than the vocabulary has extra ids is an error here; T5 silently
  takes ordinary vocabulary ids below the extra ids as sentinels.
* EOS is appended without trimming (see `text_preprocessors`).

Registered tasks (output features "inputs"/"targets", default vocabulary, EOS appended):
  c4_span_corruption        TFDS c4/en:3.1.0 "text"
  embedded_span_corruption  the embedded corpus (tasks.corpora)
  embedded_prefix_lm        the embedded corpus; inputs = random prefix, targets = the rest
"""

from typing import Mapping, Optional, Tuple

import seqio
import tensorflow as tf

from t5x_lite.tasks import corpora
from t5x_lite.tasks import vocab

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
MAX_CHUNK_TOKENS = 65536  # longest piece of one document used (T5's select_random_chunk)
_REDUCE_CONCAT_BATCH = 128  # documents concatenated before chunking (T5's value)


@seqio.map_over_dataset
def sanitize_text(features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
  """Makes every string feature valid UTF-8 (bad bytes -> U+FFFD); others pass through.

  Web text (C4) and user files contain invalid bytes; replacing them keeps the example
  (and the batch) instead of failing later in decoding or metrics.
  """
  out = {}
  for key, value in features.items():
    if value.dtype == tf.string:
      value = tf.strings.unicode_transcode(
          value, input_encoding="UTF-8", output_encoding="UTF-8", errors="replace")
    out[key] = value
  return out


def random_spans_helper(inputs_length: int,
                        noise_density: float = NOISE_DENSITY,
                        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                        extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> Tuple[int, int]:
  """T5's chunk length for a given inputs length: (tokens_length, targets_length).

  The largest chunk whose corrupted inputs (non-noise tokens + one sentinel per span +
  EOS) fit in `inputs_length`, and the resulting targets length (noise tokens + one
  sentinel per span + EOS). Example: 512 -> (568, 114). Uses Python's round (half to
  even), as T5 does. The noise and span counts are those `random_spans_noise_mask` will
  use (see the module docstring for where this differs from T5's helper).
  """

  def _lengths(tokens_length):
    num_noise_tokens, num_noise_spans = noise_counts(tokens_length, noise_density,
                                                     mean_noise_span_length)
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    return (num_nonnoise_tokens + num_noise_spans * extra_tokens_per_span_inputs + 1,
            num_noise_tokens + num_noise_spans * extra_tokens_per_span_targets + 1)

  tokens_length = inputs_length - 1
  while _lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = _lengths(tokens_length)
  # T5's adjustment so 50%-noise targets do not exceed the (round-number) inputs length.
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def noise_counts(length: int, noise_density: float,
                 mean_noise_span_length: float) -> Tuple[int, int]:
  """(noise tokens, noise spans) that `random_spans_noise_mask` uses for `length` tokens.

  Python twin of the mask's TF arithmetic: no noise at density 0; otherwise
  round(length * density) clipped to [1, length - 1] noise tokens (length taken as at
  least 2) in max(1, round(noise / mean span)) spans. Python's round and tf.round both
  round half to even.
  """
  if noise_density == 0.0:
    return 0, 0
  length = max(length, 2)
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  return num_noise, max(int(round(num_noise / mean_noise_span_length)), 1)


def span_corruption_feature_lengths(inputs_length: int = 512) -> Mapping[str, int]:
  """task_feature_lengths for span corruption with no truncation: 512 -> 512/114."""
  return {"inputs": inputs_length, "targets": random_spans_helper(inputs_length)[1]}


def random_spans_noise_mask(length: tf.Tensor, noise_density: float, seeds: tf.Tensor,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                            ) -> tf.Tensor:
  """T5's noise mask: [length] bool, True on noise tokens.

  Density 0 masks nothing. Otherwise num_noise_tokens = round(length * noise_density)
  clipped to [1, length - 1]; num_noise_spans = max(1, round(num_noise_tokens /
  mean_noise_span_length)); noise and non-noise tokens are each split into
  num_noise_spans non-empty segments uniformly at random, interleaved starting with
  non-noise (so the mask never starts with noise). tf.round rounds half to even, like T5.
  Lengths below 2 are computed as 2 and cut.

  Args:
    length: int32 scalar, number of tokens.
    noise_density: fraction of tokens that are noise (a Python float).
    seeds: [2, 2] int32 stateless seeds (segmentation of noise, of non-noise).
    mean_noise_span_length: mean noise span length.
  """
  if noise_density == 0.0:
    return tf.zeros([length], tf.bool)
  orig_length = length
  length = tf.maximum(length, 2)
  num_noise_tokens = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise_tokens = tf.minimum(tf.maximum(num_noise_tokens, 1), length - 1)
  num_noise_spans = tf.cast(
      tf.round(tf.cast(num_noise_tokens, tf.float32) / mean_noise_span_length), tf.int32)
  num_noise_spans = tf.maximum(num_noise_spans, 1)
  num_nonnoise_tokens = length - num_noise_tokens

  def _random_segmentation(num_items, num_segments, seed):
    # Choose num_segments - 1 of the num_items - 1 gaps as segment boundaries.
    first_in_segment = tf.pad(
        seqio.utils.stateless_shuffle(
            tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32), seed),
        [[1, 0]])
    segment_id = tf.cumsum(first_in_segment)
    return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)  # [num_segments]

  noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, seeds[0])
  nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, seeds[1])
  interleaved_span_lengths = tf.reshape(
      tf.stack([nonnoise_span_lengths, noise_span_lengths], axis=1), [num_noise_spans * 2])
  span_starts = tf.cumsum(interleaved_span_lengths)[:-1]
  span_start_indicator = tf.math.unsorted_segment_sum(
      tf.ones_like(span_starts), span_starts, length)
  span_num = tf.cumsum(span_start_indicator)
  is_noise = tf.equal(span_num % 2, 1)
  return is_noise[:orig_length]


def noise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor,
                                  vocabulary: seqio.Vocabulary) -> tf.Tensor:
  """Replaces each noise span by one sentinel: vocab_size - 1, vocab_size - 2, ...

  Args:
    tokens: [length] int32.
    noise_mask: [length] bool.
    vocabulary: supplies vocab_size (including extra ids).

  Returns:
    [new_length] int32: the non-noise tokens with a sentinel where each span was.
  """
  prev_token_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])
  first_noise_tokens = tf.logical_and(noise_mask, tf.logical_not(prev_token_is_noise))
  subsequent_noise_tokens = tf.logical_and(noise_mask, prev_token_is_noise)
  sentinel = vocabulary.vocab_size - tf.cumsum(tf.cast(first_noise_tokens, tokens.dtype))
  tokens = tf.where(first_noise_tokens, sentinel, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(subsequent_noise_tokens))


def nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocabulary):
  """The targets side: each non-noise span replaced by a sentinel (same numbering)."""
  return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), vocabulary)


def _drop_empty(dataset: tf.data.Dataset, feature_key: str) -> tf.data.Dataset:
  return dataset.filter(lambda x: tf.size(x[feature_key]) > 0)


@seqio.map_over_dataset(num_seeds=1)
def _random_chunk(features, seed, max_length, feature_key):
  # T5 splits its one seed in two (the first draws an optional random length).
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed))
  tokens = features[feature_key]
  n_tokens = tf.shape(tokens)[0]
  num_segments = tf.cast(
      tf.math.ceil(tf.cast(n_tokens, tf.float32) / float(max_length)), tf.int32)
  start = max_length * tf.random.stateless_uniform(
      [], maxval=num_segments, dtype=tf.int32, seed=seeds[1])
  return {feature_key: tokens[start:tf.minimum(start + max_length, n_tokens)]}


def select_random_chunk(dataset: tf.data.Dataset, max_length: int = MAX_CHUNK_TOKENS,
                        feature_key: str = "targets") -> tf.data.Dataset:
  """T5's `select_random_chunk`: one chunk of <= max_length tokens per document.

  Empty documents are dropped first (so they never take part in grouping); a longer
  document is cut at multiples of max_length and one of the pieces is kept, uniformly
  at random (so every token is equally likely to be kept). Other features are dropped.

  Args:
    dataset: examples with `feature_key`: [n] int32 tokens.
    max_length: longest chunk kept (T5: 65,536).
    feature_key: the token feature.

  Returns:
    {feature_key: [min(n, max_length) or less] int32}, one per non-empty document.
  """
  return _random_chunk(_drop_empty(dataset, feature_key), max_length=max_length,
                       feature_key=feature_key)


def reduce_concat_tokens(dataset: tf.data.Dataset, feature_key: str = "targets",
                         batch_size: int = _REDUCE_CONCAT_BATCH) -> tf.data.Dataset:
  """Concatenates the `feature_key` tokens of up to `batch_size` consecutive examples.

  Fewer, longer sequences mean less padding once chunked; other features are dropped.
  Token 0 (padding) never comes out of a tokenizer, so it marks the batch padding.
  """
  dataset = dataset.map(lambda x: {feature_key: x[feature_key]})
  dataset = dataset.padded_batch(batch_size, padded_shapes={feature_key: [None]})

  def _concat(x):
    tokens = tf.reshape(x[feature_key], [-1])
    return {feature_key: tf.boolean_mask(tokens, tf.not_equal(tokens, 0))}

  return dataset.map(_concat, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset(num_seeds=1)
def _split_in_rows(features, seed, max_tokens, feature_key):
  # T5's split_tokens draws a seed here for its optional random segment length; drawing
  # it too keeps every later preprocessor's seeds equal to T5's.
  del seed
  tokens = features[feature_key]
  n_tokens = tf.size(tokens)
  num_segments = (n_tokens + max_tokens - 1) // max_tokens
  padding = num_segments * max_tokens - n_tokens
  lengths = tf.concat([tf.fill([num_segments - 1], max_tokens), [max_tokens - padding]], 0)
  return tf.reshape(tf.pad(tokens, [[0, padding]]), [-1, max_tokens]), lengths


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 feature_key: str = "targets") -> tf.data.Dataset:
  """Splits each example's tokens into consecutive pieces of <= max_tokens_per_segment.

  Empty examples produce no pieces; only the last piece of an example can be shorter.
  """
  dataset = _split_in_rows(_drop_empty(dataset, feature_key),
                           max_tokens=max_tokens_per_segment, feature_key=feature_key)
  return dataset.unbatch().map(lambda tokens, length: {feature_key: tokens[:length]})


@seqio.map_over_dataset(num_seeds=1)
def _denoise(features, seed, vocabulary, noise_density, mean_noise_span_length):
  # T5's denoise splits its seed in six: noise mask, inputs fn, targets fn (2 each).
  seeds = tf.random.experimental.stateless_split(seed, 6)
  tokens = features["targets"]
  noise_mask = random_spans_noise_mask(tf.size(tokens), noise_density, seeds[:2],
                                       mean_noise_span_length)
  return {
      "inputs": noise_span_to_unique_sentinel(tokens, noise_mask, vocabulary),
      "targets": nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocabulary),
  }


def check_sentinel_budget(num_spans: int, vocabulary: seqio.Vocabulary, reserved: int = 0,
                          what: str = "span corruption") -> None:
  """Raises unless `num_spans` sentinels fit in the vocabulary's unreserved extra ids."""
  available = vocabulary.extra_ids - reserved
  if num_spans > available:
    raise ValueError(
        f"{what} needs {num_spans} sentinels per example but the vocabulary has "
        f"{available} free extra ids ({reserved} reserved): shorten the inputs in "
        "TASK_FEATURE_LENGTHS or register the task with a vocabulary with more extra_ids "
        "(vocab.default_vocabulary(extra_ids=...)); more spans would reuse ordinary "
        "vocabulary ids as sentinels")


def denoise_chunks(dataset: tf.data.Dataset, vocabulary: seqio.Vocabulary,
                   noise_density: float = NOISE_DENSITY,
                   mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                   ) -> tf.data.Dataset:
  """T5's `denoise` with random spans and unique sentinels, one seed per example.

  Args:
    dataset: {"targets": [n] int32} chunks.
    vocabulary: sentinels come from its top ids.
    noise_density: fraction of tokens masked.
    mean_noise_span_length: mean masked span length.

  Returns:
    {"inputs": non-noise tokens with one sentinel per span,
     "targets": the noise spans, each preceded by its sentinel}.
  """
  return _denoise(dataset, vocabulary=vocabulary, noise_density=noise_density,
                  mean_noise_span_length=mean_noise_span_length)


def span_corruption(dataset: tf.data.Dataset,
                    sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                    merge_examples_to_reduce_padding: bool = True) -> tf.data.Dataset:
  """T5 span corruption; a seqio post-cache preprocessor.

  T5's chain: select_random_chunk (<= 65,536 tokens per document, empty documents
  dropped) -> reduce_concat_tokens (128 documents) -> split_tokens (chunks of
  `random_spans_helper(L)[0]` tokens) -> denoise (random spans, unique sentinels).

  Args:
    dataset: examples with "targets": [n] int32 tokens (the whole document).
    sequence_length: {"inputs": L, "targets": Lt}; chunks are sized so inputs + EOS == L.
    output_features: "targets" supplies the vocabulary (sentinels from its top).
    noise_density: fraction of tokens masked (T5: 0.15).
    mean_noise_span_length: mean masked span length (T5: 3).
    merge_examples_to_reduce_padding: concatenate documents before chunking (T5: True).

  Returns:
    {"inputs": [<= L - 1] int32, "targets": [<= targets_length - 1] int32}, no EOS yet.

  Raises:
    ValueError: Lt is shorter than the targets need, or the spans outnumber the
      vocabulary's extra ids.
  """
  tokens_length, targets_length = random_spans_helper(
      sequence_length["inputs"], noise_density, mean_noise_span_length)
  if sequence_length.get("targets", targets_length) < targets_length:
    raise ValueError(
        f"span corruption at inputs length {sequence_length['inputs']} makes targets of "
        f"{targets_length} tokens but TASK_FEATURE_LENGTHS['targets'] is "
        f"{sequence_length['targets']}: set it to at least {targets_length}")
  vocabulary = output_features["targets"].vocabulary
  check_sentinel_budget(
      noise_counts(tokens_length, noise_density, mean_noise_span_length)[1], vocabulary)
  dataset = select_random_chunk(dataset)
  if merge_examples_to_reduce_padding:
    dataset = reduce_concat_tokens(dataset, "targets")
  dataset = split_tokens(dataset, tokens_length, "targets")
  return denoise_chunks(dataset, vocabulary, noise_density, mean_noise_span_length)


@seqio.map_over_dataset(num_seeds=1)
def _random_prefix_split(features, seed):
  """{"targets": [n] tokens} (n >= 2) -> a random non-empty prefix and the rest.

  T5's `random_prefix_noise_mask` at density 0.5 draws the same split distribution.
  """
  tokens = features["targets"]
  # Split point uniform in [1, n - 1]: both sides non-empty.
  split = tf.random.stateless_uniform([], seed, minval=1, maxval=tf.size(tokens),
                                      dtype=tf.int32)
  return {"inputs": tokens[:split], "targets": tokens[split:]}


def prefix_lm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
              merge_examples_to_reduce_padding: bool = True) -> tf.data.Dataset:
  """Prefix LM: chunks of min(inputs, targets) tokens split at a random point.

  Documents go through T5's select_random_chunk and reduce_concat_tokens first, as in
  span corruption.

  Args:
    dataset: examples with "targets": [n] int32 tokens.
    sequence_length: {"inputs": Li, "targets": Lt}; chunk length min(Li, Lt), so both
      sides plus EOS always fit.

  Returns:
    {"inputs": [s] int32 (the prefix), "targets": [chunk - s] int32 (the rest)}, s >= 1.
  """
  chunk = min(sequence_length["inputs"], sequence_length["targets"])
  dataset = select_random_chunk(dataset)
  if merge_examples_to_reduce_padding:
    dataset = reduce_concat_tokens(dataset, "targets")
  dataset = split_tokens(dataset, chunk, "targets")
  dataset = dataset.filter(lambda x: tf.size(x["targets"]) >= 2)
  return _random_prefix_split(dataset)


def _output_features(vocabulary: seqio.Vocabulary) -> Mapping[str, seqio.Feature]:
  return {
      "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary, add_eos=True),
  }


def text_preprocessors(objective):
  """The preprocessor list for a {"text": ...} source and an objective preprocessor.

  Rekeying and sanitizing are one step so that the cache placeholder sits at index 2, as
  in T5's C4 tasks: seqio offsets the post-cache seeds by 42 x that index, so the same
  task seed draws the same chunks and masks as T5's `c4_v220_span_corruption`.
  EOS is appended with `seqio.preprocessors.append_eos` (not `_after_trim`) so that
  t5x_lite.data.pipeline sees over-long examples, counts them, and truncates keeping the EOS.
  """
  return [
      text_to_targets,
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      objective,
      seqio.preprocessors.append_eos,
  ]


def text_to_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """{"text"} -> {"inputs": "" (filled by the objective), "targets": valid-UTF-8 text}."""
  return sanitize_text(seqio.preprocessors.rekey(
      dataset, key_map={"inputs": None, "targets": "text"}))


def register_text_task(name: str, source: seqio.DataSource, objective,
                       vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
  """Registers (replacing any previous one) a pretraining task over a "text" source."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=text_preprocessors(objective),
      output_features=_output_features(vocabulary or vocab.default_vocabulary()),
      metric_fns=[],
  )


def c4_source() -> seqio.TfdsDataSource:
  """TFDS c4/en:3.1.0, read-only: a missing dataset is an error, never a download."""
  return seqio.TfdsDataSource(tfds_name="c4/en:3.1.0", splits=("train", "validation"),
                              read_only=True)


def register_tasks(vocabulary: Optional[seqio.Vocabulary] = None) -> None:
  """Registers c4_span_corruption, embedded_span_corruption, embedded_prefix_lm."""
  register_text_task("c4_span_corruption", c4_source(), span_corruption, vocabulary)
  register_text_task("embedded_span_corruption", corpora.embedded_source(), span_corruption,
                     vocabulary)
  register_text_task("embedded_prefix_lm", corpora.embedded_source(), prefix_lm, vocabulary)
