"""A clean stop on SIGTERM / SIGINT: finish the step, checkpoint it, exit 0.

Preemptible machines get SIGTERM before they go, and Ctrl-C sends SIGINT. Inside
`StopRequest`, the first of either only sets a flag: the training loop finishes the step it
is in, saves a checkpoint of it, flushes its summaries and returns, and re-running the same
command resumes from that step. A second signal exits at once (status 128 + its number),
as a process without this handling would.

With several processes a signal may reach only some of them, or reach them at different
steps. Each step, every process adds its flag to a tiny all-reduce whose result is read one
step later (computed by then: the loop does not wait for it), so all of them stop after
the same step. JAX's own preemption service (multihost_utils.reached_preemption_sync_point)
handles SIGTERM only, through a C++ handler that a Python one replaces; this covers both.
"""

import os
import signal
import sys
import threading
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Context manager: catches SIGTERM / SIGINT while training runs (main thread only).

  Usage:
    with StopRequest() as stop:
      for step in ...:
        ...
        if stop.should_stop():   # every step, on every process
          save(); break
  """

  def __init__(self):
    self.signal_name: Optional[str] = None
    self._previous = {}
    self._pending = None  # The all-reduce of the previous step (several processes).
    if jax.process_count() > 1:
      mesh = jax.sharding.Mesh(np.array(jax.devices()), ("processes",))
      self._flags_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
          "processes"))
      self._any = jax.jit(jnp.max, out_shardings=jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec()))

  def __enter__(self) -> "StopRequest":
    # Signal handlers can only be installed from the main thread (a notebook's is).
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc_info):
    for sig, handler in self._previous.items():
      # None: the previous handler was not Python's (e.g. JAX's C++ preemption notifier),
      # and cannot be put back; the default at least still stops the process.
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signal_name is not None:
      print(f"t5x-lite: second signal ({name}): exiting at once, without saving the current "
            "step.", file=sys.stderr, flush=True)
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.signal_name = name
    print(f"t5x-lite: {name} received: finishing the current step, saving a checkpoint, "
          "then exiting (send it again to exit at once).", file=sys.stderr, flush=True)

  def should_stop(self) -> bool:
    """Whether to stop after the step just run: the same answer on every process.

    Call it once per step on every process (with several processes it is a collective).
    """
    requested = self.signal_name is not None
    if jax.process_count() == 1:
      return requested
    agreed = self._pending is not None and bool(np.asarray(self._pending.addressable_data(0)))
    flags = np.full((jax.local_device_count(),), requested, np.int32)
    self._pending = self._any(jax.make_array_from_process_local_data(self._flags_sharding, flags))
    if agreed and self.signal_name is None:
      self.signal_name = "a signal to another process"
    return agreed
