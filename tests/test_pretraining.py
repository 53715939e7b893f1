"""Tests for tasks/pretraining.py: T5 span corruption and prefix LM against the definition."""

import os
from unittest import mock

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from t5x_lite.tasks import pretraining as P

TINY_SPM = os.path.join(os.path.dirname(seqio.__file__),
                        "test_data/sentencepiece/sentencepiece.model")
TINY = seqio.SentencePieceVocabulary(TINY_SPM, extra_ids=100)  # vocab_size 126
DOCS = [f"document {i} " + "the cat sat on a mat and ate " * (i % 7 + 1) for i in range(40)]


def _runs(mask):
  """[(is_noise, length)] runs of a boolean mask."""
  runs = []
  for m in mask:
    if runs and runs[-1][0] == m:
      runs[-1][1] += 1
    else:
      runs.append([bool(m), 1])
  return runs


def _resolve(inputs, targets, vocab_size):
  """Reconstructs the original tokens from span-corruption inputs/targets (no EOS)."""
  spans, current = {}, None
  for t in targets:
    if t >= vocab_size - 100:
      current = int(t)
      spans[current] = []
    else:
      spans[current].append(int(t))
  out = []
  for t in inputs:
    out.extend(spans[int(t)] if t >= vocab_size - 100 else [int(t)])
  return out


def test_random_spans_helper_t5_values():
  assert P.random_spans_helper(512) == (568, 114)
  assert P.span_corruption_feature_lengths(512) == {"inputs": 512, "targets": 114}
  for inputs_length in (16, 64, 128, 512, 1024):
    tokens, targets = P.random_spans_helper(inputs_length)
    noise = int(round(tokens * 0.15))
    spans = int(round(noise / 3.0))
    assert tokens - noise + spans + 1 == inputs_length  # inputs exactly filled
    assert noise + spans + 1 == targets


@pytest.mark.parametrize("length,seed", [(2, 0), (10, 1), (100, 2), (568, 3), (1000, 4)])
def test_noise_mask_matches_definition(length, seed):
  seeds = tf.constant([[seed, 1], [seed, 2]], tf.int32)
  mask = P.random_spans_noise_mask(tf.constant(length), 0.15, seeds).numpy()
  num_noise = min(max(int(np.round(length * 0.15)), 1), length - 1)  # half-to-even
  num_spans = max(int(np.round(num_noise / 3.0)), 1)
  assert mask.shape == (length,) and mask.sum() == num_noise
  runs = _runs(mask)
  assert not runs[0][0] and runs[-1][0]  # starts with non-noise, ends with noise
  noise_runs = [n for is_noise, n in runs if is_noise]
  assert len(noise_runs) == num_spans and sum(noise_runs) == num_noise
  assert len(runs) == 2 * num_spans
  again = P.random_spans_noise_mask(tf.constant(length), 0.15, seeds).numpy()
  np.testing.assert_array_equal(mask, again)  # stateless: same seeds, same mask


def test_noise_mask_depends_on_seed_and_mean_span_length():
  masks = [P.random_spans_noise_mask(tf.constant(568), 0.15,
                                     tf.constant([[s, 1], [s, 2]])).numpy() for s in range(5)]
  assert len({m.tobytes() for m in masks}) == 5
  lengths = []
  for s in range(20):
    mask = P.random_spans_noise_mask(tf.constant(568), 0.15, tf.constant([[s, 7], [s, 8]]))
    lengths += [n for is_noise, n in _runs(mask.numpy()) if is_noise]
  # 85 noise tokens in 28 spans per chunk: mean 85/28 exactly.
  assert np.mean(lengths) == pytest.approx(85 / 28)


def test_sentinels_count_down_and_reconstruct():
  tokens = tf.range(3, 23, dtype=tf.int32)  # 20 distinct tokens
  mask = tf.constant([False] * 3 + [True] * 2 + [False] * 5 + [True] * 1 + [False] * 9)
  inputs = P.noise_span_to_unique_sentinel(tokens, mask, TINY).numpy().tolist()
  targets = P.nonnoise_span_to_unique_sentinel(tokens, mask, TINY).numpy().tolist()
  assert inputs == [3, 4, 5, 125, 8, 9, 10, 11, 12, 124] + list(range(14, 23))
  assert targets == [125, 6, 7, 124, 13, 123]
  assert _resolve(inputs, targets, TINY.vocab_size) == list(range(3, 23))
  assert TINY.decode([125]) == "<extra_id_0>" and TINY.decode([124]) == "<extra_id_1>"


def _task(name, objective):
  P.register_text_task(name, seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({"text": DOCS}),
      splits=["train"]), objective, TINY)
  return seqio.get_mixture_or_task(name)


def _doc_stream():
  return [t for d in DOCS for t in TINY.encode(d)]


def test_span_corruption_task_reconstructs_stream():
  task = _task("test_span_corruption", P.span_corruption)
  lengths = {"inputs": 32, "targets": 12}
  tokens_length, targets_length = P.random_spans_helper(32)  # (35, 8)
  examples = list(task.get_dataset(lengths, split="train", shuffle=False, seed=5,
                                   trim_output_features=False).as_numpy_iterator())
  stream = []
  for i, ex in enumerate(examples):
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[-1] == 1 and targets[-1] == 1  # EOS appended by seqio
    sentinels_in = [t for t in inputs if t >= 26]
    assert sentinels_in == list(range(125, 125 - len(sentinels_in), -1))
    assert [t for t in targets if t >= 26] == sentinels_in
    if i < len(examples) - 1:  # full chunks fill inputs exactly
      assert len(inputs) == 32 and len(targets) == targets_length
      assert len(sentinels_in) == 2 and sum(t < 26 for t in targets[:-1]) == 5
    stream += _resolve(inputs[:-1], targets[:-1], TINY.vocab_size)
  assert stream == _doc_stream()
  again = list(task.get_dataset(lengths, split="train", shuffle=False, seed=5,
                                trim_output_features=False).as_numpy_iterator())
  assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(examples, again))
  other = list(task.get_dataset(lengths, split="train", shuffle=False, seed=6,
                                trim_output_features=False).as_numpy_iterator())
  assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(examples, other))


def test_prefix_lm_task_reconstructs_stream():
  task = _task("test_prefix_lm", P.prefix_lm)
  examples = list(task.get_dataset({"inputs": 24, "targets": 16}, split="train",
                                   shuffle=False, seed=1,
                                   trim_output_features=False).as_numpy_iterator())
  stream, splits = [], set()
  for ex in examples:
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[-1] == 1 and targets[-1] == 1
    assert len(inputs) >= 2 and len(targets) >= 2 and len(inputs) + len(targets) <= 16 + 2
    splits.add(len(inputs))
    stream += inputs[:-1] + targets[:-1]
  assert stream == _doc_stream()
  assert len(splits) > 3  # the split point is random


def test_registered_tasks_and_tfds_c4_on_mock_data(tmp_path, monkeypatch):
  monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path))
  for name in ("c4_span_corruption", "embedded_span_corruption", "embedded_prefix_lm"):
    assert name in seqio.TaskRegistry.names()
  emb = seqio.get_mixture_or_task("embedded_span_corruption")
  ex = next(emb.get_dataset({"inputs": 64, "targets": 16}, split="validation",
                            shuffle=False, seed=0).as_numpy_iterator())
  vocab_size = emb.output_features["targets"].vocabulary.vocab_size
  assert vocab_size == 4100 and len(ex["inputs"]) == 64 and ex["inputs"].max() <= 4099
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE), \
      mock.patch.object(seqio.utils.LazyTfdsLoader, "size", lambda self, split: 4):
    raw = [x["text"].decode() for x in tfds.load("c4/en:3.1.0", split="train").take(4)
           .as_numpy_iterator()]
    c4 = seqio.get_mixture_or_task("c4_span_corruption")
    examples = list(c4.get_dataset({"inputs": 16, "targets": 8}, split="train",
                                   shuffle=False, seed=0).as_numpy_iterator())
  vocabulary = c4.output_features["targets"].vocabulary
  stream = [t for ex in examples
            for t in _resolve(ex["inputs"][:-1], ex["targets"][:-1], vocab_size)]
  assert stream == [t for text in raw for t in vocabulary.encode(text)]


def test_sanitize_text_replaces_invalid_utf8():
  ds = tf.data.Dataset.from_tensor_slices({"text": [b"ok", b"bad \xff\xfe end", b""],
                                           "n": [1, 2, 3]})
  out = list(P.sanitize_text(ds).as_numpy_iterator())
  assert [x["text"].decode("utf-8") for x in out] == ["ok", "bad \ufffd\ufffd end", ""]
  assert [x["n"] for x in out] == [1, 2, 3]
