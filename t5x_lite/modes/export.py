"""The export run mode: a t5x_lite checkpoint -> a HF transformers directory.

The directory (config.json + model.safetensors, and the run's tokenizer: spiece.model,
tokenizer_config.json, special_tokens_map.json) loads with
`transformers.<the model's hf_export_format>.from_pretrained(OUTPUT_DIR)`
(`T5ForConditionalGeneration` for the EncoderDecoderModel, `T5ForTokenClassification` for a
TokenClassificationModel; `AutoModelForSeq2SeqLM` / `AutoModelForTokenClassification` alike)
and `AutoTokenizer.from_pretrained(OUTPUT_DIR)`, and gives the same logits, tokens and
greedy decodes as t5x_lite (hf_checkpoint.py maps every parameter, hf_tokenizer.py writes the
vocabulary; tests/test_export.py checks them). Re-exporting into a directory that holds an
older export replaces it without ever leaving one export's config.json beside another's
weights or tokenizer, even when killed (hf_checkpoint._write_hf).
"""

import logging
from typing import Optional

import jax
import numpy as np

from t5x_lite.checkpointing import restore
from t5x_lite.interop import hf_checkpoint
from t5x_lite.interop import hf_tokenizer
from t5x_lite.model import model_interface
from t5x_lite.parallel import partitioning

log = logging.getLogger(__name__)

# model_interface.Model.hf_export_format -> the writer of that HF directory.
HF_WRITERS = {"T5ForConditionalGeneration": hf_checkpoint.save_hf_checkpoint,
              "T5ForTokenClassification": hf_checkpoint.save_hf_token_classifier}


def export(*, checkpoint_path: str, output_dir: str, model: model_interface.Model,
           partitioner: Optional[partitioning.Partitioner] = None, vocabulary=None) -> str:
  """Writes the parameters of a checkpoint as a HF-loadable T5 directory.

  Args (gin; gin/runs/export.gin binds the macros in capitals):
    checkpoint_path: CHECKPOINT_PATH — MODEL_DIR/checkpoints/<step> (or a checkpoints dir:
      its latest step).
    output_dir: OUTPUT_DIR — the HF directory to write (config.json, model.safetensors, the
      tokenizer's files).
    model: MODEL — the model the checkpoint was trained with (its model gin file or
      recipe); its hf_export_format names the HF class written (None: HF has no such
      model, e.g. a T5 encoder with a pooled classifier: hf_checkpoint.save_hf_encoder writes an
      encoder alone).
    partitioner: mesh and rules for restoring; default partitioning.Partitioner().
    vocabulary: the vocabulary the exported model is meant for (gin/runs/export.gin binds
      @get_vocabulary()): a checkpoint trained with another one is refused
      (step_record.VocabularyMismatchError), and a seqio.SentencePieceVocabulary is written
      as the directory's HF tokenizer (hf_tokenizer.hf_tokenizer_files). None: not checked,
      no tokenizer written.

  Returns:
    output_dir.
  """
  hf_class = model.hf_export_format
  if hf_class not in HF_WRITERS:
    what = "no counterpart" if hf_class is None else f"{hf_class}, which export cannot write"
    raise ValueError(f"HF transformers has {what} for a {type(model).__name__} "
                     f"(its hf_export_format; export writes {sorted(HF_WRITERS)}): export an "
                     "encoder alone with t5x_lite.interop.hf_checkpoint.save_hf_encoder.")
  tokenizer_vocabulary = vocabulary
  if vocabulary is not None and not hasattr(vocabulary, "sp_model"):
    log.warning("%s is not a SentencePiece vocabulary: the export holds no tokenizer "
                "(AutoTokenizer.from_pretrained(%s) will not load).", vocabulary, output_dir)
    tokenizer_vocabulary = None
  elif vocabulary is not None:
    hf_tokenizer.hf_tokenizer_files(vocabulary)  # a vocabulary HF cannot read stops here
  partitioner = partitioner or partitioning.Partitioner()
  params = restore.restore_model_params(model, partitioner, checkpoint_path, vocabulary)
  # process_allgather: on several processes each holds only its shards of the parameters.
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    params = multihost_utils.process_allgather(params, tiled=True)
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(params))
  if jax.process_index() == 0:
    HF_WRITERS[hf_class](params, model.config, output_dir, vocabulary=tokenizer_vocabulary)
    log.info("Exported %s to %s (transformers.%s.from_pretrained%s).", checkpoint_path,
             output_dir, hf_class,
             "" if tokenizer_vocabulary is None else ", AutoTokenizer.from_pretrained")
  return output_dir
