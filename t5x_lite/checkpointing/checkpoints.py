"""A run's orbax checkpoints: atomic steps with the data position, resume past damaged steps.

Layout (t5x_lite.checkpointing.run_dir): MODEL_DIR/checkpoints/<step>/ holds the items of
one orbax composite checkpoint: `state` (the TrainState as an orbax PyTree), `dataset`
(every process's input-pipeline position, one file set per process, written by
DatasetCheckpointHandler), so a resumed run continues the data order exactly, and `record`
(the step's record, written by RecordCheckpointHandler). Orbax writes a step into
<step>.orbax-checkpoint-tmp and renames it once every item of every process is written: a
step is entirely there (its record included) or not there, and pruning (`keep`) removes whole
steps.

Every step records the shape, dtype and checksum of its arrays, the checksums of its data
files and the run's vocabulary (t5x_lite.checkpointing.step_record), and every restore checks
them; t5x_lite.checkpointing.restore reads one step (also outside a run: eval, infer, export,
an initial checkpoint).

Restoring a run (`CheckpointManager.restore`) takes the newest step whose state, data
positions and parameters all read back (finite, and equal to their checksums); damaged newer
steps are moved to checkpoints/damaged/ with a warning naming each and why
(CheckpointConfig.restore_fallback).
A save that fails (a full disk, a read-only directory) raises storage.StorageError at once;
the steps already written stay intact, and the next start deletes the half-written one.
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from typing import Any, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite import settings
from t5x_lite.checkpointing import checksums
from t5x_lite.checkpointing import run_dir as run_dir_lib
from t5x_lite.checkpointing import storage
from t5x_lite.checkpointing.train_state import TrainState
from t5x_lite.checkpointing.restore import restore_state, state_path
from t5x_lite.checkpointing.step_record import (
    RECORD_ITEM, RECORD_KEY, RECORD_POINTER, CheckpointError, CheckpointMismatchError,
    PendingRecord, check_dataset_files, check_vocabulary, dataset_checksums_name,
    describe_error, iterator_prefix, read_record, start_record, vocabulary_identity, write_record)
from t5x_lite.runtime import agreement

log = logging.getLogger(__name__)

_STATE = run_dir_lib.STATE_ITEM
_DATASET = run_dir_lib.DATASET_ITEM


def state_bytes(abstract_state) -> int:
  """Bytes of a (abstract) TrainState: what one checkpoint of it writes, uncompressed."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(abstract_state))


class DatasetCheckpointHandler(ocp.CheckpointHandler):
  """The `dataset` item: this process's DatasetIterator position (t5x_lite.data.pipeline).

  Every process writes its own files (data_iterator-<index>-of-<count>.*) into the item
  directory, which orbax creates before the save and commits with the rest of the step,
  and then checksums-data_iterator-<index>-of-<count>.json: the sha256 of each of those
  files as read back (check_dataset_files verifies them before a restore).
  """

  def save(self, directory: epath.Path, args: "DatasetArgs"):
    args.iterator.save(str(directory))
    prefix = iterator_prefix(args.iterator)
    files = {p.name: checksums.file_sha256(p)
             for p in sorted(epath.Path(directory).glob(prefix + ".*"))}
    (epath.Path(directory) / dataset_checksums_name(prefix)).write_text(
        json.dumps({"files": files}, indent=1, sort_keys=True))

  def restore(self, directory: epath.Path, args: "DatasetArgs"):
    args.iterator.restore(str(directory))
    return args.iterator


@ocp.args.register_with_handler(DatasetCheckpointHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class DatasetArgs(ocp.args.CheckpointArgs):
  iterator: Any  # a data.DatasetIterator


class RecordCheckpointHandler(ocp.AsyncCheckpointHandler):
  """The `record` item: the step's record (t5x_lite.checkpointing.step_record), record.json.

  The save only starts a background future (no waiting on the training thread): it waits for
  the record's checksums (dispatched by CheckpointManager.save) and writes the record into the
  item directory. Orbax commits the step (renames its temporary directory) only once every item's
  futures are done, so a step never exists without its record.
  """

  async def _write(self, directory: epath.Path, record):
    if isinstance(record, PendingRecord):
      record = record.result()
    # Every process holds the same record (global arrays); one writes it.
    if jax.process_index() == 0:
      write_record(directory, record)

  async def async_save(self, directory: epath.Path, args: "RecordArgs"):
    return [ocp.future.CommitFutureAwaitingContractedSignals(
        self._write(directory, args.record), name="t5x_lite_record")]

  def save(self, directory: epath.Path, args: "RecordArgs"):
    for commit in asyncio.run(self.async_save(directory, args)):
      commit.result()

  def restore(self, directory: epath.Path, args: "RecordArgs" = None):
    return read_record(str(epath.Path(directory).parent))


@ocp.args.register_with_handler(RecordCheckpointHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class RecordArgs(ocp.args.CheckpointArgs):
  record: Any = None  # a step_record.PendingRecord or a record (dict)


class CheckpointManager:
  """Wraps orbax.checkpoint.CheckpointManager for the TrainStates of one run directory.

  Args:
    run_dir: the run's RunDir (checkpoints go to MODEL_DIR/checkpoints).
    config: a settings.CheckpointConfig (period, keep, keep-best, async, restore fallback).
    vocabulary: the run's seqio vocabulary: recorded with every step, and a step recorded
      with another one is refused by restore(). None: not recorded, not checked.
  """

  def __init__(self, run_dir: run_dir_lib.RunDir, config: settings.CheckpointConfig,
               vocabulary=None):
    self.run_dir = run_dir
    self.config = config
    self.vocabulary = None if vocabulary is None else vocabulary_identity(vocabulary)
    self.directory = run_dir.checkpoints
    best_fn = None
    if config.keep_best_metric is not None:
      best_fn = lambda metrics: metrics[config.keep_best_metric]
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=config.period, max_to_keep=config.keep, best_fn=best_fn,
        best_mode=config.keep_best_mode,
        keep_checkpoints_without_metrics=config.keep_best_metric is None,
        enable_async_checkpointing=config.async_save, create=True,
        # A step a killed or failed save left half-written is deleted at the next start.
        cleanup_tmp_directories=True,
        # The step directory is created in save() itself, so an unwritable directory fails
        # there; created in the background, the writers would wait 5 minutes for it.
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    self.manager = ocp.CheckpointManager(
        epath.Path(self.directory), item_names=(_STATE, _DATASET, RECORD_ITEM), options=options)
    # Whether save() leaves the record's checksums to the background save (below).
    self._record_in_background = jax.process_count() == 1
    self._pending_step: Optional[int] = None

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> List[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    """At multiples of CheckpointConfig.period (orbax alone would also save the first step
    a manager sees: minutes of writing for a large model at step 1) and at a preemption."""
    return step % self.config.period == 0 or self.manager.reached_preemption(step)

  @contextlib.contextmanager
  def _save_errors(self, step: int):
    """Turns a failed save (this one or the background one before it) into StorageError."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      failed = self._pending_step if self._pending_step is not None else step
      complete = self.run_dir.checkpoint_steps()
      resume = (f"re-running the same command resumes from step {complete[-1]}" if complete
                else "no checkpoint is complete yet: re-running starts from the beginning")
      raise storage.StorageError(
          f"Saving the checkpoint of step {failed} to {self.directory} failed: "
          f"{storage.write_error_reason(e)}. The checkpoints already written are intact "
          f"(steps {complete}); free space or fix the directory, then {resume}.") from e

  def save(self, state: TrainState, dataset_iterator=None, metrics=None, force=False) -> bool:
    """Saves `state` and each process's data position as one step, if the period says so."""
    step = int(jax.device_get(state.step))
    items = {_STATE: ocp.args.PyTreeSave(state)}
    if dataset_iterator is not None:
      items[_DATASET] = DatasetArgs(dataset_iterator)
    # Every process computes the same record (global arrays); process 0 writes it. With an
    # async save, the checksums are dispatched once orbax's blocking phase (its copy of the
    # arrays, which a pass running beside it slowed) is over, before the next step can donate
    # the arrays, and awaited by the record item's background future, beside orbax's write.
    # Otherwise they are dispatched before the save; with several processes also awaited
    # here, each in turn (see checksums.dispatch_checksums), and the background future only
    # writes the file.
    deferred = self._record_in_background and self.config.async_save
    record = start_record(state, self.vocabulary, dataset=dataset_iterator is not None,
                          start=not deferred)
    items[RECORD_ITEM] = RecordArgs(record if self._record_in_background else record.result())
    saved = None
    try:
      with self._save_errors(step):
        saved = self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                                  force=force, custom_metadata={RECORD_KEY: RECORD_POINTER})
    finally:
      if deferred and saved is not False:  # also after an error: the future may be waiting
        record.start(state)
    if saved:
      self._pending_step = step
    return saved

  def check_for_errors(self):
    """Raises StorageError if a background save has failed (cheap; no waiting)."""
    with self._save_errors(self._pending_step or 0):
      self.manager.check_for_errors()

  def wait(self):
    """Waits for the background save; raises StorageError if it failed."""
    with self._save_errors(self._pending_step or 0):
      self.manager.wait_until_finished()
    self._pending_step = None

  def close(self):
    self.manager.close()

  def restore(self, abstract_state: TrainState, dataset_iterator=None) -> TrainState:
    """Restores the newest readable step into abstract_state's shardings and dtypes.

    A step is readable when its state restores, its parameters are finite and (given
    `dataset_iterator`) every process's data position restores. Unreadable newer steps are
    skipped with a warning and moved to checkpoints/damaged/ (CheckpointConfig.restore_fallback;
    when False, the first unreadable step is an error).

    Raises:
      CheckpointMismatchError: the checkpoints do not fit the model (no fallback: a settings error).
      CheckpointError: no step is readable, or the latest is not and fallback is off.
    """
    skipped: List[Tuple[int, str]] = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state = self._restore_step(step, abstract_state, dataset_iterator)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (damage shows as any error)
        if not self.config.restore_fallback:
          raise CheckpointError(
              f"Checkpoint step {step} in {self.directory} cannot be restored: "
              f"{describe_error(e)}. Set CheckpointConfig.restore_fallback = True to resume from "
              "the newest readable step instead.") from e
        skipped.append((step, describe_error(e)))
        continue
      self._set_aside(skipped, step)
      return state
    raise CheckpointError(
        f"No checkpoint in {self.directory} can be restored: " +
        "; ".join(f"step {s}: {why}" for s, why in skipped) +
        ". Move the directory away (or choose another MODEL_DIR) to start from scratch.")

  def _restore_step(self, step: int, abstract_state: TrainState, dataset_iterator):
    step_dir = self.run_dir.checkpoint(step)
    # Each read on every process, raising on all if it failed on any (none waits alone in a
    # later collective).
    record = agreement.all_succeed(lambda: read_record(step_dir),
                                   f"Reading step {step}'s metadata", CheckpointError)
    # Before anything is read: another vocabulary is a settings error, not damage.
    check_vocabulary(record, state_path(step_dir), self.vocabulary)
    if dataset_iterator is not None:
      # First: it is cheap, and a state restore may take minutes.
      def restore_dataset():
        item_dir = str(epath.Path(step_dir) / _DATASET)
        check_dataset_files(item_dir, dataset_iterator, record)
        dataset_iterator.restore(item_dir)
      agreement.all_succeed(restore_dataset,
                            f"Restoring the input-pipeline position of step {step}",
                            CheckpointError)
    return agreement.all_succeed(lambda: restore_state(state_path(step_dir), abstract_state),
                                 f"Restoring step {step}", CheckpointError)

  def _set_aside(self, skipped: List[Tuple[int, str]], restored: int) -> None:
    """Moves unreadable steps out of orbax's sight, so training can save those steps again."""
    if not skipped:
      return
    when = int(time.time())
    for step, why in skipped:
      target = self.run_dir.damaged_checkpoint(step, when)
      if jax.process_index() == 0:
        epath.Path(target).parent.mkdir(parents=True, exist_ok=True)
        epath.Path(self.run_dir.checkpoint(step)).rename(target)
      log.warning("Checkpoint step %d cannot be restored (%s); moved it to %s.", step, why,
                  target)
    log.warning("Resuming from step %d, the newest readable checkpoint.", restored)
    agreement.barrier("t5x_lite_set_aside_damaged_checkpoints")
    self.manager.reload()
