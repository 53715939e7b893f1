"""Tests for tasks/glue.py: T5 text-to-text formatting on TFDS mock data, and metrics."""

from unittest import mock

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from t5x_lite.tasks import glue


@pytest.fixture(scope="module")
def mock_tfds(tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("T5X_LITE_CACHE", str(tmp_path_factory.mktemp("cache")))
    # mock_data generates examples but no split metadata; seqio asks for split sizes.
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE), \
        mock.patch.object(seqio.utils.LazyTfdsLoader, "size", lambda self, split: 3):
      yield


def test_glue_text_exact_formats():
  def fmt(x, bench, labels):
    x = {k: tf.constant(v) for k, v in x.items()}
    out = glue.glue_text(x, benchmark_name=bench, label_names=labels)
    return out["inputs"].numpy().decode(), out["targets"].numpy().decode()

  assert fmt({"sentence": "it 's a charming journey .", "label": 1, "idx": 0}, "sst2",
             ["negative", "positive"]) == ("sst2 sentence: it 's a charming journey .",
                                           "positive")
  assert fmt({"premise": "A man eats.", "hypothesis": "Nobody eats.", "label": 2, "idx": 3},
             "mnli", ["entailment", "neutral", "contradiction"]) == (
                 "mnli hypothesis: Nobody eats. premise: A man eats.", "contradiction")
  assert fmt({"passage": "Water boils at 100 C.", "question": "does water boil", "label": 1,
              "idx": 0}, "boolq", ["False", "True"]) == (
                  "boolq passage: Water boils at 100 C. question: does water boil", "True")
  assert fmt({"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.",
              "question": "cause", "label": 0, "idx": 0}, "copa", ["choice1", "choice2"]) == (
                  "copa choice1: He slipped. choice2: He sang. premise: The man fell. "
                  "question: cause", "choice1")
  assert fmt({"premise": "p", "hypothesis": "h", "label": -1, "idx": 0}, "cb",
             ["entailment", "contradiction", "neutral"]) == ("cb hypothesis: h premise: p",
                                                             "<unk>")


TASKS = [(glue.glue_task_name(n), f"glue/{n}:2.0.0", n, labels)
         for n, (labels, _) in glue.GLUE_TASKS.items()] + [
             (glue.super_glue_task_name(n), f"super_glue/{n}:1.0.2", n, labels)
             for n, (labels, _) in glue.SUPER_GLUE_TASKS.items()]


@pytest.mark.parametrize("task_name,tfds_name,bench,labels", TASKS)
def test_task_on_mock_data(mock_tfds, task_name, tfds_name, bench, labels):
  del mock_tfds
  tfds_split = "validation_matched" if bench == "mnli" else "validation"
  raw = next(tfds.load(tfds_name, split=tfds_split).as_numpy_iterator())
  task = seqio.get_mixture_or_task(task_name)
  ex = next(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
  keys = sorted(set(raw) - {"label", "idx"})
  expected = bench + "".join(f" {k}: {raw[k].decode()}" for k in keys)
  assert ex["inputs_pretokenized"].decode() == expected
  assert ex["targets_pretokenized"].decode() == labels[raw["label"]]
  vocabulary = task.output_features["inputs"].vocabulary
  assert ex["inputs"].tolist() == vocabulary.encode(expected) + [1]
  assert task.postprocess_fn(labels[raw["label"]]) == raw["label"]


def test_mixture_on_mock_data(mock_tfds):
  del mock_tfds
  mixture = seqio.get_mixture_or_task("glue_v002_proportional")
  assert sorted(t.name for t in mixture.tasks) == sorted(
      glue.glue_task_name(n) for n in glue.GLUE_TASKS)
  examples = list(mixture.get_dataset({"inputs": 64, "targets": 8}, split="train",
                                      shuffle=False, seed=0, num_epochs=1).as_numpy_iterator())
  # Equal sizes under the mock -> equal rates; every task contributes.
  vocabulary = mixture.output_features["inputs"].vocabulary
  prefixes = {vocabulary.decode(e["inputs"].tolist()).split(" ")[0] for e in examples}
  assert prefixes == set(glue.GLUE_TASKS)


def test_metrics_on_hand_computed_cases():
  assert glue.string_label_to_class_id("positive", ["negative", "positive"]) == 1
  assert glue.string_label_to_class_id(b"banana", ["negative", "positive"]) == -1
  assert glue.accuracy([0, 1, 1, 0], [0, 1, 0, -1]) == {"accuracy": 50.0}
  # tp=2, fp=1, fn=1 -> F1 = 4/6
  assert glue.f1_binary([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])["f1"] == pytest.approx(200 / 3)
  # tp=2 tn=1 fp=1 fn=1 -> (2-1)/sqrt(3*3*2*2) = 1/6
  assert glue.matthews_corrcoef([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])[
      "matthews_corrcoef"] == pytest.approx(100 / 6)
  assert glue.matthews_corrcoef([1, 1], [1, 1])["matthews_corrcoef"] == 0.0
  # CB: t=[0,0,1,2], p=[0,1,1,2]: F1 class0 = 2/3, class1 = 2/3, class2 = 1 -> macro 7/9
  cb = glue.mean_3class_f1_and_accuracy([0, 0, 1, 2], [0, 1, 1, 2])
  assert cb["mean_3class_f1"] == pytest.approx(700 / 9)
  assert cb["accuracy"] == 75.0
  assert cb["mean_3class_f1_and_accuracy"] == pytest.approx((700 / 9 + 75) / 2)
