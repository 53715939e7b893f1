"""A whole run on a gs:// bucket (a local GCS emulator, tests/fake_bucket.py): train,
killed and resumed, then eval, infer and export with every path on the bucket give what
the same run gives on local disk."""

from clu import metric_writers
from etils import epath
import gin
import jax
import numpy as np
import pytest

import fake_bucket
import runmode_utils as u
from t5x_lite.checkpointing import summaries
from t5x_lite.interop import hf_checkpoint
from t5x_lite.modes import export, evaluate as eval_lib, infer

STEPS = 6


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def tensorboard_dirs(tmp_path, monkeypatch):
  """TensorBoard event files are TensorFlow's own writes, which cannot reach the emulator:
  they go to local disk here; the list records the directories the run asked for."""
  asked, tensorboard_writer = [], metric_writers.SummaryWriter

  def local_writer(logdir):
    asked.append(str(logdir))
    return tensorboard_writer(str(tmp_path / "tensorboard" / str(len(asked))))

  monkeypatch.setattr(summaries.metric_writers, "SummaryWriter", local_writer)
  return asked


def train(model_dir, steps):
  # run_config: config.gin is written to the bucket like every other file of the run.
  return u.train_tiny(model_dir, steps, checkpoint_period=3, run_config=lambda: "A = 1\n")


def test_train_resume_eval_infer_export_on_a_bucket(tmp_path, tensorboard_dirs):
  local = tmp_path / "local"
  local_state, _ = train(local, STEPS)
  local_writers = len(tensorboard_dirs)
  args = dict(u.common(), batch_size=8, model=u.tiny_model())
  with fake_bucket.gcs_emulator() as bucket:
    remote = f"{bucket}/run"
    train(remote, 3)  # stops after the checkpoint of step 3: the resume needs its data state
    remote_state, _ = train(remote, STEPS)
    checkpoint = f"{remote}/checkpoints/{STEPS}"
    remote_eval = eval_lib.evaluate(**args, checkpoint_path=checkpoint,
                                    output_dir=f"{bucket}/eval")
    remote_rows = epath.Path(infer.infer(**args, checkpoint_path=checkpoint,
                                         output_dir=f"{bucket}/infer")).read_text()
    export.export(checkpoint_path=checkpoint, output_dir=f"{bucket}/hf", model=u.tiny_model())
    remote_hf = hf_checkpoint.load_hf_state_dict(f"{bucket}/hf")
    # epath has no recursive glob on gs://, and its walk yields paths without the scheme.
    remote_files = {str((directory / name).relative_to(remote.removeprefix("gs://")))
                    for directory, _, names in epath.Path(remote).walk() for name in names}
    remote_history = summaries.read_history(f"{remote}/train_metrics.jsonl")
    remote_writers = tensorboard_dirs[local_writers:]

  # The resumed run continues exactly where the stopped one left off (data position too).
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                         local_state.params, remote_state.params)
  local_history = summaries.read_history(str(local / "train_metrics.jsonl"))
  # One row from each run (the stopped one at 3, the resumed one at 6): appends on a bucket.
  assert [r["step"] for r in remote_history] == [3, STEPS]
  assert [r["step"] for r in local_history] == [STEPS]
  np.testing.assert_allclose(remote_history[-1]["loss"], local_history[-1]["loss"], rtol=1e-5)
  assert {"checkpoints/3/state/_METADATA", "checkpoints/6/dataset/"
          "data_iterator-00000-of-00001.index", "config.gin", "loss.png",
          "train_metrics.jsonl"} <= remote_files
  assert f"{remote}/train" in remote_writers
  assert all(d.startswith(bucket) for d in remote_writers)

  local_checkpoint = str(local / "checkpoints" / str(STEPS))
  local_eval = eval_lib.evaluate(**args, checkpoint_path=local_checkpoint,
                                 output_dir=str(tmp_path / "eval"))
  assert remote_eval.keys() == local_eval.keys() == {STEPS}
  assert remote_eval[STEPS] == pytest.approx(local_eval[STEPS], abs=1e-5)
  local_rows = epath.Path(infer.infer(**args, checkpoint_path=local_checkpoint,
                                      output_dir=str(tmp_path / "infer"))).read_text()
  assert remote_rows == local_rows
  export.export(checkpoint_path=local_checkpoint, output_dir=str(tmp_path / "hf"),
                model=u.tiny_model())
  local_hf = hf_checkpoint.load_hf_state_dict(str(tmp_path / "hf"))
  assert sorted(remote_hf) == sorted(local_hf)
  for key, value in local_hf.items():
    np.testing.assert_allclose(remote_hf[key], value, atol=1e-6)
