"""tasks/metrics.py: SuperNI exact match / ROUGE-L (hand-computed values), accuracy, F1."""

import pytest

from t5x_lite.tasks import metrics


def test_normalize_answer_matches_superni():
  # Lower-case, punctuation removed, whitespace collapsed; articles KEPT, as SuperNI's
  # official scorer does ("without removing the articles").
  assert metrics.normalize_answer("  The  CAT, sat!\n on\ta mat. ") == "the cat sat on a mat"
  assert metrics.normalize_answer("The cat, an owl", remove_articles=True) == "cat owl"


def test_exact_match_and_rouge_single_pairs():
  assert metrics.exact_match_score("  PARIS!! ", "Paris") == 1.0
  # Articles differ -> not an exact match under SuperNI normalisation.
  assert metrics.exact_match_score("the cat sat on the mat", "a cat sat on a mat") == 0.0
  # LCS(cat sat on mat) = 4 of 6 tokens each side -> F = 2/3.
  assert metrics.rouge_l_score("the cat sat on the mat", "a cat sat on a mat") == pytest.approx(2 / 3)
  # Porter stemming (use_stemmer=True, as SuperNI): running->run, dogs->dog, runs->run.
  # pred [run, dog], ref [the, dog, run]: LCS 1, P 1/2, R 1/3 -> F 0.4.
  assert metrics.rouge_l_score("running dogs", "the dog runs") == pytest.approx(0.4)


def _targets():
  return [
      {"references": ["Paris", "the city of Paris"], "task": "task1_geo",
       "category": "Question Answering"},
      {"references": ["a cat sat on a mat"], "task": "task1_geo",
       "category": "Question Answering"},
      {"references": ["the dog runs", "xyz"], "task": "task2_dogs",
       "category": "Title Generation"},
      {"references": ["Yes", "no"], "task": "task3_yn", "category": "Question Answering"},
  ]


def test_superni_metrics_overall_per_task_per_category():
  predictions = ["  PARIS!! ", "the cat sat on the mat", "running dogs", "no."]
  # Per example (max over references): EM 1, 0, 0, 1; ROUGE-L 1, 2/3, 0.4, 1.
  result = metrics.superni_metrics(_targets(), predictions)
  assert result == {
      "exact_match": 50.0,
      "rougeL": 76.6667,                          # (1 + 2/3 + 0.4 + 1) / 4
      "exact_match_for_question_answering": 66.6667,
      "rougeL_for_question_answering": 88.8889,   # (1 + 2/3 + 1) / 3
      "exact_match_for_title_generation": 0.0,
      "rougeL_for_title_generation": 40.0,
      "exact_match_for_task1_geo": 50.0,
      "rougeL_for_task1_geo": 83.3333,            # (1 + 2/3) / 2
      "exact_match_for_task2_dogs": 0.0,
      "rougeL_for_task2_dogs": 40.0,
      "exact_match_for_task3_yn": 100.0,
      "rougeL_for_task3_yn": 100.0,
  }


def test_superni_metrics_plain_targets_have_no_groups():
  result = metrics.superni_metrics(["Paris", ["x", "a cat sat on a mat"]],
                                   ["paris", "the cat sat on the mat"])
  assert result == {"exact_match": 50.0, "rougeL": 83.3333}


def test_max_over_references_picks_best():
  # The second reference matches exactly; the first shares no token.
  assert metrics.exact_match(["unrelated", ["foo bar", "The answer."]],
                             ["nothing", "the answer"]) == {"exact_match": 50.0}


def test_accuracy_f1_strict_exact_match():
  assert metrics.accuracy(["Yes", ["no", "No."], "maybe"], ["yes.", "NO", "perhaps"]) == {
      "accuracy": 66.6667}
  # pred [the, big, cat], ref [a, big, cat, sat]: 2 common, P 2/3, R 1/2 -> F 4/7.
  assert metrics.f1(["a big cat sat"], ["the big cat"]) == {"f1": 57.1429}
  assert metrics.f1(["abc"], ["xyz"]) == {"f1": 0.0}
  # Case and punctuation matter for the embedded instruction families.
  assert metrics.strict_exact_match(["HELLO", "1, 2"], [" HELLO ", "1 2"]) == {
      "strict_exact_match": 50.0}
  assert metrics.exact_match(["HELLO", "1, 2"], [" hello ", "1 2"]) == {"exact_match": 100.0}


def test_category_key_and_errors():
  assert metrics.category_key("Title  Generation") == "title_generation"
  with pytest.raises(ValueError, match="no references"):
    metrics.superni_metrics([{"references": []}], ["x"])
  with pytest.raises(ValueError, match="2 predictions but 1"):
    metrics.compute_metrics(["a", "b"], [["a"]])


def test_empty_string_reference_is_a_reference():
  # SuperNI's official evaluation keeps "" among the references: an empty (or
  # punctuation-only) prediction matches it exactly; ROUGE-L of an empty reference is 0.
  assert metrics.references_of({"references": ["", "yes"]}) == ["", "yes"]
  assert metrics.exact_match_score(" . ", "") == 1.0
  assert metrics.rouge_l_score("", "") == 0.0
  # Example 1: reference "" and prediction "" -> EM 1, ROUGE-L 0.
  # Example 2: references ["", "b"], prediction "b" -> EM 1 (via "b"), ROUGE-L 1.
  # Example 3: reference "", prediction "x" -> EM 0, ROUGE-L 0.
  result = metrics.superni_metrics(
      [{"references": [""]}, {"references": ["", "b"]}, {"references": [""]}], ["", "b", "x"])
  assert result == {"exact_match": round(200 / 3, 4), "rougeL": round(100 / 3, 4)}
