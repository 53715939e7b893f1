"""The HF transformers T5 tokenizer of a seqio SentencePiece vocabulary, as files.

A HF T5 directory carries its tokenizer beside the weights: `spiece.model` (the SentencePiece
model) plus `tokenizer_config.json` and `special_tokens_map.json` (T5Tokenizer, its special
tokens and `extra_ids`, the sentinels it appends). hf_checkpoint's writers put these files
in the directories they write when given the run's vocabulary.
"""

import json

# What T5Tokenizer reads from a directory (spiece.model: SentencePiece's ModelProto without
# the sentinels, which T5Tokenizer appends itself from tokenizer_config.json's extra_ids).
TOKENIZER_FILES = ("spiece.model", "tokenizer_config.json", "special_tokens_map.json")
# Tokenizer files an export does not write but that HF would read before spiece.model
# (tokenizer.json) or beside it: an older directory's would describe another vocabulary.
OTHER_TOKENIZER_FILES = ("tokenizer.json", "added_tokens.json")


def hf_tokenizer_files(vocabulary) -> dict:
  """{file name: bytes} of the HF T5 tokenizer of a seqio.SentencePieceVocabulary.

  `AutoTokenizer.from_pretrained` on a directory holding these files (transformers 5 reads
  spiece.model with the sentencepiece package) gives a T5Tokenizer whose ids are the
  vocabulary's: the SentencePiece pieces, then the vocabulary's extra ids as sentinels,
  `<extra_id_0>` the last id (seqio's default order, and T5's).

  Args:
    vocabulary: a seqio.SentencePieceVocabulary (its `sp_model` and `extra_ids` are read).

  Raises:
    TypeError: `vocabulary` is not a SentencePiece vocabulary.
    ValueError: its ids are not T5's (pad 0, eos 1, unk 2), or its sentinels are numbered
      upwards (seqio.SentencePieceVocabulary(reverse_extra_ids=False)), which HF's T5Tokenizer
      cannot express.
  """
  # pylint: disable=g-import-not-at-top
  import sentencepiece
  from sentencepiece import sentencepiece_model_pb2
  # pylint: enable=g-import-not-at-top
  if not hasattr(vocabulary, "sp_model"):
    raise TypeError(f"{vocabulary} is a {type(vocabulary).__name__}; a HF T5 tokenizer is "
                    "written for a seqio.SentencePieceVocabulary (get_vocabulary."
                    "sentencepiece_model_path, or the default vocabulary).")
  extra_ids = vocabulary.extra_ids
  model = sentencepiece_model_pb2.ModelProto.FromString(vocabulary.sp_model)
  # seqio appended the sentinels to the model's pieces ("▁<extra_id_N>", N counting down).
  base = len(model.pieces) - extra_ids
  sentinels = [piece.piece for piece in model.pieces[base:]]
  if sentinels != [f"▁<extra_id_{i}>" for i in reversed(range(extra_ids))]:
    raise ValueError(f"{vocabulary}: its {extra_ids} extra ids are not numbered from the last "
                     "id down (<extra_id_0> last), as HF's T5Tokenizer numbers them: use "
                     "seqio.SentencePieceVocabulary(..., reverse_extra_ids=True).")
  del model.pieces[base:]
  spiece = model.SerializeToString()
  processor = sentencepiece.SentencePieceProcessor(model_proto=spiece)
  ids = {"pad": processor.pad_id(), "eos": processor.eos_id(), "unk": processor.unk_id()}
  if ids != {"pad": 0, "eos": 1, "unk": 2}:
    raise ValueError(f"{vocabulary} has ids {ids}; HF's T5Tokenizer (and T5) needs pad 0, "
                     "eos 1, unk 2: train the SentencePiece model with --pad_id=0 --eos_id=1 "
                     "--unk_id=2 --bos_id=-1.")
  special = {f"{name}_token": processor.id_to_piece(i) for name, i in ids.items()}
  sentinel_tokens = [f"<extra_id_{i}>" for i in range(extra_ids)]
  config = dict(special, tokenizer_class="T5Tokenizer", extra_ids=extra_ids,
                additional_special_tokens=sentinel_tokens)
  as_json = lambda d: json.dumps(d, indent=2, sort_keys=True).encode()
  return {"spiece.model": spiece, "tokenizer_config.json": as_json(config),
          "special_tokens_map.json": as_json(
              dict(special, additional_special_tokens=sentinel_tokens))}
