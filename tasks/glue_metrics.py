"""GLUE / SuperGLUE postprocessors and metrics, as T5 defines them (t5.evaluation.metrics).

seqio calls a task's `postprocess_fn(text, example=..., is_target=...)` on every target
and prediction, then each metric fn as `fn(targets=..., predictions=...)`. Values are
percentages. The scores come from scikit-learn and scipy; only SQuAD's token F1 (ReCoRD)
and the grouping rules are written here.

  accuracy                  sklearn accuracy_score
  f1_with_invalid           MRPC/QQP/MultiRC: sklearn f1_score of class 1, a prediction
                            that is not a label (id -1) set to the opposite of its target
                            (counts as wrong, as T5's `f1_score_with_invalid`)
  matthews_corrcoef         CoLA, AX-b: sklearn matthews_corrcoef on the class ids
  mean_3class_f1_and_accuracy  CB: sklearn macro F1 over labels 0..2, accuracy, their mean
  pearson_corrcoef, spearman_corrcoef   STS-B: scipy.stats on the (rounded) scores
  multirc_f1a, multirc_exact_match      MultiRC: F1 over all answers; a question group
                            counts as exact only when every answer in it is right
  record_em_f1              ReCoRD: one example per (passage, query), SQuAD-normalised
                            exact match and token F1, max over the gold answers
  axg_accuracy_and_gender_parity   AX-g: accuracy, and the percentage of minimal pairs
                            (examples 2k and 2k+1, which differ only in the pronoun's
                            gender) given the same prediction
"""

import collections
from typing import Any, Dict, Mapping, Sequence

import numpy as np
import scipy.stats
from sklearn import metrics as sk

from t5x_lite.data.text import as_text
from t5x_lite.tasks import metrics as text_metrics

FALSE_TRUE = ("False", "True")
# An MNLI-trained model's labels on a two-class (RTE-format) diagnostic: neutral and
# contradiction are both "not_entailment", as SuperGLUE collapses them.
_NOT_ENTAILMENT_ALIASES = ("neutral", "contradiction")


# ------------------------------------------------------------------ postprocessors ---


def string_label_to_class_id(string_label, label_classes: Sequence[str], example=None,
                             is_target: bool = False) -> int:
  """Label string -> its index in `label_classes`; -1 when it is not a label."""
  del example, is_target
  try:
    return list(label_classes).index(as_text(string_label).strip())
  except ValueError:
    return -1


def entailment_class_id(string_label, example=None, is_target: bool = False) -> int:
  """RTE-format diagnostics: 0 entailment, 1 not_entailment (also neutral/contradiction)."""
  label = as_text(string_label).strip()
  if label in _NOT_ENTAILMENT_ALIASES:
    label = "not_entailment"
  return string_label_to_class_id(label, ("entailment", "not_entailment"), example, is_target)


def string_to_float(string, example=None, is_target: bool = False,
                    default: float = -1.0) -> float:
  """STS-B: the score a string spells; `default` (T5: -1) when it is not a number."""
  del example, is_target
  try:
    return float(as_text(string))
  except ValueError:
    return default


def multirc(string_label, example=None, is_target: bool = False) -> Dict[str, Any]:
  """{"value": class id}, plus the answer's question group on targets."""
  out = {"value": string_label_to_class_id(string_label, FALSE_TRUE)}
  if is_target:
    out["group"] = (int(example["idx/paragraph"]), int(example["idx/question"]))
  return out


def record(answer, example=None, is_target: bool = False) -> Dict[str, Any]:
  """Targets: {"value": all gold answers, "group": (passage, query)}; else the answer."""
  if is_target:
    return {"value": [as_text(a) for a in example["answers"]],
            "group": (int(example["idx/passage"]), int(example["idx/query"]))}
  return {"value": as_text(answer)}


def axg(string_label, example=None, is_target: bool = False) -> Dict[str, Any]:
  """{"value": class id}, plus the minimal pair (idx // 2) on targets."""
  out = {"value": entailment_class_id(string_label)}
  if is_target:
    out["pair"] = int(example["idx"]) // 2
  return out


_DETERMINERS = frozenset((
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our", "some",
    "that", "the", "their", "these", "this", "those", "which", "whose", "your"))


def _without_determiners(text: str) -> str:
  return " ".join(w for w in as_text(text).strip().lower().split(" ") if w not in _DETERMINERS)


def wsc_simple(prediction, example=None, is_target: bool = False) -> int:
  """WSC/DPR "simple" format: targets -> the label; predictions -> 1 if they name the
  example's referent, 0 if not, -1 if empty (T5's rule).

  Capitalisation and determiners are ignored; one of prediction and referent must be
  a subset of the other's words, and a possessive on only one side does not match.
  """
  if is_target:
    return int(example["label"])
  prediction = _without_determiners(prediction)
  if not prediction:
    return -1
  referent = _without_determiners(example["targets_pretokenized"])
  if ("'" in prediction) != ("'" in referent):
    return 0
  words, referent_words = set(prediction.split(" ")), set(referent.split(" "))
  return int(words <= referent_words or referent_words <= words)


# ------------------------------------------------------------------------- metrics ---


def accuracy(targets: Sequence, predictions: Sequence) -> Dict[str, float]:
  """{"accuracy": percent of predictions equal to targets} (0 for no examples)."""
  if not len(targets):  # pylint: disable=g-explicit-length-test
    return {"accuracy": 0.0}
  return {"accuracy": 100.0 * float(sk.accuracy_score(targets, predictions))}


def f1_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
  """{"f1": percent F1 of class 1}; a prediction other than 0/1 counts as wrong."""
  t, p = np.asarray(targets), np.array(predictions)
  invalid = (p != 0) & (p != 1)
  p[invalid] = 1 - t[invalid]
  return {"f1": 100.0 * float(sk.f1_score(t, p, zero_division=0.0))}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
  """{"matthews_corrcoef": percent MCC of the class ids (0 when undefined)}."""
  return {"matthews_corrcoef": 100.0 * float(sk.matthews_corrcoef(targets, predictions))}


def mean_3class_f1_and_accuracy(targets: Sequence[int],
                                predictions: Sequence[int]) -> Dict[str, float]:
  """CB: macro F1 over classes 0..2, accuracy, and T5's reported score, their mean."""
  macro_f1 = 100.0 * float(sk.f1_score(targets, predictions, labels=[0, 1, 2],
                                       average="macro", zero_division=0.0))
  acc = accuracy(targets, predictions)["accuracy"]
  return {"mean_3class_f1": macro_f1, "accuracy": acc,
          "mean_3class_f1_and_accuracy": (macro_f1 + acc) / 2}


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> Dict[str, float]:
  return {"pearson_corrcoef": 100.0 * float(scipy.stats.pearsonr(targets, predictions)[0])}


def spearman_corrcoef(targets: Sequence[float],
                      predictions: Sequence[float]) -> Dict[str, float]:
  return {"spearman_corrcoef": 100.0 * float(scipy.stats.spearmanr(targets, predictions)[0])}


def multirc_f1a(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> Dict[str, float]:
  """MultiRC F1a: F1 of "True" over every answer of every question."""
  return f1_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])


def multirc_exact_match(targets: Sequence[Mapping],
                        predictions: Sequence[Mapping]) -> Dict[str, float]:
  """MultiRC EM: percent of questions whose answers are all classified right."""
  groups = collections.defaultdict(list)
  for t, p in zip(targets, predictions):
    groups[t["group"]].append(t["value"] == p["value"])
  return {"exact_match": 100.0 * float(np.mean([all(g) for g in groups.values()]))}


def record_em_f1(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> Dict[str, float]:
  """ReCoRD: {"em", "f1"} over one example per (passage, query), max over gold answers.

  The preprocessor makes one training example per answer; only the first copy of each
  query is scored.
  """
  seen, em, f1 = set(), [], []
  for t, p in zip(targets, predictions):
    if t["group"] in seen:
      continue
    seen.add(t["group"])
    answers, prediction = t["value"], p["value"]
    em.append(max((text_metrics.exact_match_score(prediction, a, remove_articles=True)
                   for a in answers), default=0.0))
    f1.append(max((text_metrics.token_f1_score(prediction, a, remove_articles=True)
                   for a in answers), default=0.0))
  return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def axg_accuracy_and_gender_parity(targets: Sequence[Mapping],
                                   predictions: Sequence[Mapping]) -> Dict[str, float]:
  """AX-g: accuracy, and gender parity: percent of complete pairs predicted alike."""
  pairs = collections.defaultdict(list)
  for t, p in zip(targets, predictions):
    pairs[t["pair"]].append(p["value"])
  same = [len(set(v)) == 1 for v in pairs.values() if len(v) == 2]
  return {"accuracy": accuracy([t["value"] for t in targets],
                               [p["value"] for p in predictions])["accuracy"],
          "gender_parity": 100.0 * float(np.mean(same)) if same else 0.0}
