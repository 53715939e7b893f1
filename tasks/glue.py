"""GLUE and SuperGLUE via TFDS in T5's text-to-text form, with their metrics.

Formatting is T5's `glue` preprocessor: the benchmark name, then "key: value" for each
text feature in sorted key order, and the label's name as the target, e.g.
  {"sentence": "it 's a charming journey .", "label": 1}
  -> inputs "sst2 sentence: it 's a charming journey ."  targets "positive"
  {"hypothesis": h, "premise": p, "label": 2}
  -> inputs "mnli hypothesis: h premise: p"               targets "contradiction"
Unlabelled examples (label -1, the test splits) get the target "<unk>".

Tasks (default vocabulary; features "inputs"/"targets" with EOS):
  glue_{cola,sst2,mrpc,qqp,mnli,qnli,rte}_v2   TFDS glue/<name>:2.0.0
  super_glue_{boolq,cb,copa,rte}_v102          TFDS super_glue/<name>:1.0.2
Mixture: glue_v002_proportional (the GLUE tasks, examples-proportional rates).

Metrics (computed on class ids from `string_label_to_class_id`; an unparsable prediction
is id -1 and counts as wrong): accuracy everywhere; CoLA Matthews correlation; MRPC/QQP
binary F1 of the positive class; CB macro-F1 over 3 classes and T5's reported score
`mean_3class_f1_and_accuracy` (mean of macro-F1 and accuracy).
"""

import functools
from typing import Callable, Dict, List, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.tasks import pretraining
from t5x_lite.tasks import vocab

GLUE_VERSION = "2.0.0"
SUPER_GLUE_VERSION = "1.0.2"


# --------------------------------------------------------------------------- metrics ---


def string_label_to_class_id(string_label: str, label_classes: Sequence[str],
                             example=None, is_target: bool = False) -> int:
  """seqio postprocess_fn: label string -> index in `label_classes`, -1 if not a label."""
  del example, is_target
  if isinstance(string_label, bytes):
    string_label = string_label.decode("utf-8", errors="replace")
  try:
    return list(label_classes).index(string_label.strip())
  except ValueError:
    return -1


def accuracy(targets: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
  """{"accuracy": percent of predictions equal to targets}."""
  t, p = np.asarray(targets), np.asarray(predictions)
  return {"accuracy": 100.0 * float(np.mean(t == p)) if t.size else 0.0}


def _f1(t: np.ndarray, p: np.ndarray, cls: int) -> float:
  tp = np.sum((p == cls) & (t == cls))
  fp = np.sum((p == cls) & (t != cls))
  fn = np.sum((p != cls) & (t == cls))
  return 0.0 if tp == 0 else float(2 * tp / (2 * tp + fp + fn))


def f1_binary(targets: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
  """{"f1": percent F1 of class 1 (the positive class: "equivalent", "duplicate")}."""
  return {"f1": 100.0 * _f1(np.asarray(targets), np.asarray(predictions), 1)}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
  """{"matthews_corrcoef": percent MCC, class 1 positive; 0 when undefined (as sklearn)}."""
  t, p = np.asarray(targets) == 1, np.asarray(predictions) == 1
  tp, tn = float(np.sum(t & p)), float(np.sum(~t & ~p))
  fp, fn = float(np.sum(~t & p)), float(np.sum(t & ~p))
  denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return {"matthews_corrcoef": 0.0 if denom == 0 else 100.0 * (tp * tn - fp * fn) / denom}


def mean_3class_f1_and_accuracy(targets: Sequence[int],
                                predictions: Sequence[int]) -> Dict[str, float]:
  """CB: {"mean_3class_f1": macro F1 over classes 0..2, "accuracy", and their mean}.

  As in T5, the reported CB score is the mean of macro-F1 and accuracy (percent).
  """
  t, p = np.asarray(targets), np.asarray(predictions)
  macro_f1 = 100.0 * float(np.mean([_f1(t, p, c) for c in range(3)]))
  acc = accuracy(t, p)["accuracy"]
  return {"mean_3class_f1": macro_f1, "accuracy": acc,
          "mean_3class_f1_and_accuracy": (macro_f1 + acc) / 2}


# ---------------------------------------------------------------------- formatting ---


def glue_text(x: Mapping[str, tf.Tensor], benchmark_name: str,
              label_names: Sequence[str], feature_names=None) -> Dict[str, tf.Tensor]:
  """T5's GLUE/SuperGLUE text-to-text format for one TFDS example.

  Args:
    x: a TFDS example: text features, "label" int64 scalar (-1 when unlabelled), "idx".
    benchmark_name: prefix of the inputs ("sst2", "mnli", "boolq", ...).
    label_names: class names indexed by label.
    feature_names: text features in order; default all but label/idx, sorted.

  Returns:
    {"inputs": string, "targets": string, "idx": int32}.
  """
  keys = feature_names or sorted(set(x.keys()) - {"label", "idx"})
  parts = [tf.constant(benchmark_name)]
  for key in keys:
    parts += [tf.constant(f"{key}:"), x[key]]
  label = tf.cast(x["label"], tf.int32)
  target = tf.cond(tf.equal(label, -1), lambda: tf.constant("<unk>"),
                   lambda: tf.gather(tf.constant(list(label_names)), label))
  return {"inputs": tf.strings.join(parts, separator=" "), "targets": target,
          "idx": tf.cast(x["idx"], tf.int32)}


# --------------------------------------------------------------------- registration ---

# name -> (tfds config, label names, metric fns, T5 benchmark prefix)
GLUE_TASKS = {
    "cola": (["unacceptable", "acceptable"], [matthews_corrcoef, accuracy]),
    "sst2": (["negative", "positive"], [accuracy]),
    "mrpc": (["not_equivalent", "equivalent"], [f1_binary, accuracy]),
    "qqp": (["not_duplicate", "duplicate"], [f1_binary, accuracy]),
    "mnli": (["entailment", "neutral", "contradiction"], [accuracy]),
    "qnli": (["entailment", "not_entailment"], [accuracy]),
    "rte": (["entailment", "not_entailment"], [accuracy]),
}
SUPER_GLUE_TASKS = {
    "boolq": (["False", "True"], [accuracy]),
    "cb": (["entailment", "contradiction", "neutral"], [mean_3class_f1_and_accuracy]),
    "copa": (["choice1", "choice2"], [accuracy]),
    "rte": (["entailment", "not_entailment"], [accuracy]),
}
# Explicit splits: seqio would otherwise read them from the prepared dataset's metadata.
_SPLITS = ("train", "validation", "test")
# TFDS split names differ for MNLI; seqio split names are the keys.
_MNLI_SPLITS = {"train": "train", "validation": "validation_matched",
                "validation_mismatched": "validation_mismatched",
                "test": "test_matched", "test_mismatched": "test_mismatched"}


def glue_task_name(name: str) -> str:
  return f"glue_{name}_v2"


def super_glue_task_name(name: str) -> str:
  return f"super_glue_{name}_v102"


def _register(task_name: str, tfds_name: str, benchmark: str, label_names: List[str],
              metric_fns: List[Callable], vocabulary: seqio.Vocabulary, splits=None):
  if task_name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(task_name)
  seqio.TaskRegistry.add(
      task_name,
      source=seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits),
      preprocessors=[
          seqio.map_over_dataset(functools.partial(
              glue_text, benchmark_name=benchmark, label_names=label_names)),
          pretraining.sanitize_text,
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          # EOS without trimming: t5x_lite.data counts and truncates over-long inputs.
          seqio.preprocessors.append_eos,
      ],
      output_features={"inputs": seqio.Feature(vocabulary, add_eos=True),
                       "targets": seqio.Feature(vocabulary, add_eos=True)},
      postprocess_fn=functools.partial(string_label_to_class_id, label_classes=label_names),
      metric_fns=metric_fns,
  )


def register_tasks(vocabulary=None) -> None:
  """Registers the GLUE/SuperGLUE tasks and glue_v002_proportional (replacing old ones)."""
  vocabulary = vocabulary or vocab.default_vocabulary()
  for name, (labels, metrics) in GLUE_TASKS.items():
    _register(glue_task_name(name), f"glue/{name}:{GLUE_VERSION}", name, labels, metrics,
              vocabulary, splits=_MNLI_SPLITS if name == "mnli" else _SPLITS)
  for name, (labels, metrics) in SUPER_GLUE_TASKS.items():
    _register(super_glue_task_name(name), f"super_glue/{name}:{SUPER_GLUE_VERSION}", name,
              labels, metrics, vocabulary, splits=_SPLITS)
  if "glue_v002_proportional" in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove("glue_v002_proportional")
  # Rates are read from TFDS metadata when the mixture is first sampled, not here.
  seqio.MixtureRegistry.add(
      "glue_v002_proportional",
      [glue_task_name(name) for name in GLUE_TASKS],
      default_rate=seqio.utils.mixing_rate_num_examples)
