"""Tests for tasks/vocab.py: the default vocabulary (build, cache, determinism, safety)."""

import hashlib
import json
import os
import multiprocessing
import shutil
import sys

import gin
import pytest
import seqio

from t5x_lite import tasks
from t5x_lite.checkpointing import vocab_identity
from t5x_lite.config import configurables, gin_utils
from t5x_lite.tasks import vocab

TINY_SPM = os.path.join(os.path.dirname(seqio.__file__),
                        "test_data/sentencepiece/sentencepiece.model")


def test_default_vocabulary_is_lazy_and_follows_t5_ids(tmp_path, monkeypatch):
  monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path))
  v = vocab.default_vocabulary()
  assert os.listdir(tmp_path) == []  # constructing it trains nothing
  assert v == vocab.default_vocabulary() and v != vocab.default_vocabulary(extra_ids=5)
  assert v.vocab_size == 4000 + 100
  assert vocab.padded_vocab_size(v) == 4224
  assert (v.pad_id, v.eos_id, v.unk_id, v.bos_id) == (0, 1, 2, -1)
  assert v.decode([v.vocab_size - 1]) == "<extra_id_0>"
  text = "The quick brown fox jumps over the lazy dog."
  assert v.decode(v.encode(text)) == text
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].startswith("default_spm_") and files[0].endswith(".model")


def test_build_is_deterministic(tmp_path, monkeypatch):
  paths = []
  for name in ("a", "b"):
    monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path / name))
    paths.append(vocab.default_model_path())
  assert os.path.basename(paths[0]) == os.path.basename(paths[1])
  with open(paths[0], "rb") as f0, open(paths[1], "rb") as f1:
    assert f0.read() == f1.read()


def _build_in_child(cache, queue):
  os.environ["T5X_LITE_CACHE"] = cache
  queue.put(vocab.default_model_path())


def test_concurrent_builds_are_safe(tmp_path):
  vocab.train_model_bytes()  # materialise the corpus before forking: children only train
  # fork (not spawn): children reuse the parent's imports; they touch no TensorFlow.
  ctx = multiprocessing.get_context("fork")
  queue = ctx.Queue()
  procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
  for p in procs:
    p.start()
  outs = [queue.get(timeout=120) for _ in procs]
  for p in procs:
    p.join(timeout=120)
  assert all(p.exitcode == 0 for p in procs)
  assert outs[0] == outs[1]
  assert os.listdir(tmp_path) == [os.path.basename(outs[0])]  # no temp files left
  with open(outs[0], "rb") as f:
    assert f.read() == vocab.train_model_bytes()


def test_get_vocabulary_is_one_gin_binding_away():
  assert isinstance(configurables.get_vocabulary(), vocab.DefaultVocabulary)
  with gin.unlock_config():
    gin.parse_config([f"get_vocabulary.sentencepiece_model_path = '{TINY_SPM}'",
                      "get_vocabulary.extra_ids = 10"])
  try:
    v = configurables.get_vocabulary()
    assert isinstance(v, seqio.SentencePieceVocabulary)
    assert v.sentencepiece_model_file == TINY_SPM
    assert v.vocab_size == 36 and vocab.padded_vocab_size(v) == 128
  finally:
    gin.clear_config()


def test_the_gin_binding_switches_the_tasks_and_the_model_embedding_size():
  """One binding: the entry point re-registers the built-in tasks with it (extra_ids too),
  and T5Config.vocab_size (models/common.gin) is the padded size of the same vocabulary."""
  with gin.unlock_config():
    gin_utils.parse(["models/tiny.gin"], [f"get_vocabulary.sentencepiece_model_path={TINY_SPM}",
                                          "get_vocabulary.extra_ids=20"], finalize=False)
  try:
    configurables.configure_builtin_tasks()
    config = configurables.T5Config()
    reference = seqio.SentencePieceVocabulary(TINY_SPM, extra_ids=20)
    for name in ("embedded_span_corruption", "embedded_copy_zeroshot", "glue_sst2_v2"):
      task_vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
      assert task_vocab.encode("hello world") == reference.encode("hello world"), name
      assert task_vocab.vocab_size == reference.vocab_size == 46, name
    assert config.vocab_size == 128
  finally:
    gin.clear_config()
    tasks.register_builtin_tasks()  # back to the default vocabulary for the other tests
  assert seqio.get_mixture_or_task("embedded_copy_zeroshot").output_features[
      "targets"].vocabulary == vocab.default_vocabulary()


def test_a_task_vocabulary_that_does_not_fit_the_model_fails_at_start(tmp_path):
  """The model's embedding size and the task's vocabulary disagree: an error before training,
  naming both sizes and the binding to change."""
  from t5x_lite import settings
  from t5x_lite.model import encoder_decoder, network  # pylint: disable=g-import-not-at-top
  from t5x_lite.modes import train
  model = encoder_decoder.EncoderDecoderModel(network.T5Config(
      vocab_size=32128, d_model=16, d_ff=16, d_kv=4, num_heads=2, num_encoder_layers=1,
      num_decoder_layers=1))
  with pytest.raises(ValueError) as error:
    train.train(model_dir=str(tmp_path), train_steps=1, model=model,
                train_dataset=settings.DatasetConfig("embedded_copy_zeroshot",
                                                    {"inputs": 8, "targets": 8}, batch_size=2))
  message = str(error.value)
  assert "'embedded_copy_zeroshot'" in message and "4100 ids (padded: 4224)" in message
  assert "T5Config.vocab_size=32128" in message and "get_vocabulary" in message
  assert not os.listdir(tmp_path)  # nothing started


def test_fingerprint_identifies_the_model_bytes_and_extra_ids(tmp_path):
  copy = tmp_path / "copy.model"
  shutil.copy(TINY_SPM, copy)
  base = vocab_identity.fingerprint(seqio.SentencePieceVocabulary(TINY_SPM, extra_ids=100))
  # Same bytes at another path: same identity; other extra_ids: another one.
  assert vocab_identity.fingerprint(seqio.SentencePieceVocabulary(str(copy), extra_ids=100)) == base
  assert vocab_identity.fingerprint(seqio.SentencePieceVocabulary(TINY_SPM, extra_ids=10)) != base
  # Independent recomputation: sha256 over the documented header and seqio's loaded bytes.
  v = seqio.SentencePieceVocabulary(TINY_SPM, extra_ids=100)
  header = {"kind": "sentencepiece", "extra_ids": 100, "normalizer_spec_overrides": None}
  expected = hashlib.sha256(
      json.dumps(header, sort_keys=True).encode() + b"\0" + v.sp_model).hexdigest()
  assert base == expected and len(base) == 64
  assert vocab_identity.fingerprint(seqio.ByteVocabulary()) != base


_USER_MODULE = """
import gin
import seqio

@gin.configurable
def user_mixture_rate(rate=1.0):
  return rate

seqio.MixtureRegistry.remove("user_test_mixture")
seqio.MixtureRegistry.add("user_test_mixture", ["embedded_copy_zeroshot", "glue_sst2_v2"],
                          default_rate=1.0)
"""


def test_a_users_mixture_over_builtin_tasks_gets_the_bound_vocabulary(tmp_path, monkeypatch):
  """A module that the user's gin file imports builds a mixture of built-in tasks; the
  vocabulary is bound after it (on the command line): the mixture's tasks still use it."""
  module = f"user_mixture_{os.getpid()}"
  (tmp_path / f"{module}.py").write_text(_USER_MODULE)
  (tmp_path / "user.gin").write_text(f"import {module}\nuser_mixture_rate.rate = 3.0\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with gin.unlock_config():
    gin_utils.parse([str(tmp_path / "user.gin")],
                    [f"get_vocabulary.sentencepiece_model_path={TINY_SPM}"], finalize=False)
  try:
    configurables.configure_builtin_tasks()  # harmless again after the parse registered them
    reference = seqio.SentencePieceVocabulary(TINY_SPM, extra_ids=100)
    mixture = seqio.get_mixture_or_task("user_test_mixture")
    assert sorted(t.name for t in mixture.tasks) == ["embedded_copy_zeroshot", "glue_sst2_v2"]
    for task in mixture.tasks:
      for feature in ("inputs", "targets"):
        task_vocab = task.output_features[feature].vocabulary
        assert task_vocab.vocab_size == reference.vocab_size == 126, (task.name, feature)
        assert task_vocab.encode("hello world") == reference.encode("hello world")
    # The gin file's binding of the user's own configurable took effect in the second pass.
    assert gin.query_parameter("user_mixture_rate.rate") == 3.0
  finally:
    gin.clear_config()
    seqio.MixtureRegistry.remove("user_test_mixture")
    sys.modules.pop(module, None)
    tasks.register_builtin_tasks()  # back to the default vocabulary for the other tests
