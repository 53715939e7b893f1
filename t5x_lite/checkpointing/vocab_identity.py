"""A stable identity for a vocabulary, to record next to what was trained with it.

Two vocabularies with the same `fingerprint` map every text to the same ids; a checkpoint
or exported model can store it and refuse to be used with a different one (same size,
different ids would otherwise go unnoticed).
"""

import hashlib
import json

import seqio


def fingerprint(vocabulary: seqio.Vocabulary) -> str:
  """sha256 hex digest of what defines `vocabulary`'s mapping from text to ids.

  For a `seqio.SentencePieceVocabulary` (the default vocabulary included): the model's
  serialized bytes as seqio loads them, plus `extra_ids` and the normalisation flags seqio
  applies on top. The file's path or name plays no part, so the same model copied elsewhere
  has the same fingerprint. Reading it loads (for the default vocabulary: locates or builds)
  the SentencePiece model.

  Other vocabularies (e.g. `seqio.ByteVocabulary`) are identified by their class,
  `vocab_size` and `extra_ids`.

  Args:
    vocabulary: any seqio vocabulary.

  Returns:
    A 64-character lowercase hex string.
  """
  digest = hashlib.sha256()
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    header = {"kind": "sentencepiece", "extra_ids": vocabulary.extra_ids,
              "normalizer_spec_overrides": _normalizer_overrides(vocabulary)}
    digest.update(json.dumps(header, sort_keys=True).encode("utf-8"))
    digest.update(b"\0")
    digest.update(vocabulary.sp_model)
  else:
    header = {"kind": type(vocabulary).__qualname__, "vocab_size": vocabulary.vocab_size,
              "extra_ids": vocabulary.extra_ids}
    digest.update(json.dumps(header, sort_keys=True).encode("utf-8"))
  return digest.hexdigest()


def _normalizer_overrides(vocabulary: seqio.SentencePieceVocabulary):
  # seqio can rewrite the model's normaliser at load time; the loaded bytes already carry
  # it, this only keeps the header explicit. Older seqio versions lack the attribute.
  overrides = getattr(vocabulary, "_normalizer_spec_overrides", None)
  if overrides is None:
    return None
  return overrides.SerializeToString(deterministic=True).hex()
