"""A process of a multi-process run is killed: the others stop with one line, not an abort.

t5x_lite/parallel/distributed.py: without its watchdog, jax 0.10.2 aborts the survivor (SIGABRT,
a C++ stack trace) once the coordination service misses the killed process's heartbeats.
t5x_lite/parallel/supervisor.py: when process 0, the coordinator, is killed, the survivors' jax
clients abort at once; their supervising parents report it in one line.
"""

import json
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
from t5x_lite.parallel import supervisor

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


def _chunks(data, size):
  return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_stderr_passes_at_once_until_a_fatal_error_whose_output_is_held_back(size):
  out = []
  forwarder = supervisor.StderrForwarder(out.append)
  normal = (b"I1206 18:01:28.7 x.cc:1] fine\n\r 10%|#  |\r 20%|## |\nF12 is no date\n"
            b"E1206 18:01:28.737839 7901 agent.cc:289] Polled an error\n")
  fatal = (b"F1206 18:01:28.737843 7901 client.h:80] Terminating\n"
           b"*** Check failure stack trace: ***\n")
  for chunk in _chunks(normal, size):
    forwarder.feed(chunk)
  # Everything but the start of a line that may still be a fatal error's is written at once.
  assert b"".join(out) == normal
  progress = []
  forwarder = supervisor.StderrForwarder(progress.append)
  forwarder.feed(b"\r 30%|###")
  assert progress == [b"\r 30%|###"]  # a progress bar does not wait for its newline
  out.clear()
  forwarder = supervisor.StderrForwarder(out.append)
  for chunk in _chunks(normal + fatal + b"    @ 0x7f38e99c8634 frame\n", size):
    forwarder.feed(chunk)
  assert b"".join(out) == normal
  assert bytes(forwarder.held) == fatal + b"    @ 0x7f38e99c8634 frame\n"
  forwarder.release()  # not the coordinator's loss: nothing is lost
  assert b"".join(out) == normal + fatal + b"    @ 0x7f38e99c8634 frame\n"


class FakeChild:

  def __init__(self):
    self.sent = []

  def poll(self):
    return None

  def send_signal(self, signum):
    self.sent.append(signum)


def test_a_signal_the_child_also_got_is_not_forwarded_a_second_time():
  """A second SIGTERM would make training exit at once, without saving its step."""
  parent, child = supervisor.Supervisor([]), FakeChild()
  now, term, sigint = time.monotonic(), signal.SIGTERM, signal.SIGINT
  late = now - 1.5 * supervisor.SAME_SIGNAL_S
  # Sent to both (a terminal's Ctrl-C, a scheduler signalling every process): the child's
  # report arrived within SAME_SIGNAL_S. Sent to the parent only: forwarded once it is clear.
  parent._signals = [(sigint, late), (term, late), (term, now)]  # pylint: disable=protected-access
  parent._child_signals = [(sigint, late + 0.01)]  # pylint: disable=protected-access
  parent._judge_signals(child)  # pylint: disable=protected-access
  assert child.sent == [term]
  # The child's report of the forwarded signal is not taken for the next one's.
  parent._child_signals = [(term, now)]  # pylint: disable=protected-access
  parent._signals[0] = (term, late)  # pylint: disable=protected-access
  parent._judge_signals(child)  # pylint: disable=protected-access
  assert child.sent == [term, term]


def test_sigterm_reaches_the_child_once_whether_sent_to_the_group_or_to_the_parent(tmp_path):
  """A real parent and child: the child's signal reports reach the parent through the pipe."""
  child = ("import os, signal, sys, time\n"
           "from t5x_lite.parallel import supervisor\n"
           "supervisor.supervise([], multi_process=True)\n"  # in the child: prepares it
           "got = []\n"
           "signal.signal(signal.SIGTERM, lambda *_: got.append(print('got', flush=True)))\n"
           "print('ready', flush=True)\n"
           "while len(got) < 2: time.sleep(0.01)\n"
           "time.sleep(1.0)\n")  # a third, forwarded after all, would come in this time
  parent = ("import sys\nfrom t5x_lite.parallel import supervisor\n"
            "supervisor.SAME_SIGNAL_S = 0.5\n"
            f"sys.exit(supervisor.Supervisor([], [sys.executable, '-c', {child!r}]).run())")
  proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                          start_new_session=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=REPO))
  try:
    assert proc.stdout.readline() == "ready\n"
    os.killpg(proc.pid, signal.SIGTERM)  # both get it: not forwarded
    assert proc.stdout.readline() == "got\n"
    time.sleep(0.7)
    os.kill(proc.pid, signal.SIGTERM)  # the parent only: forwarded
    assert proc.stdout.read() == "got\n"
    assert proc.wait(timeout=10) == 0
  finally:
    proc.kill()


def _fake_child(script):
  """A program standing for the entry point's child: it reads CHILD_ENV as the child does."""
  return [sys.executable, "-c", "import json, os, sys\n"
          f"spec = json.loads(os.environ['{supervisor.CHILD_ENV}'])\n{script}"]


def test_the_parent_returns_the_childs_exit_status(capfd):
  for script, status in (("sys.exit(0)", 0), ("sys.exit(3)", 3), ("os.kill(os.getpid(), 9)", 137),
                         ("sys.stderr.write('F1206 18:01:28.7 x] fatal\\n'); os.abort()", 134)):
    assert supervisor.Supervisor([], _fake_child(script)).run() == status, script
  # Not process 0's loss (no process layout written): the held-back fatal error is printed.
  assert capfd.readouterr().err == "F1206 18:01:28.7 x] fatal\n"


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_a_child_aborted_by_the_coordinators_loss_ends_with_one_line(capfd, tmp_path):
  """The parent's side of the coordinator's loss, with a child that aborts as jax's does."""
  address = f"127.0.0.1:{_free_port()}"  # nothing listens there: the coordinator is gone
  info = {"process_id": 1, "num_processes": 2, "coordinator_address": address,
          "heartbeat_timeout_seconds": 5, "run_mode": "eval", "model_dir": str(tmp_path)}
  script = (f"open(spec['info'], 'w').write({json.dumps(info)!r})\n"
            "sys.stderr.write('E1206 18:01:28.737839 7901 agent.cc:289] Polled an error\\n')\n"
            "sys.stderr.write('F1206 18:01:28.737843 7901 client.h:80] Terminating\\n')\n"
            "sys.stderr.write('*** Check failure stack trace: ***\\n')\n"
            "sys.stderr.flush(); os.abort()")
  assert supervisor.Supervisor([], _fake_child(script)).run() == distributed.EXIT_PEER_LOST
  lines = capfd.readouterr().err.splitlines()
  assert lines[0] == "E1206 18:01:28.737839 7901 agent.cc:289] Polled an error"
  log_path = re.fullmatch(r"\(jax's abort and its C\+\+ stack trace are in (.+)\)", lines[1])[1]
  with open(log_path, encoding="utf-8") as f:
    assert f.read() == ("F1206 18:01:28.737843 7901 client.h:80] Terminating\n"
                        "*** Check failure stack trace: ***\n")
  os.unlink(log_path)
  assert lines[2:] == [
      f"t5x-lite: Process 0 (the coordinator, {address}) of 2 stopped responding (its "
      f"jax.distributed service at {address} refuses connections); stopping. Rerun the same "
      "command: it continues from what it had written."]


def _start_run(tmp_path, run, timeout_s, name):
  """Starts a tiny two-process training run; returns its processes and stderr files."""
  port, temp = _free_port(), tmp_path / f"{name}-tmp"
  temp.mkdir()
  # TMPDIR: the supervisors' files (the processes of the run, a stack trace) land in `temp`.
  env = dict(os.environ, TMPDIR=str(temp),
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
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
  errs = [tmp_path / f"{name}-stderr{i}" for i in range(2)]
  procs = []
  for i in range(2):
    with open(errs[i], "w", encoding="utf-8") as stderr:
      # Each in its own process group: killing the group kills its supervisor and its worker.
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "t5x_lite.main", *flags, f"--process_id={i}"], cwd=tmp_path,
          env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True))
  return procs, errs, port


def _knows_model_dir(temp, process_id):
  """Whether that process's worker has told its supervisor MODEL_DIR (gin is parsed)."""
  for path in temp.glob("t5x_lite-processes-*.json"):
    try:
      info = json.loads(path.read_text())
    except (OSError, ValueError):  # created, not yet written
      continue
    if info["process_id"] == process_id and info["model_dir"]:
      return True
  return False


def _kill_when(procs, errs, ready, victim, group, timeout_s):
  """SIGKILLs process `victim` (its group, or the process a user sees) once ready().

  Returns:
    The other process's exit status and the seconds it took to exit after the kill.
  """
  try:
    deadline = time.monotonic() + 600
    while not ready():
      if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
        pytest.fail("the run did not get there:\n" + errs[0].read_text()[-3000:])
      time.sleep(0.05)
    if group:
      os.killpg(procs[victim].pid, signal.SIGKILL)
    else:
      procs[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    rc = procs[1 - victim].wait(timeout=timeout_s * distributed.JAX_TIMEOUT_FACTOR)
    return rc, time.monotonic() - killed
  finally:
    for p in procs:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()


@pytest.fixture(scope="module")
def first_loss(tmp_path_factory):
  """Process 1 killed (kill -9 of the process a user sees) after the first checkpoint."""
  tmp_path = tmp_path_factory.mktemp("peer_loss")
  run, timeout_s = tmp_path / "run", 6
  procs, errs, _ = _start_run(tmp_path, run, timeout_s, "first")
  rc, took = _kill_when(procs, errs, lambda: RunDir(str(run)).checkpoint_steps(), 1, False,
                        timeout_s)
  return tmp_path, run, timeout_s, rc, took, errs[0].read_text()


def test_killed_process_stops_the_other_with_one_line_naming_the_resume_step(first_loss):
  _, run, timeout_s, rc, took, stderr = first_loss
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


def test_killed_coordinator_stops_the_other_with_one_line_naming_the_resume_step(first_loss):
  """The rerun the first loss asks for starts; process 0 (with its service) is lost meanwhile.

  Killed as soon as process 1 has read the config, which names MODEL_DIR: restoring and
  compiling would only make the test slower.
  """
  tmp_path, run, timeout_s = first_loss[:3]
  procs, errs, port = _start_run(tmp_path, run, timeout_s, "second")
  rc, took = _kill_when(procs, errs, lambda: _knows_model_dir(tmp_path / "second-tmp", 1), 0,
                        True, timeout_s)
  stderr = errs[1].read_text()
  assert rc == distributed.EXIT_PEER_LOST, stderr[-3000:]
  assert took < 2 * timeout_s, stderr[-3000:]
  # jax's fatal error and its stack trace went to a file, named on the line before the last.
  assert "Check failure stack trace" not in stderr and "Traceback" not in stderr
  *_, named, last = stderr.strip().splitlines()
  log_path = re.fullmatch(r"\(jax's abort and its C\+\+ stack trace are in (.+)\)", named)[1]
  with open(log_path, encoding="utf-8") as f:
    assert "Terminating process because the JAX distributed service" in f.read()
  os.unlink(log_path)
  steps = RunDir(str(run)).checkpoint_steps()
  address = f"127.0.0.1:{port}"
  assert last == (
      f"t5x-lite: Process 0 (the coordinator, {address}) of 2 stopped responding (its "
      f"jax.distributed service at {address} refuses connections); stopping. Rerun the same "
      f"command: it resumes from step {steps[-1]} (the last checkpoint in {run}).")
