"""SuperNI's classification tasks answered three ways: generator, rank classification, classifier.

Tk-Instruct's encoder-decoder (the generator) is compared with an encoder classifier on
the test tasks that superni.py's task type rule marks "classification" (by default a
category of superni.STUDY_CLASSIFICATION_CATEGORIES and an output space of at most 100
values):

  generator   decodes the answer: superni_classification_{enc}_test (tasks/superni.py).
  rank        the same encoder-decoder scores every candidate of the task's output space
              (summed log-likelihood, EncoderDecoderModel.score_batch) and picks the
              most likely: superni_rank_{enc}_test.
  classifier  a 2-class SequenceClassificationModel (first-token pooling, dropout 0.2)
              reads one (instance, candidate) pair per example and the candidate with the
              highest probability of "correct" is the answer: superni_pairs_{enc}_test.

All three report SuperNI's exact match (which for a chosen candidate equals accuracy),
overall, per category and per task: the generator and the classifier as `exact_match...`,
rank classification as `rank_exact_match...` (`rank_rougeL...`). Rank classification is
evaluated in the generator's run, and the run's `average/<metric>` is the mean over the
tasks reporting <metric>: with one name for both, `average/exact_match` would mix the
decoded and the ranked answers of the same instances; with two, `average/exact_match` is
the decoded answers' and `average/rank_exact_match` the ranked ones'.
`python -m t5x_lite.tools.superni_compare` prints the three side by side.

Pairs: for every instance and every candidate c of its task's output space (the distinct
lower-cased outputs of the task's instances, as first spelled), the input is
superni.classifier_prompt — the instruction in the chosen encoding, then
"Input: <input>.\\nOutput: <c>.\\nIs this example correct?" — and the target "correct" when
c equals a reference after SuperNI normalisation, else "incorrect". Training with
generation tasks (`superni_pairs_mixed_{enc}_train`) adds, for every instance of a
generation task, one "correct" pair with its training reference. A long prompt loses
instruction tokens, never the tail with the candidate; a tail longer than the inputs
length, and a classification task with an empty output space, are errors naming the task.

Tasks and mixtures ({enc} in superni.ENCODINGS):
  superni_pairs_{enc}_train, superni_pairs_mixed_{enc}_train     splits: train
  superni_pairs_{enc}_test, superni_rank_{enc}_test               splits: test, validation
  superni_generator_eval_{enc}   superni_classification_{enc}_test + superni_rank_{enc}_test
"""

import functools
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.data.text import as_text
from t5x_lite.tasks import labels
from t5x_lite.tasks import metrics
from t5x_lite.tasks import superni

PAIR_LABELS = ("incorrect", "correct")  # class 1 is "correct"
_META = ("references", "task_name", "category", "id", "candidate")


def _output_space(task: Mapping[str, Any]) -> List[str]:
  if not task["OutputSpace"]:
    raise ValueError(f"SuperNI task {task['Task']} is a classification task (superni_options."
                     "task_type_rule) with an empty output space: its instances have no "
                     "output to use as a candidate label. Fix or remove the task.")
  return task["OutputSpace"]


def _is_reference(candidate: str, references: Sequence[str]) -> bool:
  normalized = metrics.normalize_answer(candidate)
  return any(normalized == metrics.normalize_answer(r) for r in references)


def _meta(task, inst, candidate) -> Dict[str, str]:
  return {"references": json.dumps(inst["output"], ensure_ascii=False),
          "task_name": task["Task"], "category": task["Category"], "id": inst["id"],
          "candidate": candidate}


def pair_examples(tasks: Sequence[Mapping[str, Any]], encoding: superni.Encoding,
                  with_generation_tasks: bool = False) -> List[Dict[str, str]]:
  """The classifier's examples: every (instance, candidate) of the classification tasks.

  Returns:
    Dicts of str: "head" and "tail" (the prompt is head + tail, see
    superni.classifier_prompt), "inputs_pretokenized" (the prompt), "targets"
    ("correct" / "incorrect") and the metadata references (JSON), task_name, category,
    id (the instance's), candidate.
  """
  examples = []
  for task in tasks:
    if task["TaskType"] == "classification":
      space = _output_space(task)
      pairs = [(inst, c) for inst in task["Instances"] for c in space]
    elif with_generation_tasks:
      pairs = [(inst, inst["target"]) for inst in task["Instances"]]
    else:
      continue
    for inst, candidate in pairs:
      head, tail = superni.classifier_prompt(task, inst["input"], candidate, encoding)
      examples.append({"head": head, "tail": tail, "inputs_pretokenized": head + tail,
                       "targets": PAIR_LABELS[_is_reference(candidate, inst["output"])],
                       **_meta(task, inst, candidate)})
  return examples


def rank_examples(tasks: Sequence[Mapping[str, Any]],
                  encoding: superni.Encoding) -> List[Dict[str, str]]:
  """Rank classification: the generator's prompt with each candidate as the target."""
  examples = []
  for task in tasks:
    if task["TaskType"] == "classification":
      space = _output_space(task)
      examples += [{"inputs": superni.encode_prompt(task, inst["input"], encoding),
                    "targets": c, **_meta(task, inst, c)}
                   for inst in task["Instances"] for c in space]
  return examples


def _source(examples_fn, fields, subset, options):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed  # The instances are fixed (superni.py caps and samples).
    return superni.string_columns_dataset(
        examples_fn(superni.load_split_tasks(options, subset)), fields)
  splits = ("train",) if subset == "train" else ("test", "validation")
  return seqio.FunctionDataSource(dataset_fn, splits=splits)


def _tokenize_pair(vocabulary: seqio.Vocabulary):
  def tokenize(x):
    return dict(x, head=vocabulary.encode_tf(x["head"]), tail=vocabulary.encode_tf(x["tail"]))
  return seqio.map_over_dataset(tokenize)


def fit_pair(dataset: tf.data.Dataset, sequence_length=None, eos_id: int = 1,
             task_name: str = "superni_pairs") -> tf.data.Dataset:
  """inputs = head (cut to fit) + tail + EOS within sequence_length["inputs"].

  Raises (when read): InvalidArgumentError naming the task, the SuperNI task, the instance
  and the candidate when the tail alone does not fit.
  """
  def fit(x):
    head, tail = tf.cast(x.pop("head"), tf.int32), tf.cast(x.pop("tail"), tf.int32)
    eos = tf.constant([eos_id], tf.int32)
    if sequence_length is None:
      return dict(x, inputs=tf.concat([head, tail, eos], 0))
    length = sequence_length["inputs"]
    need = tf.size(tail) + 1
    # TensorFlow prints the message C-escaped: no quotes, the candidate's text last.
    message = tf.strings.join([
        f"{task_name}: SuperNI task ", x["task_name"], ", instance ", x["id"], ": the "
        "candidate needs ", tf.strings.as_string(need), " tokens with the question after it, "
        f"more than the inputs length {length}: raise the inputs length of "
        "TASK_FEATURE_LENGTHS (gin). Candidate: ", x["candidate"]])
    with tf.control_dependencies([tf.debugging.Assert(need <= length, [message])]):
      head = head[:tf.maximum(length - need, 0)]
      return dict(x, inputs=tf.concat([head, tail, eos], 0))
  return dataset.map(fit, num_parallel_calls=tf.data.AUTOTUNE)


def _as_str(value: Any) -> str:
  return as_text(value.item() if isinstance(value, np.ndarray) else value, errors="strict")


def comparison_postprocess(output: Any, example: Optional[Mapping[str, Any]] = None,
                           is_target: bool = False) -> Any:
  """Targets become {"references", "task", "category", "id", "candidate"}; outputs pass."""
  if not is_target or example is None:
    return output
  return {"references": json.loads(_as_str(example["references"])),
          "task": _as_str(example["task_name"]), "category": _as_str(example["category"]),
          "id": _as_str(example["id"]), "candidate": _as_str(example["candidate"])}


def _instance_choices(targets, keys) -> Dict[tuple, Mapping]:
  """Per (task, instance id): the target whose key is largest (the first on ties)."""
  best = {}
  for target, key in zip(targets, keys):
    instance = (target["task"], target["id"])
    if instance not in best or key > best[instance][0]:
      best[instance] = (key, target)
  return {instance: target for instance, (_, target) in best.items()}


def _scored_choices(choices: Mapping[tuple, Mapping]) -> Dict[str, float]:
  chosen = list(choices.values())
  return metrics.superni_metrics(
      [{k: t[k] for k in ("references", "task", "category")} for t in chosen],
      [t["candidate"] for t in chosen])


def superni_pair_metrics(targets: Sequence[Mapping], predictions: Sequence[str],
                         aux_values: Mapping[str, Sequence[float]]) -> Dict[str, float]:
  """seqio metric fn: per instance, the candidate most likely "correct", scored by SuperNI.

  `aux_values["scores"]` is log p(predicted class): P(correct) grows with it when the
  prediction is "correct" and shrinks with it when it is "incorrect", which orders the
  candidates without computing 1 - p.
  """
  keys = [(p == "correct", s if p == "correct" else -s)
          for p, s in zip(predictions, aux_values["scores"])]
  return _scored_choices(_instance_choices(targets, keys))


RANK_METRIC_PREFIX = "rank_"


def superni_rank_metrics(targets: Sequence[Mapping], scores: Sequence[float]) -> Dict[str, float]:
  """seqio metric fn: per instance, the candidate with the highest log-likelihood.

  Returns:
    SuperNI's metrics of the chosen candidates, each name prefixed with "rank_"
    (rank_exact_match, rank_exact_match_for_<category or task>, rank_rougeL, ...), so
    that the generator run's averages keep decoding and ranking apart (module docstring).
  """
  return {RANK_METRIC_PREFIX + k: v
          for k, v in _scored_choices(_instance_choices(targets, list(scores))).items()}


def _add_task(name, source, preprocessors, features, metric_fn):
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                         output_features=features, postprocess_fn=comparison_postprocess,
                         metric_fns=[metric_fn])


def register_superni_classifier_tasks(vocabulary: seqio.Vocabulary,
                                      options: Optional[superni.SuperNIOptions] = None,
                                      prefix: str = "superni",
                                      encodings=None) -> List[str]:
  """Registers the pair, rank and generator-eval tasks (idempotent). Returns their names."""
  options = options or superni.SuperNIOptions()
  pair_features = {"inputs": seqio.Feature(vocabulary, add_eos=False),
                   "targets": seqio.Feature(labels.LabelVocabulary(PAIR_LABELS), add_eos=False)}
  text_features = {k: seqio.Feature(vocabulary, add_eos=True) for k in ("inputs", "targets")}
  pair_fields = ("head", "tail", "inputs_pretokenized", "targets") + _META
  names = []
  for enc_name, encoding in (encodings or superni.ENCODINGS).items():
    for name, subset, mixed in ((f"{prefix}_pairs_{enc_name}_train", "train", False),
                                (f"{prefix}_pairs_mixed_{enc_name}_train", "train", True),
                                (f"{prefix}_pairs_{enc_name}_test", "test", False)):
      examples_fn = functools.partial(pair_examples, encoding=encoding,
                                      with_generation_tasks=mixed)
      _add_task(name, _source(examples_fn, pair_fields, subset, options),
                [seqio.preprocessors.tokenize, _tokenize_pair(vocabulary),
                 seqio.CacheDatasetPlaceholder(),
                 functools.partial(fit_pair, eos_id=vocabulary.eos_id, task_name=name)],
                pair_features, superni_pair_metrics)
      names.append(name)
    rank = f"{prefix}_rank_{enc_name}_test"
    _add_task(rank, _source(functools.partial(rank_examples, encoding=encoding),
                            ("inputs", "targets") + _META, "test", options),
              [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
               seqio.preprocessors.append_eos_after_trim], text_features, superni_rank_metrics)
    mixture = f"{prefix}_generator_eval_{enc_name}"
    seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(mixture, [(f"{prefix}_classification_{enc_name}_test", 1.0),
                                        (rank, 1.0)])
    names += [rank, mixture]
  return names


def superni_comparison_task(model: str, split: str, encoding: str = "def_pos2",
                            mix_generation_tasks: bool = False, prefix: str = "superni") -> str:
  """The task or mixture a side of the comparison trains or evaluates on (for gin recipes).

  Args:
    model: "generator" (the encoder-decoder) or "classifier" (the encoder pair classifier).
    split: "train" or "test".
    encoding: a name in superni.ENCODINGS.
    mix_generation_tasks: train on generation tasks too (the generator on all tasks, the
      classifier with their positive pairs); evaluation is on classification tasks only.
    prefix: the registered tasks' prefix.

  Returns:
    generator: {prefix}_classification_{enc}_train / {prefix}_{enc}_train (mixed), and for
    test the mixture {prefix}_generator_eval_{enc} (decoding and rank classification);
    classifier: {prefix}_pairs[_mixed]_{enc}_train, {prefix}_pairs_{enc}_test.
  """
  if model not in ("generator", "classifier") or split not in ("train", "test"):
    raise ValueError(f"superni_comparison_task(model={model!r}, split={split!r}): model is "
                     "'generator' or 'classifier', split 'train' or 'test'.")
  if encoding not in superni.ENCODINGS:
    raise ValueError(f"superni_comparison_task.encoding={encoding!r}; use one of "
                     f"{sorted(superni.ENCODINGS)}.")
  if model == "generator":
    if split == "test":
      return f"{prefix}_generator_eval_{encoding}"
    return f"{prefix}_{'' if mix_generation_tasks else 'classification_'}{encoding}_train"
  if split == "test":
    return f"{prefix}_pairs_{encoding}_test"
  return f"{prefix}_pairs_{'mixed_' if mix_generation_tasks else ''}{encoding}_train"
