"""Predictions for a list of strings in Python, from any checkpoint a run can start from.

  predictor = predict.load("runs/quick/checkpoints/500", model=model)  # or a HF / t5x path
  predictor(["translate English to German: Hello.", ...])  # -> ["Hallo.", ...]
  predict.predict(texts, "hf_dir")  # both at once

`load` reads an orbax step directory (MODEL_DIR/checkpoints/<step>), a t5x checkpoint or a
local HF transformers T5 directory (t5x_lite.interop.initial_params). A text goes through the
infer run mode's path (text_inputs.text_task, infer.prediction_rows): tokenized with the vocabulary,
EOS appended, truncated to `input_length`, decoded with the model's DecodingSettings; its
prediction is the one infer writes for the same text in an INFER_INPUT_FILE, sampling
included (the same per-text key).
"""

import json
import logging
from typing import List, Optional, Sequence

from etils import epath
import seqio

from t5x_lite.interop import hf_param_layout
from t5x_lite.interop import initial_params
from t5x_lite.interop import t5x_format
from t5x_lite.interop import t5x_param_layout
from t5x_lite.model import encoder_decoder
from t5x_lite.model import model_interface
from t5x_lite.modes import infer
from t5x_lite.modes import text_inputs
from t5x_lite.parallel import partitioning
from t5x_lite.tasks import vocab
from t5x_lite.training import trainer as trainer_lib

log = logging.getLogger(__name__)


class Predictor:
  """A model with its parameters: call it on a list of strings to get their predictions.

  Args:
    model: an encoder-decoder model_interface.Model (its `decoding` decides how it decodes).
    params: its parameters (as `load` or restore.restore_model_params give them).
    vocabulary: the seqio vocabulary the texts are tokenized and predictions detokenized
      with; its size padded to 128 must be the model's T5Config.vocab_size.
    partitioner: mesh and rules (those `params` are placed in); default Partitioner().
    input_length: longer inputs are truncated to this many tokens (EOS kept).
    target_length: the decoder's length: tokens generated per text unless
      DecodingSettings.max_decode_length is set.
    batch_size: texts decoded together (the last batch is padded to it: one compilation).
  """

  def __init__(self, model: model_interface.Model, params, vocabulary: seqio.Vocabulary,
               partitioner: Optional[partitioning.Partitioner] = None, *,
               input_length: int = 512, target_length: int = 128, batch_size: int = 8):
    if "targets" not in model.token_features:
      raise ValueError(f"A {type(model).__name__} predicts a task's labels, not text: use the "
                       "infer run mode with its task (MIXTURE_OR_TASK_NAME).")
    if vocab.padded_vocab_size(vocabulary) != model.config.vocab_size:
      raise ValueError(f"The vocabulary has {vocabulary.vocab_size} ids (padded: "
                       f"{vocab.padded_vocab_size(vocabulary)}), the model's T5Config.vocab_size "
                       f"is {model.config.vocab_size}: pass the vocabulary the model was trained "
                       "with.")
    self.model, self.params, self.vocabulary = model, params, vocabulary
    self.partitioner = partitioner or partitioning.Partitioner()
    self.lengths = {"inputs": input_length, "targets": target_length}
    self.batch_size = batch_size

  def __call__(self, texts: Sequence[str]) -> List[str]:
    """The prediction of each text, in order ([] for no texts)."""
    if isinstance(texts, (str, bytes)):
      raise TypeError(f"Predictor takes a list of strings, not one string: [{texts!r}].")
    task = text_inputs.text_task(texts, self.vocabulary)
    stream = infer.examples_of([task], text_inputs.TEXT_SPLIT, self.lengths,
                               feature_converter=self.model.feature_converter(pack=False))
    predictions, batch = [], []
    for example in stream:
      batch.append(example)
      if len(batch) == self.batch_size:
        predictions += self._predict(batch)
        batch = []
    if batch:
      predictions += self._predict(batch)
    return predictions

  def _predict(self, batch) -> List[str]:
    rows = infer.prediction_rows(batch, self.params, self.model,
                                 {text_inputs.TEXT_TASK: self.vocabulary}, self.batch_size,
                                 self.partitioner, fields=())
    return [row["prediction"] for row in rows]


def _model_of(checkpoint_path: str) -> model_interface.Model:
  """The encoder-decoder a HF directory's config.json or a t5x checkpoint's shapes describe."""
  if initial_params.is_hf_directory(checkpoint_path):
    hf_config = json.loads((epath.Path(checkpoint_path) / "config.json").read_text())
    config = hf_param_layout.config_from_hf(hf_config)
  elif t5x_format.is_t5x_checkpoint(checkpoint_path):
    config = t5x_param_layout.config_from_t5x_checkpoint(checkpoint_path)
  else:
    raise ValueError(f"{checkpoint_path} is a t5x_lite checkpoint, which does not record its "
                     "model: pass model= (the EncoderDecoderModel it was trained with).")
  return encoder_decoder.EncoderDecoderModel(config)


def _vocabulary_of(checkpoint_path: str) -> seqio.Vocabulary:
  """A HF directory's spiece.model (with T5's 100 extra ids), else the default vocabulary."""
  spiece = epath.Path(checkpoint_path) / "spiece.model"
  if initial_params.is_hf_directory(checkpoint_path) and spiece.is_file():
    return seqio.SentencePieceVocabulary(str(spiece), extra_ids=vocab.DEFAULT_EXTRA_IDS)
  return vocab.default_vocabulary()


def load(checkpoint_path: str, model: Optional[model_interface.Model] = None,
         vocabulary: Optional[seqio.Vocabulary] = None,
         partitioner: Optional[partitioning.Partitioner] = None, **predictor_args) -> Predictor:
  """A Predictor of the parameters at `checkpoint_path`.

  Args:
    checkpoint_path: MODEL_DIR/checkpoints/<step> (or a checkpoints directory: its latest
      step), a t5x checkpoint_<step> directory, or a local HF T5 directory.
    model: the model; None: the greedy EncoderDecoderModel that a HF config.json or the t5x
      checkpoint's shapes describe (a t5x_lite checkpoint needs it given).
    vocabulary: None: a HF directory's spiece.model, else the default vocabulary. A
      t5x_lite checkpoint trained with another one is refused.
    partitioner: mesh and rules; default partitioning.Partitioner().
    **predictor_args: input_length, target_length, batch_size (see Predictor).
  """
  model = model or _model_of(checkpoint_path)
  vocabulary = vocabulary or _vocabulary_of(checkpoint_path)
  partitioner = partitioner or partitioning.Partitioner()
  abstract = trainer_lib.abstract_params(model, partitioner)
  log.info("Loading parameters from %s.", checkpoint_path)
  params = initial_params.load(model, checkpoint_path, abstract, vocabulary)
  return Predictor(model, params, vocabulary, partitioner, **predictor_args)


def predict(texts: Sequence[str], checkpoint_path: str,
            model: Optional[model_interface.Model] = None, **load_args) -> List[str]:
  """`load(checkpoint_path, model, **load_args)(texts)`: the prediction of each text.

  Loads the checkpoint on every call: for several lists, `load` once and call the Predictor.
  """
  return load(checkpoint_path, model, **load_args)(texts)
