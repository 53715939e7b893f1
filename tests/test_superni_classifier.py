"""tasks/superni_classifier.py, superni.py's task-type rules and t5x_lite/tools/superni_compare.py on
a small SuperNI-format directory the test writes: exact pair prompts and labels, per-instance
choices and exact match from given logits / scores, errors, and both recipes end to end."""

import json
import os

from etils import epath
import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import fake_bucket
import runmode_utils as u
from t5x_lite import main
from t5x_lite.checkpointing import summaries
from t5x_lite.model import heads
from t5x_lite.modes import prediction
from t5x_lite.tasks import metrics as metrics_lib
from t5x_lite.tasks import superni, superni_classifier, vocab
from t5x_lite.tools import superni_compare

DEFINITION = "Does the premise entail the hypothesis? Answer Yes or No"
NLI = {
    "Categories": ["Textual Entailment"], "Definition": [DEFINITION],
    "Positive Examples": [{"input": "Premise: A man sings. Hypothesis: Someone sings",
                           "output": "Yes", "explanation": "x"}],
    "Negative Examples": [],
    # References as written: "Yes." and "yes" are one label after normalisation; nli-2 has
    # two references. Output space: Yes., No, yes, Correct (first spellings, in order).
    "Instances": [{"id": "nli-0", "input": "Premise: A dog runs. Hypothesis: An animal moves",
                   "output": ["Yes."]},
                  {"id": "nli-1", "input": "Premise: A cat sleeps. Hypothesis: It runs",
                   "output": ["No"]},
                  {"id": "nli-2", "input": "P. H?", "output": ["yes", "Correct"]},
                  {"id": "nli-3", "input": "a", "output": ["NO"]},
                  {"id": "nli-4", "input": "b", "output": ["Yes."]},
                  {"id": "nli-5", "input": "c", "output": ["no"]}],
}
ACTS = {"Categories": ["Dialogue Act Recognition"], "Definition": ["Name the dialogue act."],
        "Positive Examples": [], "Negative Examples": [],
        "Instances": [{"id": f"act-{i}", "input": f"utterance {i}",
                       "output": ["question" if i % 2 else "inform"]} for i in range(6)]}
TITLES = {"Categories": ["Title Generation"], "Definition": ["Write a title."],
          "Positive Examples": [], "Negative Examples": [],
          "Instances": [{"id": f"title-{i}", "input": f"text {i}", "output": [f"Title {i}"]}
                        for i in range(4)]}
# A classification category answered with 120 different names: generation by its output space.
NAMES = {"Categories": ["Coreference Resolution"], "Definition": ["Who is it?"],
         "Positive Examples": [], "Negative Examples": [],
         "Instances": [{"id": f"name-{i}", "input": f"story {i}", "output": [f"Person {i}"]}
                       for i in range(120)]}
# Word Analogy, three labels: classification by the study's rule (the default) and by the
# label-count rule, generation by the "category" rule (its table lacks Word Analogy).
ANALOGY = {"Categories": ["Word Analogy"], "Definition": ["Complete the analogy."],
           "Positive Examples": [], "Negative Examples": [],
           "Instances": [{"id": f"an-{i}", "input": f"a : b :: c : {i}",
                          "output": [("box", "jar", "bag")[i % 3]]} for i in range(10)]}
SENTIMENT = {"Categories": ["Sentiment Analysis"], "Definition": ["Positive or negative?"],
             "Positive Examples": [], "Negative Examples": [],
             "Instances": [{"id": f"s-{i}", "input": f"review {i}",
                            "output": ["positive" if i % 2 else "negative"]} for i in range(8)]}
QA = {"Categories": ["Question Answering"], "Definition": ["Answer."], "Positive Examples": [],
      "Negative Examples": [],
      "Instances": [{"id": f"qa-{i}", "input": f"question {i}", "output": [f"answer {i}"]}
                    for i in range(3)]}
TEST_TASKS = {"task101_nli": NLI, "task102_acts": ACTS, "task103_titles": TITLES,
              "task104_names": NAMES}
TRAIN_TASKS = {"task201_sentiment": SENTIMENT, "task202_qa": QA}
ENCODING = superni.ENCODINGS["def"]


def write_clone(root, test_tasks=TEST_TASKS, train_tasks=TRAIN_TASKS):
  os.makedirs(os.path.join(root, "tasks"), exist_ok=True)
  os.makedirs(os.path.join(root, "splits", "default"), exist_ok=True)
  for subset, tasks in (("test", test_tasks), ("train", train_tasks)):
    for name, data in tasks.items():
      with open(os.path.join(root, "tasks", name + ".json"), "w", encoding="utf-8") as f:
        json.dump(data, f)
    with open(os.path.join(root, "splits", "default", f"{subset}_tasks.txt"), "w") as f:
      f.write("\n".join(tasks) + "\n")


@pytest.fixture
def clone(tmp_path, monkeypatch):
  root = str(tmp_path / "ni")
  write_clone(root)
  monkeypatch.setenv("SUPERNI_DATA_DIR", root)
  return root


@pytest.fixture(scope="module")
def names():
  superni.register_superni_tasks(vocab.default_vocabulary(), prefix="t_nic",
                                 encodings={"def": ENCODING})
  return superni_classifier.register_superni_classifier_tasks(
      vocab.default_vocabulary(), prefix="t_nic", encodings={"def": ENCODING})


def _examples(name, split, lengths=None):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=False,
                                                   num_epochs=1)
  return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


def test_task_type_rules(tmp_path, monkeypatch):
  write_clone(str(tmp_path), test_tasks={**TEST_TASKS, "task105_analogy": ANALOGY})
  monkeypatch.setenv("SUPERNI_DATA_DIR", str(tmp_path))

  def types(**options):
    tasks = superni.load_split_tasks(superni.SuperNIOptions(**options), "test")
    return {t["Task"]: t["TaskType"] for t in tasks}
  assert types() == types(task_type_rule="study") == {
      "task101_nli": "classification", "task102_acts": "classification",
      "task103_titles": "generation", "task104_names": "generation",
      "task105_analogy": "classification"}
  assert types(task_type_rule="category") == {
      "task101_nli": "classification", "task102_acts": "classification",
      "task103_titles": "generation", "task104_names": "generation",
      "task105_analogy": "generation"}
  assert types(task_type_rule="label_count") == {
      "task101_nli": "classification", "task102_acts": "classification",
      "task103_titles": "generation", "task104_names": "generation",
      "task105_analogy": "classification"}
  assert types(max_output_space=3)["task101_nli"] == "generation"  # 4 lower-cased outputs
  with pytest.raises(ValueError, match="task_type_rule='labels'"):
    superni.SuperNIOptions(task_type_rule="labels")
  nli = superni.load_split_tasks(superni.SuperNIOptions(), "test")[0]
  assert nli["OutputSpace"] == ["Yes.", "No", "yes", "Correct"]
  analogy = superni.load_split_tasks(superni.SuperNIOptions(), "test")[4]
  assert analogy["OutputSpace"] == ["box", "jar", "bag"]


def test_pair_prompts_and_labels(clone, names):
  pairs = _examples("t_nic_pairs_def_test", "test")
  # Classification test tasks only: 6 NLI instances x 4 candidates, 6 acts x 2.
  assert len(pairs) == 6 * 4 + 6 * 2
  assert [(p["id"], p["candidate"], p["targets_pretokenized"]) for p in pairs[:12]] == [
      ("nli-0", "Yes.", "correct"), ("nli-0", "No", "incorrect"), ("nli-0", "yes", "correct"),
      ("nli-0", "Correct", "incorrect"),
      ("nli-1", "Yes.", "incorrect"), ("nli-1", "No", "correct"), ("nli-1", "yes", "incorrect"),
      ("nli-1", "Correct", "incorrect"),
      ("nli-2", "Yes.", "correct"), ("nli-2", "No", "incorrect"), ("nli-2", "yes", "correct"),
      ("nli-2", "Correct", "correct")]
  assert pairs[1]["inputs_pretokenized"] == (
      f"Definition: {DEFINITION}.\n\n"
      "Input: Premise: A dog runs. Hypothesis: An animal moves.\nOutput: No.\n"
      "Is this example correct?")
  assert pairs[8]["inputs_pretokenized"].endswith(  # "?" and "." end sentences already
      "\n\nInput: P. H?\nOutput: Yes.\nIs this example correct?")
  assert [p["targets"].tolist() for p in pairs[:2]] == [[2], [1]]  # "correct" is class 1
  vocabulary = vocab.default_vocabulary()
  assert pairs[1]["inputs"].tolist() == vocabulary.encode(
      f"Definition: {DEFINITION}.\n\nInput: Premise: A dog runs. Hypothesis: An animal moves.\n"
  ) + vocabulary.encode("Output: No.\nIs this example correct?") + [1]
  assert {p["task_name"] for p in pairs} == {"task101_nli", "task102_acts"}
  assert json.loads(pairs[8]["references"]) == ["yes", "Correct"]


def test_training_pairs_with_and_without_generation_tasks(clone, names):
  plain = _examples("t_nic_pairs_def_train", "train")
  mixed = _examples("t_nic_pairs_mixed_def_train", "train")
  assert len(plain) == 8 * 2 and {p["task_name"] for p in plain} == {"task201_sentiment"}
  generation = [p for p in mixed if p["task_name"] == "task202_qa"]
  assert len(mixed) == 8 * 2 + 3 and len(generation) == 3
  assert all(p["targets_pretokenized"] == "correct" and p["candidate"] in
             json.loads(p["references"]) for p in generation)
  assert generation[0]["inputs_pretokenized"].endswith(
      f"Input: {generation[0]['id'].replace('qa-', 'question ')}.\n"
      f"Output: {generation[0]['candidate']}.\nIs this example correct?")


def test_a_long_prompt_keeps_the_candidate_and_a_long_candidate_is_an_error(clone, names):
  pairs = _examples("t_nic_pairs_def_test", "test", {"inputs": 20, "targets": 1})
  tail = vocab.default_vocabulary().encode("Output: No.\nIs this example correct?") + [1]
  assert len(pairs[1]["inputs"]) == 20 and pairs[1]["inputs"][-len(tail):].tolist() == tail
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"t_nic_pairs_def_test: SuperNI task task101_nli, instance nli-0: "
                           r"the candidate needs \d+ tokens with the question after it, more "
                           r"than the inputs length 6: raise the inputs length of "
                           r"TASK_FEATURE_LENGTHS \(gin\)\. Candidate: Yes\."):
    _examples("t_nic_pairs_def_test", "test", {"inputs": 6, "targets": 1})


def test_empty_output_space_names_the_task(tmp_path, monkeypatch, names):
  empty = dict(NLI, Instances=[{"id": "e-0", "input": "x", "output": []}])
  write_clone(str(tmp_path), test_tasks={"task106_empty": empty})
  monkeypatch.setenv("SUPERNI_DATA_DIR", str(tmp_path))
  with pytest.raises(ValueError, match="task106_empty is a classification task .* with an "
                                       "empty output space"):
    _examples("t_nic_pairs_def_test", "test")


def _targets(name):
  task = seqio.get_mixture_or_task(name)
  return [task.postprocess_fn(None, example=ex, is_target=True) for ex in _examples(name, "test")]


def test_classifier_choice_and_exact_match_from_given_logits(clone, names):
  targets = _targets("t_nic_pairs_def_test")
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((len(targets), 2)) * 3
  # Pin the choices: nli-0 picks "yes" (a reference after normalisation), nli-1 "yes"
  # (wrong), nli-2 "Correct" (its second reference), act-0 "question" (wrong).
  index = {(t["id"], t["candidate"]): i for i, t in enumerate(targets)}
  for key in [("nli-0", "yes"), ("nli-1", "yes"), ("nli-2", "Correct"), ("act-0", "question")]:
    logits[index[key]] = [-5.0, 9.0]
  p_correct = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
  chosen = {}
  for i, t in enumerate(targets):  # independent reference: argmax of P(correct) per instance
    if t["id"] not in chosen or p_correct[i] > p_correct[chosen[t["id"]]]:
      chosen[t["id"]] = i
  assert {k: targets[v]["candidate"] for k, v in chosen.items() if k in
          ("nli-0", "nli-1", "nli-2", "act-0")} == {
              "nli-0": "yes", "nli-1": "yes", "nli-2": "Correct", "act-0": "question"}
  right = {k: float(targets[v]["candidate"].lower().strip(".") in
                    [r.lower().strip(".") for r in targets[v]["references"]])
           for k, v in chosen.items()}
  # What the model reports: the predicted label and log p of it.
  predicted = logits.argmax(1)
  log_p = logits[np.arange(len(logits)), predicted] - np.log(np.exp(logits).sum(1))
  result = superni_classifier.superni_pair_metrics(
      targets, ["correct" if p else "incorrect" for p in predicted], {"scores": log_p})
  nli = [right[f"nli-{i}"] for i in range(6)]
  acts = [right[f"act-{i}"] for i in range(6)]
  assert result["exact_match"] == round(100 * (sum(nli) + sum(acts)) / 12, 4)
  assert result["exact_match_for_task101_nli"] == round(100 * sum(nli) / 6, 4)
  assert result["exact_match_for_dialogue_act_recognition"] == round(100 * sum(acts) / 6, 4)
  assert nli[:3] == [1.0, 0.0, 1.0] and acts[0] == 0.0


def test_pair_metrics_through_the_evaluator_with_the_classifier_converter(clone, names):
  """seqio.Evaluator plumbing: converter batches, decoded labels, aux scores, targets."""
  model = heads.SequenceClassificationModel(u.tiny_model().config, num_labels=2)
  evaluator = seqio.Evaluator("t_nic_pairs_def_test", model.feature_converter(pack=False),
                              eval_split="test", sequence_length={"inputs": 64, "targets": 1})

  def predict_with_aux(ds):  # "correct" with certainty 0.9 for the first candidate of each
    rows, scores = [], []
    for i, _ in ds.as_numpy_iterator():
      rows.append((i, [2 if i in first_pairs else 1]))
      scores.append(float(np.log(0.9)))
    return rows, {"scores": scores}

  targets = _targets("t_nic_pairs_def_test")
  first_pairs = {i for i, t in enumerate(targets) if t["candidate"] in ("Yes.", "inform")}
  metrics, _ = evaluator.evaluate(compute_metrics=True, predict_with_aux_fn=predict_with_aux,
                                  predict_fn=lambda ds: [], score_fn=lambda ds: [])
  result = {k: float(getattr(v, "value", v))
            for k, v in metrics.result()["t_nic_pairs_def_test"].items()}
  # "Yes." is right for nli-0, 2, 4; "inform" for act-0, 2, 4: 6 of 12.
  assert result["exact_match"] == 50.0 and result["exact_match_for_task101_nli"] == 50.0


def test_rank_classification_from_given_scores(clone, names):
  examples = _examples("t_nic_rank_def_test", "test")
  assert len(examples) == 6 * 4 + 6 * 2
  assert examples[0]["inputs_pretokenized"] == superni.encode_prompt(
      {"Task": "task101_nli", **NLI}, NLI["Instances"][0]["input"], ENCODING)
  assert [e["targets_pretokenized"] for e in examples[:4]] == ["Yes.", "No", "yes", "Correct"]
  targets = _targets("t_nic_rank_def_test")
  scores = [-1.0] * len(targets)
  for i, t in enumerate(targets):  # the longest candidate wins everywhere
    scores[i] = -10.0 + len(t["candidate"])
  result = superni_classifier.superni_rank_metrics(targets, scores)
  # "Correct" is right only for nli-2; "question" for the odd acts.
  assert result["rank_exact_match_for_task101_nli"] == round(100 / 6, 4)
  assert result["rank_exact_match_for_task102_acts"] == 50.0
  assert result["rank_exact_match"] == round(100 * 4 / 12, 4)
  assert all(k.startswith("rank_") for k in result)


def test_generator_run_averages_keep_decoding_and_ranking_apart(clone, names):
  """The generator run evaluates the decoded answers and rank classification of the same
  instances; its averages (prediction.flatten_metrics) must not mix the two."""
  decoded_targets = _targets("t_nic_classification_def_test")
  # Decoding answers "yes" everywhere: right for nli-0, 2, 4 (after normalisation), 3 of 12.
  decoded = metrics_lib.superni_metrics(decoded_targets, ["yes"] * len(decoded_targets))
  assert decoded["exact_match"] == 25.0
  rank_targets = _targets("t_nic_rank_def_test")
  # Ranking picks the longest candidate: right for nli-2 and the odd acts, 4 of 12.
  ranked = superni_classifier.superni_rank_metrics(
      rank_targets, [len(t["candidate"]) for t in rank_targets])
  assert ranked["rank_exact_match"] == round(100 * 4 / 12, 4)
  flat = prediction.flatten_metrics({"t_nic_classification_def_test": decoded,
                                     "t_nic_rank_def_test": ranked})
  assert flat["average/exact_match"] == 25.0
  assert flat["average/rank_exact_match"] == round(100 * 4 / 12, 4)
  assert flat["t_nic_rank_def_test/rank_exact_match_for_task101_nli"] == round(100 / 6, 4)


def test_comparison_task_names_and_table(tmp_path):
  pick = superni_classifier.superni_comparison_task
  assert pick("generator", "train") == "superni_classification_def_pos2_train"
  assert pick("generator", "train", mix_generation_tasks=True) == "superni_def_pos2_train"
  assert pick("generator", "test", "def") == "superni_generator_eval_def"
  assert pick("classifier", "train", mix_generation_tasks=True) == (
      "superni_pairs_mixed_def_pos2_train")
  assert pick("classifier", "test") == "superni_pairs_def_pos2_test"
  with pytest.raises(ValueError, match="encoding='def_pos9'"):
    pick("classifier", "test", "def_pos9")
  gen, cls = tmp_path / "gen", tmp_path / "cls"
  gen.mkdir()
  cls.mkdir()
  (gen / "eval_metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n" + json.dumps({
      "step": 2, "superni_classification_def_pos2_test/exact_match": 40.0,
      "superni_classification_def_pos2_test/exact_match_for_textual_entailment": 30.0,
      "superni_classification_def_pos2_test/exact_match_for_task101_nli": 30.0,
      "superni_rank_def_pos2_test/rank_exact_match": 45.5,
      "superni_rank_def_pos2_test/rank_exact_match_for_textual_entailment": 50.0,
      "superni_rank_def_pos2_test/rank_exact_match_for_task101_nli": 50.0,
      # What the run's average of decoding and ranking used to be: never read.
      "average/exact_match": 42.75}) + "\n")
  (cls / "eval_metrics.jsonl").write_text(json.dumps({
      "step": 5, "superni_pairs_def_pos2_test/exact_match": 61.25,
      "superni_pairs_def_pos2_test/exact_match_for_task101_nli": 70.0}) + "\n")
  table = superni_compare.main([f"--generator={gen}", f"--classifier={cls}"])
  assert table == "\n".join([
      "| group (exact_match) | generator | rank | classifier |",
      "|---|---:|---:|---:|",
      "| overall | 40.00 | 45.50 | 61.25 |",
      "| textual_entailment | 30.00 | 50.00 | - |",
      "| task101_nli | 30.00 | 50.00 | 70.00 |"])


def test_superni_compare_wrong_path_is_one_line(tmp_path, capsys):
  gen = tmp_path / "gen"
  gen.mkdir()
  (gen / "eval_metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
  cases = [([f"--generator={tmp_path / 'missing'}", f"--classifier={gen}"], "generator",
            f"{tmp_path / 'missing'} does not exist"),
           ([f"--generator={gen}", f"--classifier={tmp_path}"], "classifier",
            f"the run directory {tmp_path} has no eval_metrics.jsonl")]
  for argv, flag, what in cases:
    with pytest.raises(SystemExit) as exit_info:
      superni_compare.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"superni_compare: --{flag}: No metrics file: {what}; expected a run directory "
        "holding eval_metrics.jsonl (written by the final eval of training with a SuperNI "
        "recipe, or by the eval run mode; --metrics_file names another) or the metrics file "
        "itself.\n")
  (gen / "eval_metrics.jsonl").write_text("{not json\n")
  with pytest.raises(SystemExit):
    superni_compare.main([f"--generator={gen}", f"--classifier={gen}"])
  assert capsys.readouterr().err == (
      f"superni_compare: --generator: {gen / 'eval_metrics.jsonl'} line 1 is not a JSON "
      "metrics row (Expecting property name enclosed in double quotes).\n")


# ---------------------------------------------------------------------------- recipes ---


def test_generator_and_classifier_recipes_and_their_table(clone, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  common = ["--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2", "--gin.train.progress_bar=False",
            "--gin.EvalConfig.infer_eval_num_examples=8", "--gin.EvalConfig.print_examples=1",
            *u.TINY_GIN,
            "--gin.CheckpointConfig.async_save=False"]  # see tests/test_encoder_tasks.py

  def run(recipe, *bindings):
    gin.clear_config()
    try:
      return main.main([f"--gin_file=recipes/{recipe}", *common, *bindings])
    finally:
      gin.clear_config()

  _, generator = run("superni_generator.gin", f"--gin.MODEL_DIR={tmp_path / 'gen'}",
                     "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.train.initial_checkpoint=None",
                     "--gin.MIX_GENERATION_TASKS=False",
                     "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 6}")
  assert "superni_classification_def_pos2_test/exact_match" in generator
  assert "superni_rank_def_pos2_test/rank_exact_match_for_task101_nli" in generator
  # The run's average is the decoded answers' alone; ranking has its own.
  assert generator["average/exact_match"] == (
      generator["superni_classification_def_pos2_test/exact_match"])
  assert generator["average/rank_exact_match"] == (
      generator["superni_rank_def_pos2_test/rank_exact_match"])
  assert "Generated examples (greedy" in capsys.readouterr().out
  # The classifier starts from the generator's encoder: one binding.
  state, classifier = run("superni_classifier.gin", f"--gin.MODEL_DIR={tmp_path / 'cls'}",
                          f"--gin.INITIAL_CHECKPOINT_PATH={tmp_path / 'gen' / 'checkpoints'}",
                          "--gin.MIX_GENERATION_TASKS=True",
                          "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 1}")
  assert sorted(state.params) == ["classifier", "encoder", "token_embedder"]
  assert "superni_pairs_def_pos2_test/exact_match" in classifier
  assert "MIX_GENERATION_TASKS = True" in (tmp_path / "cls" / "config.gin").read_text()
  printed = capsys.readouterr().out  # a classifier predicts labels: nothing is "generated"
  assert "Predicted examples (the model's head" in printed
  assert "Generated examples" not in printed
  table = superni_compare.main([f"--generator={tmp_path / 'gen'}",
                                f"--classifier={tmp_path / 'cls'}"])
  assert table.splitlines()[2].startswith("| overall | ")
  assert "-" not in table.splitlines()[2]  # all three columns measured
  assert table in capsys.readouterr().out


def test_superni_compare_reads_a_run_directory_on_a_bucket(monkeypatch):
  bucket = fake_bucket.register_scheme(monkeypatch)
  run = epath.Path(f"{bucket}/ni_gen")
  run.mkdir(parents=True, exist_ok=True)
  (run / "eval_metrics.jsonl").write_text(
      json.dumps({"step": 10, "a/exact_match": 1.0}) + "\n"
      + json.dumps({"step": 20, "a/exact_match": 2.5}) + "\n")
  assert superni_compare.latest_metrics(str(run)) == {"step": 20, "a/exact_match": 2.5}
  # On an object store later flushes are objects of their own (summaries.history_files).
  later = summaries.parts_dir(run / "eval_metrics.jsonl") / "000001.jsonl"
  later.parent.mkdir(parents=True, exist_ok=True)
  later.write_text(json.dumps({"step": 30, "a/exact_match": 4.0}) + "\n")
  assert [str(f) for f in summaries.history_files(run / "eval_metrics.jsonl")][-1] == str(later)
  assert superni_compare.latest_metrics(str(run)) == {"step": 30, "a/exact_match": 4.0}
  with pytest.raises(FileNotFoundError, match="No metrics file"):
    superni_compare.latest_metrics(f"{bucket}/missing")
