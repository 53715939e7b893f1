"""Faults a user meets, injected on purpose: training killed (SIGKILL) at chosen points, inside
the checkpoint save window included, SIGTERM and a second signal, a second writer, non-finite
steps, damaged checkpoints, and a full or read-only disk. Every interrupted run must end
where an uninterrupted one does."""

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import seqio

from t5x_lite import main
from t5x_lite import settings
from t5x_lite.checkpointing import checkpoints, restore, step_record, storage, summaries
from t5x_lite.checkpointing.run_dir import RunDir
from t5x_lite.data import pipeline
from t5x_lite.modes import export
from t5x_lite.modes import train
from t5x_lite.parallel import partitioning
from t5x_lite.tasks import vocab
from t5x_lite.training import trainer
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


def worker_env(cache_dir):
  return dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [REPO, os.environ.get("PYTHONPATH")])),
              # Launches after the first load the compiled steps: seconds saved per launch.
              JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def launch(model_dir, steps, *pauses, process=None, log=None):
  """Starts tests/reliability_worker.py; its output goes to `log` (default MODEL_DIR.log).

  Args:
    process: "PROCESS_ID,NUM_PROCESSES,PORT" to start one process of a multi-process run.
  """
  out = open(log or f"{model_dir}.log", "a", encoding="utf-8")  # pylint: disable=consider-using-with
  out.write(f"--- launch {pauses}\n")
  out.flush()
  # One cache for every run of a test (the interrupted one and its reference compile the
  # same steps).
  env = worker_env(os.path.join(os.path.dirname(os.path.abspath(model_dir)), "jax_cache"))
  if process:
    env[worker.PROCESS_ENV] = process
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


def output(model_dir, log=None):
  with open(log or f"{model_dir}.log", encoding="utf-8") as f:
    return f.read()


def finish(proc, model_dir, timeout=300, log=None):
  """(exit status, output of this launch)."""
  try:
    rc = proc.wait(timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail("worker did not exit:\n" + output(model_dir, log)[-3000:])
  return rc, output(model_dir, log).rsplit("--- launch", 1)[-1]


def saved_params(model_dir, step):
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(restore.state_path(RunDir(model_dir).checkpoint(step)))["params"]


def tmp_dirs(model_dir, step):
  root = RunDir(model_dir).checkpoints
  return [name for name in os.listdir(root) if name.startswith(f"{step}.orbax-checkpoint-tmp")]


def losses(model_dir):
  return {r["step"]: r["loss"] for r in summaries.read_history(
      RunDir(model_dir).metrics_history("train"))}


def test_killed_and_signalled_training_ends_as_if_uninterrupted(tmp_path, capsys):
  run = tmp_path / "run"
  # SIGKILL at four points: three inside the save window (the step's tmp directory exists,
  # nothing is committed) and one between saves, mid-way through a metrics row. Each launch
  # costs a process start, so no point repeats a resume another one covers: save_start@2
  # leaves no committed step (the next launch starts from step 0, as after a kill before the
  # first save), metrics@5 comes after a step this launch committed (the next launch redoes
  # the steps after it, as after any kill between saves).
  kills = ["save_start@2", "save_data@4", "metrics@5", "commit@6"]
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

  # The reference runs in a process of its own too: in-process, state earlier tests leave
  # behind (TensorFlow's global random seed) may change the data order.
  reference = tmp_path / "reference"
  rc, out = finish(launch(reference, STEPS), reference)
  assert rc == 0 and f"DONE {STEPS}" in out, out
  expected = losses(reference)
  assert sorted(losses(run)) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([losses(run)[s] for s in expected], list(expected.values()),
                             rtol=1e-6, err_msg=f"launch log:\n{open(f'{run}.log').read()}")
  assert tree_max_abs_diff(saved_params(run, STEPS), saved_params(reference, STEPS)) < 1e-6
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
    return checkpointer.restore(restore.state_path(RunDir(model_dir).checkpoint(step)))


def assert_all_checkpoints_finite(model_dir):
  for step in RunDir(model_dir).checkpoint_steps():
    for leaf in jax.tree_util.tree_leaves(saved_state(model_dir, step)):
      assert np.all(np.isfinite(leaf)), step


EVERY_STEP = settings.CheckpointConfig(period=1, keep=None)


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


def write_nan_state(step_dir, source_step_dir):
  """Writes step_dir/state: source_step_dir's state with NaN parameters (a run that saved NaN:
  intact bytes, unusable values); a record step_dir already has gets their checksums."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    state = checkpointer.restore(restore.state_path(source_step_dir))
    state["params"] = jax.tree_util.tree_map(lambda x: np.full_like(x, np.nan), state["params"])
    checkpointer.save(restore.state_path(step_dir), state, force=True)
  record = step_record.read_record(step_dir)
  if record is None:  # a step of its own, unrecorded like an older version's: loads unchecked
    return
  record = step_record.make_record(state, record["vocabulary"], record["dataset_checksums"])
  step_record.write_record(os.path.join(step_dir, step_record.RECORD_ITEM), record)


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
  write_nan_state(RunDir(tmp_path).checkpoint(7), RunDir(tmp_path).checkpoint(2))
  status, error = run_main(capsys, infer_args(RunDir(tmp_path).checkpoint(7), tmp_path / "out"))
  assert status == 1
  assert "t5x-lite: CheckpointError: The checkpoint" in error
  assert "holds non-finite values (NaN or inf) in" in error and "it cannot be used" in error
  status, error = run_main(capsys, ["--run_mode=export", *TINY_GIN, "--gin_file=runs/export.gin",
                                    f"--gin.CHECKPOINT_PATH={RunDir(tmp_path).checkpoint(7)}",
                                    f"--gin.OUTPUT_DIR={tmp_path / 'hf'}"])
  assert status == 1 and "holds non-finite values" in error
  assert not os.path.exists(tmp_path / "hf")


# ---- damaged checkpoints ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 6-step run with checkpoints 1 (orbax saves the first step), 2, 4 and 6 (read only:
  tests copy it before damaging it)."""
  model_dir = tmp_path_factory.mktemp("trained") / "run"
  gin.clear_config()
  train.train(**worker.tiny_run(model_dir, 6, checkpoint=settings.CheckpointConfig(
      period=2, keep=None)))
  return model_dir


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def largest_file(directory):
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return max(files, key=os.path.getsize)


DAMAGES = {
    "a state file truncated": (lambda step: truncate(largest_file(f"{step}/state")),
                               "Cannot read the checkpoint"),
    "state metadata removed": (lambda step: os.remove(f"{step}/state/_METADATA"),
                               "Cannot read the checkpoint"),
    "input-pipeline state removed": (lambda step: shutil.rmtree(f"{step}/dataset"),
                                     "No data iterator checkpoint"),
    "input-pipeline state truncated": (
        lambda step: truncate(largest_file(f"{step}/dataset")),
        "differs from the checksums saved with it"),
    "non-finite parameters": (
        lambda step: (shutil.rmtree(f"{step}/state"), write_nan_state(step, step[:-1] + "4")),
        "holds non-finite values"),
}


def resume_pipeline(model_dir):
  """(Trainer, DatasetIterator, abstract TrainState) as train.train builds them."""
  args = worker.tiny_run(model_dir, 6)
  t = trainer.Trainer(args["model"], args["optimizer"], partitioning.Partitioner())
  config = args["train_dataset"]
  dataset = pipeline.get_dataset(config.mixture_or_task_name, config.task_feature_lengths,
                             batch_size=config.batch_size, pack=config.pack,
                             shard_info=pipeline.host_shard_info())
  shapes = {k: tuple(v.shape) for k, v in dataset.element_spec.items()}
  abstract, shardings = t.state_shardings(shapes)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return pipeline.DatasetIterator(dataset), abstract


def restore_latest(model_dir, **checkpoint_config):
  """What a resume does: CheckpointManager.restore with the run's shapes and input pipeline."""
  iterator, abstract = resume_pipeline(model_dir)
  manager = checkpoints.CheckpointManager(RunDir(model_dir), settings.CheckpointConfig(
      **checkpoint_config))
  try:
    return manager.restore(abstract, iterator), iterator
  finally:
    manager.close()


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_to_the_previous_step(trained, tmp_path, damage,
                                                                  caplog):
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  damage_fn, reason = DAMAGES[damage]
  damage_fn(RunDir(run).checkpoint(6))
  with pytest.raises(step_record.CheckpointError, match=r"Checkpoint step 6 in .* cannot be "
                     r"restored: .*CheckpointConfig.restore_fallback = True"):
    restore_latest(run, restore_fallback=False)
  with caplog.at_level(logging.WARNING):
    state, iterator = restore_latest(run)
  assert int(state.step) == 4
  assert tree_max_abs_diff(jax.device_get(state.params), saved_params(trained, 4)) == 0.0
  fresh, _ = resume_pipeline(run)
  for _ in range(4):
    next(fresh)
  expected, got = next(fresh), next(iterator)  # the data order continues after step 4
  assert all(np.array_equal(expected[k], got[k]) for k in expected)
  warning = caplog.text
  assert "Checkpoint step 6 cannot be restored (" in warning and reason in warning, warning
  assert "Resuming from step 4, the newest readable checkpoint." in warning
  assert RunDir(run).checkpoint_steps() == [2, 4]
  moved = os.listdir(os.path.join(RunDir(run).checkpoints, "damaged"))
  assert len(moved) == 1 and moved[0].startswith("6-")


def test_training_resumes_past_a_damaged_step_exactly_and_infer_names_the_damage(
    trained, tmp_path, capsys):
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  truncate(largest_file(os.path.join(RunDir(run).checkpoint(6), "state")))
  status, error = run_main(capsys, infer_args(RunDir(run).checkpoint(6), tmp_path / "out"))
  assert status == 1, error
  assert (f"t5x-lite: CheckpointError: Cannot read the checkpoint {RunDir(run).checkpoint(6)}"
          "/state (") in error, error
  assert "it is damaged or incomplete; other steps of this run: [2, 4]" in error, error
  # Resuming redoes steps 5 and 6 from checkpoint 4: the same parameters and losses.
  train.train(**worker.tiny_run(run, 6))
  assert tree_max_abs_diff(saved_params(run, 6), saved_params(trained, 6)) < 1e-6
  expected = losses(trained)
  np.testing.assert_allclose([losses(run)[s] for s in expected], list(expected.values()),
                             rtol=1e-6)


# ---- bytes flipped in a checkpoint that still parses --------------------------------------------

def flip(path, offset, count=64):
  """XORs `count` bytes of a file with 0x01 (float32 values stay finite: an exponent's lowest
  bit at most)."""
  with open(path, "r+b") as f:
    f.seek(offset)
    data = bytearray(f.read(count))
    f.seek(offset)
    f.write(bytes(b ^ 1 for b in data))


def change_array(step_dir, name):
  """Rewrites step_dir/state with 16 values of the array `name` ("params/...") changed by a
  finite amount: what a flipped byte that still parses does (the arrays are stored
  zstd-compressed, so where a byte of a given array lies cannot be known from the values)."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    state = jax.tree_util.tree_map(np.array, checkpointer.restore(restore.state_path(
        step_dir)))
    leaf = state
    for key in name.split("/"):
      leaf = leaf[key]
    leaf.reshape(-1)[-16:] += 0.5
    shutil.rmtree(restore.state_path(step_dir))
    checkpointer.save(restore.state_path(step_dir), state)  # the step's record is kept


def flip_text(path, text):
  """Flips the byte after the first occurrence of `text` in a file (the JSON stays valid)."""
  with open(path, "rb") as f:
    offset = f.read().index(text.encode())
  flip(path, offset + len(text), 1)


EMBEDDING = "params/token_embedder/embedding"
FLIPS = {  # kind: (damage applied to step 6, what the warning names)
    "parameters": (lambda step: change_array(step, EMBEDDING),
                   f"1 array(s) differ from the checksums saved with them: {EMBEDDING}."),
    "optimizer state": (
        lambda step: change_array(step, "opt_state/param_states/token_embedder/embedding/v_row"),
        "differ from the checksums saved with them: "
        "opt_state/param_states/token_embedder/embedding/v_row."),
    "input-pipeline state": (
        lambda step: flip(largest_file(f"{step}/dataset"),
                          os.path.getsize(largest_file(f"{step}/dataset")) - 200),
        "data_iterator-00000-of-00001.data-00000-of-00001 differs from the checksums"),
    # A parameter's name in orbax's tree metadata (orbax itself cannot read it then).
    "array metadata": (lambda step: flip_text(f"{step}/state/_METADATA", '{"key": "sc'),
                       "/checkpoints/6/state (AttributeError: "),
    "step record": (lambda step: flip_text(f"{step}/record/record.json", '"checksum": "'),
                    "the record of the step's arrays does not match its digest"),
    # The step metadata says the step has a record: without it the step is not taken for one
    # saved before records (which loads unchecked).
    "step record removed": (lambda step: os.remove(f"{step}/record/record.json"),
                            "/checkpoints/6/record/record.json is missing"),
}


def test_flipped_bytes_in_each_kind_of_saved_file_are_found_on_resume(trained, tmp_path, caplog):
  iterator, abstract = resume_pipeline(trained)
  expected = saved_params(trained, 4)
  for kind, (damage, named) in FLIPS.items():
    run = tmp_path / kind.replace(" ", "_")
    shutil.copytree(trained, run)
    damage(RunDir(run).checkpoint(6))
    manager = checkpoints.CheckpointManager(RunDir(run), settings.CheckpointConfig())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      state = manager.restore(abstract, iterator)
    manager.close()
    assert int(state.step) == 4, kind
    assert tree_max_abs_diff(jax.device_get(state.params), expected) == 0.0, kind
    assert "Checkpoint step 6 cannot be restored (" in caplog.text, (kind, caplog.text)
    assert named in caplog.text, (kind, caplog.text)
    assert RunDir(run).checkpoint_steps() == [2, 4], kind
    assert os.listdir(os.path.join(RunDir(run).checkpoints, "damaged"))[0].startswith("6-")


def test_infer_and_export_name_the_array_that_differs_from_its_checksum(trained, tmp_path,
                                                                       capsys):
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  change_array(RunDir(run).checkpoint(6), EMBEDDING)
  state = saved_state(run, 6)  # what infer would have used: finite, wrong values
  assert np.all(np.isfinite(state["params"]["token_embedder"]["embedding"]))
  assert np.any(state["params"]["token_embedder"]["embedding"]
                != saved_params(trained, 6)["token_embedder"]["embedding"])
  status, error = run_main(capsys, infer_args(RunDir(run).checkpoint(6), tmp_path / "out"))
  assert status == 1, error
  assert (f"t5x-lite: CheckpointError: The checkpoint {RunDir(run).checkpoint(6)}/state is "
          f"damaged: 1 array(s) differ from the checksums saved with them: {EMBEDDING}. It "
          "cannot be used; other steps of this run: [2, 4].") in error, error
  status, error = run_main(capsys, ["--run_mode=export", *TINY_GIN, "--gin_file=runs/export.gin",
                                    f"--gin.CHECKPOINT_PATH={RunDir(run).checkpoint(6)}",
                                    f"--gin.OUTPUT_DIR={tmp_path / 'hf'}"])
  assert status == 1 and f"differ from the checksums saved with them: {EMBEDDING}." in error
  assert not os.path.exists(tmp_path / "hf")


# ---- the vocabulary a checkpoint was trained with ------------------------------------------

OTHER_SP_MODEL = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                              "sentencepiece.model")


def test_a_checkpoint_is_refused_under_another_vocabulary(trained, tmp_path, caplog):
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  other = seqio.SentencePieceVocabulary(OTHER_SP_MODEL, extra_ids=100)
  theirs = step_record.vocabulary_identity(vocab.default_vocabulary())
  ours = step_record.vocabulary_identity(other)
  refusal = (f"The checkpoint {RunDir(run).checkpoint(6)} was trained with vocabulary "
             f"{theirs['name']} ({theirs['size']} ids); this run uses "
             f"sentencepiece_{ours['fingerprint'][:4]} ({other.vocab_size} ids): bind "
             "get_vocabulary.sentencepiece_model_path to the checkpoint's "
             f"({vocab.default_vocabulary().sentencepiece_model_file}).")
  iterator, abstract = resume_pipeline(run)
  manager = checkpoints.CheckpointManager(RunDir(run), settings.CheckpointConfig(), other)
  with pytest.raises(step_record.VocabularyMismatchError) as raised:
    manager.restore(abstract, iterator)  # a resume: refused, nothing set aside
  manager.close()
  assert str(raised.value) == refusal
  assert RunDir(run).checkpoint_steps() == [2, 4, 6]
  model = worker.tiny_run(run, 1)["model"]
  with pytest.raises(step_record.VocabularyMismatchError, match=re.escape(refusal)):
    export.export(checkpoint_path=RunDir(run).checkpoint(6), output_dir=str(tmp_path / "hf"),
                  model=model, vocabulary=other)
  assert not os.path.exists(tmp_path / "hf")
  # The run's own vocabulary restores; a step saved without a record loads with a warning.
  params = restore.restore_model_params(model, partitioning.Partitioner(),
                                            RunDir(run).checkpoint(6), vocab.default_vocabulary())
  assert tree_max_abs_diff(jax.device_get(params), saved_params(trained, 6)) == 0.0
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(restore.state_path(tmp_path / "old" / "checkpoints" / "4"),
                      saved_state(trained, 4))
  with caplog.at_level(logging.WARNING):
    params = restore.restore_model_params(
        model, partitioning.Partitioner(), str(tmp_path / "old" / "checkpoints" / "4"), other)
  assert tree_max_abs_diff(jax.device_get(params), saved_params(trained, 4)) == 0.0
  assert "saved without the identity of its vocabulary (by an older t5x_lite)" in caplog.text
  assert "saved without checksums of its arrays" in caplog.text


# ---- full and read-only disks --------------------------------------------------------------

def _can_mount_privately():
  return shutil.which("unshare") is not None and subprocess.run(
      ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True,
      check=False).returncode == 0


@pytest.mark.skipif(not _can_mount_privately(),
                    reason="needs unshare (user + mount namespaces) to mount a small tmpfs")
def test_full_and_read_only_disks_fail_fast_and_keep_the_last_checkpoint(tmp_path):
  result = subprocess.run(
      ["unshare", "--user", "--map-root-user", "--mount", sys.executable, WORKER, "--storage",
       str(tmp_path)], capture_output=True, text=True, timeout=600, check=False,
      env=worker_env(tmp_path / "jax_cache"))
  assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
  attempts = json.loads(result.stdout.strip().splitlines()[-1])
  run = tmp_path / "disk" / "run"
  assert attempts["first"]["error"] is None and attempts["first"]["entries"] == ["2", "4"]

  # checkpoints/ read-only: the first save fails in seconds, not after a 5-minute timeout.
  error = attempts["read_only_checkpoints"]["error"]
  assert error.startswith(f"StorageError: Saving the checkpoint of step 6 to {run}/checkpoints "
                          "failed: it is not writable"), error
  assert "intact (steps [2, 4])" in error and "resumes from step 4" in error
  assert attempts["read_only_checkpoints"]["seconds"] < 120

  error = attempts["full_at_start"]["error"]
  assert error.startswith(f"StorageError: MODEL_DIR={run} has "), error
  assert "free; a checkpoint of this model and its summaries needs about" in error
  assert attempts["full_at_start"]["resumed_from"] is None  # refused before any restore

  # The disk fills during the save of step 6: a clear error; step 4 stays the newest.
  full = attempts["full_while_saving"]
  assert full["error"].startswith("StorageError: Saving the checkpoint of step 6 to "), full
  assert "the disk is full (no space left on device)" in full["error"]
  assert full["seconds"] < 120 and full["entries"] == ["2", "4", "6.orbax-checkpoint-tmp"]

  # With space again, the next start removes the half-written step and resumes from step 4.
  assert attempts["resume"] == dict(attempts["resume"], error=None, resumed_from=4,
                                    entries=["6", "8"])

  error = attempts["read_only_model_dir"]["error"]
  assert error == (f"StorageError: MODEL_DIR={tmp_path}/read_only/run cannot be written: it is "
                   "not writable (permission denied or a read-only file system). Choose another "
                   "MODEL_DIR or fix the directory."), error

  # The command line, on a disk that fills during its first save: the error is the last line
  # on stderr; orbax logs its failed writes without tracebacks, and what comes after the
  # message (asyncio's never-retrieved futures at exit) goes to the log file.
  stderr = result.stderr.split(worker.CLI_MARKER, 1)[1]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert lines[-1].startswith(
      f"t5x-lite: StorageError: Saving the checkpoint of step 2 to {tmp_path}/disk/cli/"
      "checkpoints failed: the disk is full (no space left on device)."), stderr[-3000:]
  assert "Traceback" not in stderr and "_GatheringFuture" not in stderr, stderr[-3000:]
  log_path = lines[-2].split("traceback in ")[1].split(";")[0]
  with open(log_path, encoding="utf-8") as f:
    assert "Traceback" in f.read()


# ---- bad settings: one short message naming what to change, before any expensive work ----------

def train_args(tmp_path, *extra):
  return ["--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
          f"--gin.MIXTURE_OR_TASK_NAME={worker.TASK}", f"--gin.MODEL_DIR={tmp_path / 'run'}",
          "--gin.BATCH_SIZE=4", "--gin.TASK_FEATURE_LENGTHS=" + repr(worker.LENGTHS),
          "--gin.train.progress_bar=False", "--gin.EvalConfig.steps=0", *extra]


def superni_dir(tmp_path):
  """A natural-instructions layout whose one task file is malformed JSON."""
  root = tmp_path / "ni"
  (root / "splits" / "default").mkdir(parents=True)
  (root / "tasks").mkdir()
  (root / "splits" / "default" / "train_tasks.txt").write_text("task001_broken\n")
  (root / "tasks" / "task001_broken.json").write_text('{"Definition": ["x"],\n  "Instances": [}\n')
  return root


def hf_bert_dir(tmp_path):
  root = tmp_path / "bert"
  root.mkdir()
  (root / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
  return root


def bad_settings(tmp_path, checkpoint):
  """(argv, text the message must contain) for each mistake a user can make."""
  (tmp_path / "syntax.gin").write_text("train.train_steps = = 3\n")
  infer = lambda *extra: infer_args(checkpoint, tmp_path / "out", *extra)
  return {
      "gin syntax": (train_args(tmp_path, f"--gin_file={tmp_path / 'syntax.gin'}"),
                     "syntax.gin, line 1: 'train.train_steps = = 3' is not valid gin (Unable "
                     "to parse value)"),
      "unknown configurable": (train_args(tmp_path, "--gin.adafactr.decay_rate=0.5"),
                               "Did you mean: adafactor?"),
      "unknown parameter": (train_args(tmp_path, "--gin.train.train_step=3"),
                            "Did you mean: train_steps"),
      "steps not a number": (train_args(tmp_path, "--gin.TRAIN_STEPS=abc"),
                             "ValueError: TRAIN_STEPS (train.train_steps) = 'abc' is a string; "
                             "it takes an integer"),
      "negative steps": (train_args(tmp_path, "--gin.TRAIN_STEPS=-5"),
                         "ValueError: train.train_steps=-5 must be positive (gin: TRAIN_STEPS)."),
      "zero batch": (train_args(tmp_path, "--gin.BATCH_SIZE=0"),
                     "DatasetConfig.batch_size=0 must be positive (gin: BATCH_SIZE)."),
      "zero length": (train_args(tmp_path, "--gin.TASK_FEATURE_LENGTHS={'inputs': 0, "
                                 "'targets': 16}"),
                      "DatasetConfig.task_feature_lengths['inputs']=0 must be positive (gin: "
                      "TASK_FEATURE_LENGTHS)."),
      "lengths missing a key": (train_args(tmp_path, "--gin.TASK_FEATURE_LENGTHS={'inputs': 16}"),
                                "TASK_FEATURE_LENGTHS={'inputs': 16} has no length for "
                                "['targets']"),
      "batch vs microbatches": (train_args(tmp_path, "--gin.train.num_microbatches=3"),
                                "BATCH_SIZE=4 does not divide over the 3 microbatches "
                                "(train.num_microbatches): set BATCH_SIZE to a multiple of 3."),
      "unknown task": (train_args(tmp_path, "--gin.MIXTURE_OR_TASK_NAME=reliability_test_cpy"),
                       "Closest registered names: reliability_test_copy"),
      "keep 0": (train_args(tmp_path, "--gin.CheckpointConfig.keep=0"),
                 "CheckpointConfig.keep=0 must be positive (gin: CheckpointConfig.keep)."),
      "checkpoint period 0": (train_args(tmp_path, "--gin.CheckpointConfig.period=0"),
                              "CheckpointConfig.period=0 must be positive"),
      "log period 0": (train_args(tmp_path, "--gin.train.log_period=0"),
                       "train.log_period=0 must be positive (gin: train.log_period)."),
      "eval period negative": (train_args(tmp_path, "--gin.EvalConfig.period=-1"),
                               "EvalConfig.period=-1 must be >= 0"),
      "nonfinite policy": (train_args(tmp_path, "--gin.train.nonfinite_policy='skp'"),
                           "train.nonfinite_policy='skp': choose one of ('skip', 'stop')."),
      "missing initial checkpoint": (
          train_args(tmp_path, "--gin_file=runs/finetune.gin",
                     f"--gin.INITIAL_CHECKPOINT_PATH={tmp_path / 'nowhere'}"),
          f"No checkpoint at '{tmp_path / 'nowhere'}': it does not exist."),
      "missing SentencePiece model": (
          train_args(tmp_path, "--gin.get_vocabulary.sentencepiece_model_path=/no/sp.model"),
          "FileNotFoundError: get_vocabulary.sentencepiece_model_path='/no/sp.model' does not "
          "exist"),
      "SentencePiece path not a model": (
          train_args(tmp_path, f"--gin.get_vocabulary.sentencepiece_model_path={tmp_path}/"
                     "syntax.gin"),
          f"ValueError: get_vocabulary.sentencepiece_model_path='{tmp_path}/syntax.gin' is not a "
          "SentencePiece model that sentencepiece can load (DecodeError"),
      "SentencePiece path a directory": (
          train_args(tmp_path, f"--gin.get_vocabulary.sentencepiece_model_path={tmp_path}"),
          f"IsADirectoryError: get_vocabulary.sentencepiece_model_path='{tmp_path}' is a "
          "directory: set it to a SentencePiece .model file"),
      "binding of a configurable never called": (
          train_args(tmp_path, "--gin.infer.batch_size=8"),
          "ValueError: --gin.infer.batch_size is bound but this run (run_mode=train) never calls "
          "infer; remove the binding or use --run_mode=infer"),
      "infer NUM_SHARDS=0": (infer("--gin.NUM_SHARDS=0"),
                             "infer.num_shards=0 must be positive (gin: NUM_SHARDS)."),
      "infer SHARD_ID>=NUM_SHARDS": (infer("--gin.SHARD_ID=2", "--gin.NUM_SHARDS=2"),
                                     "SHARD_ID=2 must be less than NUM_SHARDS=2"),
      "infer unknown task": (infer("--gin.MIXTURE_OR_TASK_NAME=reliability_test_cpy"),
                             "Closest registered names: reliability_test_copy"),
      "num_decodes 0": (infer("--gin.DecodingSettings.num_decodes=0"),
                        "DecodingSettings.num_decodes=0 must be positive"),
      "temperature < 0": (infer("--gin.DecodingSettings.method='sample'",
                                "--gin.DecodingSettings.temperature=-1.0"),
                          "DecodingSettings.temperature=-1.0 must be > 0"),
      "top_p 0": (infer("--gin.DecodingSettings.top_p=0.0"),
                  "DecodingSettings.top_p=0.0 must be in (0, 1]"),
      "top_p > 1": (infer("--gin.DecodingSettings.top_p=1.5"),
                    "DecodingSettings.top_p=1.5 must be in (0, 1]"),
      "top_k < 0": (infer("--gin.DecodingSettings.top_k=-1"),
                    "DecodingSettings.top_k=-1 must be >= 0"),
      "checkpoint of another size": (infer("--gin.T5Config.d_model=64"),
                                     "token_embedder/embedding: checkpoint (4224, 32) vs model "
                                     "(4224, 64)"),
      "checkpoint of another family": (
          infer("--gin.T5Config.feed_forward='gated-gelu'",
                "--gin.T5Config.tie_word_embeddings=False"),
          "decoder/logits_dense/kernel: missing in the checkpoint"),
      "missing checkpoint path": (infer_args(tmp_path / "nowhere", tmp_path / "out"),
                                  f"No checkpoint at '{tmp_path / 'nowhere'}': it does not exist."),
      "empty checkpoint path": (infer_args("", tmp_path / "out"),
                                "The checkpoint path is empty: set CHECKPOINT_PATH"),
      "HF directory, not T5": (infer_args(hf_bert_dir(tmp_path), tmp_path / "out"),
                               "it is a HF transformers directory (config.json)"),
  }


def test_bad_settings_give_one_short_message_before_any_expensive_work(trained, tmp_path,
                                                                      monkeypatch, capsys):
  def expensive(*args, **kwargs):
    raise AssertionError("expensive start-up work ran before the settings were checked")

  for target in (pipeline, "get_dataset"), (trainer.Trainer, "init_state"), (
      ocp.PyTreeCheckpointer, "restore"):
    monkeypatch.setattr(*target, expensive)
  problems = []
  for name, (argv, expected) in bad_settings(tmp_path, RunDir(trained).checkpoint(6)).items():
    status, error = run_main(capsys, argv)
    if status != 1 or expected not in error or error.count("t5x-lite: ") != 1 or (
        "Traceback" in error):
      problems.append(f"{name}: status {status}, printed:\n{error}")
  assert not problems, "\n\n".join(problems)


def test_superni_data_problems_name_the_path(tmp_path, capsys):
  ni = superni_dir(tmp_path)
  superni = ["--gin.MIXTURE_OR_TASK_NAME=superni_def_train"]
  status, error = run_main(capsys, train_args(tmp_path, *superni,
                                              "--gin.superni_options.data_dir=/no/ni"))
  assert status == 1 and "FileNotFoundError: SuperNI data directory /no/ni does not exist" in error
  status, error = run_main(capsys, train_args(tmp_path, *superni,
                                              f"--gin.superni_options.data_dir={ni}"))
  assert status == 1, error
  assert f"ValueError: {ni}/tasks/task001_broken.json: malformed JSON at line 2" in error, error


def test_batch_must_divide_over_the_data_parallel_devices(tmp_path):
  class EightDevices(partitioning.Partitioner):
    data_parallel_size = 8

  with pytest.raises(ValueError, match=r"BATCH_SIZE=4 does not divide over the 8 data-parallel "
                     r"devices: set BATCH_SIZE to a multiple of 8."):
    train.train(**worker.tiny_run(tmp_path, 2, partitioner=EightDevices()))


# ---- one writer per MODEL_DIR -----------------------------------------------------------------

def test_run_lock_is_a_lease(tmp_path, caplog):
  path = tmp_path / "lock.json"
  other = {"host": "other-host", "pid": 123, "token": "theirs", "started": time.time(),
           "refreshed": time.time()}
  path.write_text(json.dumps(other))
  with pytest.raises(storage.StorageError, match=r"Another training process writes to .*: host "
                     r"other-host pid 123 \(started .*, refreshed 0 s ago\).*force_lock = True"):
    storage.RunLock(str(path)).acquire()

  # Not refreshed for an hour (its machine went away): stale, taken over with a warning.
  path.write_text(json.dumps(dict(other, refreshed=time.time() - 3600)))
  lock = storage.RunLock(str(path), refresh_s=0.05)
  with caplog.at_level(logging.WARNING):
    lock.acquire()
  assert "not refreshed for 3600 s (stale after 180 s)" in caplog.text
  held = json.loads(path.read_text())
  assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
  time.sleep(0.3)
  assert json.loads(path.read_text())["refreshed"] > held["refreshed"]  # the lease is renewed

  # Another process forces it over: the holder notices at its next refresh and stops.
  path.write_text(json.dumps(other))
  time.sleep(0.3)
  with pytest.raises(storage.StorageError, match="Another process took over the lock"):
    lock.check()
  lock.release()
  assert json.loads(path.read_text())["token"] == "theirs"  # not ours to remove

  # A process of this host that no longer runs (killed) holds no lock.
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  path.write_text(json.dumps(dict(other, host=socket.gethostname(), pid=int(gone))))
  lock = storage.RunLock(str(path))
  lock.acquire()
  assert f"process {gone} no longer runs on this host" in caplog.text
  lock.release()
  assert not path.exists()


def test_force_lock_takes_over_a_live_looking_lock(tmp_path, capsys, caplog):
  run = tmp_path / "run"
  run.mkdir()
  holder = {"host": "other-host", "pid": 123, "token": "theirs", "started": time.time(),
            "refreshed": time.time()}
  with open(RunDir(run).lock, "w", encoding="utf-8") as f:
    json.dump(holder, f)
  # The lock is all this test is about: reliability_worker's small model (not tiny.gin's
  # 15.6M parameters) keeps the one training step's compile short.
  small = ["--gin.T5Config.d_model=32", "--gin.T5Config.d_ff=64", "--gin.T5Config.d_kv=8",
           "--gin.T5Config.num_heads=2", "--gin.T5Config.num_encoder_layers=1",
           "--gin.T5Config.num_decoder_layers=1", "--gin.TRAIN_STEPS=1"]
  status, error = run_main(capsys, train_args(tmp_path, *small))
  assert status == 1 and "host other-host pid 123" in error, error
  with caplog.at_level(logging.WARNING):
    status, error = run_main(capsys, train_args(tmp_path, *small, "--gin.train.force_lock=True"))
  assert status == 0, error
  assert "Taking over the lock" in caplog.text and "train.force_lock = True" in caplog.text
  assert RunDir(run).checkpoint_steps() == [1] and not os.path.exists(RunDir(run).lock)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_sigterm_to_one_process_stops_every_process_after_the_same_step(tmp_path):
  run, port = tmp_path / "run", free_port()
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = [launch(run, 40, *(["hold@3"] if i == 1 else []), process=f"{i},2,{port}", log=logs[i])
           for i in range(2)]
  wait_for(procs[1], run, "hold@3")
  procs[1].send_signal(signal.SIGTERM)  # process 0 gets no signal
  (rc0, out0), (rc1, out1) = (finish(p, run, log=log) for p, log in zip(procs, logs))
  assert rc0 == 0 and rc1 == 0, out0[-3000:] + out1[-3000:]
  # The flags meet one step later: both processes finish step 4 and save it together.
  assert "Stopped by a signal to another process after step 4" in out0, out0[-3000:]
  assert RunDir(run).checkpoint_steps()[-1] == 4
  saved = os.listdir(os.path.join(RunDir(run).checkpoint(4), "dataset"))
  assert {"data_iterator-00000-of-00002.index", "data_iterator-00001-of-00002.index"} <= set(saved)
