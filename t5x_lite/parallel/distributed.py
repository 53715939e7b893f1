"""Multi-process start-up (jax.distributed) and a clean stop when another process is lost.

`initialize` calls `jax.distributed.initialize` from the entry point's flags and, with more
than one process, starts a `PeerWatchdog`.

Why a watchdog: in jax 0.10.2 a process that is killed (SIGKILL, out of memory, machine lost)
takes the others down with a C++ abort. The coordination service notices its missing
heartbeats after `heartbeat_timeout_seconds` (100 s by default) and sends the error to every
process, whose client then calls its `missed_heartbeat_callback`: the default one is a
LOG(FATAL) (SIGABRT, a C++ stack trace). A Python callback cannot replace it: jaxlib wraps it as
`std::function<void(absl::Status)>`, and absl::Status has no Python type, so calling it throws
std::bad_cast on the client's thread and the process aborts all the same.

So each process stamps a heartbeat of its own in the coordination service's key-value store
every `timeout / 5` seconds and reads everyone's. A process whose stamp has not changed for
`timeout` seconds (counted from its first stamp) is lost: the watchdog prints one line naming
it and the step a rerun resumes from, and exits with EXIT_PEER_LOST, while JAX's own heartbeat
timeout is set to 3 x `timeout`, too late to abort first.

Limits: stamps are written by a Python thread, so a process stuck for longer than the
timeout in a call that holds the GIL looks lost (raise --heartbeat_timeout_seconds on a
heavily loaded machine). Stamps go through the coordinator (process 0), whose own loss
cannot be caught this way: the survivors' clients abort at once when its service goes away
(their error-polling RPC fails), before any Python code runs. So a multi-process run works in
a child process, and its parent (supervisor.py) reports that loss in the same form; the child
tells it the run's processes and MODEL_DIR through `supervisor_info_path`.
"""

import atexit
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Callable, Dict, Optional

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_TIMEOUT_S = 10
# JAX's own heartbeat timeout, as a multiple of ours: its detection aborts the process.
JAX_TIMEOUT_FACTOR = 3
# EX_TEMPFAIL (sysexits.h): a temporary failure that a rerun of the same command gets past.
EXIT_PEER_LOST = 75
KEY_PREFIX = "t5x_lite/heartbeat/"
DONE = "done"


def resume_hint(run_mode: str, model_dir: Optional[str]) -> str:
  """What rerunning the same command does: the step training resumes from, for train.

  Args:
    run_mode: the entry point's --run_mode.
    model_dir: MODEL_DIR, or None when the config has none.
  """
  if run_mode != "train" or not model_dir:
    return "Rerun the same command: it continues from what it had written."
  from etils import epath  # pylint: disable=g-import-not-at-top
  from t5x_lite.checkpointing.run_dir import RunDir  # pylint: disable=g-import-not-at-top
  run_dir = RunDir(model_dir)
  try:
    steps = run_dir.checkpoint_steps()
  except Exception:  # pylint: disable=broad-except
    # Orbax's listing needs a thread pool, which an exiting interpreter refuses; a committed
    # step is a directory named by its number (a save in progress has a suffix).
    try:
      steps = sorted(int(p.name) for p in epath.Path(run_dir.checkpoints).iterdir()
                     if p.name.isdigit())
    except Exception as e:  # pylint: disable=broad-except
      return f"Rerun the same command: it resumes from the last checkpoint in {model_dir} ({e})."
  if not steps:
    return f"Rerun the same command: it starts again (no checkpoint in {run_dir.root} yet)."
  return (f"Rerun the same command: it resumes from step {steps[-1]} (the last checkpoint in "
          f"{run_dir.root}).")


def release_run_lock(model_dir: Optional[str], pid: Optional[int] = None) -> None:
  """Removes MODEL_DIR/lock.json if process `pid` of this host holds it: a rerun need not wait.

  The watchdog exits with os._exit, past the `finally` that releases the lock normally; a
  supervising parent releases the lock of its child that aborted.

  Args:
    model_dir: MODEL_DIR, or None.
    pid: the holder to release for; this process by default.
  """
  if not model_dir:
    return
  from etils import epath  # pylint: disable=g-import-not-at-top
  from t5x_lite.checkpointing.run_dir import RunDir  # pylint: disable=g-import-not-at-top
  try:
    path = epath.Path(RunDir(model_dir).lock)
    holder = json.loads(path.read_text())
    owner = os.getpid() if pid is None else pid
    if holder.get("pid") == owner and holder.get("host") == socket.gethostname():
      path.unlink()
  except Exception:  # pylint: disable=broad-except  (no lock, or not ours: leave it)
    pass


class PeerWatchdog:
  """Stops this process with one line when another process stops sending heartbeats.

  Heartbeats are counters under KEY_PREFIX in the jax.distributed key-value store; one thread
  writes this process's and reads all of them (one RPC each), another notices when the store
  itself has not answered for `timeout_s`. A process that ends normally writes DONE and is
  no longer watched.

  Args:
    client: jax's DistributedRuntimeClient (key_value_set, key_value_dir_get).
    process_id: this process.
    num_processes: all processes of the run.
    timeout_s: seconds without a new heartbeat after which a process is lost.
    hint: returns the sentence about rerunning (called once, when a process is lost).
    on_lost: called with the message line instead of printing it and exiting (tests).
    on_beat: called after each heartbeat, from the watchdog's thread.
  """

  def __init__(self, client, process_id: int, num_processes: int, timeout_s: float,
               hint: Callable[[], str], on_lost: Optional[Callable[[str], None]] = None,
               on_beat: Optional[Callable[[], None]] = None):
    self._client = client
    self._process_id, self._num_processes = process_id, num_processes
    self._timeout_s = float(timeout_s)
    self._interval_s = max(self._timeout_s / 5, 0.1)
    self._hint, self._on_lost, self._on_beat = hint, on_lost, on_beat
    now = time.monotonic()
    peers = [p for p in range(num_processes) if p != process_id]
    self._last_change: Dict[int, float] = {p: now for p in peers}
    self._last_value: Dict[int, Optional[str]] = {p: None for p in peers}
    # How many changes of each peer's heartbeat this process has seen.
    self._changes: Dict[int, int] = {p: 0 for p in peers}
    # When the store last failed to answer (an RPC failing or hanging), None when it did.
    self._unanswered_since: Optional[float] = None
    self._stop = threading.Event()
    self._lost_lock = threading.Lock()
    self._reported = threading.Event()  # set once a lost process has been reported
    self._threads = []

  def start(self) -> "PeerWatchdog":
    for target, name in ((self._beat_loop, "beat"), (self._answer_loop, "coordinator")):
      thread = threading.Thread(target=target, name=f"t5x_lite-peer-watchdog-{name}", daemon=True)
      thread.start()
      self._threads.append(thread)
    return self

  def settle(self) -> bool:
    """Waits until every watched process sent a heartbeat after this call, or one is lost.

    A loss being reported is waited for: the report ends the process (outside tests), and its
    line must be the last one, not the error of the caller that the loss caused.

    Returns:
      True if all are alive (or done); False if one was reported lost (or the wait, at most
      `timeout_s` plus three heartbeat intervals, ran out).
    """
    # A lost process is reported `timeout_s` after its last change was seen, which is at most a
    # read interval after this call: the wait outlasts that.
    deadline = time.monotonic() + self._timeout_s + 3 * self._interval_s
    # The first change seen after this call may be a beat sent before it (a process killed
    # just after beating, read late); a second change is a beat sent after the first read.
    seen = dict(self._changes)
    while time.monotonic() < deadline:
      if self._lost_lock.locked():
        # Reading the run directory for the resume step may take a while on an object store.
        self._reported.wait(timeout=10 * self._timeout_s + 60)
        return False
      if all(self._last_value[p] == DONE or self._changes[p] >= seen[p] + 2
             for p in self._changes):
        return True
      time.sleep(self._interval_s / 4)
    return False

  def stop(self, done: bool = True) -> None:
    """Stops watching; with `done`, tells the other processes not to watch this one."""
    self._stop.set()
    for thread in self._threads:
      thread.join(timeout=self._timeout_s)  # An RPC to a coordinator that is gone may hang.
    self._threads = []
    if done:
      try:
        self._client.key_value_set(f"{KEY_PREFIX}{self._process_id}", DONE, allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except  (the coordinator is gone: nobody reads)
        pass

  def _beat_loop(self) -> None:
    beat = 0
    while True:
      beat += 1
      if self._unanswered_since is None:
        self._unanswered_since = time.monotonic()
      try:
        self._client.key_value_set(f"{KEY_PREFIX}{self._process_id}", str(beat),
                                   allow_overwrite=True)
        entries = self._client.key_value_dir_get(KEY_PREFIX)
      except Exception:  # pylint: disable=broad-except  (_answer_loop judges a silent store)
        entries = None
      if entries is not None:
        self._unanswered_since = None
        if not self._stop.is_set():
          self._check(entries, time.monotonic())
      if self._on_beat is not None:
        self._on_beat()
      if self._stop.wait(self._interval_s):
        return

  def _check(self, entries, now: float) -> None:
    """Judges every peer on a fresh read of the store (so a stall here blames nobody)."""
    for key, value in entries:
      process = int(key.rsplit("/", 1)[-1])
      if process in self._last_value and value != self._last_value[process]:
        self._last_value[process], self._last_change[process] = value, now
        self._changes[process] += 1
    for process, changed in self._last_change.items():
      # Judged from its first heartbeat on: start-up (imports that hold the GIL, compiling)
      # may delay it by more than the timeout; JAX's own timeout covers a process lost before.
      if self._last_value[process] in (None, DONE):
        continue
      if now - changed > self._timeout_s:
        self._lost(process, f"no heartbeat for {now - changed:.0f} s")
        return

  def _answer_loop(self) -> None:
    suspect = None
    while not self._stop.wait(self._interval_s):
      since = self._unanswered_since
      silent = 0 if since is None else time.monotonic() - since
      # Seen twice, an interval apart, so that this process's own stall blames nobody.
      if silent > self._timeout_s and suspect == since:
        self._lost(0, f"its jax.distributed service has not answered for {silent:.0f} s")
        return
      suspect = since if silent > self._timeout_s else None

  def _lost(self, process: int, why: str) -> None:
    if not self._lost_lock.acquire(blocking=False):
      return
    coordinator = " (the coordinator)" if process == 0 else ""
    line = (f"t5x-lite: Process {process}{coordinator} of {self._num_processes} stopped "
            f"responding ({why}; --heartbeat_timeout_seconds={self._timeout_s:g}); stopping. "
            f"{self._hint()}")
    if self._on_lost is not None:
      self._on_lost(line)
      self._reported.set()
      return
    print(line, file=sys.stderr, flush=True)
    # Not sys.exit: the main thread may be blocked in a collective that never returns, and
    # JAX's shutdown at exit would wait for the lost process until JAX aborts.
    os._exit(EXIT_PEER_LOST)  # pylint: disable=protected-access


_watchdog: Optional[PeerWatchdog] = None
# Set by supervisor.py in a supervised child: where to tell the parent the run's processes.
supervisor_info_path: Optional[str] = None


def _supervisor_note(state, heartbeat_timeout_seconds: float, run_mode: str,
                     model_dir: Callable[[], Optional[str]]) -> Callable[[], None]:
  """Returns a function that writes what the parent needs to report the coordinator's loss.

  MODEL_DIR is known once gin is parsed, after jax.distributed starts: the watchdog calls the
  function after each heartbeat, and the file is rewritten when MODEL_DIR changes.
  """
  written = []

  def note() -> None:
    try:
      directory = model_dir()
    except Exception:  # pylint: disable=broad-except  (gin is being parsed: next beat)
      return
    if written == [directory]:
      return
    info = {"process_id": state.process_id, "num_processes": state.num_processes,
            "coordinator_address": state.coordinator_address,
            "heartbeat_timeout_seconds": heartbeat_timeout_seconds, "run_mode": run_mode,
            "model_dir": directory}
    try:
      with open(supervisor_info_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(info, f)
      os.replace(supervisor_info_path + ".tmp", supervisor_info_path)
    except OSError as e:
      log.warning("Cannot write %s for the supervising process: %s", supervisor_info_path, e)
    written[:] = [directory]

  return note


def _jax_state():
  """jax.distributed's global state (private API, as orbax reads it), or None."""
  try:
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    return jax_distributed.global_state
  except (ImportError, AttributeError):
    return None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               heartbeat_timeout_seconds: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
               run_mode: str = "train",
               model_dir: Callable[[], Optional[str]] = lambda: None) -> None:
  """jax.distributed.initialize (auto-detection where arguments are None) and the watchdog.

  Must run before any other JAX call.

  Args:
    coordinator_address: host:port of process 0's coordination service.
    num_processes: how many processes the run has.
    process_id: this process's index.
    heartbeat_timeout_seconds: another process that sends no heartbeat for this long stops
      this one (exit status EXIT_PEER_LOST) with a line naming it and the step to resume from.
    run_mode: the run mode, for that line.
    model_dir: returns MODEL_DIR when a process is lost (the entry point reads gin's macro).
  """
  global _watchdog
  import jax  # pylint: disable=g-import-not-at-top
  if not heartbeat_timeout_seconds > 0:
    raise ValueError(f"--heartbeat_timeout_seconds={heartbeat_timeout_seconds} must be > 0.")
  jax_timeout = int(JAX_TIMEOUT_FACTOR * heartbeat_timeout_seconds) + 1
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=jax_timeout)
  state = _jax_state()
  client = getattr(state, "client", None)
  if state is None or not hasattr(client, "key_value_dir_get"):
    log.warning("This jax has no key-value client the peer watchdog can use: a lost process "
                "aborts the others after %d s.", jax_timeout)
    return
  if state.num_processes == 1:
    return

  def hint() -> str:
    directory = model_dir()
    text = resume_hint(run_mode, directory)
    release_run_lock(directory)
    return text

  on_beat = None
  if supervisor_info_path:
    on_beat = _supervisor_note(state, heartbeat_timeout_seconds, run_mode, model_dir)
    on_beat()
  _watchdog = PeerWatchdog(client, state.process_id, state.num_processes,
                           heartbeat_timeout_seconds, hint, on_beat=on_beat).start()
  # Runs before JAX's own exit handler (atexit is last in, first out).
  atexit.register(_at_exit)


def _at_exit() -> None:
  """Before JAX's shutdown barrier, which would wait for a lost process until JAX aborts.

  An exception in the main thread (a collective that failed because a process is gone) ends
  here: the watchdog first waits for a heartbeat from every process still running, so that a
  lost one stops this process with its line instead.
  """
  if _watchdog is not None:
    _watchdog.settle()
    _watchdog.stop(done=True)


def stop_if_a_process_is_lost() -> None:
  """After an error in a multi-process run: a lost process stops this one with its line.

  A collective fails at once when a process is killed; waiting here for every process's next
  heartbeat (at most the timeout) tells that apart from an error of this process's own.
  """
  if _watchdog is not None:
    _watchdog.settle()
