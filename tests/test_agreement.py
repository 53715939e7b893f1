"""Tests for t5x_lite/runtime/agreement.py: one process (no collective) and two processes."""

import json
import os
import socket
import subprocess
import sys

import pytest

from t5x_lite.runtime import agreement

WORKER = os.path.join(os.path.dirname(__file__), "agreement_worker.py")


@pytest.fixture
def no_collectives(monkeypatch):
  def refuse():
    raise AssertionError("a collective was used by a single process")
  monkeypatch.setattr(agreement, "_collectives", refuse)


def test_one_process_returns_or_raises_its_own_outcome_without_a_collective(no_collectives):
  assert agreement.all_succeed(lambda: {"step": 3}, "Reading step 3") == {"step": 3}
  error = FileNotFoundError("no /ckpt/3/state")

  def fail():
    raise error
  with pytest.raises(FileNotFoundError) as raised:
    agreement.all_succeed(fail, "Reading step 3", error=KeyError)
  assert raised.value is error  # the process's own exception, not a wrapper
  assert agreement.same_on_all([5, True, False, 0]) == [5, 1, 0, 0]
  assert agreement.barrier("one_process") is None


def test_two_processes_raise_together_and_take_process_0_values(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)),
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, WORKER, str(tmp_path), str(i), str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  for proc in procs:
    out, _ = proc.communicate(timeout=300)  # a guard against a hang in a collective
    assert proc.returncode == 0, out[-4000:]
  seen = [json.loads((tmp_path / f"process_{i}.json").read_text()) for i in range(2)]
  assert [s["result"] for s in seen] == [0, 10]
  assert seen[0]["raised"] == ["KeyError",
                               "Writing step 3 failed on process(es) [1] (their logs say why)"]
  assert seen[1]["raised"] == ["ValueError", "the disk of process 1 is full"]
  assert [s["same"] for s in seen] == [[7, 1], [7, 1]]
