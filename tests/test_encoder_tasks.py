"""tasks/encoder_tasks.py and tasks/labels.py on handmade TFDS mock data (GLUE, CoNLL-2003,
SQuAD v1.1): exact features, their model batches, metrics (by hand), bad answers, and the
three head recipes run for 2 steps through the entry point."""

import json
from unittest import mock

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import runmode_utils as u
from t5x_lite import main
from t5x_lite.model import heads, network
from t5x_lite.tasks import encoder_tasks, labels, metrics, vocab

SST2 = [{"sentence": "a charming journey .", "label": 1, "idx": 0},
        {"sentence": "dull and lifeless .", "label": 0, "idx": 1},
        {"sentence": "unlabelled test example", "label": -1, "idx": 2}]
CONLL = [{"tokens": ["EU", "rejects", "German", "call"], "pos": [0, 0, 0, 0],
          "chunks": [0, 0, 0, 0], "ner": [3, 0, 7, 0]},
         {"tokens": ["Peter", "Blackburn"], "pos": [0, 0], "chunks": [0, 0], "ner": [1, 2]}]
CONTEXT = "Café Ñandú opened in 1921 in Paris."


def _squad(i, answer, start, context=CONTEXT):
  return {"id": f"q{i}", "title": "t", "context": context, "question": "When?",
          "answers": {"text": [answer, answer.lower()], "answer_start": [start, start]}}


SQUAD = [_squad(0, "1921", 21), _squad(1, "Café Ñandú", 0), _squad(2, "Paris.", 29)]
MOCK = {
    ("sst2", "train"): SST2[:2] * 2, ("sst2", "validation"): SST2[:2] * 2, ("sst2", "test"): SST2,
    ("stsb", "validation"): [{"sentence1": "A man plays.", "sentence2": "A man is playing.",
                              "label": 3.81, "idx": 0},
                             {"sentence1": "a", "sentence2": "b", "label": 0.5, "idx": 1}],
    ("mnli", "validation_matched"): [{"premise": "p", "hypothesis": "h", "label": 2, "idx": 0}],
    ("conll2003", "train"): CONLL * 2, ("conll2003", "dev"): CONLL,
    ("v1.1", "train"): SQUAD, ("v1.1", "validation"): SQUAD,
}


def _mock_as_dataset(self, split, **kwargs):
  del kwargs
  key = self.builder_config.name if self.builder_config else self.name
  rows = MOCK[(key, str(split))]
  return tf.data.Dataset.from_generator(lambda: iter(rows),
                                        output_signature=self.info.features.get_tensor_spec())


@pytest.fixture(scope="module")
def mock_tfds():
  # mock_data makes examples but no split metadata (sizes, files) and no prepared data.
  with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset), \
      mock.patch.object(seqio.utils.LazyTfdsLoader, "size", lambda self, split: 2), \
      mock.patch.object(seqio.TfdsDataSource, "list_shards", lambda self, split: []), \
      mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", lambda self: True):
    yield


def _examples(task_name, split, lengths=None):
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
  return list(ds.as_numpy_iterator())


def _model_batches(model, task_name, split, lengths):
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
  return list(model.feature_converter(pack=False)(ds, lengths).as_numpy_iterator())


CONFIG = network.T5Config(vocab_size=4224, d_model=8, d_ff=8, d_kv=4, num_heads=2,
                          num_encoder_layers=1, num_decoder_layers=1)


def test_label_and_scalar_vocabularies():
  names = labels.LabelVocabulary(("O", "B-PER", "I-PER"))
  assert names.encode("B-PER I-PER O") == [2, 3, 1]
  assert names.encode("<unk>") == [0]
  assert names.decode([2, 0, 3, 1, 0]) == "B-PER I-PER O"  # 0: padding / no label
  assert names.encode_tf(tf.constant("O B-PER")).numpy().tolist() == [1, 2]
  assert names.decode_tf(tf.constant([3, 0, 1])).numpy() == b"I-PER O"
  with pytest.raises(ValueError, match="'X' is not a label"):
    names.encode("X")
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"a label name is not one of the labels of the task \(O, B-PER, "
                           r"I-PER\)\. Label text: O X"):
    names.encode_tf(tf.constant("O X"))
  with pytest.raises(ValueError, match="without whitespace"):
    labels.LabelVocabulary(("not entailment", "entailment"))
  scalar = labels.ScalarVocabulary()
  assert scalar.encode_tf(tf.constant("3.81")).numpy().tolist() == [pytest.approx(3.81)]
  assert scalar.decode([np.float32(3.81)]) == "3.81"


def test_glue_encoder_tasks(mock_tfds):
  sst2 = _examples("glue_sst2_v2_encoder", "test")
  assert [e["inputs_pretokenized"].decode() for e in sst2] == [
      "sst2 sentence: a charming journey .", "sst2 sentence: dull and lifeless .",
      "sst2 sentence: unlabelled test example"]
  assert [e["targets"].tolist() for e in sst2] == [[2], [1], [0]]  # class + 1; 0 = no label
  assert sst2[0]["inputs"].tolist() == vocab.default_vocabulary().encode(
      "sst2 sentence: a charming journey .") + [1]
  model = heads.SequenceClassificationModel(CONFIG, num_labels=2)
  batches = _model_batches(model, "glue_sst2_v2_encoder", "test", {"inputs": 12, "targets": 1})
  assert [int(b["labels"]) for b in batches] == [1, 0, -1]
  # Predicted ids decode to T5's label names, which T5's postprocessor maps to classes.
  task = seqio.get_mixture_or_task("glue_sst2_v2_encoder")
  decoded = task.output_features["targets"].vocabulary.decode([2])
  assert decoded == "positive" and task.postprocess_fn(decoded) == 1

  stsb = _examples("glue_stsb_v2_encoder", "validation")
  assert stsb[0]["inputs_pretokenized"] == b"stsb sentence1: A man plays. sentence2: A man is playing."
  assert [e["targets"].tolist() for e in stsb] == [[pytest.approx(3.81)], [0.5]]  # unrounded
  regression = heads.SequenceClassificationModel(CONFIG, regression=True)
  batches = _model_batches(regression, "glue_stsb_v2_encoder", "validation",
                           {"inputs": 16, "targets": 1})
  assert [float(b["labels"]) for b in batches] == [pytest.approx(3.81), 0.5]

  (mnli,) = _examples("glue_mnli_v2_encoder", "validation")  # TFDS validation_matched
  assert mnli["inputs_pretokenized"] == b"mnli hypothesis: h premise: p"
  assert mnli["targets"].tolist() == [3]  # contradiction, class 2


def test_conll_tags_sit_on_each_word_first_piece(mock_tfds):
  vocabulary = vocab.default_vocabulary()
  examples = _examples(encoder_tasks.CONLL_TASK, "validation")
  for example, source in zip(examples, CONLL):
    pieces = [vocabulary.encode(w) for w in source["tokens"]]
    expected_targets = []
    for piece, tag in zip(pieces, source["ner"]):
      expected_targets += [tag + 1] + [0] * (len(piece) - 1)
    assert example["inputs"].tolist() == sum(pieces, []) + [1]
    assert example["targets"].tolist() == expected_targets + [0]
    assert example["inputs_pretokenized"].decode() == " ".join(source["tokens"])
  assert any(len(vocabulary.encode(w)) > 1 for w in CONLL[0]["tokens"])  # sub-words do occur
  assert examples[0]["targets_pretokenized"] == b"B-ORG O B-MISC O"
  assert examples[1]["targets_pretokenized"] == b"B-PER I-PER"
  tags = seqio.get_mixture_or_task(encoder_tasks.CONLL_TASK).output_features["targets"].vocabulary
  assert tags.decode(examples[0]["targets"]) == "B-ORG O B-MISC O"


def test_squad_positions_hold_the_answer(mock_tfds):
  vocabulary = vocab.default_vocabulary()
  examples = _examples(encoder_tasks.SQUAD_TASK, "validation")
  for example, source in zip(examples, SQUAD):
    start, end = int(example["start_position"]), int(example["end_position"])
    answer = source["answers"]["text"][0]
    assert vocabulary.decode(example["inputs"][start:end + 1].tolist()) == answer
    assert example["targets"].tolist() == vocabulary.encode(answer)
    prefix = vocabulary.encode("question: When? context:")
    assert int(example["context_start"]) == len(prefix)
    assert example["inputs"][:len(prefix)].tolist() == prefix
    assert example["inputs"][-1] == 1  # EOS
    assert example["inputs_pretokenized"].decode() == f"question: When? context: {CONTEXT}"
  task = seqio.get_mixture_or_task(encoder_tasks.SQUAD_TASK)
  assert task.postprocess_fn("x", example=examples[1], is_target=True) == [
      "Café Ñandú", "café ñandú"]


def test_squad_answer_not_in_context_names_task_and_example(mock_tfds, monkeypatch):
  monkeypatch.setitem(MOCK, ("v1.1", "validation"), [SQUAD[0], _squad(9, "1921", 20)])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"squad_v110_extractive: example q9: its first answer is not the "
                           r"text of its context at character 20 \(the context has 35 "
                           r"characters\); fix or drop the example\. Answer: 1921"):
    _examples(encoder_tasks.SQUAD_TASK, "validation")


def test_span_f1_and_squad_metrics_by_hand():
  # Gold chunks: PER[0,2) LOC[3,4) | ORG[0,1). Predicted: PER[0,2) LOC[3,4)->MISC, and the
  # second sentence's I-ORG (no B-) still opens an ORG chunk, as conlleval reads it.
  targets = ["B-PER I-PER O B-LOC", "B-ORG O"]
  predictions = ["B-PER I-PER O B-MISC", "I-ORG"]  # cut short: padded with O
  # Tags: 3 of 4 right, then 1 of 2 (I-ORG is not B-ORG).
  result = metrics.span_f1(targets, predictions)
  assert result == {"precision": pytest.approx(200 / 3), "recall": pytest.approx(200 / 3),
                    "f1": pytest.approx(200 / 3), "accuracy": pytest.approx(400 / 6)}
  assert metrics.iob_chunks(["B-PER", "B-PER", "I-LOC", "I-LOC", "O"]) == {
      (0, 1, "PER"), (1, 2, "PER"), (2, 4, "LOC")}
  # SQuAD's normalisation drops case, punctuation and articles; F1 over tokens.
  squad = metrics.squad([["The Eiffel Tower", "Paris"], ["in 1921"]],
                        ["eiffel tower!", "1921 in Paris"])
  # Example 2: prediction {1921, in, paris} vs {in, 1921}: precision 2/3, recall 1.
  assert squad == {"em": pytest.approx(50.0), "f1": pytest.approx(100 * (1 + 0.8) / 2)}


# ---------------------------------------------------------------------------- recipes ---


@pytest.fixture
def recipe_run(mock_tfds, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)

  def run(recipe, *bindings):
    gin.clear_config()
    try:
      return main.main([f"--gin_file=recipes/{recipe}", f"--gin.MODEL_DIR={tmp_path / 'run'}",
                        "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2",
                        # From scratch: no pretrained T5 here.
                        "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.train.initial_checkpoint=None",
                        "--gin.train.progress_bar=False",
                        "--gin.EvalConfig.steps=0", *u.TINY_GIN, *bindings,
                        # Steps of milliseconds: orbax's background commit of step 1 raced
                        # the step-2 save here (its tmp directory gone); save synchronously.
                        "--gin.CheckpointConfig.async_save=False"])
    finally:
      gin.clear_config()
  return run


@pytest.mark.parametrize("recipe,task,lengths,metric", [
    ("glue_sst2_encoder.gin", "glue_sst2_v2_encoder", "{'inputs': 16, 'targets': 1}",
     "accuracy"),
    ("conll_token_cls.gin", "conll2003_ner", "{'inputs': 16, 'targets': 16}", "f1"),
    ("squad_qa.gin", "squad_v110_extractive", "{'inputs': 32, 'targets': 8}", "em"),
])
def test_head_recipes_parse_and_run(recipe_run, tmp_path, recipe, task, lengths, metric):
  state, eval_metrics = recipe_run(recipe, f"--gin.TASK_FEATURE_LENGTHS={lengths}")
  assert int(state.step) == 2 and "decoder" not in state.params
  # The reported metrics are those of the predictions the run wrote (every validation example
  # of the mock data), recomputed here from the text rows: accuracy by hand, span F1 and
  # SQuAD EM / F1 by the metric functions that test_span_f1_and_squad_metrics_by_hand checks.
  rows = [json.loads(line) for line in
          (tmp_path / "run" / "infer_eval_predictions" / "2.jsonl").read_text().splitlines()]
  assert {r["task"] for r in rows} == {task} and len(rows) == {
      "accuracy": 4, "f1": 2, "em": 3}[metric]
  targets, predictions = [r["targets"] for r in rows], [r["prediction"] for r in rows]
  reference = {
      "accuracy": lambda t, p: {"accuracy": 100 * np.mean([a == b for a, b in zip(t, p)])},
      "f1": metrics.span_f1,
      "em": lambda t, p: metrics.squad([[a] for a in t], p),
  }[metric]
  want = {f"{task}/{k}": v for k, v in reference(targets, predictions).items()}
  assert {k: v for k, v in eval_metrics.items() if k.startswith(f"{task}/")} == pytest.approx(
      want, abs=1e-6)
  assert reference(targets, targets)[metric] == 100.0  # and it reaches 100 on the targets
  operative = (tmp_path / "run" / "config.gin").read_text()
  assert f"MIXTURE_OR_TASK_NAME = '{task}'" in operative
  assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
