"""seqio FeatureConverters of the encoder heads: task features -> model batches.

Each head model's `feature_converter(pack)` (t5x_lite/model/heads.py) returns one of these;
data.get_dataset, evaluation.InferEvaluator and infer apply it as they apply
seqio.EncDecFeatureConverter for the encoder-decoder. Task features -> model features
(one example; the batch adds a leading [B]):

  SequenceClassificationFeatureConverter
    inputs [<=Li] int32, targets [1]: a LabelVocabulary id (class + 1, 0 = no label)
      or a float32 (ScalarVocabulary, regression)
    -> encoder_input_tokens [Li], labels []: the class (-1: no label), or the float
  TokenClassificationFeatureConverter (packs)
    inputs, targets [<=Li] int32, aligned: targets[i] is the LabelVocabulary id of token
      i's label, 0 where a token has none (padding, EOS, sub-word continuations)
    -> encoder_input_tokens, encoder_target_tokens, encoder_loss_weights [Li]
       (+ encoder_segment_ids, encoder_positions when packed)
  QuestionAnsweringFeatureConverter
    inputs [<=Li], targets (the answer's tokens: only the vocabulary that decodes
      predictions uses them), and int32 scalars start_position, end_position (the answer's
      first and last token in inputs) and context_start (the context's first token)
    -> encoder_input_tokens [Li], context_start, start_positions, end_positions []
       (start/end -1 when truncation cut the answer off: no loss, see the model)

A label id outside the model's classes fails the input pipeline with a message naming
the binding to change and the example (its text, last: TensorFlow prints assertion
messages C-escaped, so they hold no quotes of their own): never a silently wrong label.
"""

from typing import Mapping, Optional

import seqio
import tensorflow as tf

from t5x_lite.tasks import labels as labels_lib

Spec = seqio.FeatureConverter.FeatureSpec


def _example_text(features: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """Up to 200 characters of the example's input text (its token ids if it has none)."""
  if "inputs_pretokenized" in features:
    return tf.strings.substr(features["inputs_pretokenized"], 0, 200, unit="UTF8_CHAR")
  return tf.strings.reduce_join(tf.strings.as_string(features["inputs"][:32]), separator=" ")


def _checked(features, condition, *message_parts):
  """`features` with an assertion attached: the pipeline fails with the message if not."""
  message = tf.strings.join([tf.strings.as_string(p) if isinstance(p, tf.Tensor)
                             and p.dtype != tf.string else p for p in message_parts])
  check = tf.debugging.Assert(condition, [message])
  with tf.control_dependencies([check]):
    return tf.nest.map_structure(tf.identity, features)


def _refuse_packing(pack: bool, model: str):
  if pack:
    raise ValueError(f"{model} keeps one example per row (its labels are per example): set "
                     "train/DatasetConfig.pack = False (gin).")


class SequenceClassificationFeatureConverter(seqio.FeatureConverter):
  """inputs -> encoder_input_tokens; targets[0] -> labels (class id, or float).

  Args:
    num_labels: the model's classes; None for regression (float32 targets).
    pack: must be False (one label per row).
  """

  MODEL = "SequenceClassificationModel"
  TASK_FEATURES = {}
  MODEL_FEATURES = {}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, num_labels: Optional[int], pack: bool = False):
    _refuse_packing(pack, self.MODEL)
    self.num_labels = num_labels
    label_dtype = tf.float32 if num_labels is None else tf.int32
    self.TASK_FEATURES = {"inputs": Spec(tf.int32), "targets": Spec(label_dtype)}
    self.MODEL_FEATURES = {"encoder_input_tokens": Spec(tf.int32),
                           "labels": Spec(label_dtype, rank=0)}
    super().__init__(pack=False)

  def _label(self, features):
    label = features["targets"][0]
    if self.num_labels is None:
      return features, label
    label -= labels_lib.FIRST_LABEL_ID
    features = _checked(
        features, (label >= -1) & (label < self.num_labels), "label ", label,
        f" is outside the classes 0..{self.num_labels - 1} of the model: set "
        f"{self.MODEL}.num_labels to the number of classes of the task (gin). Example: ",
        _example_text(features))
    return features, label

  def _convert_features(self, ds, task_feature_lengths):
    def convert(features):
      features, label = self._label(features)
      return {"encoder_input_tokens": features["inputs"], "labels": label}
    ds = self._pack_or_pad(ds, {"inputs": task_feature_lengths["inputs"]})
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    return {"encoder_input_tokens": task_feature_lengths["inputs"], "labels": 1}


class TokenClassificationFeatureConverter(seqio.FeatureConverter):
  """Aligned inputs / tag ids -> encoder tokens, targets and loss weights (packs).

  Args:
    num_labels: the model's classes (tag ids 1..num_labels; 0 is no label).
    pack: pack several examples per row (segment ids keep attention within each).
  """

  MODEL = "TokenClassificationModel"
  TASK_FEATURES = {"inputs": Spec(tf.int32), "targets": Spec(tf.int32)}
  MODEL_FEATURES = {"encoder_input_tokens": Spec(tf.int32),
                    "encoder_target_tokens": Spec(tf.int32),
                    "encoder_loss_weights": Spec(tf.int32)}
  PACKING_FEATURE_DTYPES = {"encoder_segment_ids": tf.int32, "encoder_positions": tf.int32}

  def __init__(self, num_labels: int, pack: bool = True):
    self.num_labels = num_labels
    super().__init__(pack=pack)

  def _check(self, features):
    inputs, targets = features["inputs"], features["targets"]
    features = _checked(
        features, tf.size(inputs) == tf.size(targets), "inputs (", tf.size(inputs),
        " tokens) and targets (", tf.size(targets), " labels) are not aligned: a "
        "token-classification task gives one label id per input token. Example: ",
        _example_text(features))
    return _checked(
        features, tf.reduce_all((targets >= 0) & (targets <= self.num_labels)), "label id ",
        tf.reduce_max(targets), f" is outside the tag ids 1..{self.num_labels} of the model: "
        f"set {self.MODEL}.num_labels to the number of tags of the task (gin). Example: ",
        _example_text(features))

  def _convert_features(self, ds, task_feature_lengths):
    length = self._length(task_feature_lengths)

    def shift(features):
      # seqio's packing reads every 0 as padding (it cuts a sequence at its count of
      # non-zero ids), so "no label" (0) travels as 1 through it.
      return dict(features, targets=features["targets"] + 1)

    def convert(features):
      targets = tf.maximum(features["targets"] - 1, 0) if self.pack else features["targets"]
      out = {"encoder_input_tokens": features["inputs"],
             "encoder_target_tokens": targets,
             "encoder_loss_weights": tf.cast(targets > 0, tf.int32)}
      if self.pack:
        out["encoder_segment_ids"] = features["inputs_segment_ids"]
        out["encoder_positions"] = features["inputs_positions"]
      return out

    ds = ds.map(self._check, num_parallel_calls=tf.data.AUTOTUNE)
    if self.pack:
      ds = ds.map(shift, num_parallel_calls=tf.data.AUTOTUNE)
    ds = self._pack_or_pad(ds, {"inputs": length, "targets": length})
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def _length(self, task_feature_lengths):
    if task_feature_lengths["targets"] != task_feature_lengths["inputs"]:
      raise ValueError(f"{self.MODEL} gives one label per input token: set "
                       f"TASK_FEATURE_LENGTHS['targets'] equal to ['inputs'] "
                       f"(got {dict(task_feature_lengths)}).")
    return task_feature_lengths["inputs"]

  def get_model_feature_lengths(self, task_feature_lengths):
    length = self._length(task_feature_lengths)
    names = list(self.MODEL_FEATURES) + (list(self.PACKING_FEATURE_DTYPES) if self.pack else [])
    return {name: length for name in names}


class QuestionAnsweringFeatureConverter(seqio.FeatureConverter):
  """inputs + answer token positions -> encoder tokens and start/end targets.

  An answer that truncation to TASK_FEATURE_LENGTHS['inputs'] cut off (in part) gets
  start/end -1: the model gives it no loss. t5x_lite.data.pipeline counts and logs truncated inputs.
  """

  MODEL = "QuestionAnsweringModel"
  TASK_FEATURES = {"inputs": Spec(tf.int32), "targets": Spec(tf.int32)}
  MODEL_FEATURES = {"encoder_input_tokens": Spec(tf.int32),
                    "context_start": Spec(tf.int32, rank=0),
                    "start_positions": Spec(tf.int32, rank=0),
                    "end_positions": Spec(tf.int32, rank=0)}
  PACKING_FEATURE_DTYPES = {}
  POSITIONS = ("start_position", "end_position", "context_start")

  def __init__(self, pack: bool = False):
    _refuse_packing(pack, self.MODEL)
    super().__init__(pack=False)

  def _convert_features(self, ds, task_feature_lengths):
    missing = [k for k in self.POSITIONS if k not in ds.element_spec]
    if missing:
      raise ValueError(f"{self.MODEL} needs a task whose examples have {missing} (int32 token "
                       "positions of the answer and the context in inputs), as "
                       "t5x_lite.tasks.encoder_tasks' SQuAD task makes them.")
    length = task_feature_lengths["inputs"]

    def convert(features):
      start, end = features["start_position"], features["end_position"]
      # Position length - 1 may hold the EOS that truncation keeps: the answer must end before.
      kept = end < length - 1
      return {"encoder_input_tokens": features["inputs"],
              "context_start": features["context_start"],
              "start_positions": tf.where(kept, start, -1),
              "end_positions": tf.where(kept, end, -1)}

    ds = self._pack_or_pad(ds, {"inputs": length})
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    return {"encoder_input_tokens": task_feature_lengths["inputs"], "context_start": 1,
            "start_positions": 1, "end_positions": 1}
