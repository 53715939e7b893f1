"""Pretraining objectives (T5 span corruption, prefix LM) as seqio preprocessors, and tasks.

Span corruption follows the T5 definition (Raffel et al. 2020, section 3.1.4, and the
`t5.data.preprocessors` reference code): documents are tokenized, concatenated, split into
chunks of `tokens_length` tokens (chosen from the batch-time `sequence_length["inputs"]`
so that the corrupted inputs plus EOS fill it exactly: 568 tokens for 512), 15% of each
chunk's tokens are masked in spans of mean length 3, every noise span is replaced in the
inputs by one sentinel (`<extra_id_0>` = vocab_size - 1, then counting down) and the
targets are the noise spans each preceded by its sentinel. Randomness is stateless, driven
by seqio's per-preprocessor seeds, so a dataset is reproducible given `seed`.

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
  even), as T5 does.
  """

  def _lengths(tokens_length):
    num_noise_tokens = int(round(tokens_length * noise_density))
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
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


def span_corruption_feature_lengths(inputs_length: int = 512) -> Mapping[str, int]:
  """task_feature_lengths for span corruption with no truncation: 512 -> 512/114."""
  return {"inputs": inputs_length, "targets": random_spans_helper(inputs_length)[1]}


def random_spans_noise_mask(length: tf.Tensor, noise_density: float, seeds: tf.Tensor,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                            ) -> tf.Tensor:
  """T5's noise mask: [length] bool, True on noise tokens.

  num_noise_tokens = round(length * noise_density) clipped to [1, length - 1];
  num_noise_spans = max(1, round(num_noise_tokens / mean_noise_span_length)); noise and
  non-noise tokens are each split into num_noise_spans non-empty segments uniformly at
  random, interleaved starting with non-noise (so the mask never starts with noise).
  tf.round rounds half to even, like T5. Lengths below 2 are computed as 2 and cut.

  Args:
    length: int32 scalar, number of tokens.
    noise_density: fraction of tokens that are noise.
    seeds: [2, 2] int32 stateless seeds (segmentation of noise, of non-noise).
    mean_noise_span_length: mean noise span length.
  """
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


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 feature_key: str = "targets") -> tf.data.Dataset:
  """Splits each example's tokens into consecutive pieces of <= max_tokens_per_segment.

  Empty examples produce no pieces.
  """
  dataset = dataset.filter(lambda x: tf.size(x[feature_key]) > 0)

  def _split(x):
    tokens = x[feature_key]
    n_tokens = tf.size(tokens)
    num_segments = (n_tokens + max_tokens_per_segment - 1) // max_tokens_per_segment
    padding = num_segments * max_tokens_per_segment - n_tokens
    lengths = tf.concat([tf.fill([num_segments - 1], max_tokens_per_segment),
                         [max_tokens_per_segment - padding]], axis=0)
    tokens = tf.reshape(tf.pad(tokens, [[0, padding]]), [-1, max_tokens_per_segment])
    return tokens, lengths

  dataset = dataset.map(_split, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
  return dataset.map(lambda tokens, length: {feature_key: tokens[:length]})


@seqio.map_over_dataset(num_seeds=2)
def _denoise(features, seeds, vocabulary, noise_density, mean_noise_span_length):
  tokens = features["targets"]
  noise_mask = random_spans_noise_mask(tf.size(tokens), noise_density, seeds,
                                       mean_noise_span_length)
  return {
      "inputs": noise_span_to_unique_sentinel(tokens, noise_mask, vocabulary),
      "targets": nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocabulary),
  }


def span_corruption(dataset: tf.data.Dataset,
                    sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                    merge_examples_to_reduce_padding: bool = True) -> tf.data.Dataset:
  """T5 span corruption; a seqio post-cache preprocessor.

  Args:
    dataset: examples with "targets": [n] int32 tokens (the whole document).
    sequence_length: {"inputs": L, ...}; chunks are sized so inputs + EOS == L.
    output_features: "targets" supplies the vocabulary (sentinels from its top).
    noise_density: fraction of tokens masked (T5: 0.15).
    mean_noise_span_length: mean masked span length (T5: 3).
    merge_examples_to_reduce_padding: concatenate documents before chunking (T5: True).

  Returns:
    {"inputs": [<= L - 1] int32, "targets": [<= targets_length - 1] int32}, no EOS yet.
  """
  tokens_length, _ = random_spans_helper(sequence_length["inputs"], noise_density,
                                         mean_noise_span_length)
  if merge_examples_to_reduce_padding:
    dataset = reduce_concat_tokens(dataset, "targets")
  dataset = split_tokens(dataset, tokens_length, "targets")
  return _denoise(dataset, vocabulary=output_features["targets"].vocabulary,
                  noise_density=noise_density,
                  mean_noise_span_length=mean_noise_span_length)


@seqio.map_over_dataset(num_seeds=1)
def _random_prefix_split(features, seed):
  tokens = features["targets"]
  # Split point uniform in [1, n - 1]: both sides non-empty.
  split = tf.random.stateless_uniform([], seed, minval=1, maxval=tf.size(tokens),
                                      dtype=tf.int32)
  return {"inputs": tokens[:split], "targets": tokens[split:]}


def prefix_lm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
              merge_examples_to_reduce_padding: bool = True) -> tf.data.Dataset:
  """Prefix LM: chunks of min(inputs, targets) tokens split at a random point.

  Args:
    dataset: examples with "targets": [n] int32 tokens.
    sequence_length: {"inputs": Li, "targets": Lt}; chunk length min(Li, Lt), so both
      sides plus EOS always fit.

  Returns:
    {"inputs": [s] int32 (the prefix), "targets": [chunk - s] int32 (the rest)}, s >= 1.
  """
  chunk = min(sequence_length["inputs"], sequence_length["targets"])
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

  EOS is appended with `seqio.preprocessors.append_eos` (not `_after_trim`) so that
  t5x_lite.data sees over-long examples, counts them, and truncates keeping the EOS.
  """
  return [
      sanitize_text,
      _rekey_text_to_targets,
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      objective,
      seqio.preprocessors.append_eos,
  ]


def _rekey_text_to_targets(dataset):
  """{"text"} -> {"inputs": "" (filled by the objective), "targets": text}."""
  return seqio.preprocessors.rekey(dataset, key_map={"inputs": None, "targets": "text"})


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


def register_tasks(vocabulary: Optional[seqio.Vocabulary] = None) -> None:
  """Registers c4_span_corruption, embedded_span_corruption, embedded_prefix_lm."""
  register_text_task("c4_span_corruption",
                     seqio.TfdsDataSource(tfds_name="c4/en:3.1.0", splits=("train", "validation")),
                     span_corruption, vocabulary)
  register_text_task("embedded_span_corruption", corpora.embedded_source(), span_corruption,
                     vocabulary)
  register_text_task("embedded_prefix_lm", corpora.embedded_source(), prefix_lm, vocabulary)
