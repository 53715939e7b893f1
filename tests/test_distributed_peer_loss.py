"""A process of a multi-process run is killed: the others stop with one line, not an abort.

t5x_lite/parallel/distributed.py: without its watchdog, jax 0.10.2 aborts the survivor (SIGABRT, a C++
stack trace) once the coordination service misses the killed process's heartbeats.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from t5x_lite.checkpointing.run_dir import RunDir
from t5x_lite.parallel import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeStore:
  """The two key-value calls of jax's DistributedRuntimeClient, shared by several watchdogs."""

  def __init__(self):
    self.values, self.lock, self.down = {}, threading.Lock(), False

  def key_value_set(self, key, value, allow_overwrite=False):
    assert allow_overwrite
    if self.down:
      raise RuntimeError("UNAVAILABLE: Socket closed")
    with self.lock:
      self.values[key] = value

  def key_value_dir_get(self, prefix):
    if self.down:
      raise RuntimeError("UNAVAILABLE: Socket closed")
    with self.lock:
      return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def _watchdogs(store, count, timeout_s, hint=lambda: "HINT"):
  reports = {i: [] for i in range(count)}
  watchdogs = [distributed.PeerWatchdog(store, i, count, timeout_s, hint=hint,
                                        on_lost=lambda line, i=i: reports[i].append(
                                            (time.monotonic(), line))).start()
               for i in range(count)]
  return watchdogs, reports


def _wait(predicate, timeout_s):
  deadline = time.monotonic() + timeout_s
  while not predicate() and time.monotonic() < deadline:
    time.sleep(0.01)
  return predicate()


def test_watchdog_names_the_silent_process_after_the_timeout_and_ignores_finished_ones():
  store, timeout_s = FakeStore(), 0.5
  (w0, w1, w2), reports = _watchdogs(store, 3, timeout_s)
  assert _wait(lambda: len(store.values) == 3, 5)
  w2.stop(done=True)  # ends normally: nobody reports it
  killed = time.monotonic()
  w1.stop(done=False)  # stops beating, as a killed process does
  assert _wait(lambda: reports[0], 10)
  when, line = reports[0][0]
  # Its last beat came at most one interval (timeout / 5) before the kill.
  assert when - killed >= timeout_s - timeout_s / 5
  assert re.fullmatch(r"t5x-lite: Process 1 of 3 stopped responding \(no heartbeat for \d+ s; "
                      r"--heartbeat_timeout_seconds=0\.5\); stopping\. HINT", line), line
  assert store.values[f"{distributed.KEY_PREFIX}2"] == distributed.DONE
  w0.stop()
  assert reports[1] == [] and reports[2] == [] and len(reports[0]) == 1


def test_watchdog_names_the_coordinator_when_the_store_stops_answering():
  store = FakeStore()
  (w0, w1), reports = _watchdogs(store, 2, 0.3)
  assert _wait(lambda: len(store.values) == 2, 5)
  store.down = True
  assert _wait(lambda: reports[1], 10)
  assert reports[1][0][1].startswith(
      "t5x-lite: Process 0 (the coordinator) of 2 stopped responding (its jax.distributed "
      "service has not answered for ")
  w0.stop(done=False)
  w1.stop(done=False)


def test_an_error_caused_by_the_loss_waits_for_the_loss_report():
  """The main thread's error (a collective failing) must not be printed before the loss line.

  Reading the resume step (the hint) takes time; an error handler calling settle() meanwhile
  used to return at once and print its own error last.
  """
  store = FakeStore()

  def slow_hint():
    time.sleep(1.0)
    return "HINT"

  (w0, w1), reports = _watchdogs(store, 2, 0.3, hint=slow_hint)
  assert _wait(lambda: len(store.values) == 2, 5)
  w1.stop(done=False)
  assert _wait(w0._lost_lock.locked, 10)  # pylint: disable=protected-access
  assert not reports[0]  # the hint is still being read
  assert w0.settle() is False
  assert len(reports[0]) == 1 and reports[0][0][1].endswith("HINT")
  w0.stop()


def test_a_beat_sent_before_the_error_does_not_count_as_alive():
  """A process killed just after beating: that beat, read after settle() began, is not life.

  The collective fails at the kill, before the next heartbeat read; settle() used to take the
  late-read beat as a sign of life, and the error line, not the loss line, came last.
  """
  store = FakeStore()
  reports = []
  watchdog = distributed.PeerWatchdog(store, 0, 2, 0.3, hint=lambda: "HINT",
                                      on_lost=reports.append)  # not started: driven by hand
  key = f"{distributed.KEY_PREFIX}1"
  watchdog._check([(key, "1")], time.monotonic())  # pylint: disable=protected-access
  result = []
  waiter = threading.Thread(target=lambda: result.append(watchdog.settle()))
  waiter.start()
  time.sleep(0.05)
  watchdog._check([(key, "2")], time.monotonic())  # the last beat, read late
  waiter.join(timeout=10)
  assert result == [False]  # no beat after the call: not alive
  # A live process beats again: settle() returns True.
  result.clear()
  waiter = threading.Thread(target=lambda: result.append(watchdog.settle()))
  waiter.start()
  for beat in ("3", "4"):
    time.sleep(0.05)
    watchdog._check([(key, beat)], time.monotonic())
  waiter.join(timeout=10)
  assert result == [True]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_killed_process_stops_the_other_with_one_line_naming_the_resume_step(tmp_path):
  run, port, timeout_s = tmp_path / "run", _free_port(), 6
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO,
                                                                  os.environ.get("PYTHONPATH")])))
  # Tiny model, a checkpoint every 2 steps, far more steps than run before the kill.
  flags = ["--gin_file=recipes/quickstart.gin", f"--gin.MODEL_DIR={run}",
           "--gin.TRAIN_STEPS=100000", "--gin.BATCH_SIZE=2", "--gin.T5Config.d_model=16",
           "--gin.T5Config.d_ff=16", "--gin.T5Config.d_kv=4", "--gin.T5Config.num_heads=2",
           "--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1",
           "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}",
           "--gin.CheckpointConfig.period=2", "--gin.train.log_period=1000",
           "--gin.EvalConfig.infer_eval_mixture_or_task_name=None",
           "--gin.train.progress_bar=False", f"--coordinator_address=127.0.0.1:{port}",
           "--num_processes=2", f"--heartbeat_timeout_seconds={timeout_s}"]
  errs = [tmp_path / f"stderr{i}" for i in range(2)]
  procs = []
  for i in range(2):
    with open(errs[i], "w", encoding="utf-8") as stderr:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "t5x_lite.main", *flags, f"--process_id={i}"], cwd=tmp_path,
          env=env, stdout=subprocess.DEVNULL, stderr=stderr))
  try:
    deadline = time.monotonic() + 600
    while not RunDir(str(run)).checkpoint_steps():
      if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
        pytest.fail("no checkpoint was written:\n" + errs[0].read_text()[-3000:])
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    rc = procs[0].wait(timeout=timeout_s * distributed.JAX_TIMEOUT_FACTOR)
    took = time.monotonic() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  stderr = errs[0].read_text()
  assert rc == distributed.EXIT_PEER_LOST, stderr[-3000:]
  # Within the watchdog's timeout (plus a heartbeat interval and this machine's slack), long
  # before JAX's own heartbeat timeout (3 x) would abort it.
  assert took < 2 * timeout_s, stderr[-3000:]
  for crash in ("SIGABRT", "Check failed", "Check failure", "stack trace", "Terminating process",
                "Traceback"):
    assert crash not in stderr
  last = stderr.strip().splitlines()[-1]
  steps = RunDir(str(run)).checkpoint_steps()
  assert re.fullmatch(
      r"t5x-lite: Process 1 of 2 stopped responding \(no heartbeat for \d+ s; "
      rf"--heartbeat_timeout_seconds={timeout_s}\); stopping\. Rerun the same command: it "
      rf"resumes from step {steps[-1]} \(the last checkpoint in {re.escape(str(run))}\)\.",
      last), last
  assert steps[-1] >= 2 and steps[-1] % 2 == 0
  # The survivor held MODEL_DIR's lock: released, so that a rerun on any host starts at once.
  assert not os.path.exists(RunDir(str(run)).lock)
