"""notebooks/tasks.ipynb and notebooks/inference.ipynb print what they claim (quickstart and
sharding are in test_notebooks.py: two files, so that two pytest workers share the notebooks)."""

import ast
import json
import re

import pytest

from notebook_utils import run_notebook


def _spelling_metrics(rows):
  """exact_match and word_accuracy (percent) of prediction rows, the notebook's definitions
  computed here independently: whitespace-normalised strings equal / words equal by position
  (a missing or extra word counts as wrong)."""
  exact, words = [], []
  for row in rows:
    target, prediction = row["targets"].split(), row["prediction"].split()
    exact.append(target == prediction)
    length = max(len(target), len(prediction))
    words.append(sum(a == b for a, b in zip(target, prediction)) / length)
  return {"exact_match": 100 * sum(exact) / len(rows),
          "word_accuracy": 100 * sum(words) / len(rows)}


def test_tasks(tmp_path, monkeypatch):
  # The notebook trains in tempfile.mkdtemp(): here, to read its infer-eval predictions.
  (tmp_path / "tmp").mkdir()
  monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
  out = run_notebook("tasks", tmp_path)
  assert "t5x_lite from " in out
  assert "number\twords\n979\tnine hundred seventy-nine\n" in out  # the TSV file written
  assert "spell_numbers ('validation', 'train')" in out
  assert "{'exact_match': 50.0, 'word_accuracy': 83.33333333333333}" in out  # the metric fn on two toys
  # Raw line -> preprocessed text -> token ids (EOS last) -> the model's features.
  assert r"raw:          b'979\tnine hundred seventy-nine'" in out
  assert ("preprocessed: {'inputs': b'spell out: 979', 'targets': b'nine hundred seventy-nine'}"
          in out)
  tokenized = re.search(r"tokenized: +inputs (\[.*?\]) targets (\[.*?\])", out)
  inputs, targets = (ast.literal_eval(x) for x in tokenized.groups())
  assert inputs[-1] == 1 and targets[-1] == 1 and 1 not in inputs[:-1]
  pieces = ast.literal_eval(re.search(r"pieces: +(\[.*\])", out).group(1))
  assert len(pieces) == len(targets) - 1 and pieces[0].startswith("▁")
  # Trimmed to 16 target tokens: the decoded text is the pieces' text, a prefix of the target.
  decoded = ast.literal_eval(re.search(r"decoded: +('.*')", out).group(1))
  assert decoded == "".join(pieces).replace("▁", " ").strip()
  assert decoded[:12] == "nine hundred" and "nine hundred seventy-nine".startswith(decoded)
  features = {name: (ast.literal_eval(shape), ast.literal_eval(row)) for name, shape, row in
              re.findall(r"^(\w+_tokens|\w+_weights) +(\(4, 16\)) (\[.*\])$", out, re.M)}
  assert features["encoder_input_tokens"][1] == inputs + [0] * (16 - len(inputs))
  assert features["decoder_target_tokens"][1][:len(targets)] == targets
  assert features["decoder_input_tokens"][1][:len(targets)] == [0] + targets[:-1]
  # The mixture samples 3:1.
  counts = ast.literal_eval(re.search(r"of 400 mixed examples: (\{.*\})", out).group(1))
  assert sum(counts.values()) == 400
  assert 0.65 < counts["spell_numbers"] / 400 < 0.85, counts
  # Training on the mixture evaluated the new task with its own metric fn.
  metrics = ast.literal_eval(out.strip().splitlines()[-1])
  assert 0 < metrics["loss"] < 8.4  # below ln(4224), a uniform guess
  # Its metrics are those of the 16 infer-eval predictions it wrote at step 40.
  [predictions] = (tmp_path / "tmp").glob("*/infer_eval_predictions/40.jsonl")
  rows = [json.loads(line) for line in predictions.read_text().splitlines()]
  assert len(rows) == 16 and {r["task"] for r in rows} == {"spell_numbers"}
  want = _spelling_metrics(rows)
  assert metrics["spell_numbers/exact_match"] == pytest.approx(want["exact_match"], abs=1e-9)
  assert metrics["spell_numbers/word_accuracy"] == pytest.approx(want["word_accuracy"], abs=1e-9)
  assert _spelling_metrics([{"targets": "forty-two", "prediction": "forty-two"}, {
      "targets": "one hundred", "prediction": "one  hundred one"}]) == {
          "exact_match": 50.0, "word_accuracy": 100 * (1 + 2 / 3) / 2}
  assert "input:      'spell out: " in out  # printed infer-eval examples


def test_inference(tmp_path):
  out = run_notebook("inference", tmp_path)
  assert "t5x_lite from " in out
  assert "eval sort_digits/strict_exact_match=" in out
  # Checkpoint restore, HF export and import.
  assert re.search(r"restored step 150 from .*/checkpoints/150/state", out)
  assert "equal to the trained parameters: True" in out
  assert "['config.json', 'model.safetensors']" in out
  assert "logits (3, 16, 4224) max |difference| after the HF round trip: 0.0\n" in out
  hf = float(re.search(r"vs transformers' T5ForConditionalGeneration on the real targets: (\S+)",
                       out).group(1))
  assert hf < 1e-4
  # Greedy, beam and sampled decodes of each of the three inputs.
  blocks = re.findall(r"^'sort: ([\d ]+)'\n  greedy   '([\d ]*)' \(log p (\S+)\)\n  beams    (.*)\n"
                      r"  samples  (.*)  \(temperature 3, top-k 3\)$", out, re.M)
  assert [b[0] for b in blocks] == ["7 2 9 4", "3 8 1", "5 0 6 2 9"]
  assert sum(greedy == " ".join(sorted(digits.split())) for digits, greedy, *_ in blocks) >= 2
  for _, _, _, beams, samples in blocks:
    beam_scores = [float(s) for s in re.findall(r"\((-?\d+\.\d+)\)", beams)]
    assert len(beam_scores) == 3 and beam_scores == sorted(beam_scores, reverse=True)
    assert len(re.findall(r"'[^']*'", samples)) == 4
  # Rank classification: six candidate orders, the sorted one scores best.
  candidates = re.findall(r"^'([\d ]+)': log p = +(-?\d+\.\d+)$", out, re.M)
  assert len(candidates) == 6 and sorted(c for c, _ in candidates) == sorted(
      ["1 3 8", "1 8 3", "3 1 8", "3 8 1", "8 1 3", "8 3 1"])
  assert "best candidate: '1 3 8'" in out
  # Attention probabilities recomputed from captured projections reproduce the layer's output.
  diff = float(re.search(r"recomputed encoder attention output vs the model's: max \|difference\| "
                         r"(\S+)", out).group(1))
  assert diff < 1e-4
  assert ("encoder self-attention (4, 16, 16) cross-attention (4, 16, 16) (heads, queries, keys); "
          "each row sums to 1: True") in out
  assert "<Figure size 1100x450 with 2 Axes>" in out
