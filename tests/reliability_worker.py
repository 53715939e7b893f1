"""A training process for tests/test_reliability.py to kill, signal and starve (run as a script).

Usage:
  python tests/reliability_worker.py MODEL_DIR TRAIN_STEPS [PAUSE ...]
  unshare --user --map-root-user --mount python tests/reliability_worker.py --storage DIR

Trains `tiny_run(MODEL_DIR, TRAIN_STEPS)` (also what the tests run in-process as the
uninterrupted reference) and prints "DONE <step>" when train() returns. Each PAUSE
(WHERE@STEP) stops the process at a chosen point, writes the marker file
`marker(MODEL_DIR, WHERE, STEP)` and waits there, so that a test can kill it at that exact
point rather than by luck:
  step@k        after step k's update was dispatched, before its checkpoint; waits forever
  hold@k        as step@k, but waits only until SIGTERM/SIGINT arrives, then goes on
  save_start@k  inside the save of step k: its <k>.orbax-checkpoint-tmp directory exists,
                no input-pipeline state is written yet
  save_data@k   inside the save of step k: the input-pipeline state is written, the step
                is not committed
  commit@k      in the background commit of step k (orbax's finalize), before the rename
  metrics@k     halfway through the metrics row of step k (a torn line); waits forever

--storage runs `storage_faults` in a private mount namespace (see there). With
$T5X_LITE_TEST_PROCESS set, the launch is one process of a multi-process run (jax.distributed
on localhost, one CPU device each).
"""

import json
import os
import re
import subprocess
import sys
import time

import seqio
import tensorflow as tf

from t5x_lite import main as t5x_main
from t5x_lite import settings
from t5x_lite.checkpointing import checkpoints
from t5x_lite.checkpointing import summaries
from t5x_lite.model import encoder_decoder, network
from t5x_lite.modes import train
from t5x_lite.tasks import vocab
from t5x_lite.training import optimizers
from t5x_lite.training import preemption
from t5x_lite.training import trainer

TASK = "reliability_test_copy"
LENGTHS = {"inputs": 16, "targets": 16}
PERIOD = 2
# "PROCESS_ID,NUM_PROCESSES,PORT": this launch is one process of a multi-process run.
PROCESS_ENV = "T5X_LITE_TEST_PROCESS"
CLI_MARKER = "---- the command line on a full disk ----"


def _examples(split, shuffle_files=False, seed=None):
  del split, shuffle_files, seed
  words = [f"word{i} is number {i % 7}" for i in range(64)]
  return tf.data.Dataset.from_tensor_slices({"inputs": words, "targets": words})


def register_task():
  """A small copy task: a cheap input pipeline keeps each of the many launches short."""
  features = {k: seqio.Feature(vocab.default_vocabulary(), add_eos=True)
              for k in ("inputs", "targets")}
  seqio.TaskRegistry.remove(TASK)
  seqio.TaskRegistry.add(
      TASK, source=seqio.FunctionDataSource(_examples, splits=("train",)),
      output_features=features,
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim])


register_task()


def tiny_run(model_dir, steps, **overrides):
  """The arguments of train.train for a tiny model that checkpoints every PERIOD steps."""
  config = network.T5Config(vocab_size=4224, d_model=32, d_ff=64, d_kv=8, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  args = dict(model_dir=str(model_dir), train_steps=steps,
              model=encoder_decoder.EncoderDecoderModel(config),
              train_dataset=settings.DatasetConfig(TASK, LENGTHS, batch_size=4, pack=False),
              optimizer=optimizers.adafactor(optimizers.constant_schedule(1e-2)),
              checkpoint=settings.CheckpointConfig(period=PERIOD, keep=2),
              evaluation=settings.EvalConfig(steps=0), log_period=1, progress_bar=False)
  args.update(overrides)
  return args


def marker(model_dir, where, step) -> str:
  return f"{os.path.abspath(model_dir)}.paused-{where}-{step}"


def _wait(model_dir, where, step, until=lambda: False):
  with open(marker(model_dir, where, step), "w", encoding="utf-8") as f:
    f.write(str(os.getpid()))
  while not until():
    time.sleep(0.05)


def _step_of_item_dir(directory) -> int:
  """The step of .../checkpoints/<step>.orbax-checkpoint-tmp*/dataset*."""
  return int(re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(directory)).group(1))


def install_pauses(model_dir, pauses):
  """Patches the library at the points PAUSE names (test-only: the library has no hooks)."""
  wanted = {}
  for pause in pauses:
    where, step = pause.split("@")
    wanted.setdefault(where, set()).add(int(step))
  stop_requests = []

  enter = preemption.StopRequest.__enter__

  def recording_enter(self):
    stop_requests.append(self)
    return enter(self)

  preemption.StopRequest.__enter__ = recording_enter
  train_step = trainer.Trainer.train_step

  def paused_train_step(self, state, batch):
    state, metrics = train_step(self, state, batch)
    step = int(state.step)
    if step in wanted.get("step", ()):
      _wait(model_dir, "step", step)
    if step in wanted.get("hold", ()):
      _wait(model_dir, "hold", step, until=lambda: stop_requests[-1].signal_name is not None)
    return state, metrics

  trainer.Trainer.train_step = paused_train_step
  handler = checkpoints.DatasetCheckpointHandler
  save = handler.save

  def paused_save(self, directory, args):
    step = _step_of_item_dir(directory)
    if step in wanted.get("save_start", ()):
      _wait(model_dir, "save_start", step)
    save(self, directory, args)
    if step in wanted.get("save_data", ()):
      _wait(model_dir, "save_data", step)

  def paused_finalize(self, directory):
    step = _step_of_item_dir(directory)
    if step in wanted.get("commit", ()):
      _wait(model_dir, "commit", step)

  handler.save = paused_save
  handler.finalize = paused_finalize
  write_scalars = summaries._JsonlWriter.write_scalars  # pylint: disable=protected-access

  def torn_write_scalars(self, step, scalars):
    if step in wanted.get("metrics", ()):
      with self.path.open("a") as f:
        f.write('{"step": %d, "loss": ' % step)
      _wait(model_dir, "metrics", step)
    write_scalars(self, step, scalars)

  summaries._JsonlWriter.write_scalars = torn_write_scalars  # pylint: disable=protected-access


def _fill(directory, leave_bytes):
  """Writes DIR/filler until the filesystem has about `leave_bytes` free."""
  free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
  with open(os.path.join(directory, "filler"), "wb") as f:
    f.write(b"\0" * max(free - leave_bytes, 0))


def storage_faults(base):
  """Full and read-only disks, on a 64 MiB tmpfs mounted in this process's mount namespace.

  Prints one JSON object: for each attempt, "error" ("Type: message", or None), "seconds"
  it took, and the checkpoint steps and the step training resumed from afterwards. Then
  writes CLI_MARKER to stderr and ends as the command line does on a disk that fills during
  the first save (`main.run()` as the process's entry, exit status 1): its stderr follows.
  """
  disk, read_only = os.path.join(base, "disk"), os.path.join(base, "read_only")
  for path, options in ((disk, "size=64m"), (read_only, "ro,size=1m")):
    os.makedirs(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)
  run = os.path.join(disk, "run")
  results, resumed = {}, []
  restore_or_init = train.restore_or_init

  def recording_restore_or_init(*args, **kwargs):
    state = restore_or_init(*args, **kwargs)
    resumed.append(int(state.step))
    return state

  train.restore_or_init = recording_restore_or_init

  def attempt(name, steps, model_dir=run):
    start, error = time.time(), None
    resumed.clear()
    try:
      train.train(**tiny_run(model_dir, steps))
    except Exception as e:  # pylint: disable=broad-except
      error = f"{type(e).__name__}: {e}"
    results[name] = {"error": error, "seconds": time.time() - start,
                     "resumed_from": resumed[0] if resumed else None,
                     "entries": sorted(os.listdir(os.path.join(run, "checkpoints")))}

  attempt("first", 4)
  checkpoints_dir = os.path.join(run, "checkpoints")
  subprocess.run(f"mount --bind {checkpoints_dir} {checkpoints_dir} && "
                 f"mount -o remount,bind,ro {checkpoints_dir}", shell=True, check=True)
  attempt("read_only_checkpoints", 8)
  subprocess.run(["umount", checkpoints_dir], check=True)
  _fill(disk, leave_bytes=2**20)
  attempt("full_at_start", 8)
  os.remove(os.path.join(disk, "filler"))
  save = checkpoints.CheckpointManager.save

  def filling_save(self, state, *args, **kwargs):
    if int(state.step) == 6:
      _fill(disk, leave_bytes=0)
    return save(self, state, *args, **kwargs)

  checkpoints.CheckpointManager.save = filling_save
  attempt("full_while_saving", 8)
  checkpoints.CheckpointManager.save = save
  os.remove(os.path.join(disk, "filler"))
  attempt("resume", 8)
  attempt("read_only_model_dir", 4, model_dir=os.path.join(read_only, "run"))
  print(json.dumps(results), flush=True)

  def filling_first_save(self, state, *args, **kwargs):
    _fill(disk, leave_bytes=0)
    return save(self, state, *args, **kwargs)

  checkpoints.CheckpointManager.save = filling_first_save
  print(CLI_MARKER, file=sys.stderr, flush=True)
  sys.argv = ["t5x-lite", "--gin_file=models/tiny.gin", "--gin.T5Config.d_model=32",
              "--gin.T5Config.d_ff=64", "--gin.T5Config.d_kv=8", "--gin.T5Config.num_heads=2",
              "--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1",
              "--gin.T5Config.dropout_rate=0.0", "--gin_file=runs/pretrain.gin",
              f"--gin.MIXTURE_OR_TASK_NAME={TASK}", f"--gin.MODEL_DIR={disk}/cli",
              "--gin.BATCH_SIZE=4", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}",
              "--gin.TRAIN_STEPS=2", f"--gin.CheckpointConfig.period={PERIOD}",
              "--gin.train.progress_bar=False", "--gin.EvalConfig.steps=0"]
  sys.exit(t5x_main.run())


def _initialize_distributed(spec):
  """PROCESS_ID,NUM_PROCESSES,PORT: one CPU device per process, gloo collectives."""
  import jax  # pylint: disable=g-import-not-at-top
  process_id, num_processes, port = (int(x) for x in spec.split(","))
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=num_processes, process_id=process_id)


def main():
  if sys.argv[1] == "--storage":
    storage_faults(sys.argv[2])
    return
  if os.environ.get(PROCESS_ENV):
    _initialize_distributed(os.environ[PROCESS_ENV])
  model_dir, steps, pauses = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
  install_pauses(model_dir, pauses)
  state, _ = train.train(**tiny_run(model_dir, steps))
  print(f"DONE {int(state.step)}", flush=True)


if __name__ == "__main__":
  main()
