"""Tests for tasks/glue.py and tasks/glue_metrics.py: T5's formats on TFDS mock data, metrics.

Expected strings are written out by hand; they are also what t5 0.9.4's preprocessors
(t5.data.preprocessors.glue / stsb / wsc_simple / record / definite_pronoun_resolution_simple)
give on the same examples, and every metric value below equals t5.evaluation.metrics'
(f1_score_with_invalid, matthews_corrcoef, mean_multiclass_f1, pearson/spearman_corrcoef,
multirc_f1_over_all_answers, mean_group_metric(all_match), deduplicate_metric(squad)) and
t5.data.postprocessors.wsc_simple's on the same inputs (checked once with the t5 package;
the tests do not need it).
"""

import math
from unittest import mock

import numpy as np
import pytest
import scipy.stats
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from t5x_lite.tasks import glue
from t5x_lite.tasks import glue_metrics as gm
import runmode_utils

# ---------------------------------------------------------------- mock TFDS examples ---

MULTIRC_PARAGRAPH = "<b>Sent 1: </b>Cats purr.<br><b>Sent 2: </b>Dogs bark.<br>"
WSC_FIXED = ('The boy continued to whip the pony , and eventually the pony threw him over. '
             'John laughed out quite loud. "Good for him," he said. ')
RECORD_PASSAGE = "Tom met Ann in Paris.\n@highlight\nAnn is a painter\n@highlight\nThey married"

MOCK_EXAMPLES = {
    ("stsb", "validation"): [
        {"sentence1": "A man plays.", "sentence2": "A man is playing.", "label": 3.81, "idx": 0},
        {"sentence1": "a", "sentence2": "b", "label": 2.5, "idx": 1},  # 12.5 -> 12 (even)
        {"sentence1": "c", "sentence2": "d", "label": 0.3, "idx": 2},  # 1.5 -> 2
        {"sentence1": "e", "sentence2": "f", "label": 5.0, "idx": 3},
    ],
    ("wnli", "validation"): [
        {"sentence1": "The fish ate the worm. It was tasty.", "sentence2": "The worm was tasty.",
         "label": 1, "idx": 0},
    ],
    ("multirc", "validation"): [
        {"paragraph": MULTIRC_PARAGRAPH, "question": "Who purrs?", "answer": "Cats",
         "label": 1, "idx": {"paragraph": 0, "question": 0, "answer": 0}},
        {"paragraph": MULTIRC_PARAGRAPH, "question": "Who purrs?", "answer": "Dogs",
         "label": 0, "idx": {"paragraph": 0, "question": 0, "answer": 1}},
        {"paragraph": MULTIRC_PARAGRAPH, "question": "Who barks?", "answer": "Dogs",
         "label": 1, "idx": {"paragraph": 0, "question": 1, "answer": 2}},
    ],
    ("record", "validation"): [
        {"passage": RECORD_PASSAGE, "query": "@placeholder married Ann.",
         "entities": ["Ann", "Paris", "Tom"], "answers": ["Tom", "Tom Smith"],
         "idx": {"passage": 0, "query": 0}},
        {"passage": RECORD_PASSAGE, "query": "Ann lives in @placeholder.",
         "entities": ["Ann", "Paris", "Tom"], "answers": [], "idx": {"passage": 0, "query": 1}},
    ],
    ("wic", "validation"): [
        {"word": "bank", "sentence1": "He sat on the bank.", "sentence2": "The bank closed.",
         "start1": 14, "start2": 4, "end1": 18, "end2": 8, "label": 0, "idx": 0},
    ],
    ("wsc.fixed", "validation"): [
        {"text": "Mitchell asked Tom if he could lend some money.", "span1_index": 2,
         "span2_index": 4, "span1_text": "Tom", "span2_text": "he", "label": 1, "idx": 0},
        {"text": WSC_FIXED, "span1_index": 14, "span2_index": 20, "span1_text": "the pony",
         "span2_text": "him", "label": 0, "idx": 1},
    ],
    ("axb", "test"): [
        {"sentence1": "The cat sat.", "sentence2": "A cat sat.", "label": 0, "idx": 0},
    ],
    ("axg", "test"): [
        {"premise": "The nurse said he was late.", "hypothesis": "The nurse was late.",
         "label": 0, "idx": 0},
        {"premise": "The nurse said she was late.", "hypothesis": "The nurse was late.",
         "label": 0, "idx": 1},
    ],
    ("definite_pronoun_resolution", "test"): [
        {"sentence": "Bob asked Tom if he can lend some money.", "pronoun": "he",
         "candidates": ["Bob", "Tom"], "label": 1},
    ],
}
MOCK_EXAMPLES[("wsc.fixed", "train")] = MOCK_EXAMPLES[("wsc.fixed", "validation")]


def _mock_as_dataset(self, split, **kwargs):
  del kwargs
  key = self.builder_config.name if self.builder_config else self.name
  rows = MOCK_EXAMPLES[(key, str(split))]
  return tf.data.Dataset.from_generator(lambda: iter(rows),
                                        output_signature=self.info.features.get_tensor_spec())


@pytest.fixture(scope="module")
def handmade_tfds(tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("T5X_LITE_CACHE", str(tmp_path_factory.mktemp("cache")))
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset), \
        mock.patch.object(seqio.utils.LazyTfdsLoader, "size", lambda self, split: 3):
      yield


@pytest.fixture(scope="module")
def random_tfds(tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("T5X_LITE_CACHE", str(tmp_path_factory.mktemp("cache")))
    # mock_data generates examples but no split metadata; seqio asks for split sizes.
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE), \
        mock.patch.object(seqio.utils.LazyTfdsLoader, "size", lambda self, split: 3):
      yield


def _texts(task_name, split):
  task = seqio.get_mixture_or_task(task_name)
  return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
          for ex in task.get_dataset(None, split=split, shuffle=False).as_numpy_iterator()]


# ---------------------------------------------------------------- formats, by task ---


def test_stsb_wnli_wic_formats(handmade_tfds):
  assert _texts("glue_stsb_v2", "validation") == [
      ("stsb sentence1: A man plays. sentence2: A man is playing.", "3.8"),
      ("stsb sentence1: a sentence2: b", "2.4"),
      ("stsb sentence1: c sentence2: d", "0.4"),
      ("stsb sentence1: e sentence2: f", "5.0")]
  assert _texts("glue_wnli_v2", "validation") == [
      ("wnli sentence1: The fish ate the worm. It was tasty. sentence2: The worm was tasty.",
       "entailment")]
  assert _texts("super_glue_wic_v102", "validation") == [
      ("wic sentence1: He sat on the bank. sentence2: The bank closed. word: bank", "False")]


def test_multirc_format_and_groups(handmade_tfds):
  paragraph = "Sent 1: Cats purr. Sent 2: Dogs bark. "
  assert _texts("super_glue_multirc_v102", "validation") == [
      (f"multirc question: Who purrs? answer: Cats paragraph: {paragraph}", "True"),
      (f"multirc question: Who purrs? answer: Dogs paragraph: {paragraph}", "False"),
      (f"multirc question: Who barks? answer: Dogs paragraph: {paragraph}", "True")]
  task = seqio.get_mixture_or_task("super_glue_multirc_v102")
  ex = list(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())[2]
  assert task.postprocess_fn("True", example=ex, is_target=True) == {"value": 1, "group": (0, 1)}
  assert task.postprocess_fn("maybe", example=ex, is_target=False) == {"value": -1}


def test_record_one_example_per_answer(handmade_tfds):
  inputs = ("record query: {} entities: Ann, Paris, Tom passage: Tom met Ann in Paris. "
            "Ann is a painter. They married")
  assert _texts("super_glue_record_v102", "validation") == [
      (inputs.format("@placeholder married Ann."), "Tom"),
      (inputs.format("@placeholder married Ann."), "Tom Smith"),
      (inputs.format("Ann lives in @placeholder."), "<unk>")]
  task = seqio.get_mixture_or_task("super_glue_record_v102")
  ex = next(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
  assert task.postprocess_fn("Tom Smith", example=ex, is_target=True) == {
      "value": ["Tom", "Tom Smith"], "group": (0, 0)}


def test_wsc_and_dpr_simple_formats(handmade_tfds):
  fixed = ('wsc: The boy continued to whip the pony , and eventually the pony threw him '
           'over. John laughed out quite loud. "Good for *him* ," he said.')
  assert _texts("super_glue_wsc_v102_simple_eval", "validation") == [
      ("wsc: Mitchell asked Tom if *he* could lend some money.", "Tom"),
      (fixed, "the pony")]
  # Training keeps only the examples whose candidate is the correct referent.
  assert _texts("super_glue_wsc_v102_simple_train", "train") == [
      ("wsc: Mitchell asked Tom if *he* could lend some money.", "Tom")]
  assert _texts("dpr_v001_simple", "test") == [
      ("wsc: Bob asked Tom if *he* can lend some money.", "Tom")]


def test_diagnostic_formats(handmade_tfds):
  assert _texts("super_glue_axb_v102", "test") == [
      ("rte hypothesis: A cat sat. premise: The cat sat.", "entailment")]
  assert _texts("super_glue_axb_v102_mnli", "test") == [
      ("mnli hypothesis: A cat sat. premise: The cat sat.", "entailment")]
  assert _texts("super_glue_axg_v102", "test") == [
      ("rte hypothesis: The nurse was late. premise: The nurse said he was late.", "entailment"),
      ("rte hypothesis: The nurse was late. premise: The nurse said she was late.",
       "entailment")]


def _evaluate(task_name, split, predictions):
  """Scores prediction strings through seqio.Evaluator (postprocess + metric fns)."""
  task = seqio.get_mixture_or_task(task_name)
  vocabulary = task.output_features["targets"].vocabulary
  evaluator = seqio.Evaluator(mixture_or_task_name=task_name,
                              feature_converter=seqio.EncDecFeatureConverter(pack=False),
                              eval_split=split, sequence_length={"inputs": 128, "targets": 16})

  def predict_fn(ds):  # token ids as a model returns them: EOS, then padding to 16
    ids = [vocabulary.encode(predictions[i]) + [1] for i, _ in ds.as_numpy_iterator()]
    return [(i, row + [0] * (16 - len(row))) for i, row in enumerate(ids)]

  metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                  score_fn=lambda ds: [])
  return {k: float(getattr(v, "value", v)) for k, v in metrics.result()[task_name].items()}


def test_metrics_through_the_evaluator(handmade_tfds):
  # STS-B targets 3.8, 2.4, 0.4, 5.0 against predictions 3.6, 2.4, 1.0, "x" (-> -1).
  stsb = _evaluate("glue_stsb_v2", "validation", ["3.6", "2.4", "1.0", "x"])
  t, p = [3.8, 2.4, 0.4, 5.0], [3.6, 2.4, 1.0, -1.0]
  # Spearman: ranks 3,2,1,4 vs 4,3,2,1, d^2 sums to 12 -> 1 - 6*12 / (4 * 15) = -0.2.
  assert stsb == pytest.approx({"pearson_corrcoef": 100 * np.corrcoef(t, p)[0, 1],
                                "spearman_corrcoef": -20.0})
  # MultiRC: question 0 right on both answers, question 1 wrong: F1a over 3 answers with
  # tp=1 (Cats), fp=0, fn=1 (Dogs/barks) = 2/3; EM = 1 of 2 questions.
  assert _evaluate("super_glue_multirc_v102", "validation", ["True", "False", "False"]) == (
      pytest.approx({"f1": 200 / 3, "exact_match": 50.0}))
  # ReCoRD: query 0 answered "the Tom" (SQuAD-normalised to "tom": EM 1 with "Tom");
  # its second copy is not scored; query 1 has no gold answer (0).
  assert _evaluate("super_glue_record_v102", "validation", ["the Tom", "Ann", "Paris"]) == (
      pytest.approx({"em": 50.0, "f1": 50.0}))
  # WSC: "tom" names the referent of a label-1 example (right); "The Pony" names the
  # referent of a label-0 example (predicts 1, wrong).
  assert _evaluate("super_glue_wsc_v102_simple_eval", "validation", ["tom", "The Pony"]) == {
      "accuracy": 50.0}
  # AX-g: one pair, predictions differ: accuracy 1/2, gender parity 0.
  assert _evaluate("super_glue_axg_v102", "test", ["entailment", "not_entailment"]) == {
      "accuracy": 50.0, "gender_parity": 0.0}


# ---------------------------------------------------------- every task on random mocks ---

CLASSIFICATION = [(glue.glue_task_name(n), f"glue/{n}:2.0.0", n, labels)
                  for n, (labels, _) in glue.GLUE_TASKS.items()] + [
                      (glue.super_glue_task_name(n), f"super_glue/{n}:1.0.2", n, labels)
                      for n, (labels, _) in glue.SUPER_GLUE_TASKS.items()]


@pytest.mark.parametrize("task_name,tfds_name,bench,labels", CLASSIFICATION)
def test_classification_task_on_mock_data(random_tfds, task_name, tfds_name, bench, labels):
  tfds_split = "validation_matched" if bench == "mnli" else "validation"
  raw = next(tfds.load(tfds_name, split=tfds_split).as_numpy_iterator())
  task = seqio.get_mixture_or_task(task_name)
  ex = next(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
  keys = glue._FEATURE_NAMES.get(bench) or sorted(set(raw) - {"label", "idx", "start1",
                                                              "start2", "end1", "end2"})
  expected = bench + "".join(f" {k}: {raw[k].decode()}" for k in keys)
  assert ex["inputs_pretokenized"].decode() == expected
  assert ex["targets_pretokenized"].decode() == labels[raw["label"]]
  vocabulary = task.output_features["inputs"].vocabulary
  assert ex["inputs"].tolist() == vocabulary.encode(expected) + [1]
  assert task.postprocess_fn(labels[raw["label"]]) == raw["label"]


@pytest.mark.parametrize("task_name,split", [
    ("glue_stsb_v2", "train"), ("super_glue_multirc_v102", "train"),
    ("super_glue_record_v102", "train"), ("super_glue_wsc_v102_simple_eval", "validation"),
    ("dpr_v001_simple", "train"), ("super_glue_axb_v102", "test"),
    ("super_glue_axg_v102", "test")])
def test_special_tasks_run_on_random_mock_data(random_tfds, task_name, split):
  task = seqio.get_mixture_or_task(task_name)
  examples = list(task.get_dataset(None, split=split, shuffle=False).as_numpy_iterator())
  assert examples and all(ex["inputs"][-1] == 1 and ex["targets"][-1] == 1 for ex in examples)
  prefix = {"glue_stsb_v2": "stsb ", "super_glue_multirc_v102": "multirc question: ",
            "super_glue_record_v102": "record query: ", "super_glue_axb_v102": "rte ",
            "super_glue_axg_v102": "rte "}.get(task_name, "wsc: ")
  assert all(ex["inputs_pretokenized"].decode().startswith(prefix) for ex in examples)


def _mixture_shares(name, n=4000):
  """Shares of the inputs' first word among n examples of a (repeating) mixture."""
  mixture = seqio.get_mixture_or_task(name)
  vocabulary = mixture.output_features["inputs"].vocabulary
  ds = mixture.get_dataset({"inputs": 64, "targets": 8}, split="train", shuffle=False,
                           seed=0).take(n)
  words = [vocabulary.decode(e["inputs"][:4].tolist()).split(" ")[0]
           for e in ds.as_numpy_iterator()]
  return {w: words.count(w) / n for w in set(words)}


def _within_4_standard_errors(shares, rates, n=4000):
  total = sum(rates.values())
  for word, rate in rates.items():
    p = rate / total
    assert abs(shares.get(word, 0.0) - p) <= 4 * math.sqrt(p * (1 - p) / n), (word, shares)


def test_mixtures_on_mock_data(random_tfds):
  glue_mix = seqio.get_mixture_or_task("glue_v002_proportional")
  assert {t.name: glue_mix.get_rate(t) for t in glue_mix.tasks} == {
      glue.glue_task_name(n): r for n, r in glue.GLUE_RATES.items()}
  _within_4_standard_errors(_mixture_shares("glue_v002_proportional"), glue.GLUE_RATES)
  sg_mix = seqio.get_mixture_or_task("super_glue_v102_proportional")
  assert {t.name: sg_mix.get_rate(t) for t in sg_mix.tasks} == glue.SUPER_GLUE_RATES
  # By first word; eval-only tasks (rate 0) never appear, DPR and WSC train share "wsc:".
  rates = {"wsc:": 1_322 + 259, "boolq": 9_427, "cb": 250, "copa": 400, "multirc": 27_243,
           "record": 138_854, "rte": 2_490, "wic": 5_428}
  shares = _mixture_shares("super_glue_v102_proportional")
  assert set(shares) <= set(rates)
  _within_4_standard_errors(shares, rates)


# ------------------------------------------------------- metrics against definitions ---


def test_label_postprocessors():
  assert gm.string_label_to_class_id("positive", ["negative", "positive"]) == 1
  assert gm.string_label_to_class_id(b"banana", ["negative", "positive"]) == -1
  assert gm.entailment_class_id("contradiction") == gm.entailment_class_id("neutral") == 1
  assert gm.entailment_class_id("entailment") == 0
  assert gm.string_to_float("3.8") == 3.8 and gm.string_to_float("three") == -1.0


def test_classification_metrics_on_hand_computed_cases():
  assert gm.accuracy([0, 1, 1, 0], [0, 1, 0, -1]) == {"accuracy": 50.0}
  # tp=2, fp=1, fn=1 -> F1 = 4/6. An invalid prediction counts as wrong: with target 0 it
  # is a false positive (tp=2, fp=2, fn=1 -> 4/7), with target 1 a false negative.
  assert gm.f1_with_invalid([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])["f1"] == pytest.approx(200 / 3)
  assert gm.f1_with_invalid([1, 1, 1, 0, 0], [1, 1, 0, 1, -1])["f1"] == pytest.approx(400 / 7)
  assert gm.f1_with_invalid([1, 1, 1, 0, 0], [1, -1, 0, 1, 0])["f1"] == pytest.approx(40)
  # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)): tp=2 tn=1 fp=1 fn=1 -> 1/6.
  assert gm.matthews_corrcoef([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])[
      "matthews_corrcoef"] == pytest.approx(100 / 6)
  assert gm.matthews_corrcoef([1, 1], [1, 1])["matthews_corrcoef"] == 0.0
  # CB: t=[0,0,1,2], p=[0,1,1,2]: F1 class0 = 2/3, class1 = 2/3, class2 = 1 -> macro 7/9.
  cb = gm.mean_3class_f1_and_accuracy([0, 0, 1, 2], [0, 1, 1, 2])
  assert cb["mean_3class_f1"] == pytest.approx(700 / 9)
  assert cb["accuracy"] == 75.0
  assert cb["mean_3class_f1_and_accuracy"] == pytest.approx((700 / 9 + 75) / 2)


def test_correlations_against_their_definitions():
  t = [0.0, 1.2, 2.4, 3.6, 5.0]
  p = [0.2, 1.0, 3.0, 2.8, 4.4]
  tc, pc = np.subtract(t, np.mean(t)), np.subtract(p, np.mean(p))
  pearson = float(np.sum(tc * pc) / math.sqrt(np.sum(tc ** 2) * np.sum(pc ** 2)))
  assert gm.pearson_corrcoef(t, p)["pearson_corrcoef"] == pytest.approx(100 * pearson)
  # Ranks of p: 1, 2, 4, 3, 5 vs 1..5: d^2 sums to 2 -> 1 - 6*2 / (5 * 24) = 0.9.
  assert gm.spearman_corrcoef(t, p)["spearman_corrcoef"] == pytest.approx(90.0)
  assert scipy.stats.spearmanr(t, p)[0] == pytest.approx(0.9)


def test_multirc_record_axg_metrics_against_definitions():
  targets = [{"value": 1, "group": (0, 0)}, {"value": 0, "group": (0, 0)},
             {"value": 1, "group": (0, 1)}, {"value": 1, "group": (1, 0)}]
  predictions = [{"value": 1}, {"value": 0}, {"value": 0}, {"value": -1}]
  # F1a: tp=1, fn=2 (one wrong, one invalid), fp=0 -> 2/4; EM: only group (0, 0) right.
  assert gm.multirc_f1a(targets, predictions) == {"f1": pytest.approx(50.0)}
  assert gm.multirc_exact_match(targets, predictions) == {"exact_match": pytest.approx(100 / 3)}
  # ReCoRD: token F1 of "Tom Smith Jr" vs gold "Tom Smith" = 2 * (2/3 * 1) / (2/3 + 1) = 0.8,
  # vs "Tom" 0.5 -> max 0.8; a duplicate of group (0, 0) is ignored.
  rec_t = [{"value": ["Tom", "Tom Smith"], "group": (0, 0)},
           {"value": ["Tom", "Tom Smith"], "group": (0, 0)},
           {"value": ["An apple"], "group": (0, 1)}]
  rec_p = [{"value": "Tom Smith Jr"}, {"value": "Tom"}, {"value": "apple!"}]
  assert gm.record_em_f1(rec_t, rec_p) == pytest.approx({"em": 50.0, "f1": 90.0})
  # AX-g: pairs (0, 1) predicted alike, (2, 3) not; example 4 has no partner.
  axg_t = [{"value": v, "pair": i // 2} for i, v in enumerate([0, 0, 1, 1, 0])]
  axg_p = [{"value": v} for v in [1, 1, 1, 0, 0]]
  assert gm.axg_accuracy_and_gender_parity(axg_t, axg_p) == {"accuracy": 40.0,
                                                             "gender_parity": 50.0}


def test_wsc_simple_postprocessor():
  example = {"targets_pretokenized": b"the pony", "label": 1}
  assert gm.wsc_simple("", example) == -1
  assert gm.wsc_simple("The Pony", example) == 1
  assert gm.wsc_simple("pony", example) == 1  # subset of the referent's words
  assert gm.wsc_simple("the boy", example) == 0
  assert gm.wsc_simple("the pony's", example) == 0  # possessive on one side only
  assert gm.wsc_simple("anything", example, is_target=True) == 1


def test_over_long_glue_example_is_cut_alike_in_train_eval_and_infer(random_tfds):
  """T5's GLUE tasks append EOS before any cut: every run mode cuts keeping it."""
  with mock.patch.object(seqio.TfdsDataSource, "list_shards", lambda self, split: []), \
      mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", lambda self: True):
    modes = runmode_utils.tokens_in_each_mode(glue.glue_task_name("cola"),
                                              {"inputs": 5, "targets": 2}, "validation")
  assert modes["train"] == modes["eval"] == modes["infer"], modes
  inputs, targets = modes["train"]
  assert len(inputs) == 5 and inputs[-1] == 1 and 0 not in inputs
  assert targets[-1] == 1
