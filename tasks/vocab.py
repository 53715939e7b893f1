"""The default vocabulary: SentencePiece trained on the embedded corpus, cached on disk.

T5 conventions: pad=0, eos=1, unk=2, no bos; `extra_ids` sentinels appended at the end
(`<extra_id_0>` is the last id). Training is single-threaded with input order fixed, so
the model file is byte-identical on every build of the same corpus and settings.

The model lives in `$T5X_LITE_CACHE` (default `~/.cache/t5x_lite`) under a name keyed by a
hash of the corpus and the trainer settings; it is built on first real use (tokenising,
reading `vocab_size`), never at import time, and concurrent builders are safe: each writes
a private temp file and publishes it with an atomic `os.replace` (identical bytes, so the
last writer wins harmlessly).

Any other SentencePiece model is one gin binding away; it switches the built-in tasks and the
model's embedding size (`T5Config.vocab_size = @padded_vocab_size()` in the model gin files):
  `get_vocabulary.sentencepiece_model_path = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"`
"""

import posixpath
from typing import Optional

from google.protobuf import message
import seqio
import tensorflow as tf

# Building the model file needs neither seqio nor TensorFlow: it lives in default_spm.
from t5x_lite.tasks.default_spm import cache_dir  # noqa: F401  (re-exported)
from t5x_lite.tasks.default_spm import default_model_path
from t5x_lite.tasks.default_spm import train_model_bytes  # noqa: F401  (re-exported)

DEFAULT_EXTRA_IDS = 100


class DefaultVocabulary(seqio.SentencePieceVocabulary):
  """The vocabulary the built-in tasks register with: resolved lazily, on first use.

  Constructing it is free (no corpus, no training). On the first tokenisation or size query
  it locates (or trains) the default SentencePiece model (tasks/default_spm.py); the model
  is a pure function of the stdlib source files, so it is the same in every process.
  """

  def __init__(self, extra_ids: int = DEFAULT_EXTRA_IDS):
    super().__init__(sentencepiece_model_file=None, extra_ids=extra_ids)

  def _model_context(self):
    if self._sentencepiece_model_file is None:
      self._sentencepiece_model_file = default_model_path()
    return super()._model_context()

  @property
  def sentencepiece_model_file(self) -> str:
    if self._sentencepiece_model_file is None:
      self._sentencepiece_model_file = default_model_path()
    return self._sentencepiece_model_file

  def __eq__(self, other):
    # seqio compares vocabularies (e.g. across a mixture's tasks); compare what defines
    # this one without triggering a build.
    return isinstance(other, DefaultVocabulary) and self.extra_ids == other.extra_ids

  def __hash__(self):
    return hash(("DefaultVocabulary", self.extra_ids))

  def __str__(self) -> str:
    return f"DefaultVocabulary(extra_ids={self.extra_ids})"


def default_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS) -> DefaultVocabulary:
  """The default vocabulary (cheap: builds its model lazily on first use)."""
  return DefaultVocabulary(extra_ids=extra_ids)


def get_vocabulary(sentencepiece_model_path: Optional[str] = None,
                   extra_ids: int = DEFAULT_EXTRA_IDS) -> seqio.Vocabulary:
  """The vocabulary of the built-in tasks and, through `padded_vocab_size`, of the model.

  Gin at the edge binds it (`get_vocabulary.sentencepiece_model_path = ...`,
  `get_vocabulary.extra_ids = ...`): the entry point registers the built-in tasks with it,
  and the model gin files size the embedding from it.

  Args:
    sentencepiece_model_path: a SentencePiece model file (local path or gs://); None
      means the default vocabulary trained on the embedded corpus. The model must follow
      T5's ids (pad=0, eos=1, unk=2) for the model's padding and EOS to be right.
    extra_ids: number of sentinel ids appended after the model's pieces (T5: 100).

  Returns:
    A seqio.SentencePieceVocabulary; its `vocab_size` includes the extra ids.

  Raises:
    FileNotFoundError: the model file does not exist.
    IsADirectoryError: the path is a directory (e.g. a HF model directory, not its
      spiece.model).
    ValueError: sentencepiece cannot load the file (a text vocabulary, a tokenizer.json).
    Otherwise seqio would fail only at first use, with a protobuf or sentencepiece error.
  """
  if sentencepiece_model_path is None:
    return default_vocabulary(extra_ids)
  binding = f"get_vocabulary.sentencepiece_model_path={sentencepiece_model_path!r}"
  if not tf.io.gfile.exists(sentencepiece_model_path):
    raise FileNotFoundError(
        f"{binding} does not exist: set it to a SentencePiece .model file, or leave it unset "
        "for the default vocabulary.")
  if tf.io.gfile.isdir(sentencepiece_model_path):
    models = sorted(n for n in tf.io.gfile.listdir(sentencepiece_model_path)
                    if n.endswith(".model"))
    target = (f"the model file in it, e.g. "
              f"{posixpath.join(sentencepiece_model_path.rstrip('/'), models[0])!r}" if models
              else "a SentencePiece .model file (a HF T5 directory has spiece.model)")
    raise IsADirectoryError(f"{binding} is a directory: set it to {target}.")
  vocabulary = seqio.SentencePieceVocabulary(sentencepiece_model_path, extra_ids=extra_ids)
  try:
    vocabulary.tokenizer  # pylint: disable=pointless-statement  (loads and caches the model)
  except (message.DecodeError, RuntimeError, tf.errors.OpError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise ValueError(
        f"{binding} is not a SentencePiece model that sentencepiece can load "
        f"({type(e).__name__}: {reason}): set it to a SentencePiece .model file (a HF T5 "
        "directory's spiece.model), or leave it unset for the default vocabulary.") from e
  return vocabulary


def padded_vocab_size(vocabulary: seqio.Vocabulary, multiple: int = 128) -> int:
  """`vocabulary.vocab_size` rounded up to a multiple of `multiple` (T5: 32100 -> 32128).

  The model's embedding uses the padded size so the vocab axis shards evenly and matmuls
  hit aligned shapes; the extra rows are never produced by the tokenizer.
  """
  size = vocabulary.vocab_size
  return -(-size // multiple) * multiple
