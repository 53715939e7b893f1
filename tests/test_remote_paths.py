"""Outputs on a bucket: infer / score (killed and resumed), export, the SuperNI comparison
table and SuperNI data read through the same file layer as gs:// paths (tests/fake_bucket.py
registers TensorFlow's in-memory filesystem the way etils.epath registers gs://)."""

import json

from etils import epath
import gin
import numpy as np
import pytest

import fake_bucket
import runmode_utils as u
from t5x_lite import convert, export, infer, superni_compare


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run")
  u.train_tiny(model_dir, 2)
  return str(model_dir / "checkpoints" / "2")


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _run(mode, checkpoint, output_dir, **kwargs):
  args = dict(u.common(), checkpoint_path=checkpoint, output_dir=str(output_dir), batch_size=4,
              model=u.tiny_model(), chunk_batches=1, max_examples=16)
  args.update(kwargs)
  return getattr(infer, mode)(**args)


@pytest.mark.parametrize("mode", ["infer", "score"])
def test_infer_and_score_resume_on_a_bucket(mode, checkpoint, tmp_path, monkeypatch):
  local = u.read_jsonl(_run(mode, checkpoint, tmp_path / "local"))
  bucket = fake_bucket.register_scheme(monkeypatch)
  commits = {"n": 0}
  real_commit = infer._commit_state

  def dying_commit(path, state):
    commits["n"] += 1
    if commits["n"] == 2:
      raise KeyboardInterrupt("killed")
    real_commit(path, state)

  monkeypatch.setattr(infer, "_commit_state", dying_commit)
  with pytest.raises(KeyboardInterrupt):
    _run(mode, checkpoint, f"{bucket}/{mode}")
  monkeypatch.setattr(infer, "_commit_state", real_commit)
  path = _run(mode, checkpoint, f"{bucket}/{mode}")
  kind = "predictions" if mode == "infer" else "scores"
  assert path == f"{bucket}/{mode}/{kind}-00000-of-00001.jsonl"
  rows = [json.loads(line) for line in epath.Path(path).read_text().splitlines()]
  assert [r["index"] for r in rows] == list(range(16))
  for ours, theirs in zip(rows, local):
    assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)
    assert {k: v for k, v in ours.items() if k != "score"} == {
        k: v for k, v in theirs.items() if k != "score"}
  assert sorted(p.name for p in epath.Path(f"{bucket}/{mode}").iterdir()) == [
      f"{kind}-00000-of-00001.jsonl", f"{kind}-00000-of-00001.jsonl.state.json"]


def test_export_to_a_bucket_equals_a_local_export(checkpoint, tmp_path, monkeypatch):
  model = u.tiny_model()
  export.export(checkpoint_path=checkpoint, output_dir=str(tmp_path / "hf"), model=model)
  bucket = fake_bucket.register_scheme(monkeypatch)
  export.export(checkpoint_path=checkpoint, output_dir=f"{bucket}/hf", model=model)
  assert (epath.Path(f"{bucket}/hf/config.json").read_text()
          == (tmp_path / "hf" / "config.json").read_text())
  local, remote = convert.load_hf_state_dict(str(tmp_path / "hf")), convert.load_hf_state_dict(
      f"{bucket}/hf")
  assert sorted(local) == sorted(remote)
  for key, value in local.items():
    np.testing.assert_array_equal(remote[key], value)


def test_superni_compare_reads_a_run_directory_on_a_bucket(monkeypatch):
  bucket = fake_bucket.register_scheme(monkeypatch)
  run = epath.Path(f"{bucket}/ni_gen")
  run.mkdir(parents=True, exist_ok=True)
  (run / "eval_metrics.jsonl").write_text(
      json.dumps({"step": 10, "a/exact_match": 1.0}) + "\n"
      + json.dumps({"step": 20, "a/exact_match": 2.5}) + "\n")
  assert superni_compare.latest_metrics(str(run)) == {"step": 20, "a/exact_match": 2.5}
  with pytest.raises(FileNotFoundError, match="No metrics file"):
    superni_compare.latest_metrics(f"{bucket}/missing")
