"""The run directory's storage: writable and roomy enough at start, and one writer at a time.

`check_writable` and `check_free_space` run at the start of training, so a MODEL_DIR on a
read-only or full disk fails in a second with the path in the message, not minutes later in
a background checkpoint thread. `write_error_reason` turns the OSErrors and tensorstore
errors of a failed write into the words a user acts on.

`RunLock` is a lease on MODEL_DIR/lock.json ({"host", "pid", "token", "started",
"refreshed"}) that keeps a second training process off a directory another one writes: two
writers would interleave checkpoints and metrics. The holder rewrites "refreshed" every
REFRESH_S seconds from a daemon thread. A lock is stale, and taken over with a warning, when
it was not refreshed for STALE_AFTER_S seconds, or when its process is on this host and no
longer runs (a killed run restarts at once). `train.force_lock = True` takes over any lock.
"""

import errno
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from typing import Optional

from etils import epath

log = logging.getLogger(__name__)

REFRESH_S = 30
STALE_AFTER_S = 180


class StorageError(RuntimeError):
  """MODEL_DIR cannot take what a run writes (not writable, full, or another writer's)."""


def is_local(path) -> bool:
  """Whether `path` is on this machine's file system (no URI scheme such as gs://)."""
  return "://" not in str(path)


def format_bytes(n: float) -> str:
  if n < 1024:
    return f"{n:.0f} bytes"
  for unit in ("KiB", "MiB", "GiB"):
    n /= 1024
    if n < 1024:
      break
  return f"{n:.1f} {unit}"


def write_error_reason(error: BaseException) -> str:
  """Why a write failed, in words: the disk is full, the path is not writable, or the error.

  Recognises OSErrors by errno and tensorstore's errors (ValueErrors) by their text.
  """
  text = str(error)
  code = getattr(error, "errno", None)
  if code == errno.ENOSPC or "No space left" in text or "os_error_code='28'" in text:
    return "the disk is full (no space left on device)"
  if (code in (errno.EACCES, errno.EPERM, errno.EROFS) or "Permission denied" in text
      or "Read-only file system" in text):
    return "it is not writable (permission denied or a read-only file system)"
  first_line = text.strip().splitlines()[0] if text.strip() else ""
  return f"{type(error).__name__}: {first_line[:300]}"


def check_writable(directory: str, setting: str = "MODEL_DIR") -> None:
  """Creates `directory` if needed and writes and deletes a probe file in it.

  Raises:
    StorageError naming the directory and the gin setting to change.
  """
  path = epath.Path(directory)
  probe = path / f".write-probe-{uuid.uuid4().hex}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("t5x_lite write probe\n")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  (OSError, or a remote filesystem's)
    raise StorageError(f"{setting}={directory} cannot be written: {write_error_reason(e)}. "
                       f"Choose another {setting} or fix the directory.") from e


def check_free_space(directory: str, needed_bytes: int, what: str,
                     setting: str = "MODEL_DIR") -> None:
  """Raises StorageError if a local `directory` has less than `needed_bytes` free.

  Remote filesystems (gs://, ...) have no free-space figure and pass.
  """
  if not is_local(directory):
    return
  free = shutil.disk_usage(directory).free
  if free < needed_bytes:
    raise StorageError(
        f"{setting}={directory} has {format_bytes(free)} free; {what} needs about "
        f"{format_bytes(needed_bytes)}. Free space on that disk or choose another {setting}.")


def pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process: it runs.
    return True
  return True


class RunLock:
  """The lease that makes one training process the only writer of a MODEL_DIR.

  Usage:
    lock = RunLock(run_dir.lock)
    lock.acquire(force=False)     # StorageError naming the holder if another process has it
    ...; lock.check()             # StorageError if another process took the lock over
    lock.release()

  Args:
    path: the lock file (RunDir.lock).
    stale_after_s: a lock not refreshed for this long is stale.
    refresh_s: how often the holder rewrites it.
  """

  def __init__(self, path: str, stale_after_s: float = STALE_AFTER_S,
               refresh_s: float = REFRESH_S):
    self.path = epath.Path(path)
    self.stale_after_s, self.refresh_s = stale_after_s, refresh_s
    self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                   "token": uuid.uuid4().hex, "started": time.time()}
    self._taken_by: Optional[dict] = None
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def _read(self) -> Optional[dict]:
    try:
      text = self.path.read_text()
    except FileNotFoundError:
      return None
    try:
      holder = json.loads(text)
      if isinstance(holder, dict) and "refreshed" in holder:
        return holder
    except json.JSONDecodeError:
      pass
    # Being written, or damaged: its age is the file's.
    return {"host": "?", "pid": -1, "token": None, "refreshed": self.path.stat().mtime}

  def _write(self) -> None:
    record = dict(self.record, refreshed=time.time())
    tmp = self.path.parent / f"{self.path.name}.{self.record['token']}.tmp"
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(self.path)  # Atomic: a reader sees the old or the new lease, never half.

  def _stale_reason(self, holder: dict) -> Optional[str]:
    age = time.time() - float(holder["refreshed"])
    if age > self.stale_after_s:
      return f"not refreshed for {age:.0f} s (stale after {self.stale_after_s:.0f} s)"
    if holder.get("host") == self.record["host"] and not pid_alive(int(holder["pid"])):
      return f"process {holder['pid']} no longer runs on this host"
    return None

  @staticmethod
  def describe(holder: dict) -> str:
    age = time.time() - float(holder["refreshed"])
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"host {holder.get('host')} pid {holder.get('pid')} (started {started}, "
            f"refreshed {age:.0f} s ago)")

  def acquire(self, force: bool = False) -> None:
    """Takes the lock, or raises StorageError naming the live holder."""
    holder = self._read()
    if holder is not None and holder.get("token") != self.record["token"]:
      reason = "train.force_lock = True" if force else self._stale_reason(holder)
      if reason is None:
        raise StorageError(
            f"Another training process writes to {self.path.parent}: "
            f"{self.describe(holder)}, lock {self.path}. Two writers would overwrite each "
            "other's checkpoints: use another MODEL_DIR, or wait for it to finish. If that "
            f"process is gone, set train.force_lock = True (or wait until the lock is older "
            f"than {self.stale_after_s:.0f} s).")
      log.warning("Taking over the lock %s of %s: %s.", self.path, self.describe(holder), reason)
    try:
      self._write()
    except Exception as e:  # pylint: disable=broad-except
      raise StorageError(f"MODEL_DIR={self.path.parent} cannot be written (lock file "
                         f"{self.path}): {write_error_reason(e)}.") from e
    self._thread = threading.Thread(target=self._refresh_loop, name="t5x_lite-run-lock",
                                    daemon=True)
    self._thread.start()

  def _refresh_loop(self) -> None:
    while not self._stop.wait(self.refresh_s):
      try:
        holder = self._read()
        if holder is None or holder.get("token") != self.record["token"]:
          self._taken_by = holder or {"host": "?", "pid": "?", "refreshed": time.time()}
          return
        self._write()
      except Exception as e:  # pylint: disable=broad-except  (a full disk: retry later)
        log.warning("Could not refresh the lock %s: %s", self.path, write_error_reason(e))

  def check(self) -> None:
    """Raises StorageError if another process took the lock over (train.force_lock there)."""
    if self._taken_by is not None:
      raise StorageError(
          f"Another process took over the lock {self.path} ({self.describe(self._taken_by)}): "
          "stopping so that two processes do not write the same MODEL_DIR. The last saved "
          "checkpoint is intact.")

  def release(self) -> None:
    """Stops refreshing and removes the lock if this process still holds it."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    holder = self._read()
    if holder is not None and holder.get("token") == self.record["token"]:
      self.path.unlink(missing_ok=True)
