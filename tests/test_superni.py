"""tasks/superni.py on a small clone-shaped directory written by the test."""

import json
import os

from etils import epath
import gin
import pytest
import seqio

from t5x_lite.config import configurables
from t5x_lite.tasks import superni
from t5x_lite.tasks import vocab
import fake_bucket
import runmode_utils

_SPM = os.path.join(os.path.dirname(seqio.__file__),
                    "test_data/sentencepiece/sentencepiece.model")

SENTIMENT = {
    "Categories": ["Sentiment Analysis"],
    "Definition": ["Given a movie review, classify its sentiment as positive or negative"],
    "Positive Examples": [
        {"input": "I loved it", "output": "positive", "explanation": "The reviewer loved the movie"},
        {"input": "Terrible acting!", "output": "negative", "explanation": "Terrible means bad."},
        {"input": "unused third", "output": "positive", "explanation": "x"},
    ],
    "Negative Examples": [
        {"input": "Great film", "output": "negative", "explanation": "Great is positive"},
    ],
    "Input_language": ["English"],
    # 8 instances: the 3rd's only reference is "" (kept: SuperNI's evaluation keeps it), the
    # 6th has none (skipped) -> 7 instances, labels {negative, positive, ""} -> classification.
    "Instances": [{"id": f"sent-{i}", "input": f"review {i}",
                   "output": ["positive" if i % 2 else "negative"]} for i in range(8)],
}
SENTIMENT["Instances"][2]["output"] = [""]
SENTIMENT["Instances"][5]["output"] = []

TITLES = {
    "Categories": ["Title Generation"],
    "Definition": "Write a title for the text.",
    "Positive Examples": [{"input": "Text about cats.", "output": "Cats", "explanation": "e"}],
    "Negative Examples": [],
    # 120 instances with distinct outputs -> generation; two references each.
    "Instances": [{"id": f"title-{i}", "input": f"text {i}",
                   "output": [f"Title {i}", f"Another title {i}"]} for i in range(120)],
}


def _write(root, name, data=None, raw=None):
  path = os.path.join(root, "tasks", name + ".json")
  with open(path, "wb") as f:
    f.write(raw if raw is not None else json.dumps(data).encode("utf-8"))
  return path


@pytest.fixture
def clone(tmp_path, monkeypatch):
  """natural-instructions layout: 2 train tasks, 2 test tasks."""
  root = str(tmp_path)
  os.makedirs(os.path.join(root, "tasks"))
  os.makedirs(os.path.join(root, "splits", "default"))
  _write(root, "task001_sentiment", SENTIMENT)
  _write(root, "task002_titles", TITLES)
  _write(root, "task003_train_a", dict(TITLES, Categories=["Question Answering"]))
  # Non-UTF-8 byte (0xff) in one instance's input: replaced, the task survives.
  qa = {"Categories": ["Question Answering"], "Definition": ["Answer the question."],
        "Positive Examples": [], "Negative Examples": [],
        "Instances": [{"id": "qa-0", "input": "Capital of France? MARK", "output": ["Paris"]},
                      {"id": "qa-1", "input": "", "output": ["empty input is fine"]}]}
  raw = json.dumps(qa).encode("utf-8").replace(b"MARK", b"\xff")
  _write(root, "task004_train_b", raw=raw)
  with open(os.path.join(root, "splits", "default", "train_tasks.txt"), "w") as f:
    f.write("task003_train_a\n\ntask004_train_b\n")
  with open(os.path.join(root, "splits", "default", "test_tasks.txt"), "w") as f:
    f.write("task001_sentiment\ntask002_titles\n")
  monkeypatch.setenv("SUPERNI_DATA_DIR", root)
  return root


@pytest.fixture(scope="module")
def names():
  return superni.register_superni_tasks(seqio.SentencePieceVocabulary(_SPM), prefix="t_sni")


def _examples(name, split):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      sequence_length=None, split=split, shuffle=False, num_epochs=1)
  return [{k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


DEF = "Definition: Given a movie review, classify its sentiment as positive or negative.\n\n"
POS = (" Positive Example 1 -\nInput: I loved it.\n Output: positive.\n\n"
       " Positive Example 2 -\nInput: Terrible acting!\n Output: negative.\n\n")
POS_EXPL = (" Positive Example 1 -\nInput: I loved it.\n Output: positive.\n"
            " Explanation: The reviewer loved the movie.\n\n"
            " Positive Example 2 -\nInput: Terrible acting!\n Output: negative.\n"
            " Explanation: Terrible means bad.\n\n")
NEG = " Negative Example 1 -\nInput: Great film.\n Output: negative.\n\n"
NEG_EXPL = (" Negative Example 1 -\nInput: Great film.\n Output: negative.\n"
            " Explanation: Great is positive.\n\n")
QUERY = "Now complete the following example -\nInput: review 0.\nOutput: "


@pytest.mark.parametrize("enc,expected", [
    ("def_pos2", DEF + POS + QUERY),
    ("def", DEF + QUERY),
    ("pos2", POS + QUERY),
    ("def_pos2_neg2", DEF + POS + NEG + QUERY),
    ("def_pos2_expl", DEF + POS_EXPL + QUERY),
    ("def_pos2_neg2_expl", DEF + POS_EXPL + NEG_EXPL + QUERY),
])
def test_exact_prompts(clone, names, enc, expected):
  ex = _examples(f"t_sni_{enc}_test", "test")[0]
  assert ex["inputs_pretokenized"] == expected
  assert ex["targets_pretokenized"] == "negative"
  assert json.loads(ex["references"]) == ["negative"]
  assert (ex["task_name"], ex["category"], ex["task_type"], ex["id"]) == (
      "task001_sentiment", "Sentiment Analysis", "classification", "sent-0")
  vocab = seqio.SentencePieceVocabulary(_SPM)
  assert ex["targets"].tolist() == vocab.encode("negative") + [1]  # EOS appended


def test_test_split_caps_and_skips(clone, names):
  examples = _examples("t_sni_def_test", "validation")  # validation == test tasks
  ids = [e["id"] for e in examples]
  # sentiment: 8 instances, sent-5 has no reference -> 7 kept, in file order (sent-2, whose
  # only reference is "", included); titles: first 100 of 120 (SuperNI's test cap).
  assert ids == [f"sent-{i}" for i in range(8) if i != 5] + [f"title-{i}" for i in range(100)]
  assert json.loads(examples[2]["references"]) == [""]
  assert examples[2]["targets_pretokenized"] == ""
  assert json.loads(examples[7]["references"]) == ["Title 0", "Another title 0"]
  assert examples[7]["targets_pretokenized"] == "Title 0"


def test_train_split_sample_and_task_types(clone, names):
  examples = _examples("t_sni_def_pos2_train", "train")
  by_task = {}
  for e in examples:
    by_task.setdefault(e["task_name"], []).append(e)
  assert sorted(by_task) == ["task003_train_a", "task004_train_b"]
  # Train cap 100 of 120, a seeded sample: deterministic, not the first 100.
  sample = [e["id"] for e in by_task["task003_train_a"]]
  assert len(sample) == 100 and len(set(sample)) == 100
  assert sample != [f"title-{i}" for i in range(100)]
  assert sample == [e["id"] for e in _examples("t_sni_def_pos2_train", "train")
                    if e["task_name"] == "task003_train_a"]
  # Non-UTF-8 byte replaced by U+FFFD; the empty input still gets Tk-Instruct's ".".
  qa = {e["id"]: e for e in by_task["task004_train_b"]}
  assert "Capital of France? \ufffd." in qa["qa-0"]["inputs_pretokenized"]
  assert qa["qa-1"]["inputs_pretokenized"] == (
      "Definition: Answer the question.\n\n"
      "Now complete the following example -\nInput: .\nOutput: ")
  # Each training target is one of the instance's references.
  for e in by_task["task003_train_a"]:
    assert e["targets_pretokenized"] in json.loads(e["references"])
  # Subsets: sentiment is classification, titles generation.
  assert {e["task_name"] for e in _examples("t_sni_classification_def_test", "test")} == {
      "task001_sentiment"}
  assert {e["task_name"] for e in _examples("t_sni_generation_def_test", "test")} == {
      "task002_titles"}


def test_gin_caps(clone, names):
  gin.clear_config()
  try:
    gin.bind_parameter("superni.superni_options.max_train_instances_per_task", 3)
    gin.bind_parameter("superni.superni_options.max_test_instances_per_task", 2)
    superni.register_superni_tasks(vocab.default_vocabulary(), configurables.superni_options(),
                                   prefix="t_sni_caps", encodings={"def": superni.ENCODINGS["def"]})
    train = _examples("t_sni_caps_def_train", "train")
    test = _examples("t_sni_caps_def_test", "test")
  finally:
    gin.clear_config()
  assert [e["task_name"] for e in train] == ["task003_train_a"] * 3 + ["task004_train_b"] * 2
  assert [e["id"] for e in test] == ["sent-0", "sent-1", "title-0", "title-1"]


def test_evaluator_reports_per_task_and_category(clone, names):
  """A perfect model through seqio.Evaluator scores 100 everywhere, with groups."""
  # The default vocabulary (byte fallback) round-trips any text; the tiny test model
  # maps capitals and digits to <unk>, which a perfect-model test cannot use.
  superni.register_superni_tasks(vocab.default_vocabulary(), prefix="t_sni_dv",
                                 encodings={"def": superni.ENCODINGS["def"]})
  evaluator = seqio.Evaluator(
      mixture_or_task_name="t_sni_dv_def_test",
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split="test", sequence_length={"inputs": 64, "targets": 16})

  def predict_fn(ds):  # a perfect model: the padded target tokens themselves
    return [(i, ex["decoder_target_tokens"].tolist()) for i, ex in ds.as_numpy_iterator()]

  all_metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                      score_fn=lambda ds: [])
  result = {k: v for k, v in all_metrics.result()["t_sni_dv_def_test"].items()}
  result = {k: float(getattr(v, "value", v)) for k, v in result.items()}
  expected = {}
  for group in ("", "_for_task001_sentiment", "_for_sentiment_analysis",
                "_for_task002_titles", "_for_title_generation"):
    expected[f"exact_match{group}"] = 100.0
    expected[f"rougeL{group}"] = 100.0
  # sent-2's reference is "": the empty prediction matches it exactly, but ROUGE-L of an
  # empty reference is 0 (rouge-score's convention, which SuperNI's scorer inherits).
  for group in ("_for_task001_sentiment", "_for_sentiment_analysis"):
    expected[f"rougeL{group}"] = round(100 * 6 / 7, 4)
  expected["rougeL"] = round(100 * 106 / 107, 4)
  assert result == expected


def test_default_names_registered():
  for name in ("superni_def_pos2_train", "superni_def_pos2_test",
               "superni_def_pos2_neg2_expl_test", "superni_classification_def_pos2_test",
               "superni_generation_pos2_train"):
    assert name in seqio.TaskRegistry.names()
  # Re-registering replaces instead of raising (idempotent).
  again = superni.register_superni_tasks(seqio.SentencePieceVocabulary(_SPM), prefix="t_sni")
  assert len(again) == len(set(again)) == 6 * 2 * 3


def test_missing_data_dir(monkeypatch, names):
  monkeypatch.delenv("SUPERNI_DATA_DIR", raising=False)
  with pytest.raises(ValueError, match="SUPERNI_DATA_DIR"):
    _examples("t_sni_def_test", "test")
  monkeypatch.setenv("SUPERNI_DATA_DIR", "/nonexistent/ni")
  with pytest.raises(FileNotFoundError, match="/nonexistent/ni"):
    _examples("t_sni_def_test", "test")


def test_missing_split_and_task_files(clone, names):
  os.remove(os.path.join(clone, "tasks", "task002_titles.json"))
  with pytest.raises(FileNotFoundError, match=r"task002_titles\.json.*test_tasks\.txt"):
    _examples("t_sni_def_test", "test")
  os.remove(os.path.join(clone, "splits", "default", "train_tasks.txt"))
  with pytest.raises(FileNotFoundError, match=r"splits/default/train_tasks\.txt"):
    _examples("t_sni_def_train", "train")


def test_malformed_json_names_file_and_line(clone, names):
  path = _write(clone, "task001_sentiment", raw=b'{\n  "Definition": ["x"],\n  "Instances": [,]\n}')
  with pytest.raises(ValueError, match=r"task001_sentiment\.json: malformed JSON at line 3 column 17"):
    _examples("t_sni_def_test", "test")
  _write(clone, "task001_sentiment", {"Definition": ["x"]})
  with pytest.raises(ValueError, match=r"task001_sentiment\.json: missing the 'Instances' key"):
    _examples("t_sni_def_test", "test")
  assert os.path.exists(path)


def test_encode_prompt_task_name_and_string_definition():
  task = {"Task": "task9_x", "Definition": "Do it", "Positive Examples": [],
          "Negative Examples": []}
  enc = superni.Encoding(num_pos_examples=0, add_task_name=True)
  assert superni.encode_prompt(task, "hi?", enc) == (
      "task9_x. Definition: Do it.\n\nNow complete the following example -\n"
      "Input: hi?\nOutput: ")
  assert superni.classify_task_type(
      [{"output": ["Yes"]}, {"output": ["no."]}, {"output": ["yes"]}, {"output": ["No"]}],
      max_labels=10) == "classification"
  assert superni.classify_task_type(
      [{"output": ["a"]}, {"output": ["b"]}, {"output": ["c"]}], max_labels=10) == "generation"


def test_over_long_example_is_cut_alike_in_train_eval_and_infer(clone, names):
  modes = runmode_utils.tokens_in_each_mode("t_sni_def_pos2_test", {"inputs": 16, "targets": 2},
                                            "test")
  assert modes["train"] == modes["eval"] == modes["infer"], modes
  inputs, targets = modes["train"]
  assert len(inputs) == 16 and inputs[-1] == 1 and 0 not in inputs
  assert len(targets) == 2 and targets[-1] == 1


def test_data_dir_on_a_bucket_gives_the_same_examples(clone, names, monkeypatch):
  """SUPERNI_DATA_DIR may be a bucket: files are read through etils.epath."""
  local = _examples("t_sni_def_test", "validation")
  bucket = fake_bucket.register_scheme(monkeypatch)
  for directory, _, files in os.walk(clone):
    for name in files:
      source = epath.Path(directory) / name
      target = epath.Path(bucket) / "ni" / os.path.relpath(source, clone)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(source.read_bytes())
  monkeypatch.setenv("SUPERNI_DATA_DIR", f"{bucket}/ni")
  remote = _examples("t_sni_def_test", "validation")
  assert [{k: str(v) for k, v in ex.items()} for ex in remote] == [
      {k: str(v) for k, v in ex.items()} for ex in local]
  assert len(remote) == 107


# The default split's 119 test tasks with their category and output space as recorded from
# allenai/natural-instructions (sources and what could not be read: the file's header).
_DEFAULT_TEST_TASKS = os.path.join(os.path.dirname(__file__), "superni_default_test_tasks.tsv")


def _recorded_test_tasks():
  with open(_DEFAULT_TEST_TASKS, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
  header, *rows = [line.split("\t") for line in lines]
  assert header == ["task", "category", "output_values", "evidence"]
  return rows


def test_study_rule_on_the_default_test_split(tmp_path, monkeypatch):
  """The study's rule, through the loader, on a clone shaped like the recorded test split:
  each task gets its category and an output space at the recorded bound (100 values for
  "<=100", the largest a classification task may have; 101 for ">100"), and 64 of the 119
  come out classification, as the study reports (Word Analogy included)."""
  rows = _recorded_test_tasks()
  assert len(rows) == len({r[0] for r in rows}) == 119
  per_category = {}
  for _, category, _, _ in rows:
    per_category[category] = per_category.get(category, 0) + 1
  assert per_category == {
      "Textual Entailment": 24, "Cause Effect Classification": 7, "Coreference Resolution": 14,
      "Dialogue Act Recognition": 7, "Answerability Classification": 13, "Word Analogy": 8,
      "Overlap Extraction": 2, "Keyword Tagging": 5, "Question Rewriting": 11,
      "Title Generation": 18, "Data to Text": 9, "Grammar Error Correction": 1}
  root = str(tmp_path)
  os.makedirs(os.path.join(root, "tasks"))
  os.makedirs(os.path.join(root, "splits", "default"))
  sizes = {">100": 101, "<=100": 100, "-": 3}
  for name, category, values, _ in rows:
    _write(root, name, {"Categories": [category], "Definition": ["d"],
                        "Instances": [{"id": f"{name}-{i}", "input": "x", "output": [f"v{i}"]}
                                      for i in range(sizes[values])]})
  with open(os.path.join(root, "splits", "default", "test_tasks.txt"), "w") as f:
    f.write("\n".join(r[0] for r in rows) + "\n")
  monkeypatch.setenv("SUPERNI_DATA_DIR", root)

  def classification(rule):
    tasks = superni.load_split_tasks(superni.SuperNIOptions(task_type_rule=rule), "test")
    return sorted(t["Task"] for t in tasks if t["TaskType"] == "classification")

  study = classification("study")
  assert len(study) == 64
  assert superni.SuperNIOptions().task_type_rule == "study"
  by_category = {}
  for name, category, _, _ in rows:
    if name in study:
      by_category[category] = by_category.get(category, 0) + 1
  assert by_category == {"Textual Entailment": 24, "Cause Effect Classification": 5,
                         "Coreference Resolution": 7, "Dialogue Act Recognition": 7,
                         "Answerability Classification": 13, "Word Analogy": 8}
  exact_match_categories = {"Textual Entailment", "Cause Effect Classification",
                            "Coreference Resolution", "Dialogue Act Recognition",
                            "Answerability Classification", "Word Analogy"}
  assert sorted(r[0] for r in rows if r[1] in exact_match_categories and r[0] not in study) == [
      "task033_winogrande_answer_generation", "task249_enhanced_wsc_pronoun_disambiguation",
      "task304_numeric_fused_head_resolution", "task330_gap_answer_generation",
      "task393_plausible_result_generation", "task401_numeric_fused_head_reference",
      "task614_glucose_cause_event_detection", "task648_answer_generation",
      "task891_gap_coreference_resolution"]
  # The earlier "category" rule lacks Word Analogy: 56.
  assert classification("category") == sorted(
      n for n, c, _, _ in rows if n in study and c != "Word Analogy")
  assert len(classification("category")) == 56
