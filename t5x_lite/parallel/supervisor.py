"""A multi-process run works in a child process, so that the coordinator's loss ends in one line.

Why a second process: when process 0, which hosts jax.distributed's coordination service, is
lost, jax 0.10.2's client in every other process LOG(FATAL)s as soon as its error-polling RPC
to the service fails (SIGABRT and a C++ stack trace), before any Python code runs. jaxlib
offers no way around it inside the process: its `missed_heartbeat_callback` takes a Python
callable but calls it with an absl::Status, which has no Python type (std::bad_cast, then
std::terminate); `jax_enable_recoverability` only changes what the service does; the
client's `poll_for_error_from_service_at_startup` option is not exposed to Python.

So with several processes, the entry point (`supervise`) re-runs its own command line as a
child, with CHILD_ENV set, and stays as a small parent that:
- passes stdout and stdin through untouched and forwards the child's stderr as it comes,
  holding back only what follows a C++ fatal error's first line (glog's `F1206 ...`,
  `*** Check failure stack trace ***`, `terminate called ...`);
- forwards SIGTERM and SIGINT to the child, unless the child got the same signal itself (a
  terminal's Ctrl-C, a scheduler signalling every process): a second one would make it exit
  at once without saving. The child's Python signal handler writes each signal's number to a
  pipe (signal.set_wakeup_fd), which is how the parent knows;
- returns the child's exit status (a signal n as 128 + n, as a shell reports it), except
  when a child other than process 0 aborts and process 0's service no longer accepts
  connections: then the held-back stack trace goes to a file, and the last line on stderr
  names process 0 and the step a rerun resumes from, with exit status EXIT_PEER_LOST.
The child dies with its parent (PR_SET_PDEATHSIG on Linux), so `kill -9` of the process a
user sees still stops the run. Other losses are the child's own PeerWatchdog's to report.
"""

import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

from t5x_lite.parallel import distributed

# Set in the child's environment: JSON {"parent": pid, "wakeup_fd": fd, "info": path}.
CHILD_ENV = "T5X_LITE_SUPERVISED_CHILD"
FORWARDED = (signal.SIGTERM, signal.SIGINT)
# A signal the child gets within this many seconds of the parent's was sent to both.
SAME_SIGNAL_S = 1.0
# A C++ fatal error ends the process within moments; output after its first line is held back
# for at most this long while the child still runs, then forwarded after all.
HOLD_S = 30.0
# The start of a line that begins a C++ fatal error's output; '#' stands for a digit.
_FATAL_STARTS = (b"F#### ##:##:##", b"*** Check failure stack trace",
                 b"terminate called after throwing")
_PR_SET_PDEATHSIG = 1


def supervise(argv: Sequence[str], multi_process: bool) -> Optional[int]:
  """Runs the command in a supervised child when `multi_process`; in the child, prepares it.

  Args:
    argv: the command line's arguments (without the program).
    multi_process: whether the flags ask for a jax.distributed run of more than one process.

  Returns:
    The exit status for the parent; None where this process runs the work itself (a single
    process, or the supervised child).
  """
  spec = os.environ.pop(CHILD_ENV, None)
  if spec is not None:
    _become_child(json.loads(spec))
    return None
  if not multi_process:
    return None
  return Supervisor(argv).run()


def _become_child(spec: Dict) -> None:
  """Dies with the parent; reports handled signals and the run's layout to it."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  except (OSError, AttributeError):  # not Linux: a killed parent leaves the child running
    pass
  if os.getppid() != spec["parent"]:  # the parent died before prctl
    os._exit(128 + signal.SIGKILL)  # pylint: disable=protected-access
  os.set_blocking(spec["wakeup_fd"], False)
  signal.set_wakeup_fd(spec["wakeup_fd"], warn_on_full_buffer=False)
  distributed.supervisor_info_path = spec["info"]


def _fatal_start(line: bytes) -> Optional[bool]:
  """Whether a line (or the start of one) begins a C++ fatal error; None: cannot tell yet."""
  undecided = False
  for start in _FATAL_STARTS:
    n = min(len(line), len(start))
    if all(s == c or (s == ord("#") and 48 <= c <= 57) for s, c in zip(start[:n], line[:n])):
      if n == len(start):
        return True
      undecided = True
  return None if undecided else False


class StderrForwarder:
  """Writes the child's stderr on at once, except from a C++ fatal error's first line on.

  A line's first bytes that may still become such a line wait for the rest of it; progress
  bars (carriage returns, no newline) pass at once.

  Args:
    write: writes bytes to this process's stderr.
  """

  def __init__(self, write):
    self._write = write
    self._pending = b""  # the start of a line that may begin a fatal error
    self._line_start = True
    self.held: Optional[bytearray] = None  # from the fatal error's first line on
    self.held_since: Optional[float] = None

  def feed(self, data: bytes) -> None:
    if self.held is not None:
      self.held += data
      return
    data, self._pending = self._pending + data, b""
    out, pos = bytearray(), 0
    while pos < len(data):
      newline = data.find(b"\n", pos)
      end = len(data) if newline < 0 else newline + 1
      if self._line_start:
        fatal = _fatal_start(data[pos:end])
        if fatal:
          self.held, self.held_since = bytearray(data[pos:]), time.monotonic()
          break
        if fatal is None and newline < 0:
          self._pending = data[pos:]
          break
      out += data[pos:end]
      self._line_start, pos = newline >= 0, end
    if out:
      self._write(bytes(out))

  def release(self) -> None:
    """Writes what was held back and forwards from here on."""
    if self.held is not None:
      held, self.held = bytes(self.held), None
      self._line_start = held.endswith(b"\n")
      self._write(held)
    if self._pending:
      self._write(self._pending)
      self._line_start, self._pending = False, b""


def _write_stderr(data: bytes) -> None:
  view = memoryview(data)
  while view:
    view = view[os.write(2, view):]


def coordinator_gone(address: str, timeout_s: float) -> Optional[str]:
  """Why the coordination service at host:port is gone, or None if it accepts a connection."""
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
      return None
  except ConnectionRefusedError:
    return f"its jax.distributed service at {address} refuses connections"
  except (socket.timeout, TimeoutError):
    return f"its jax.distributed service at {address} did not answer in {timeout_s:g} s"
  except OSError as e:
    return f"its jax.distributed service at {address} cannot be reached ({e.strerror or e})"


class Supervisor:
  """The parent: see the module docstring.

  Args:
    argv: the arguments to run the entry point with.
    program: what runs them: this Python and the entry point by default.
  """

  def __init__(self, argv: Sequence[str], program: Optional[Sequence[str]] = None):
    self._command = [*(program or (sys.executable, "-m", "t5x_lite.main")), *argv]
    self._signals: List[Tuple[int, float]] = []  # received by the parent, not yet judged
    self._child_signals: List[Tuple[int, float]] = []  # reported by the child
    self._echoes: Dict[int, int] = {}  # forwarded, whose report from the child is still due

  def run(self) -> int:
    fd, info_path = tempfile.mkstemp(prefix="t5x_lite-processes-", suffix=".json")
    os.close(fd)
    wakeup_read, wakeup_write = os.pipe()
    previous = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
    try:
      env = dict(os.environ)
      env[CHILD_ENV] = json.dumps({"parent": os.getpid(), "wakeup_fd": wakeup_write,
                                   "info": info_path})
      child = subprocess.Popen(self._command, env=env, stderr=subprocess.PIPE,
                               pass_fds=(wakeup_write,))
      os.close(wakeup_write)
      forwarder = StderrForwarder(_write_stderr)
      self._pump(child, forwarder, wakeup_read)
      status = child.wait()
      line = self._lost_coordinator(status, forwarder, info_path, child.pid)
      if line is not None:
        _write_stderr(line.encode("utf-8"))
        return distributed.EXIT_PEER_LOST
      forwarder.release()
      return 128 - status if status < 0 else status
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
      os.close(wakeup_read)
      try:
        os.unlink(info_path)
      except OSError:
        pass

  def _on_signal(self, signum, frame):
    del frame
    self._signals.append((signum, time.monotonic()))

  def _pump(self, child: subprocess.Popen, forwarder: StderrForwarder, wakeup_read: int):
    """Forwards stderr and signals until the child has exited and its stderr is closed."""
    streams = {child.stderr.fileno(), wakeup_read}
    exited_at = None
    while child.stderr.fileno() in streams:
      if exited_at is None and child.poll() is not None:
        exited_at = time.monotonic()
      # A process the child started may hold its stderr open: a second is enough to drain it.
      if exited_at is not None and time.monotonic() - exited_at > 1.0:
        break
      ready, _, _ = select.select(list(streams), [], [], 0.1)
      for fd in ready:
        data = os.read(fd, 65536)
        if not data:
          streams.discard(fd)
        elif fd == wakeup_read:
          now = time.monotonic()
          self._child_signals.extend((signum, now) for signum in data)
        else:
          forwarder.feed(data)
      self._judge_signals(child)
      if (forwarder.held is not None and exited_at is None and
          time.monotonic() - forwarder.held_since > HOLD_S):
        forwarder.release()  # not a fatal error after all: the child runs on
    child.stderr.close()

  def _judge_signals(self, child: subprocess.Popen) -> None:
    """Forwards each signal the child did not get too within SAME_SIGNAL_S."""
    now = time.monotonic()
    reports = []
    for signum, when in self._child_signals:
      if self._echoes.get(signum):
        self._echoes[signum] -= 1  # the child's report of a signal forwarded to it
      elif now - when <= 2 * SAME_SIGNAL_S:
        reports.append((signum, when))
    waiting = []
    for signum, when in self._signals:
      match = next((r for r in reports if r[0] == signum and abs(r[1] - when) <= SAME_SIGNAL_S),
                   None)
      if match is not None:
        reports.remove(match)
      elif now - when > SAME_SIGNAL_S:
        if child.poll() is None:
          child.send_signal(signum)
          self._echoes[signum] = self._echoes.get(signum, 0) + 1
      else:
        waiting.append((signum, when))
    self._signals, self._child_signals = waiting, reports

  def _lost_coordinator(self, status: int, forwarder: StderrForwarder, info_path: str,
                        child_pid: int) -> Optional[str]:
    """The last line when the child aborted because process 0 is gone, else None."""
    if status != -signal.SIGABRT and not (forwarder.held is not None and status != 0):
      return None
    try:
      with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    except (OSError, ValueError):  # the child aborted before jax.distributed started
      return None
    if info["process_id"] == 0 or info["num_processes"] < 2:
      return None
    address = info["coordinator_address"]
    why = coordinator_gone(address, min(float(info["heartbeat_timeout_seconds"]), 30.0))
    if why is None:
      return None
    held = bytes(forwarder.held or b"")
    forwarder.held = None
    log_path = os.path.join(tempfile.gettempdir(), f"t5x_lite-abort-{child_pid}.log")
    with open(log_path, "wb") as f:
      f.write(held)
    hint = distributed.resume_hint(info["run_mode"], info.get("model_dir"))
    distributed.release_run_lock(info.get("model_dir"), child_pid)
    # The same form as the watchdog's line for any other process.
    return (f"(jax's abort and its C++ stack trace are in {log_path})\n"
            f"t5x-lite: Process 0 (the coordinator, {address}) of {info['num_processes']} "
            f"stopped responding ({why}); stopping. {hint}\n")
