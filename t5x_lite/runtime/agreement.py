"""What the processes of a multi-process run agree on: an outcome, values, a point in time.

Every process of a run must take the same branch: one that raises alone, or skips a step the
others take, leaves them waiting in their next collective until it times out, with no word of
why. The three forms here are the only cross-process agreements of the library:

  all_succeed(fn, what)   runs fn on every process; if it raised on any, it raises on all
  same_on_all(values)     process 0's integers, on every process
  barrier(name)           returns once every process has reached it

With one process there is nothing to agree on: each returns at once, without a collective (and
without initialising jax's distributed runtime).
"""

from typing import Any, Callable, List, Sequence, Type

import jax
import numpy as np


def _collectives():
  # Imported only with several processes: a one-process run never loads it.
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils


def all_succeed(fn: Callable[[], Any], what: str,
                error: Type[Exception] = RuntimeError) -> Any:
  """fn() on every process; raises on every process if it raised on any.

  The process where fn raised raises its own exception; the others raise
  `error("<what> failed on process(es) [i, ...] (their logs say why)")`.

  Args:
    fn: the work of this process (it may do nothing on some processes, e.g. `lambda: None`
      where only process 0 writes).
    what: the work, as the start of a sentence: "Reading step 7's metadata".
    error: the exception class the processes where fn succeeded raise.

  Returns:
    fn's result.
  """
  failure, result = None, None
  try:
    result = fn()
  except Exception as e:  # pylint: disable=broad-except  (re-raised below, on every process)
    failure = e
  if jax.process_count() > 1:
    failed = np.asarray(_collectives().process_allgather(np.int32(failure is not None)))
    if failure is None and failed.any():
      failure = error(f"{what} failed on process(es) {np.flatnonzero(failed).tolist()} "
                      "(their logs say why)")
  if failure is not None:
    raise failure
  return result


def same_on_all(values: Sequence[int]) -> List[int]:
  """Process 0's `values` (integers or booleans, the same count on every process), as ints."""
  if jax.process_count() == 1:
    return [int(x) for x in values]
  return [int(x) for x in _collectives().broadcast_one_to_all(np.array(values, np.int64))]


def barrier(name: str) -> None:
  """Returns once every process has called barrier(name) (the same name on all)."""
  if jax.process_count() > 1:
    _collectives().sync_global_devices(name)
