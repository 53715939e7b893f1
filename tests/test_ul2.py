"""Tests for tasks/ul2.py: each denoiser against its definition, the mixture rates, tasks."""

import functools
import os
from unittest import mock

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from t5x_lite.config import configurables, gin_utils
from t5x_lite.tasks import ul2
from span_utils import fill_sentinels

TINY_SPM = os.path.join(os.path.dirname(seqio.__file__),
                        "test_data/sentencepiece/sentencepiece.model")
TINY = seqio.SentencePieceVocabulary(TINY_SPM, extra_ids=100)  # 26 pieces + 100 extra ids
# 200 extra ids: room for the 127 spans of the (3, 0.5) denoiser at inputs length 512.
WIDE = seqio.SentencePieceVocabulary(TINY_SPM, extra_ids=200)
DOCS = [f"document {i} " + "the cat sat on a mat and ate " * (i % 7 + 1) for i in range(40)]


def _resolve(inputs, targets, vocabulary):
  """Original tokens from a span-corruption example (paradigm token and EOS removed).

  Sentinels are the extra ids above the three paradigm tokens; returns the tokens and
  the lengths of the noise spans.
  """
  first_sentinel = vocabulary.vocab_size - vocabulary.extra_ids + ul2.NUM_PARADIGM_TOKENS
  out, spans = fill_sentinels(inputs, targets, first_sentinel)
  assert [s for s in targets if s >= first_sentinel] == [s for s in inputs if s >= first_sentinel]
  return out, [len(v) for v in spans.values()]


def _token_docs(num_docs, length, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(3, 26, size=(num_docs, length)).astype(np.int32)  # ordinary pieces


def _examples(docs, lengths, vocabulary, denoisers, seed=0, repeat=False, take=None):
  dataset = tf.data.Dataset.from_tensor_slices({"targets": docs})
  if repeat:
    dataset = dataset.repeat()
  with seqio.utils.map_seed_manager(seed):
    out = ul2.denoised_examples(dataset, lengths, vocabulary, denoisers)
    if take:
      out = out.take(take)
    return list(out.as_numpy_iterator())


def test_paradigm_tokens_are_the_last_three_extra_ids():
  ids = {p: ul2.paradigm_token_id(TINY, p) for p in (ul2.NLU, ul2.NLG, ul2.S2S)}
  assert ids == {ul2.NLU: 28, ul2.NLG: 27, ul2.S2S: 26}  # vocab_size 126 - 1 - 97/98/99
  for paradigm, token_id in ids.items():
    text = ul2.paradigm_token_text(TINY, paradigm)
    assert TINY.decode([token_id]) == text and TINY.encode(text) == [token_id]
  assert ul2.paradigm_token_text(TINY, ul2.NLU) == "<extra_id_97>"
  assert ul2.paradigm_token_text(WIDE, ul2.S2S) == "<extra_id_199>"


def test_the_papers_seven_denoisers_and_rates():
  config = [(d.paradigm, d.mean_noise_span_length, d.noise_density)
            for d in ul2.UL2_DENOISERS]
  assert config == [(ul2.NLU, 3, 0.15), (ul2.NLU, 8, 0.15), (ul2.NLG, 3, 0.5),
                    (ul2.NLG, 8, 0.5), (ul2.NLG, 64, 0.15), (ul2.NLG, 64, 0.5),
                    (ul2.S2S, 0, 0)]
  rates = {}
  for d in ul2.UL2_DENOISERS:
    rates[d.paradigm] = rates.get(d.paradigm, 0) + d.rate
  assert rates == pytest.approx({ul2.NLU: 0.4, ul2.NLG: 0.4, ul2.S2S: 0.2})


# Per denoiser at inputs length 512 (chunks sized for 511 inputs + the paradigm token):
# chunk tokens, noise tokens round(chunk * r), spans round(noise / mu), targets with EOS.
# The numbers are t5.data.preprocessors.random_spans_helper's (t5 0.9.4) at 511.
SPAN_DENOISERS = [
    # (mu, r, chunk, noise, spans, targets length)
    (3.0, 0.15, 567, 85, 28, 114),
    (8.0, 0.15, 587, 88, 11, 100),
    (3.0, 0.5, 765, 382, 127, 510),
    (8.0, 0.5, 906, 453, 57, 511),
    (64.0, 0.15, 599, 90, 1, 92),  # the span count rounds to 1: one 90-token span
    (64.0, 0.5, 1004, 502, 8, 511),
]


@pytest.mark.parametrize("mu,r,chunk,noise,spans,targets_length", SPAN_DENOISERS)
def test_span_denoiser_mask_statistics_and_reconstruction(mu, r, chunk, noise, spans,
                                                          targets_length):
  paradigm = ul2.NLU if (r == 0.15 and mu <= 8) else ul2.NLG
  denoiser = ul2.Denoiser(paradigm, 1.0, mu, r)
  assert ul2.chunk_lengths(denoiser, {"inputs": 512, "targets": 512}) == (chunk,
                                                                          targets_length)
  docs = _token_docs(40, 1000)  # one group of 40,000 tokens
  examples = _examples(docs, {"inputs": 512, "targets": 512}, WIDE, (denoiser,), seed=1)
  stream, span_lengths, full = [], [], 0
  for ex in examples:
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[0] == ul2.paradigm_token_id(WIDE, paradigm)
    tokens, lengths = _resolve(inputs[1:], targets, WIDE)
    assert targets[0] >= WIDE.vocab_size - 197  # targets start with a sentinel
    stream += tokens
    if len(tokens) == chunk:  # every chunk but the group's last
      full += 1
      assert len(inputs) + 1 == 512 and len(targets) + 1 == targets_length  # + EOS
      assert (sum(lengths), len(lengths)) == (noise, spans)
      span_lengths += lengths
  assert stream == docs.reshape(-1).tolist()  # exact reconstruction, every token once
  assert full == 40_000 // chunk >= 39
  # Over all full chunks: density within rounding of r, mean span = noise / spans exactly,
  # and within 5% of mu wherever the span count is not rounded up to one.
  assert abs(sum(span_lengths) / (full * chunk) - r) <= 0.5 / chunk
  assert np.mean(span_lengths) == pytest.approx(noise / spans, abs=1e-9)
  if spans > 1:
    assert np.mean(span_lengths) == pytest.approx(mu, rel=0.05)
    assert np.std(span_lengths) > 0  # span lengths are random, not all mu
  assert min(span_lengths) >= 1


def test_s_denoiser_is_a_uniform_prefix_split():
  denoiser = ul2.Denoiser(ul2.S2S, 1.0)
  docs = _token_docs(64, 500, seed=2)
  examples = _examples(docs, {"inputs": 64, "targets": 64}, TINY, (denoiser,), seed=3)
  stream, prefixes = [], []
  for ex in examples:
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[0] == ul2.paradigm_token_id(TINY, ul2.S2S)
    assert len(inputs) <= 63 and 1 <= len(targets) <= 62  # + EOS: 64 / 63
    assert max(inputs[1:] + targets) < 26  # no sentinel anywhere
    stream += inputs[1:] + targets
    if len(inputs) - 1 + len(targets) == 63:  # full chunk: prefix uniform in [1, 62]
      prefixes.append(len(inputs) - 1)
  assert stream == docs.reshape(-1).tolist()
  n = len(prefixes)
  assert n == 32_000 // 63 and min(prefixes) == 1 and max(prefixes) == 62
  # Uniform on 1..62: mean 31.5, variance (62^2 - 1) / 12; 3 standard errors.
  assert abs(np.mean(prefixes) - 31.5) <= 3 * np.sqrt((62 ** 2 - 1) / 12 / n)


def test_mixture_rates_over_10000_examples():
  docs = _token_docs(100, 200, seed=4)
  examples = _examples(docs, {"inputs": 64, "targets": 64}, TINY, ul2.UL2_DENOISERS,
                       seed=5, repeat=True, take=10_000)
  chosen = np.array([ex["denoiser"] for ex in examples])
  for index, denoiser in enumerate(ul2.UL2_DENOISERS):
    p = denoiser.rate
    assert abs(np.mean(chosen == index) - p) <= 3 * np.sqrt(p * (1 - p) / 10_000), denoiser
  for ex in examples[:2000]:  # each example is what its denoiser makes
    denoiser = ul2.UL2_DENOISERS[ex["denoiser"]]
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[0] == ul2.paradigm_token_id(TINY, denoiser.paradigm)
    if denoiser.is_prefix_lm:
      assert max(inputs[1:] + targets) < 26
      continue
    tokens, lengths = _resolve(inputs[1:], targets, TINY)
    assert (sum(lengths), len(lengths)) == ul2.pretraining.noise_counts(
        len(tokens), denoiser.noise_density, denoiser.mean_noise_span_length)


def _text_task(name, denoisers=ul2.UL2_DENOISERS):
  return ul2.register_ul2_task(name, seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({"text": DOCS}),
      splits=["train"]), TINY, denoisers)


def test_task_reconstructs_the_text_exactly():
  task = _text_task("test_ul2_text")
  examples = list(task.get_dataset({"inputs": 64, "targets": 64}, split="train",
                                   shuffle=False, seed=0).as_numpy_iterator())
  s2s = ul2.paradigm_token_id(TINY, ul2.S2S)
  stream, paradigms = [], set()
  for ex in examples:
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[-1] == 1 and targets[-1] == 1 and len(inputs) <= 64 and len(targets) <= 64
    paradigms.add(inputs[0])
    if inputs[0] == s2s:
      stream += inputs[1:-1] + targets[:-1]
    else:
      stream += _resolve(inputs[1:-1], targets[:-1], TINY)[0]
  original = [t for d in DOCS for t in TINY.encode(d)]
  assert stream == original and TINY.decode(stream) == TINY.decode(original)
  assert paradigms == {26, 27, 28}
  objective_out = list(ul2.ul2_objective(
      tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant([[5, 6]] * 3)}),
      {"inputs": 64, "targets": 64}, task.output_features).as_numpy_iterator())
  assert all(set(ex) == {"inputs", "targets"} for ex in objective_out)


def test_one_token_chunks():
  # A one-token document: span corruption keeps the token and targets only the sentinel
  # (T5's mask never starts with noise); the prefix LM has no split and drops it.
  docs = np.array([[7]], np.int32)
  r = ul2.Denoiser(ul2.NLU, 1.0, 3.0, 0.15)
  out = _examples(docs, {"inputs": 64, "targets": 64}, TINY, (r,))
  assert [(x["inputs"].tolist(), x["targets"].tolist()) for x in out] == [([28, 7], [125])]
  assert _examples(docs, {"inputs": 64, "targets": 64}, TINY, (ul2.Denoiser(ul2.S2S, 1.0),)) == []


def test_errors_name_the_fix():
  with pytest.raises(ValueError, match=r"\[NLG\] \(mean span 3, density 0.5\) needs 127 "
                     r"sentinels .* 97 free extra ids \(3 reserved\)"):
    _examples(_token_docs(2, 10), {"inputs": 512, "targets": 512}, TINY, ul2.UL2_DENOISERS)
  with pytest.raises(ValueError, match=r"makes targets of 62 tokens at inputs length 64, "
                     r"but TASK_FEATURE_LENGTHS\['targets'\] is 16: set it to at least 62"):
    _examples(_token_docs(2, 10), {"inputs": 64, "targets": 16}, TINY, ul2.UL2_DENOISERS)


def test_registered_tasks(tmp_path, monkeypatch):
  monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path))
  lengths = {"inputs": 128, "targets": 128}
  embedded = seqio.get_mixture_or_task("embedded_ul2")
  vocabulary = embedded.output_features["inputs"].vocabulary
  paradigm_ids = {ul2.paradigm_token_id(vocabulary, p) for p in (ul2.NLU, ul2.NLG, ul2.S2S)}
  assert paradigm_ids == {4000, 4001, 4002}  # 4000 pieces + <extra_id_99/98/97>
  examples = list(embedded.get_dataset(lengths, split="validation", shuffle=False,
                                       seed=0).take(50).as_numpy_iterator())
  assert {ex["inputs"][0] for ex in examples} == paradigm_ids
  assert all(len(ex["inputs"]) <= 128 and len(ex["targets"]) <= 128 for ex in examples)
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE), \
      mock.patch.object(seqio.utils.LazyTfdsLoader, "size", lambda self, split: 8):
    c4 = seqio.get_mixture_or_task("c4_ul2")
    examples = list(c4.get_dataset(lengths, split="train", shuffle=False,
                                   seed=0).as_numpy_iterator())
  assert examples and {ex["inputs"][0] for ex in examples} <= paradigm_ids


def test_recipe_parses_to_the_embedded_ul2_task():
  gin.clear_config()
  try:
    gin_utils.parse(["recipes/ul2_pretrain.gin"], ["MODEL_DIR=/tmp/unused"], finalize=False)
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "embedded_ul2"
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    assert lengths == {"inputs": 128, "targets": 128}
    assert configurables.T5Config().vocab_size == 4224  # the default vocabulary, padded
  finally:
    gin.clear_config()


def test_prepend_paradigm_token_for_mode_switching():
  """Each paradigm's own token goes before the inputs of every example; nothing else changes."""
  features = {"inputs": seqio.Feature(TINY), "targets": seqio.Feature(TINY)}
  dataset = tf.data.Dataset.from_tensor_slices(
      {"inputs": [[5, 6], [8, 9]], "targets": [[7], [3]], "id": [0, 1]})
  for paradigm, token in ((ul2.NLU, 28), (ul2.NLG, 27), (ul2.S2S, 26)):
    out = list(ul2.prepend_paradigm_token(dataset, features, paradigm).as_numpy_iterator())
    assert [(x["inputs"].tolist(), x["targets"].tolist(), x["id"]) for x in out] == [
        ([token, 5, 6], [7], 0), ([token, 8, 9], [3], 1)], paradigm
  # As the docstring shows it in a task: the token follows tokenization, before EOS.
  task = seqio.Task(
      "ul2_mode_switching_test", seqio.dataset_providers.FunctionDataSource(
          lambda split, shuffle_files: tf.data.Dataset.from_tensors(
              {"inputs": "a b", "targets": "c"}), splits=["train"]),
      output_features=features,
      preprocessors=[seqio.preprocessors.tokenize,
                     functools.partial(ul2.prepend_paradigm_token, paradigm=ul2.NLU),
                     seqio.preprocessors.append_eos])
  out = next(task.get_dataset(None, "train", shuffle=False).as_numpy_iterator())
  assert out["inputs"].tolist() == [28] + TINY.encode("a b") + [1]
  assert out["targets"].tolist() == TINY.encode("c") + [1]
