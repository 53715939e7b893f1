"""Evaluation metrics as seqio metric fns: SuperNI exact match / ROUGE-L, accuracy, F1,
SQuAD EM / F1 and CoNLL span F1.

The SuperNI metrics reproduce allenai/natural-instructions' official scorer
(`eval/automatic/evaluation.py`, also Tk-Instruct's `src/compute_metrics.py`):

* `normalize_answer`: lower-case, drop `string.punctuation`, collapse whitespace.
  The official scorer says "adapted from Squad v1.1 evaluation, *without removing
  the articles*", so articles are kept by default; `remove_articles=True` gives the
  SQuAD variant for callers who want it.
* exact match: normalised strings equal; ROUGE-L: `rouge_score.rouge_scorer.RougeScorer(
  ["rougeL"], use_stemmer=True)` F-measure on the raw strings (the scorer tokenises
  and lower-cases itself; SuperNI does not normalise before ROUGE either).
* each example scores the max over its references; the mean is reported x100 and
  rounded to 4 decimals, as SuperNI does. An empty-string reference is a reference
  (SuperNI's reference file keeps every output): an empty prediction matches it
  exactly, and its ROUGE-L is 0 (rouge-score's convention for an empty reference).
* groups: `{metric}_for_{task_name}` per task and `{metric}_for_{category}` per task
  category, the category being the task's first "Categories" entry lower-cased with
  whitespace runs joined by "_" (e.g. "Title Generation" -> "title_generation").

Only the "default" (English) track's scorer is implemented: SuperNI's xlingual track
tokenises with the GPT-2 tokenizer, which needs a download.

seqio calls metric fns as `fn(targets=..., predictions=...)` with the outputs of the
task's `postprocess_fn`. SuperNI tasks postprocess each target into a
`SuperNITarget`-shaped dict (`{"references": [...], "task": ..., "category": ...}`)
built from the example's own fields, which is how one metric fn can group by task.
"""

import collections
import re
import string
from typing import Any, Callable, Dict, List, Mapping, Sequence, Union

from rouge_score import rouge_scorer

from t5x_lite.data.text import as_text

# One scorer for the whole process: building it loads the Porter stemmer tables.
_ROUGE_L = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")

Target = Union[str, Sequence[str], Mapping[str, Any]]


def normalize_answer(text: str, remove_articles: bool = False) -> str:
  """SuperNI answer normalisation: lower-case, no punctuation, single spaces.

  Args:
    text: a prediction or a reference.
    remove_articles: also drop "a", "an", "the" (SQuAD v1.1). False by default
      because SuperNI's official scorer keeps articles.

  Returns:
    The normalised string.
  """
  text = text.lower()
  text = "".join(ch for ch in text if ch not in _PUNCTUATION)
  if remove_articles:
    text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def exact_match_score(prediction: str, reference: str,
                      remove_articles: bool = False) -> float:
  """1.0 when the normalised prediction equals the normalised reference.

  `remove_articles=True` is SQuAD's normalisation (T5's ReCoRD metric).
  """
  return float(normalize_answer(prediction, remove_articles) ==
               normalize_answer(reference, remove_articles))


def rouge_l_score(prediction: str, reference: str) -> float:
  """ROUGE-L F-measure with SuperNI's scorer (rougeL, Porter stemming)."""
  return _ROUGE_L.score(target=reference, prediction=prediction)["rougeL"].fmeasure


def token_f1_score(prediction: str, reference: str, remove_articles: bool = False) -> float:
  """SQuAD-style bag-of-tokens F1 on normalised text (Tk-Instruct's `f1_score`).

  `remove_articles=True` is SQuAD's own normalisation (T5's ReCoRD metric).
  """
  pred_tokens = normalize_answer(prediction, remove_articles).split()
  ref_tokens = normalize_answer(reference, remove_articles).split()
  common = collections.Counter(pred_tokens) & collections.Counter(ref_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(pred_tokens)
  recall = num_same / len(ref_tokens)
  return 2 * precision * recall / (precision + recall)


def metric_max_over_references(metric_fn, prediction: str,
                               references: Sequence[str]) -> float:
  """Best score of `prediction` against any reference (SuperNI's rule)."""
  if not references:
    raise ValueError("an example has no references; it cannot be scored")
  return max(metric_fn(prediction, ref) for ref in references)


def references_of(target: Target) -> List[str]:
  """The reference list of a target: a string, a list of strings or a dict.

  Dicts are what SuperNI's postprocess_fn produces for targets; plain strings are
  what most seqio tasks produce. Bytes are decoded as UTF-8 (seqio hands over
  numpy bytes when a postprocess_fn passes fields through untouched).
  """
  if isinstance(target, Mapping):
    target = target["references"]
  if isinstance(target, (str, bytes)):
    target = [target]
  return [as_text(t) for t in target]


def compute_metrics(predictions: Sequence[str],
                    references: Sequence[Sequence[str]]) -> Dict[str, float]:
  """SuperNI `compute_metrics`: exact_match and rougeL, x100, rounded to 4 places."""
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} "
                     "reference lists")
  if not predictions:
    return {"exact_match": 0.0, "rougeL": 0.0}
  em = sum(metric_max_over_references(exact_match_score, p, r)
           for p, r in zip(predictions, references))
  rl = sum(metric_max_over_references(rouge_l_score, p, r)
           for p, r in zip(predictions, references))
  n = len(references)
  return {"exact_match": round(100.0 * em / n, 4), "rougeL": round(100.0 * rl / n, 4)}


def compute_grouped_metrics(predictions: Sequence[str],
                            references: Sequence[Sequence[str]],
                            groups: Sequence[str]) -> Dict[str, float]:
  """SuperNI `compute_grouped_metrics`: `{metric}_for_{group}` for every group."""
  by_group = collections.defaultdict(lambda: ([], []))
  for pred, refs, group in zip(predictions, references, groups):
    by_group[group][0].append(pred)
    by_group[group][1].append(refs)
  results = {}
  for group, (preds, refs) in by_group.items():
    for metric, value in compute_metrics(preds, refs).items():
      results[f"{metric}_for_{group}"] = value
  return results


def category_key(category: str) -> str:
  """SuperNI's category group name: "Title Generation" -> "title_generation"."""
  return "_".join(category.lower().split())


def superni_metrics(targets: Sequence[Target],
                    predictions: Sequence[str]) -> Dict[str, float]:
  """seqio metric fn: SuperNI exact_match / rougeL overall, per category, per task.

  Args:
    targets: postprocessed targets; dicts with "references" (list of str) and
      optionally "task" and "category" enable the grouped metrics.
    predictions: postprocessed model outputs (str).

  Returns:
    {"exact_match", "rougeL"} plus "{metric}_for_{category}" and
    "{metric}_for_{task}" for every category and task present in `targets`.
  """
  refs = [references_of(t) for t in targets]
  preds = [as_text(p) for p in predictions]
  results = compute_metrics(preds, refs)
  dict_targets = [t for t in targets if isinstance(t, Mapping)]
  if len(dict_targets) == len(targets) and targets:
    if all(t.get("category") for t in dict_targets):
      results.update(compute_grouped_metrics(
          preds, refs, [category_key(t["category"]) for t in dict_targets]))
    if all(t.get("task") for t in dict_targets):
      results.update(compute_grouped_metrics(
          preds, refs, [t["task"] for t in dict_targets]))
  return results


def _averaged(name: str, targets: Sequence[Target], predictions: Sequence[str],
              score: Callable[[str, List[str]], float]) -> Dict[str, float]:
  """{name: 100 x the mean over examples of score(prediction, references)}; 0 if empty."""
  refs = [references_of(t) for t in targets]
  if not refs:
    return {name: 0.0}
  total = sum(score(p, r) for p, r in zip(predictions, refs))
  return {name: round(100.0 * total / len(refs), 4)}


def exact_match(targets: Sequence[Target], predictions: Sequence[str]) -> Dict[str, float]:
  """seqio metric fn: SuperNI-normalised exact match, max over references, x100."""
  return _averaged("exact_match", targets, predictions,
                   lambda p, rs: metric_max_over_references(exact_match_score, p, rs))


def strict_exact_match(targets: Sequence[Target],
                       predictions: Sequence[str]) -> Dict[str, float]:
  """seqio metric fn: case- and punctuation-sensitive exact match, x100.

  Only surrounding whitespace is ignored. The embedded instruction families need
  this: "HELLO" vs "hello" (uppercase task) and "1, 2" vs "1 2" must differ, which
  SuperNI's normalisation would hide.
  """
  return _averaged("strict_exact_match", targets, predictions,
                   lambda p, rs: max(float(p.strip() == r.strip()) for r in rs))


def accuracy(targets: Sequence[Target], predictions: Sequence[str]) -> Dict[str, float]:
  """seqio metric fn: classification accuracy x100 on SuperNI-normalised labels.

  A prediction is correct when it matches any reference, so multi-reference
  targets (equivalent label spellings) are accepted.
  """
  return _averaged("accuracy", targets, predictions,
                   lambda p, rs: float(normalize_answer(p) in {normalize_answer(r) for r in rs}))


def f1(targets: Sequence[Target], predictions: Sequence[str]) -> Dict[str, float]:
  """seqio metric fn: token F1 (max over references) averaged, x100."""
  return _averaged("f1", targets, predictions,
                   lambda p, rs: metric_max_over_references(token_f1_score, p, rs))


def squad(targets: Sequence[Target], predictions: Sequence[str]) -> Dict[str, float]:
  """seqio metric fn: SQuAD v1.1's EM and F1 (x100, max over each example's answers).

  SQuAD's normalisation (`remove_articles=True`): lower-case, no punctuation, no
  a/an/the, single spaces.
  """
  refs = [references_of(t) for t in targets]
  if not refs:
    return {"em": 0.0, "f1": 0.0}
  em = sum(metric_max_over_references(
      lambda p, r: exact_match_score(p, r, remove_articles=True), p, rs)
           for p, rs in zip(predictions, refs))
  f1_total = sum(metric_max_over_references(
      lambda p, r: token_f1_score(p, r, remove_articles=True), p, rs)
                 for p, rs in zip(predictions, refs))
  return {"em": 100.0 * em / len(refs), "f1": 100.0 * f1_total / len(refs)}


def iob_chunks(tags: Sequence[str]) -> set:
  """Entity chunks {(start, end, type)} of an IOB1/IOB2 tag sequence, as conlleval reads it.

  A chunk starts at a B- tag, or at an I- tag that does not continue a chunk of its type
  (conlleval's lenient reading), and ends before the next tag that does not continue it.
  """
  chunks, start, kind = set(), None, None
  for i, tag in enumerate(list(tags) + ["O"]):
    prefix, _, tag_kind = tag.partition("-")
    if start is not None and (prefix != "I" or tag_kind != kind):
      chunks.add((start, i, kind))
      start = None
    if prefix in ("B", "I") and start is None:
      start, kind = i, tag_kind
  return chunks


def span_f1(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """seqio metric fn: entity-level precision / recall / F1 (conlleval's micro average) and
  tag accuracy, x100, over space-separated word tag sequences.

  A prediction shorter than its target (words cut off by truncation) is padded with "O".
  """
  found = correct = gold = right_tags = words = 0
  for target, prediction in zip(targets, predictions):
    target_tags = target.split()
    predicted = (prediction.split() + ["O"] * len(target_tags))[:len(target_tags)]
    target_chunks, predicted_chunks = iob_chunks(target_tags), iob_chunks(predicted)
    gold += len(target_chunks)
    found += len(predicted_chunks)
    correct += len(target_chunks & predicted_chunks)
    right_tags += sum(t == p for t, p in zip(target_tags, predicted))
    words += len(target_tags)
  precision = correct / found if found else 0.0
  recall = correct / gold if gold else 0.0
  f1_value = 2 * precision * recall / (precision + recall) if correct else 0.0
  return {"precision": 100.0 * precision, "recall": 100.0 * recall, "f1": 100.0 * f1_value,
          "accuracy": 100.0 * right_tags / words if words else 0.0}
