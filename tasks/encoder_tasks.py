"""Tasks for the encoder heads (t5x_lite/model/heads.py): GLUE classes, CoNLL-2003 tags, SQuAD spans.

Their targets are labels, not text: the "targets" vocabulary (tasks/labels.py) maps label
names to ids, so predictions decode to names and the usual postprocessors and metric fns
score them. Inputs use the shared SentencePiece vocabulary.

  glue_{cola,sst2,mrpc,qqp,mnli,qnli,rte,wnli}_v2_encoder   TFDS glue/<name>:2.0.0
      T5's input text ("sst2 sentence: ..."), targets the class (LabelVocabulary of the
      label names); T5's postprocessors and metrics. SequenceClassificationModel.
  glue_stsb_v2_encoder   the score itself as a float (ScalarVocabulary, no 0.2 rounding);
      Pearson / Spearman. SequenceClassificationModel(regression=True).
  conll2003_ner          TFDS conll2003/conll2003:1.0.0 (splits train, validation = dev, test).
      Each word is tokenized on its own; its first piece carries the word's tag id, other
      pieces and EOS get 0 (no label). Span F1 (conlleval) and tag accuracy over words.
      TokenClassificationModel(num_labels=9); packs.
  squad_v110_extractive  TFDS squad/v1.1:3.0.0. Inputs "question: <q> context: <c>";
      the context is tokenized in three pieces (before, answer, after) so that the first
      answer's tokens sit at known positions (start_position, end_position, and
      context_start where the context begins). SQuAD EM and F1 (max over all answers).
      QuestionAnsweringModel.

An answer that is not where its example says (outside the context, or other text at its
offset), a word with no token and a label name outside the vocabulary fail the pipeline
with a message naming the task and the example.
"""

import functools
from typing import Callable, Dict, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.data.text import as_text
from t5x_lite.tasks import glue
from t5x_lite.tasks import glue_metrics as gm
from t5x_lite.tasks import labels
from t5x_lite.tasks import metrics
from t5x_lite.tasks import pretraining
from t5x_lite.tasks import vocab

CONLL_TASK = "conll2003_ner"
SQUAD_TASK = "squad_v110_extractive"
# TFDS conll2003's `ner` ClassLabel names, in its order.
CONLL_NER_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
_CONLL_SPLITS = {"train": "train", "validation": "dev", "test": "test"}
_SQUAD_SPLITS = ("train", "validation")


def glue_encoder_task_name(name: str) -> str:
  return f"glue_{name}_v2_encoder"


def _checked(features, condition, *message_parts):
  """`features` with an assertion: the pipeline fails with the joined message if not.

  TensorFlow prints the message C-escaped: fixed parts hold no quotes, texts come last.
  """
  message = tf.strings.join([tf.strings.as_string(p) if isinstance(p, tf.Tensor)
                             and p.dtype != tf.string else p for p in message_parts])
  check = tf.debugging.Assert(condition, [message])
  with tf.control_dependencies([check]):
    return tf.nest.map_structure(tf.identity, features)


def _register(name: str, tfds_name: str, splits, preprocessors: Sequence[Callable],
              output_features: Mapping[str, seqio.Feature], postprocess_fn, metric_fns):
  """Registers (replacing) a read-only TFDS task."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits, read_only=True),
      preprocessors=list(preprocessors), output_features=output_features,
      postprocess_fn=postprocess_fn, metric_fns=metric_fns)


# ---------------------------------------------------------------------------- GLUE ---


def stsb_regression_text(x: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """STS-B for a regression head: T5's inputs, the unrounded score as the target text."""
  return {"inputs": tf.strings.join(["stsb sentence1:", x["sentence1"], "sentence2:",
                                     x["sentence2"]], separator=" "),
          "targets": tf.strings.as_string(x["label"], shortest=True),
          "idx": tf.cast(x["idx"], tf.int32)}


def _glue_preprocessors(text_fn):
  return [seqio.map_over_dataset(text_fn), pretraining.sanitize_text,
          seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos]


def register_glue_encoder_tasks(vocabulary: seqio.Vocabulary) -> None:
  for name, (label_names, metric_fns) in glue.GLUE_TASKS.items():
    text_fn = functools.partial(glue.glue_text, benchmark_name=name, label_names=label_names)
    _register(glue_encoder_task_name(name), f"glue/{name}:{glue.GLUE_VERSION}",
              glue._MNLI_SPLITS if name == "mnli" else glue._SPLITS,  # pylint: disable=protected-access
              _glue_preprocessors(text_fn),
              {"inputs": seqio.Feature(vocabulary, add_eos=True),
               "targets": seqio.Feature(labels.LabelVocabulary(label_names), add_eos=False)},
              glue._labels(label_names), metric_fns)  # pylint: disable=protected-access
  _register(glue_encoder_task_name("stsb"), f"glue/stsb:{glue.GLUE_VERSION}",
            glue._SPLITS, _glue_preprocessors(stsb_regression_text),  # pylint: disable=protected-access
            {"inputs": seqio.Feature(vocabulary, add_eos=True),
             "targets": seqio.Feature(labels.ScalarVocabulary(), add_eos=False,
                                      dtype=tf.float32)},
            gm.string_to_float, [gm.pearson_corrcoef, gm.spearman_corrcoef])


# ------------------------------------------------------------------------- CoNLL ---


def conll_example(x: Mapping[str, tf.Tensor], vocabulary: seqio.Vocabulary,
                  task_name: str = CONLL_TASK) -> Dict[str, tf.Tensor]:
  """Words and tags -> aligned token and tag ids (first piece of each word; 0 elsewhere).

  Returns:
    {"inputs": int32 [T + 1] (EOS last), "targets": int32 [T + 1] (tag + 1 at each
    word's first piece, else 0), "inputs_pretokenized": the words joined by spaces,
    "targets_pretokenized": the tags joined by spaces}.
  """
  words, tags = x["tokens"], tf.cast(x["ner"], tf.int32)
  pieces = vocabulary.encode_tf(words)  # ragged [words, pieces]
  lengths = tf.cast(pieces.row_lengths(), tf.int32)
  sentence = tf.strings.reduce_join(words, separator=" ")
  x = _checked(dict(x), tf.reduce_all(lengths > 0), f"{task_name}: a word encodes to no "
               "token, so its tag would land on the next word. Sentence: ", sentence)
  starts = tf.cumsum(lengths, exclusive=True)
  tag_ids = tf.scatter_nd(starts[:, None], tags + labels.FIRST_LABEL_ID,
                          [tf.reduce_sum(lengths)])
  eos = tf.constant([vocabulary.eos_id], tf.int32)
  return {"inputs": tf.concat([tf.cast(pieces.flat_values, tf.int32), eos], 0),
          "targets": tf.concat([tag_ids, [0]], 0),
          "inputs_pretokenized": sentence,
          "targets_pretokenized": tf.strings.reduce_join(
              tf.gather(tf.constant(CONLL_NER_TAGS), tags), separator=" ")}


def register_conll_task(vocabulary: seqio.Vocabulary) -> None:
  # Inputs without seqio's EOS: truncation must cut inputs and targets alike.
  # The config named explicitly: seqio refuses to list a configured builder's files without.
  _register(CONLL_TASK, "conll2003/conll2003:1.0.0", _CONLL_SPLITS,
            [pretraining.sanitize_text,
             seqio.map_over_dataset(functools.partial(conll_example, vocabulary=vocabulary)),
             seqio.CacheDatasetPlaceholder()],
            {"inputs": seqio.Feature(vocabulary, add_eos=False),
             "targets": seqio.Feature(labels.LabelVocabulary(CONLL_NER_TAGS), add_eos=False)},
            None, [metrics.span_f1])


# ------------------------------------------------------------------------- SQuAD ---


def squad_example(x: Mapping[str, tf.Tensor], vocabulary: seqio.Vocabulary,
                  task_name: str = SQUAD_TASK) -> Dict[str, tf.Tensor]:
  """A SQuAD example -> tokens with the first answer's token positions.

  The context is tokenized as before-answer / answer / after-answer pieces, so the answer
  is exactly tokens [start_position, end_position] (SentencePiece marks each piece's
  first word as word-initial, which the answer's first word is in all but rare cases).

  Raises (when the dataset is read):
    InvalidArgumentError naming the task and the example id: the first answer is not the
    context's text at its answer_start (outside the context, or other text there).
  """
  context, answer = x["context"], x["answers"]["text"][0]
  start = tf.cast(x["answers"]["answer_start"][0], tf.int32)
  size = tf.strings.length(answer, unit="UTF8_CHAR")
  context_size = tf.strings.length(context, unit="UTF8_CHAR")
  inside = (start >= 0) & (size > 0) & (start + size <= context_size)
  # substr clamps out-of-range offsets, so `found` is only compared when `inside`.
  found = tf.strings.substr(context, tf.maximum(start, 0), size, unit="UTF8_CHAR")
  x = _checked(dict(x), inside & tf.equal(found, answer),
               f"{task_name}: example ", x["id"], ": its first answer is not the text of its "
               "context at character ", start, " (the context has ", context_size,
               " characters); fix or drop the example. Answer: ", answer)
  encode = lambda s: tf.cast(vocabulary.encode_tf(s), tf.int32)  # noqa: E731
  prefix = encode(tf.strings.join(["question: ", x["question"], " context:"]))
  before = encode(tf.strings.substr(context, 0, start, unit="UTF8_CHAR"))
  answer_tokens = encode(answer)
  after = encode(tf.strings.substr(context, start + size, context_size, unit="UTF8_CHAR"))
  start_position = tf.size(prefix) + tf.size(before)
  eos = tf.constant([vocabulary.eos_id], tf.int32)
  return {"inputs": tf.concat([prefix, before, answer_tokens, after, eos], 0),
          "targets": answer_tokens,
          "start_position": start_position,
          "end_position": start_position + tf.size(answer_tokens) - 1,
          "context_start": tf.size(prefix),
          "answers": x["answers"]["text"],
          "id": x["id"],
          "inputs_pretokenized": tf.strings.join(
              ["question: ", x["question"], " context: ", context]),
          "targets_pretokenized": answer}


def squad_postprocess(output, example=None, is_target: bool = False):
  """Targets become every answer of the example (SQuAD scores the best match)."""
  if is_target and example is not None:
    return [as_text(a, errors="strict") for a in np.asarray(example["answers"]).tolist()]
  return output


def register_squad_task(vocabulary: seqio.Vocabulary) -> None:
  # No sanitize_text: SQuAD is valid UTF-8, and its nested "answers" is not a string.
  _register(SQUAD_TASK, "squad/v1.1:3.0.0", _SQUAD_SPLITS,
            [seqio.map_over_dataset(functools.partial(squad_example, vocabulary=vocabulary)),
             seqio.CacheDatasetPlaceholder()],
            {"inputs": seqio.Feature(vocabulary, add_eos=False),
             "targets": seqio.Feature(vocabulary, add_eos=False)},
            squad_postprocess, [metrics.squad])


def register_tasks(vocabulary=None) -> None:
  """Registers every encoder-head task (replacing old ones)."""
  vocabulary = vocabulary or vocab.default_vocabulary()
  register_glue_encoder_tasks(vocabulary)
  register_conll_task(vocabulary)
  register_squad_task(vocabulary)
