"""The export run mode: a t5x_lite checkpoint -> a HF transformers directory.

The directory (config.json + model.safetensors) loads with
`transformers.T5ForConditionalGeneration.from_pretrained(OUTPUT_DIR)` (a
TokenClassificationModel's with `T5ForTokenClassification`) and gives the same logits as
t5x_lite (convert.py maps every parameter; tests/test_export.py checks it). Re-exporting
into a directory that holds an older export replaces it without ever leaving one export's
config.json beside another's weights, even when killed (convert._write_hf).
"""

import logging
from typing import Optional

import jax
import numpy as np

from t5x_lite import checkpoints
from t5x_lite import convert
from t5x_lite import heads
from t5x_lite import models as models_lib
from t5x_lite import partitioning

log = logging.getLogger(__name__)


def export(*, checkpoint_path: str, output_dir: str, model: models_lib.EncoderDecoderModel,
           partitioner: Optional[partitioning.Partitioner] = None, vocabulary=None) -> str:
  """Writes the parameters of a checkpoint as a HF-loadable T5 directory.

  Args (gin; gin/runs/export.gin binds the macros in capitals):
    checkpoint_path: CHECKPOINT_PATH — MODEL_DIR/checkpoints/<step> (or a checkpoints dir:
      its latest step).
    output_dir: OUTPUT_DIR — the HF directory to write (config.json, model.safetensors).
    model: the model the checkpoint was trained with (its model gin file): an
      EncoderDecoderModel or a TokenClassificationModel (HF has no T5 encoder with the
      other heads: convert.save_hf_encoder writes their encoder alone).
    partitioner: mesh and rules for restoring; default partitioning.Partitioner().
    vocabulary: the vocabulary the exported model is meant for (gin/runs/export.gin binds
      @get_vocabulary()): a checkpoint trained with another one is refused
      (checkpoints.VocabularyMismatchError). None: not checked.

  Returns:
    output_dir.
  """
  token_classifier = isinstance(model, heads.TokenClassificationModel)
  if isinstance(model, heads.EncoderHeadModel) and not token_classifier:
    raise ValueError(f"HF transformers has no T5 encoder with a {type(model).__name__}'s head: "
                     "export the encoder alone with t5x_lite.convert.save_hf_encoder.")
  partitioner = partitioner or partitioning.Partitioner()
  params = checkpoints.restore_model_params(model, partitioner, checkpoint_path, vocabulary)
  # process_allgather: on several processes each holds only its shards of the parameters.
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    params = multihost_utils.process_allgather(params, tiled=True)
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(params))
  if jax.process_index() == 0:
    save = convert.save_hf_token_classifier if token_classifier else convert.save_hf_checkpoint
    save(params, model.config, output_dir)
    log.info("Exported %s to %s (transformers.%s.from_pretrained).", checkpoint_path, output_dir,
             "T5ForTokenClassification" if token_classifier else "T5ForConditionalGeneration")
  return output_dir
