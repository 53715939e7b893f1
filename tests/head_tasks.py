"""Small learnable tasks for the encoder heads' training tests, in the built-in tasks' formats:
a yes/no classification, name tagging (CoNLL's words-and-tags form) and number extraction
(SQuAD's form). Generated from seeded RNGs; no downloads."""

import functools

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.tasks import encoder_tasks, glue_metrics, labels, metrics, vocab

YES_NO = "heads_test_yes_no"
NAMES = "heads_test_names"
NUMBERS = "heads_test_numbers"
SPLITS = {"train": (0, 512), "validation": (5000, 32)}
PEOPLE = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi")
WORDS = ("the", "a", "house", "runs", "green", "quickly", "table", "river", "sings", "under",
         "blue", "over", "stone", "light")


def _yes_no(split, shuffle_files=False, seed=None):
  del shuffle_files, seed
  start, n = SPLITS[split]
  answers = ["yes" if x else "no" for x in np.random.RandomState(start).rand(n) < 0.5]
  return tf.data.Dataset.from_tensor_slices({
      "inputs": [f"say {a} {start + i}" for i, a in enumerate(answers)], "targets": answers})


def _names(split, shuffle_files=False, seed=None):
  """Sentences of 4-8 words; a person's name is B-PER (tag 1), any other word O (tag 0)."""
  del shuffle_files, seed
  start, n = SPLITS[split]
  rng = np.random.RandomState(start + 1)
  rows = []
  for _ in range(n):
    words = [str(w) for w in rng.choice(PEOPLE + WORDS, rng.randint(4, 9))]
    rows.append({"tokens": words, "ner": [int(w in PEOPLE) for w in words]})
  # Ragged rows in from_tensor_slices: a generator-backed dataset cannot be checkpointed.
  return tf.data.Dataset.from_tensor_slices({
      "tokens": tf.ragged.constant([r["tokens"] for r in rows]),
      "ner": tf.ragged.constant([r["ner"] for r in rows], tf.int64)}).map(
          lambda x: {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v
                     for k, v in x.items()})


def _numbers(split, shuffle_files=False, seed=None):
  """Contexts of words with one two-digit number: the answer to "which number?"."""
  del shuffle_files, seed
  start, n = SPLITS[split]
  rng = np.random.RandomState(start + 2)
  rows = []
  for i in range(n):
    words = [str(w) for w in rng.choice(WORDS, rng.randint(5, 10))]
    number = str(rng.randint(10, 100))
    at = rng.randint(len(words) + 1)
    before = " ".join(words[:at]) + (" " if at else "")
    context = before + number + (" " if at < len(words) else "") + " ".join(words[at:])
    rows.append({"id": f"{split}-{i}", "question": "which number?", "context": context,
                 "answers": {"text": [number], "answer_start": [len(before)]}})
  columns = {k: [r[k] for r in rows] for k in ("id", "question", "context")}
  columns["answers"] = {"text": tf.ragged.constant([r["answers"]["text"] for r in rows]),
                        "answer_start": tf.ragged.constant(
                            [r["answers"]["answer_start"] for r in rows], tf.int32)}
  dense = lambda v: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v  # noqa: E731
  return tf.data.Dataset.from_tensor_slices(columns).map(
      lambda x: tf.nest.map_structure(dense, x))


def register():
  vocabulary = vocab.default_vocabulary()
  source = lambda fn: seqio.FunctionDataSource(fn, splits=tuple(SPLITS))  # noqa: E731
  for name in (YES_NO, NAMES, NUMBERS):
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      YES_NO, source=source(_yes_no),
      output_features={"inputs": seqio.Feature(vocabulary, add_eos=True),
                       "targets": seqio.Feature(labels.LabelVocabulary(("no", "yes")),
                                                add_eos=False)},
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      postprocess_fn=functools.partial(glue_metrics.string_label_to_class_id,
                                       label_classes=("no", "yes")),
      metric_fns=[glue_metrics.accuracy])
  seqio.TaskRegistry.add(
      NAMES, source=source(_names),
      output_features={"inputs": seqio.Feature(vocabulary, add_eos=False),
                       "targets": seqio.Feature(
                           labels.LabelVocabulary(encoder_tasks.CONLL_NER_TAGS), add_eos=False)},
      preprocessors=[seqio.map_over_dataset(functools.partial(
          encoder_tasks.conll_example, vocabulary=vocabulary, task_name=NAMES))],
      metric_fns=[metrics.span_f1])
  seqio.TaskRegistry.add(
      NUMBERS, source=source(_numbers),
      output_features={k: seqio.Feature(vocabulary, add_eos=False) for k in ("inputs", "targets")},
      preprocessors=[seqio.map_over_dataset(functools.partial(
          encoder_tasks.squad_example, vocabulary=vocabulary, task_name=NUMBERS))],
      postprocess_fn=encoder_tasks.squad_postprocess, metric_fns=[metrics.squad])


register()
