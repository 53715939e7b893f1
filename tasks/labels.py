"""Vocabularies of the encoder heads' targets: class names and real numbers.

seqio decodes every prediction with the task's "targets" vocabulary before its
postprocessor and metric fns see it. For the encoder heads (t5x_lite/model/heads.py) the
targets are not SentencePiece text but labels, so their vocabulary maps label names to
ids and back, and the usual text postprocessors and metric fns (GLUE's, SuperNI's) work
on the heads' predictions unchanged:

  LabelVocabulary(("negative", "positive"))
    encode("positive") == [2]          (label i is id i + 1)
    encode("B-PER O O") == [2, 1, 1]   (a tag sequence: one id per space-separated name)
    encode("<unk>") == [0]             (no label: unlabelled test examples)
    decode([2]) == "positive"; id 0 (padding, no label) decodes to nothing
  ScalarVocabulary()
    encode("3.81") == [3.81] (float32); decode([3.81]) == "3.81"

Id 0 stays seqio's padding id: a padded tag position is "no label", which is how token
classification ignores padding and sub-word continuations.
"""

from typing import Sequence

import numpy as np
import seqio
import tensorflow as tf

NO_LABEL = "<unk>"  # T5's target text for an unlabelled example (GLUE test splits).
FIRST_LABEL_ID = 1  # Label i has id i + FIRST_LABEL_ID; id 0 is padding.


class _NoSpecialIds(seqio.Vocabulary):
  """A vocabulary of values, not text: no EOS and no unknown id."""

  @property
  def eos_id(self):
    return None

  @property
  def unk_id(self):
    return None


class LabelVocabulary(_NoSpecialIds):
  """Label names <-> ids (name i is id i + 1; 0 is padding / no label).

  Args:
    label_names: the classes in order; no whitespace inside a name (spaces separate the
      labels of a sequence), none equal to "<unk>".
  """

  def __init__(self, label_names: Sequence[str]):
    self.label_names = tuple(label_names)
    bad = [n for n in self.label_names if not n or n != "".join(n.split()) or n == NO_LABEL]
    if bad or len(set(self.label_names)) != len(self.label_names):
      raise ValueError(f"LabelVocabulary{self.label_names}: label names must be distinct, "
                       f"non-empty, without whitespace and not {NO_LABEL!r} (bad: {bad}).")
    super().__init__(extra_ids=0)

  @property
  def _base_vocab_size(self) -> int:
    return len(self.label_names) + FIRST_LABEL_ID

  def _encode(self, s: str) -> Sequence[int]:
    ids = []
    for name in s.split():
      if name == NO_LABEL:
        ids.append(0)
      elif name in self.label_names:
        ids.append(self.label_names.index(name) + FIRST_LABEL_ID)
      else:
        raise ValueError(f"{name!r} is not a label of {self.label_names}.")
    return ids

  def _decode(self, ids) -> str:
    return " ".join(self.label_names[int(i) - FIRST_LABEL_ID] for i in ids
                    if FIRST_LABEL_ID <= int(i) < self._base_vocab_size)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """A scalar string -> int32 [number of labels]; an unknown name fails the pipeline."""
    names = tf.strings.split(s)
    known = tf.constant((NO_LABEL,) + self.label_names)
    matches = tf.equal(names[:, None], known[None, :])
    found = tf.reduce_any(matches, axis=1)
    # TensorFlow prints the message C-escaped: the label text goes last, unquoted.
    names_text = ", ".join(self.label_names)
    check = tf.debugging.Assert(tf.reduce_all(found), [tf.strings.join([
        f"a label name is not one of the labels of the task ({names_text}). Label text: ", s])])
    with tf.control_dependencies([check]):
      # Index 0 of `known` is NO_LABEL -> id 0, label i -> id i + 1.
      return tf.cast(tf.argmax(tf.cast(matches, tf.int32), axis=1), tf.int32)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    names = tf.constant(("",) + self.label_names)
    real = tf.boolean_mask(ids, ids > 0)
    return tf.strings.reduce_join(tf.gather(names, real), separator=" ")

  def __eq__(self, other):
    return isinstance(other, LabelVocabulary) and other.label_names == self.label_names

  def __str__(self):
    return f"LabelVocabulary{self.label_names}"


class ScalarVocabulary(_NoSpecialIds):
  """A real number as a one-element float32 "sequence": regression targets (STS-B)."""

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def _base_vocab_size(self) -> int:
    return 1

  def _encode(self, s: str) -> Sequence[float]:
    return [float(s)]

  def _decode(self, ids) -> str:
    return f"{float(np.asarray(ids).reshape(-1)[0]):.6g}"

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.strings.to_number(s, tf.float32), [1])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return tf.strings.as_string(tf.reshape(ids, [-1])[0], shortest=True)

  def __eq__(self, other):
    return isinstance(other, ScalarVocabulary)

  def __str__(self):
    return "ScalarVocabulary()"
