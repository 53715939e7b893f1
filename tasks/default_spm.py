"""Builds the default SentencePiece model file (see tasks/vocab.py for the vocabulary).

Kept apart from vocab.py so that building or checking the model file needs only
sentencepiece and the embedded corpus, not seqio or TensorFlow.
"""

import hashlib
import io
import json
import logging
import os
import tempfile

import sentencepiece as spm

from t5x_lite.tasks import corpora

# Unigram model as T5 used; 4000 pieces because the embedded corpus (~0.66M characters)
# cannot support much more (sentencepiece refuses > ~7400) and it trains in about a second.
# byte_fallback keeps text outside the corpus' alphabet lossless instead of <unk>.
_TRAINER_SETTINGS = dict(
    vocab_size=4000,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=1.0,
    byte_fallback=True,
    num_threads=1,  # multi-threaded EM changes float summation order -> different bytes
    shuffle_input_sentence=False,
    input_sentence_size=0,
    max_sentence_length=8192,
    split_digits=True,
)


cache_dir = corpora.cache_dir


def _settings_key() -> str:
  payload = json.dumps(
      {"corpus": corpora.corpus_fingerprint(), "trainer": _TRAINER_SETTINGS,
       "sentencepiece": spm.__version__},
      sort_keys=True)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def train_model_bytes() -> bytes:
  """Trains the default SentencePiece model on the embedded train split; returns its bytes."""
  sentences = [line for doc in corpora.embedded_texts("train") for line in doc.split("\n")]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, minloglevel=2,
      **_TRAINER_SETTINGS)
  return model.getvalue()


def default_model_path() -> str:
  """Path of the default SentencePiece model, building it on first call.

  Safe when several processes call it at once: each trains into its own temp file in the
  cache dir and publishes it with `os.replace`, which is atomic on POSIX, so a reader sees
  either no file or a complete one.
  """
  directory = cache_dir()
  path = os.path.join(directory, f"default_spm_{_settings_key()}.model")
  if os.path.exists(path):
    return path
  os.makedirs(directory, exist_ok=True)
  logging.info("Training the default SentencePiece vocabulary into %s", path)
  data = train_model_bytes()
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".default_spm_", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache may be shared
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path
