"""Faults a user meets, injected on purpose: training killed (SIGKILL) at chosen points, inside
the checkpoint save window included, SIGTERM and a second signal, a second writer, non-finite
steps, damaged checkpoints, and a full or read-only disk. Every interrupted run must end
where an uninterrupted one does."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5x_lite import checkpoints, configs, data, main, storage, summaries, train, trainer
from t5x_lite.run_dir import RunDir
import reliability_worker as worker
from tree_utils import tree_max_abs_diff

WORKER = os.path.join(os.path.dirname(__file__), "reliability_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def launch(model_dir, steps, *pauses):
  """Starts tests/reliability_worker.py; its output goes to MODEL_DIR.log."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [REPO, os.environ.get("PYTHONPATH")])),
             # Launches after the first load the compiled steps: seconds saved per launch.
             JAX_COMPILATION_CACHE_DIR=f"{model_dir}.jax_cache",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  out = open(f"{model_dir}.log", "a", encoding="utf-8")  # pylint: disable=consider-using-with
  out.write(f"--- launch {pauses}\n")
  out.flush()
  return subprocess.Popen([sys.executable, WORKER, str(model_dir), str(steps), *pauses],
                          stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(proc, model_dir, pause, timeout=300):
  """Waits until the worker reached `pause` (WHERE@STEP) and waits there."""
  where, step = pause.split("@")
  path = worker.marker(model_dir, where, step)
  deadline = time.time() + timeout
  while not os.path.exists(path):
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      pytest.fail(f"worker never reached {pause}:\n" + output(model_dir)[-3000:])
    time.sleep(0.05)
  os.remove(path)


def output(model_dir):
  with open(f"{model_dir}.log", encoding="utf-8") as f:
    return f.read()


def finish(proc, model_dir, timeout=300):
  try:
    rc = proc.wait(timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail("worker did not exit:\n" + output(model_dir)[-3000:])
  return rc, output(model_dir).rsplit("--- launch", 1)[-1]


def saved_params(model_dir, step):
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(checkpoints.state_path(RunDir(model_dir).checkpoint(step)))["params"]


def tmp_dirs(model_dir, step):
  root = RunDir(model_dir).checkpoints
  return [name for name in os.listdir(root) if name.startswith(f"{step}.orbax-checkpoint-tmp")]


def losses(model_dir):
  return {r["step"]: r["loss"] for r in summaries.read_history(
      RunDir(model_dir).metrics_history("train"))}


def test_killed_and_signalled_training_ends_as_if_uninterrupted(tmp_path, capsys):
  run = tmp_path / "run"
  # SIGKILL at six points: three inside the save window (the step's tmp directory exists,
  # nothing is committed), one mid-way through a metrics row, two between saves.
  kills = ["step@1", "save_start@2", "save_data@4", "metrics@5", "commit@6", "step@7"]
  for i, pause in enumerate(kills):
    proc = launch(run, STEPS, pause)
    wait_for(proc, run, pause)
    where, step = pause.split("@")
    if where in ("save_start", "save_data", "commit"):
      assert tmp_dirs(run, step) and int(step) not in RunDir(run).checkpoint_steps(), pause
    if i == 0:
      # A second training process on the same MODEL_DIR refuses to start, naming the holder.
      assert main.run(["--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
                       f"--gin.MODEL_DIR={run}", "--gin.MIXTURE_OR_TASK_NAME=" + worker.TASK,
                       "--gin.TRAIN_STEPS=3"]) == 1
      error = capsys.readouterr().err
      assert f"Another training process writes to {run}" in error, error
      assert f"pid {proc.pid}" in error and "train.force_lock = True" in error
    proc.kill()
    proc.wait()

  # SIGTERM: the step in progress (8) finishes, is saved, and the process exits 0.
  proc = launch(run, STEPS, "hold@8")
  wait_for(proc, run, "hold@8")
  proc.send_signal(signal.SIGTERM)
  rc, out = finish(proc, run)
  assert rc == 0, out
  assert "Stopped by SIGTERM after step 8" in out and "Re-run the same command" in out
  assert RunDir(run).checkpoint_steps()[-1] == 8
  assert max(losses(run)) == 8  # the last step logged is the one saved

  # A second signal while the first one's save runs exits at once, without that step.
  proc = launch(run, STEPS, "hold@10", "save_start@10")
  wait_for(proc, run, "hold@10")
  proc.send_signal(signal.SIGTERM)
  wait_for(proc, run, "save_start@10")
  start = time.time()
  proc.send_signal(signal.SIGTERM)
  rc, out = finish(proc, run)
  assert rc == 128 + signal.SIGTERM and time.time() - start < 30, out
  assert "second signal (SIGTERM): exiting at once" in out
  assert RunDir(run).checkpoint_steps()[-1] == 8

  rc, out = finish(launch(run, STEPS), run)
  assert rc == 0 and f"DONE {STEPS}" in out, out
  assert not tmp_dirs(run, 10)  # the save the second signal cut short was cleaned up

  reference, _ = train.train(**worker.tiny_run(tmp_path / "reference", STEPS))
  assert tree_max_abs_diff(saved_params(run, STEPS), jax.device_get(reference.params)) < 1e-6
  expected = losses(tmp_path / "reference")
  assert sorted(losses(run)) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([losses(run)[s] for s in expected], list(expected.values()),
                             rtol=1e-6)
  with open(RunDir(run).metrics_history("train"), encoding="utf-8") as f:
    raw = f.read().splitlines()
  assert '{"step": 5, "loss": ' in raw  # the torn row, on a line of its own
  assert len(raw) > STEPS + 1  # redone steps wrote their rows again; the latest wins


# ---- non-finite steps ----------------------------------------------------------------------

def poison(monkeypatch, steps):
  """Makes the loss and gradients of `steps` (1-based) NaN, inside the jitted train step."""
  grads_and_metrics = trainer.Trainer._grads_and_metrics  # pylint: disable=protected-access

  def poisoned(self, params, batch, step):
    grads, metrics = grads_and_metrics(self, params, batch, step)
    factor = jnp.where(jnp.isin(step + 1, jnp.asarray(steps)), jnp.nan, 1.0)
    return (jax.tree_util.tree_map(lambda g: g * factor, grads),
            dict(metrics, loss_sum=metrics["loss_sum"] * factor))

  monkeypatch.setattr(trainer.Trainer, "_grads_and_metrics", poisoned)


def saved_state(model_dir, step):
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(checkpoints.state_path(RunDir(model_dir).checkpoint(step)))


def assert_all_checkpoints_finite(model_dir):
  for step in RunDir(model_dir).checkpoint_steps():
    for leaf in jax.tree_util.tree_leaves(saved_state(model_dir, step)):
      assert np.all(np.isfinite(leaf)), step


EVERY_STEP = configs.CheckpointConfig(period=1, keep=None)


def test_nonfinite_step_is_skipped_counted_and_never_saved(tmp_path, monkeypatch, caplog):
  poison(monkeypatch, [3])
  with caplog.at_level(logging.WARNING):
    train.train(**worker.tiny_run(tmp_path, 5, checkpoint=EVERY_STEP))
  rows = summaries.read_history(RunDir(tmp_path).metrics_history("train"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  assert rows[2]["loss"] is None and rows[2]["nonfinite"] == 1.0  # NaN is written as null
  assert all(np.isfinite(r["loss"]) for r in rows if r["step"] != 3)
  assert [r["skipped_nonfinite_steps"] for r in rows] == [0, 0, 1, 1, 1]
  assert "Step 3: the loss or the update is not finite; the update was skipped" in caplog.text
  before, skipped = saved_state(tmp_path, 2), saved_state(tmp_path, 3)
  assert int(skipped["step"]) == 3  # the batch is consumed, the update dropped
  assert tree_max_abs_diff(before["params"], skipped["params"]) == 0.0
  assert tree_max_abs_diff(before["opt_state"], skipped["opt_state"]) == 0.0
  assert_all_checkpoints_finite(tmp_path)


def test_too_many_nonfinite_steps_in_a_row_stop_training(tmp_path, monkeypatch):
  poison(monkeypatch, [3, 4, 5, 6])
  with pytest.raises(train.NonFiniteError, match=r"Steps 3-4: .* 2 times in a row "
                     r"\(train.max_consecutive_nonfinite = 2\)"):
    train.train(**worker.tiny_run(tmp_path, 8, checkpoint=EVERY_STEP,
                                  max_consecutive_nonfinite=2))
  assert RunDir(tmp_path).checkpoint_steps() == [1, 2, 3]
  assert_all_checkpoints_finite(tmp_path)


def nan_checkpoint(model_dir, step, source_step):
  """Writes checkpoint `step` as a copy of `source_step` with NaN parameters (an older run's)."""
  state = saved_state(model_dir, source_step)
  state["params"] = jax.tree_util.tree_map(lambda x: np.full_like(x, np.nan), state["params"])
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(RunDir(model_dir).checkpoint(step), "state"), state)


TINY_GIN = ["--gin_file=models/tiny.gin", "--gin.T5Config.d_model=32", "--gin.T5Config.d_ff=64",
            "--gin.T5Config.d_kv=8", "--gin.T5Config.num_heads=2",
            "--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1"]


def infer_args(checkpoint, output_dir, *extra):
  return ["--run_mode=infer", *TINY_GIN, "--gin_file=runs/infer.gin",
          f"--gin.CHECKPOINT_PATH={checkpoint}", f"--gin.OUTPUT_DIR={output_dir}",
          f"--gin.MIXTURE_OR_TASK_NAME={worker.TASK}", "--gin.SPLIT='train'",
          "--gin.TASK_FEATURE_LENGTHS=" + repr(worker.LENGTHS), "--gin.BATCH_SIZE=4", *extra]


def run_main(capsys, argv):
  """main.run as a user meets it: (exit status, the one short message it printed)."""
  gin.clear_config()
  status = main.run(argv)
  return status, capsys.readouterr().err


def test_stop_policy_raises_at_the_step_and_nan_checkpoints_are_refused(tmp_path, monkeypatch,
                                                                       capsys):
  poison(monkeypatch, [3])
  with pytest.raises(train.NonFiniteError, match=r"^Step 3: the loss or the update is not "
                     r"finite .*nonfinite_policy = 'stop'"):
    train.train(**worker.tiny_run(tmp_path, 5, checkpoint=EVERY_STEP, nonfinite_policy="stop"))
  assert RunDir(tmp_path).checkpoint_steps() == [1, 2]
  assert max(losses(tmp_path)) == 2
  assert_all_checkpoints_finite(tmp_path)

  # A checkpoint with NaN parameters (written by hand: training no longer writes one) is an
  # error for infer and export, not empty predictions.
  nan_checkpoint(tmp_path, 7, source_step=2)
  status, error = run_main(capsys, infer_args(RunDir(tmp_path).checkpoint(7), tmp_path / "out"))
  assert status == 1
  assert "t5x-lite: CheckpointError: The checkpoint" in error
  assert "holds non-finite values (NaN or inf) in" in error and "it cannot be used" in error
  status, error = run_main(capsys, ["--run_mode=export", *TINY_GIN, "--gin_file=runs/export.gin",
                                    f"--gin.CHECKPOINT_PATH={RunDir(tmp_path).checkpoint(7)}",
                                    f"--gin.OUTPUT_DIR={tmp_path / 'hf'}"])
  assert status == 1 and "holds non-finite values" in error
  assert not os.path.exists(tmp_path / "hf")
