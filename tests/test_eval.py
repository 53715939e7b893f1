"""eval run mode and training's infer-eval: metrics are the task's metric fns applied to the
model's predictions (and scores), for one checkpoint and for every checkpoint of a run; the
run-mode gin files parse and run through main."""

import json
import os

import gin
import numpy as np
import pytest

import runmode_utils as u
from t5x_lite import main
from t5x_lite import settings
from t5x_lite.modes import evaluate as eval_lib, infer
from t5x_lite.tasks import metrics as task_metrics


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run")
  u.train_tiny(model_dir, 8, checkpoint_period=4)
  return model_dir


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def expected_metrics(prediction_rows, score_rows):
  targets = [r["targets"] for r in prediction_rows]
  predictions = [r["prediction"] for r in prediction_rows]
  out = {f"{u.TASK}/{k}": v for k, v in task_metrics.exact_match(targets, predictions).items()}
  out[f"{u.TASK}/mean_log_likelihood"] = float(np.mean([r["score"] for r in score_rows]))
  return out


def test_eval_of_one_checkpoint_equals_metric_fns_on_infer_outputs(run_dir, tmp_path):
  checkpoint = str(run_dir / "checkpoints" / "8")
  results = eval_lib.evaluate(**u.common(), batch_size=8, checkpoint_path=checkpoint,
                              model=u.tiny_model(), output_dir=str(tmp_path))
  args = dict(u.common(), checkpoint_path=checkpoint, output_dir=str(tmp_path / "jsonl"),
              batch_size=8, model=u.tiny_model())
  predictions = u.read_jsonl(infer.infer(**args))
  scores = u.read_jsonl(infer.score(**args))
  expected = expected_metrics(predictions, scores)
  assert set(results) == {8}
  assert results[8].keys() == expected.keys()
  for key, value in expected.items():
    assert results[8][key] == pytest.approx(value, abs=1e-4), key
  rows = u.read_jsonl(tmp_path / "eval_validation_metrics.jsonl")
  assert len(rows) == 1 and rows[0]["step"] == 8
  assert rows[0] == pytest.approx({"step": 8, **results[8]})
  assert os.listdir(tmp_path / "eval_validation")  # TensorBoard events
  eval_predictions = u.read_jsonl(tmp_path / "eval_validation_predictions" / "8.jsonl")
  assert [r["prediction"] for r in eval_predictions] == [r["prediction"] for r in predictions]


def test_eval_of_all_checkpoints_writes_one_entry_per_step(run_dir):
  results = eval_lib.evaluate(**u.common(), batch_size=8, model_dir=str(run_dir),
                              checkpoint_steps="all", model=u.tiny_model())
  steps = sorted(int(s) for s in os.listdir(run_dir / "checkpoints") if s.isdigit())
  assert sorted(results) == steps and len(steps) >= 2
  rows = u.read_jsonl(run_dir / "eval_validation_metrics.jsonl")
  assert [r["step"] for r in rows] == steps
  for row in rows:
    predictions = u.read_jsonl(run_dir / "eval_validation_predictions" / f"{row['step']}.jsonl")
    targets = [r["targets"] for r in predictions]
    expected = task_metrics.exact_match(targets, [r["prediction"] for r in predictions])
    assert row[f"{u.TASK}/exact_match"] == pytest.approx(expected["exact_match"])
    assert row == pytest.approx({"step": row["step"], **results[row["step"]]})
  # Training lowers the target log-likelihood's negative: later checkpoints score higher.
  assert rows[-1][f"{u.TASK}/mean_log_likelihood"] > rows[0][f"{u.TASK}/mean_log_likelihood"]
  # Evaluating the same steps again reports them from the history: no duplicate rows.
  again = eval_lib.evaluate(**u.common(), batch_size=8, model_dir=str(run_dir),
                            checkpoint_steps="all", model=u.tiny_model())
  assert again.keys() == results.keys()
  for step, metrics in results.items():
    assert again[step] == pytest.approx(metrics)
  assert len(u.read_jsonl(run_dir / "eval_validation_metrics.jsonl")) == len(steps)
  with pytest.raises(ValueError, match=r"no checkpoint for step\(s\) \[3\]"):
    eval_lib.evaluate(**u.common(), batch_size=8, model_dir=str(run_dir),
                      checkpoint_steps=[3], model=u.tiny_model())


def test_rerun_completes_the_predictions_of_an_eval_stopped_after_a_metrics_row(
    run_dir, tmp_path, monkeypatch):
  args = dict(u.common(), batch_size=8, model_dir=str(run_dir), checkpoint_steps="all",
              output_dir=str(tmp_path))
  predictions = lambda step: tmp_path / "eval_validation_predictions" / f"{step}.jsonl"
  real_write = eval_lib.SummaryWriter.write

  def killed_after_the_row(self, step, metrics):
    real_write(self, step, metrics)
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(eval_lib.SummaryWriter, "write", killed_after_the_row)
  with pytest.raises(KeyboardInterrupt):
    eval_lib.evaluate(**args, model=u.tiny_model())
  monkeypatch.setattr(eval_lib.SummaryWriter, "write", real_write)
  assert [r["step"] for r in u.read_jsonl(tmp_path / "eval_validation_metrics.jsonl")] == [4]
  assert len(u.read_jsonl(predictions(4))) == u.NUM_VALIDATION  # written before the row
  results = eval_lib.evaluate(**args, model=u.tiny_model())
  step4 = predictions(4).read_text()
  assert sorted(results) == [4, 8] and predictions(8).exists()
  # A step with its metrics row but no predictions file (a run of an earlier version stopped
  # between the two) is evaluated again for them, adding no second row.
  predictions(4).unlink()
  again = eval_lib.evaluate(**args, model=u.tiny_model())
  assert predictions(4).read_text() == step4
  for step in (4, 8):
    assert again[step] == pytest.approx(results[step])
  assert [r["step"] for r in u.read_jsonl(tmp_path / "eval_validation_metrics.jsonl")] == [4, 8]
  rows = u.read_jsonl(predictions(4))
  expected = task_metrics.exact_match([r["targets"] for r in rows],
                                      [r["prediction"] for r in rows])["exact_match"]
  assert again[4][f"{u.TASK}/exact_match"] == pytest.approx(expected)


def test_periodic_infer_eval_during_training(tmp_path, capsys):
  _, final = u.train_tiny(tmp_path, 6, checkpoint_period=6, evaluation=settings.EvalConfig(
      period=3, steps=1, infer_eval_mixture_or_task_name=u.TASK, print_examples=2))
  rows = u.read_jsonl(tmp_path / "eval_metrics.jsonl")
  assert [r["step"] for r in rows] == [3, 6]
  for row in rows:
    assert {"loss", f"{u.TASK}/exact_match", f"{u.TASK}/mean_log_likelihood"} <= set(row)
  predictions = u.read_jsonl(tmp_path / "infer_eval_predictions" / "6.jsonl")
  assert len(predictions) == u.NUM_VALIDATION
  # The same metrics as the eval run mode on the final checkpoint.
  results = eval_lib.evaluate(**u.common(), batch_size=8, model_dir=str(tmp_path),
                              model=u.tiny_model(), output_dir=str(tmp_path / "eval"))
  for key, value in results[6].items():
    assert rows[-1][key] == pytest.approx(value, abs=1e-4)
    assert final[key] == pytest.approx(value, abs=1e-4)
  out = capsys.readouterr().out
  assert out.count("prediction: ") == 2
  assert f"predictions   {tmp_path}/infer_eval_predictions/6.jsonl" in out
  assert f"loss curve    {tmp_path}/loss.png" in out


def test_run_mode_gin_files_parse_and_run(run_dir, tmp_path):
  # The model file defines MODEL, the model every run file reads.
  common = ["--gin_file=models/t5_1_0.gin"] + u.TINY_GIN + [
      f"--gin.MIXTURE_OR_TASK_NAME={u.TASK}", "--gin.BATCH_SIZE=8",
      f"--gin.TASK_FEATURE_LENGTHS={json.dumps(u.LENGTHS)}"]
  results = main.main(["--run_mode=eval", "--gin_file=runs/eval.gin",
                       f"--gin.MODEL_DIR={run_dir}", f"--gin.OUTPUT_DIR={tmp_path / 'eval'}",
                       "--gin.CHECKPOINT_STEPS=[4, 8]"] + common)
  assert sorted(results) == [4, 8]
  assert "DecodingSettings.method = 'greedy'" in gin.operative_config_str()
  for mode, kind in (("infer", "predictions"), ("score", "scores")):
    gin.clear_config()
    path = main.main([f"--run_mode={mode}", f"--gin_file=runs/{mode}.gin",
                      f"--gin.CHECKPOINT_PATH={run_dir / 'checkpoints'}",
                      f"--gin.OUTPUT_DIR={tmp_path / mode}", "--gin.NUM_SHARDS=2",
                      "--gin.SHARD_ID=1"] + common)
    assert path == str(tmp_path / mode / f"{kind}-00001-of-00002.jsonl")
    assert [r["index"] for r in u.read_jsonl(path)] == list(range(1, u.NUM_VALIDATION, 2))
  gin.clear_config()
  with pytest.raises(ValueError, match="macro OUTPUT_DIR is required"):
    main.main(["--run_mode=infer", "--gin_file=runs/infer.gin",
               f"--gin.CHECKPOINT_PATH={run_dir / 'checkpoints'}"] + common)
