"""GLUE and SuperGLUE via TFDS in T5's text-to-text form (t5.data.glue_utils, tasks.py).

Formatting is T5's: the benchmark name, then "key: value" for each text feature (sorted
keys unless stated), and the label's name as the target; unlabelled examples (label -1,
the test splits) get the target "<unk>":
  {"sentence": "it 's a charming journey .", "label": 1}
  -> "sst2 sentence: it 's a charming journey ."                    "positive"
  STS-B    "stsb sentence1: s1 sentence2: s2"       score rounded to 0.2, as "%.1f": "3.8"
  MultiRC  "multirc question: q answer: a paragraph: p", <br> -> " ", <b>/</b> removed
  WiC      "wic sentence1: s1 sentence2: s2 word: w"                  "False"/"True"
  ReCoRD   "record query: q entities: e1, e2 passage: p" (the passage's "\\n@highlight\\n"
           joined into sentences), one example per gold answer, that answer as target
  WSC      T5's "simple" format: "wsc: text" with the pronoun marked "*he*" -> the
           candidate referent (span1_text); training keeps the correct referents only
  DPR      the same "simple" format on TFDS definite_pronoun_resolution
  AX-b     cast as RTE, "rte hypothesis: s2 premise: s1" (T5); the `_mnli` variant cast
           as MNLI, "mnli hypothesis: s2 premise: s1", for an MNLI-trained model whose
           neutral/contradiction answers count as not_entailment
  AX-g     cast as RTE, "rte hypothesis: h premise: p"

Tasks (default vocabulary; features "inputs"/"targets" with EOS):
  glue_{cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte,wnli}_v2        TFDS glue/<name>:2.0.0
  super_glue_{boolq,cb,copa,rte,multirc,record,wic}_v102     TFDS super_glue/<name>:1.0.2
  super_glue_wsc_v102_simple_{train,eval}                    TFDS super_glue/wsc.fixed
  super_glue_axb_v102, super_glue_axb_v102_mnli, super_glue_axg_v102   test split only
  dpr_v001_simple                                            definite_pronoun_resolution:1.1.0
Mixtures, at T5's rates (training-set sizes; WNLI, the diagnostics and WSC eval at 0):
  glue_v002_proportional, super_glue_v102_proportional.
Metrics: tasks/glue_metrics.py.
"""

import functools
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from t5x_lite.tasks import glue_metrics as gm
from t5x_lite.tasks import pretraining
from t5x_lite.tasks import vocab

GLUE_VERSION = "2.0.0"
SUPER_GLUE_VERSION = "1.0.2"
DPR_VERSION = "1.1.0"


# ---------------------------------------------------------------------- formatting ---


def _join(benchmark_name: str, x: Mapping[str, tf.Tensor], keys: Sequence[str]) -> tf.Tensor:
  parts = [tf.constant(benchmark_name)]
  for key in keys:
    parts += [tf.constant(f"{key}:"), x[key]]
  return tf.strings.join(parts, separator=" ")


def _label_name(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  label = tf.cast(label, tf.int32)
  return tf.cond(tf.equal(label, -1), lambda: tf.constant("<unk>"),
                 lambda: tf.gather(tf.constant(list(label_names)), label))


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
  return {"inputs": _join(benchmark_name, x, keys),
          "targets": _label_name(x["label"], label_names),
          "idx": tf.cast(x["idx"], tf.int32)}


def stsb_text(x: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """STS-B: the score rounded to a multiple of 0.2 (half to even), one decimal: "3.8"."""
  score = tf.round(x["label"] * 5) / 5
  return {"inputs": _join("stsb", x, ["sentence1", "sentence2"]),
          "targets": tf.strings.as_string(score, precision=1),
          "idx": tf.cast(x["idx"], tf.int32)}


def multirc_text(x: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """MultiRC: one example per answer, HTML markup removed, the ids kept for grouping."""
  inputs = _join("multirc", x, ["question", "answer", "paragraph"])
  inputs = tf.strings.regex_replace(inputs, "<br>", " ")
  inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
  return {"inputs": inputs, "targets": _label_name(x["label"], gm.FALSE_TRUE),
          **{f"idx/{k}": tf.cast(x["idx"][k], tf.int32)
             for k in ("paragraph", "question", "answer")}}


def _record_passage(passage: tf.Tensor) -> tf.Tensor:
  passage = tf.strings.regex_replace(passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
  return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


def record_examples(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD: one example per gold answer ("<unk>" when there is none), all answers kept."""

  def _per_answer(x):
    answers = x["answers"]
    copies = tf.maximum(tf.size(answers), 1)
    inputs = tf.strings.join([
        "record query:", x["query"], "entities:",
        tf.strings.reduce_join(x["entities"], separator=", "), "passage:",
        _record_passage(x["passage"])], separator=" ")
    targets = tf.cond(tf.size(answers) > 0, lambda: answers, lambda: tf.constant(["<unk>"]))
    repeat = lambda t: tf.repeat(t[None], copies, axis=0)  # noqa: E731
    return {"inputs": repeat(inputs), "targets": targets, "answers": repeat(answers),
            "idx/passage": repeat(tf.cast(x["idx"]["passage"], tf.int32)),
            "idx/query": repeat(tf.cast(x["idx"]["query"], tf.int32))}

  return dataset.map(_per_answer, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


# T5's two hand-fixed WSC texts: their span2_index points at the wrong word (X marks
# where the pronoun goes).
_WSC_FIXED_TEXTS = {
    'The boy continued to whip the pony , and eventually the pony threw him over. John '
    'laughed out quite loud. "Good for him," he said. ':
        'The boy continued to whip the pony , and eventually the pony threw him over. John '
        'laughed out quite loud. "Good for X ," he said.',
    'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the '
    'magic pebble in an iron safe . Some day they might want to use it , but really for '
    'now, what more could they wish for?':
        'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put '
        'the magic pebble in an iron safe . Some day they might want to use X , but really '
        'for now, what more could they wish for?',
}


def wsc_simple_text(x: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """WSC "simple": the span2 word replaced by "*<span2_text>*"; target span1_text."""
  words = tf.strings.split(x["text"], sep=" ")
  index = x["span2_index"]
  blanked = tf.strings.join([tf.strings.reduce_join(words[:index], separator=" "), "X",
                             tf.strings.reduce_join(words[index + 1:], separator=" ")],
                            separator=" ")
  for text, fixed in _WSC_FIXED_TEXTS.items():
    blanked = tf.where(tf.equal(x["text"], text), fixed, blanked)
  pronoun = tf.strings.regex_replace(x["span2_text"], r"\\", r"\\\\")
  marked = tf.strings.regex_replace(blanked, " X ", tf.strings.join([" *", pronoun, "* "]))
  return {"inputs": tf.strings.join(["wsc:", marked], separator=" "),
          "targets": x["span1_text"], "label": tf.cast(x["label"], tf.int32),
          "idx": tf.cast(x["idx"], tf.int32)}


def dpr_simple_text(x: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """DPR "simple": the pronoun's first occurrence (before " ", "." or ",") marked."""
  pronoun = tf.strings.regex_replace(x["pronoun"], r"([.^$*+?()\[\]{}|\\])", r"\\\1")
  pattern = tf.strings.join([" (", pronoun, r")( |\.|,)"])
  marked = tf.strings.regex_replace(x["sentence"], pattern, r" *\1*\2", replace_global=False)
  return {"inputs": tf.strings.join(["wsc:", marked], separator=" "),
          "targets": tf.gather(x["candidates"], x["label"])}


def _as_rte_pair(x, benchmark_name):
  pair = {"premise": x["sentence1"], "hypothesis": x["sentence2"], "label": x["label"],
          "idx": x["idx"]}
  return glue_text(pair, benchmark_name, ("entailment", "not_entailment"))


def _keep_correct_referents(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset.filter(lambda x: tf.equal(x["label"], 1))


# --------------------------------------------------------------------- registration ---


def _labels(names: Sequence[str]):
  return functools.partial(gm.string_label_to_class_id, label_classes=tuple(names))


# name -> (label names, metric fns)
GLUE_TASKS = {
    "cola": (["unacceptable", "acceptable"], [gm.matthews_corrcoef, gm.accuracy]),
    "sst2": (["negative", "positive"], [gm.accuracy]),
    "mrpc": (["not_equivalent", "equivalent"], [gm.f1_with_invalid, gm.accuracy]),
    "qqp": (["not_duplicate", "duplicate"], [gm.f1_with_invalid, gm.accuracy]),
    "mnli": (["entailment", "neutral", "contradiction"], [gm.accuracy]),
    "qnli": (["entailment", "not_entailment"], [gm.accuracy]),
    "rte": (["entailment", "not_entailment"], [gm.accuracy]),
    "wnli": (["not_entailment", "entailment"], [gm.accuracy]),
}
SUPER_GLUE_TASKS = {
    "boolq": (["False", "True"], [gm.accuracy]),
    "cb": (["entailment", "contradiction", "neutral"], [gm.mean_3class_f1_and_accuracy]),
    "copa": (["choice1", "choice2"], [gm.accuracy]),
    "rte": (["entailment", "not_entailment"], [gm.accuracy]),
    "wic": (list(gm.FALSE_TRUE), [gm.accuracy]),
}
# T5's feature order where it is not the sorted one.
_FEATURE_NAMES = {"wic": ("sentence1", "sentence2", "word")}

# T5's mixing rates: training-set sizes (t5.data.glue_utils); WNLI is left out (T5 trains
# on WSC/DPR instead) and the eval-only tasks weigh 0.
GLUE_RATES = {"cola": 8_551., "sst2": 67_349., "mrpc": 3_668., "qqp": 363_849.,
              "stsb": 5_749., "mnli": 392_702., "qnli": 104_743., "rte": 2_490.}
SUPER_GLUE_RATES = {
    "dpr_v001_simple": 1_322., "super_glue_wsc_v102_simple_train": 259.,
    "super_glue_wsc_v102_simple_eval": 0., "super_glue_boolq_v102": 9_427.,
    "super_glue_cb_v102": 250., "super_glue_copa_v102": 400.,
    "super_glue_multirc_v102": 27_243., "super_glue_record_v102": 138_854.,
    "super_glue_rte_v102": 2_490., "super_glue_wic_v102": 5_428.,
    "super_glue_axb_v102": 0., "super_glue_axg_v102": 0.,
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


def _register(task_name: str, tfds_name: str, text_preprocessors: List[Callable],
              vocabulary: seqio.Vocabulary, splits, postprocess_fn: Optional[Callable],
              metric_fns: List[Callable]):
  """Registers (replacing) a TFDS task: T5 formatting, then tokenize, cache, EOS."""
  if task_name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(task_name)
  seqio.TaskRegistry.add(
      task_name,
      # Read-only: a missing dataset is an error (t5x_lite.data.pipeline says how to prepare it).
      source=seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits, read_only=True),
      preprocessors=list(text_preprocessors) + [
          pretraining.sanitize_text,
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          # EOS without trimming: t5x_lite.data.pipeline counts and truncates over-long inputs.
          seqio.preprocessors.append_eos,
      ],
      output_features={"inputs": seqio.Feature(vocabulary, add_eos=True),
                       "targets": seqio.Feature(vocabulary, add_eos=True)},
      postprocess_fn=postprocess_fn,
      metric_fns=metric_fns,
  )


def _map(fn, **kwargs):
  return seqio.map_over_dataset(functools.partial(fn, **kwargs) if kwargs else fn)


def _register_classification(vocabulary):
  for name, (labels, metric_fns) in GLUE_TASKS.items():
    _register(glue_task_name(name), f"glue/{name}:{GLUE_VERSION}",
              [_map(glue_text, benchmark_name=name, label_names=labels)], vocabulary,
              _MNLI_SPLITS if name == "mnli" else _SPLITS, _labels(labels), metric_fns)
  for name, (labels, metric_fns) in SUPER_GLUE_TASKS.items():
    _register(super_glue_task_name(name), f"super_glue/{name}:{SUPER_GLUE_VERSION}",
              [_map(glue_text, benchmark_name=name, label_names=labels,
                    feature_names=_FEATURE_NAMES.get(name))], vocabulary, _SPLITS,
              _labels(labels), metric_fns)


def _register_special(vocabulary):
  sg = lambda name: f"super_glue/{name}:{SUPER_GLUE_VERSION}"  # noqa: E731
  _register(glue_task_name("stsb"), f"glue/stsb:{GLUE_VERSION}", [_map(stsb_text)],
            vocabulary, _SPLITS, gm.string_to_float,
            [gm.pearson_corrcoef, gm.spearman_corrcoef])
  _register(super_glue_task_name("multirc"), sg("multirc"), [_map(multirc_text)],
            vocabulary, _SPLITS, gm.multirc, [gm.multirc_f1a, gm.multirc_exact_match])
  _register(super_glue_task_name("record"), sg("record"), [record_examples], vocabulary,
            _SPLITS, gm.record, [gm.record_em_f1])
  _register("super_glue_wsc_v102_simple_train", sg("wsc.fixed"),
            [_keep_correct_referents, _map(wsc_simple_text)], vocabulary, ("train",),
            None, [])
  _register("super_glue_wsc_v102_simple_eval", sg("wsc.fixed"), [_map(wsc_simple_text)],
            vocabulary, ("validation", "test"), gm.wsc_simple, [gm.accuracy])
  _register("dpr_v001_simple", f"definite_pronoun_resolution:{DPR_VERSION}",
            [_map(dpr_simple_text)], vocabulary, ("train", "test"), None, [gm.accuracy])
  for suffix, benchmark in (("", "rte"), ("_mnli", "mnli")):
    _register(super_glue_task_name("axb") + suffix, sg("axb"),
              [_map(_as_rte_pair, benchmark_name=benchmark)], vocabulary, ("test",),
              gm.entailment_class_id, [gm.matthews_corrcoef])
  _register(super_glue_task_name("axg"), sg("axg"),
            [_map(glue_text, benchmark_name="rte",
                  label_names=("entailment", "not_entailment"))], vocabulary, ("test",),
            gm.axg, [gm.axg_accuracy_and_gender_parity])


def _add_mixture(name: str, rates: Mapping[str, float]):
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(rates.items()))


def register_tasks(vocabulary=None) -> None:
  """Registers every GLUE/SuperGLUE task and the two mixtures (replacing old ones)."""
  vocabulary = vocabulary or vocab.default_vocabulary()
  _register_classification(vocabulary)
  _register_special(vocabulary)
  _add_mixture("glue_v002_proportional",
               {glue_task_name(name): rate for name, rate in GLUE_RATES.items()})
  _add_mixture("super_glue_v102_proportional", SUPER_GLUE_RATES)
