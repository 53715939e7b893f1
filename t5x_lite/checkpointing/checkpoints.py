"""Orbax checkpoints: atomic steps, restore of the newest readable step, dtype cast, resharding.

Layout (t5x_lite.checkpointing.run_dir): MODEL_DIR/checkpoints/<step>/ holds the two items of one orbax
composite checkpoint: `state` (the TrainState as an orbax PyTree) and `dataset` (every
process's input-pipeline position, one file set per process, written by
DatasetCheckpointHandler), so a resumed run continues the data order exactly. Orbax writes
a step into <step>.orbax-checkpoint-tmp and renames it once every item of every process is
written: a step is entirely there or not there, and pruning (`keep`) removes whole steps.

Every step records, in orbax's step metadata (<step>/_CHECKPOINT_METADATA, custom_metadata
"t5x_lite"), the shape, dtype and checksum of every array of the state (t5x_lite.checkpointing.checksums:
computed where the arrays live, the same on every process) and the identity of the run's
vocabulary (t5x_lite.checkpointing.vocab_identity), with a sha256 digest of that record itself. Each process
writes checksums-<its data files>.json beside its input-pipeline files (sha256 of each, read
back after writing). Every restore (resume, initial checkpoint, eval, infer, export) checks
all of it: damage (a checksum, shape or file that differs) is a CheckpointError naming the
array or file; another vocabulary is a VocabularyMismatchError naming both. Steps saved
before these records restore with a warning.

Restoring a run (`CheckpointManager.restore`) takes the newest step whose state, data
positions and parameters all read back (finite, and equal to their checksums); damaged newer
steps are moved to checkpoints/damaged/ with a warning naming each and why
(CheckpointConfig.restore_fallback).
A save that fails (a full disk, a read-only directory) raises storage.StorageError at once;
the steps already written stay intact, and the next start deletes the half-written one.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Callable, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite import settings
from t5x_lite.checkpointing import checksums
from t5x_lite.checkpointing import run_dir as run_dir_lib
from t5x_lite.checkpointing import storage
from t5x_lite.checkpointing import vocab_identity
from t5x_lite.checkpointing.train_state import TrainState

log = logging.getLogger(__name__)

_STATE = run_dir_lib.STATE_ITEM
_DATASET = run_dir_lib.DATASET_ITEM


class CheckpointError(ValueError):
  """A checkpoint cannot be used: unreadable, incomplete, or holding non-finite values."""


class CheckpointMismatchError(CheckpointError):
  """A checkpoint's parameter shapes do not fit the model (a settings error, not damage)."""


class VocabularyMismatchError(CheckpointMismatchError):
  """A checkpoint was trained with another vocabulary than the run's (a settings error)."""


_path_name = checksums.path_name


def _flat_shapes(tree):
  return {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_shapes(saved_params, expected_params, source: str):
  """Raises one error listing every parameter path whose saved shape does not fit the model."""
  saved, expected = _flat_shapes(saved_params), _flat_shapes(expected_params)
  problems = []
  for path in sorted(set(saved) | set(expected)):
    if path not in saved:
      problems.append(f"  {path}: missing in the checkpoint (model expects "
                      f"{tuple(expected[path].shape)})")
    elif path not in expected:
      problems.append(f"  {path}: in the checkpoint {tuple(saved[path].shape)} but not in the "
                      "model")
    elif tuple(saved[path].shape) != tuple(expected[path].shape):
      problems.append(f"  {path}: checkpoint {tuple(saved[path].shape)} vs model "
                      f"{tuple(expected[path].shape)}")
  embedding = "token_embedder/embedding"
  if embedding in saved and embedding in expected and (
      saved[embedding].shape[0] != expected[embedding].shape[0]):
    problems.append(f"The vocabularies differ: the checkpoint's embedding has "
                    f"{saved[embedding].shape[0]} rows, the model's T5Config.vocab_size is "
                    f"{expected[embedding].shape[0]}; use the checkpoint's vocabulary "
                    "(get_vocabulary.sentencepiece_model_path) or its vocab_size.")
  if problems:
    raise CheckpointMismatchError(
        f"The checkpoint {source} does not fit the model (check the model gin file and "
        "T5Config bindings):\n" + "\n".join(problems))


@jax.jit
def _nonfinite_counts(tree):
  return jax.tree_util.tree_map(lambda x: jnp.sum(~jnp.isfinite(x)), tree)


def check_finite(params, source: str) -> None:
  """Raises CheckpointError naming the parameters that hold NaN or inf values."""
  counts = jax.device_get(_nonfinite_counts(params))
  bad = [(_path_name(path), int(n)) for path, n in jax.tree_util.tree_flatten_with_path(counts)[0]
         if n]
  if bad:
    examples = ", ".join(f"{name} ({n} values)" for name, n in bad[:3])
    raise CheckpointError(f"The checkpoint {source} holds non-finite values (NaN or inf) in "
                          f"{len(bad)} parameter(s), e.g. {examples}: it cannot be used.")


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
    prefix = _iterator_prefix(args.iterator)
    files = {p.name: checksums.file_sha256(p)
             for p in sorted(epath.Path(directory).glob(prefix + ".*"))}
    (epath.Path(directory) / _dataset_checksums_name(prefix)).write_text(
        json.dumps({"files": files}, indent=1, sort_keys=True))

  def restore(self, directory: epath.Path, args: "DatasetArgs"):
    args.iterator.restore(str(directory))
    return args.iterator


def _iterator_prefix(iterator) -> str:
  return iterator._prefix  # pylint: disable=protected-access  (data_iterator-<i>-of-<n>)


def _dataset_checksums_name(prefix: str) -> str:
  # Outside DatasetIterator.restore's glob (<prefix>.*): it copies only the files it reads.
  return f"checksums-{prefix}.json"


# ---- what every step records about itself ---------------------------------------------------

_RECORD = "t5x_lite"  # the key in orbax's custom_metadata
_STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's step metadata file, in <step>/


def vocabulary_identity(vocabulary) -> dict:
  """What a checkpoint records of a seqio vocabulary: fingerprint, a short name, size, file.

  Given such a record (a dict) instead of a vocabulary, returns it.
  """
  if isinstance(vocabulary, dict):
    return vocabulary
  fingerprint = vocab_identity.fingerprint(vocabulary)
  path = getattr(vocabulary, "sentencepiece_model_file", None)
  stem = epath.Path(path).stem if path else type(vocabulary).__name__
  return {"fingerprint": fingerprint, "name": f"{stem}_{fingerprint[:4]}",
          "size": int(vocabulary.vocab_size), "path": str(path) if path else None}


def task_vocabulary(mixture_or_task_name: str):
  """The targets vocabulary of a registered seqio task or mixture."""
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.get_mixture_or_task(mixture_or_task_name).output_features["targets"].vocabulary


def _digest(record: dict) -> str:
  body = {k: v for k, v in record.items() if k != "digest"}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def make_record(state, vocabulary: Optional[dict] = None, dataset: bool = False) -> dict:
  """The record saved with a step: every array's shape, dtype and checksum, the vocabulary.

  Args:
    state: the TrainState (global arrays; every process calls this with its shards).
    vocabulary: vocabulary_identity(...) of the run's vocabulary, or None.
    dataset: whether each process saved checksums of its input-pipeline files.
  """
  sums = checksums.array_checksums(state)
  arrays = {_path_name(path): {"shape": list(x.shape), "dtype": np.dtype(x.dtype).name,
                               "checksum": sums[_path_name(path)]}
            for path, x in jax.tree_util.tree_flatten_with_path(state)[0]}
  record = {"version": 1, "arrays": arrays, "dataset_checksums": bool(dataset),
            "vocabulary": vocabulary}
  record["digest"] = _digest(record)
  return record


def read_record(step_dir: str) -> Optional[dict]:
  """The record saved with a step, or None for a step saved without one (older t5x_lite).

  Raises:
    CheckpointError: the step metadata cannot be parsed or the record fails its digest.
  """
  path = epath.Path(step_dir) / _STEP_METADATA
  if not path.exists():
    return None
  try:
    record = (json.loads(path.read_text()).get("custom_metadata") or {}).get(_RECORD)
  except (ValueError, UnicodeDecodeError, AttributeError) as e:
    raise CheckpointError(f"The checkpoint metadata {path} is damaged ({_reason(e)}); it holds "
                          "the checksums of the step's arrays, so the step cannot be used.") from e
  if record is None:
    return None
  if not isinstance(record, dict) or record.get("digest") != _digest(record):
    raise CheckpointError(f"The checkpoint metadata {path} is damaged: the record of the "
                          "step's arrays does not match its digest; the step cannot be used.")
  return record


_warned_unrecorded = set()


def _warn_unrecorded(path: str, what: str) -> None:
  if (path, what) not in _warned_unrecorded:
    _warned_unrecorded.add((path, what))
    log.warning("The checkpoint %s was saved without %s (by an older t5x_lite): it loads "
                "unchecked.", path, what)


def check_vocabulary(record: Optional[dict], path: str, vocabulary: Optional[dict]) -> None:
  """Raises VocabularyMismatchError if the step was trained with another vocabulary."""
  if vocabulary is None:
    return
  saved = (record or {}).get("vocabulary")
  if saved is None:
    _warn_unrecorded(path, "the identity of its vocabulary")
    return
  if saved["fingerprint"] != vocabulary["fingerprint"]:
    where = f" ({saved['path']})" if saved.get("path") else ""
    raise VocabularyMismatchError(
        f"The checkpoint {epath.Path(path).parent} was trained with vocabulary {saved['name']} "
        f"({saved['size']} ids); this run uses {vocabulary['name']} ({vocabulary['size']} ids): "
        f"bind get_vocabulary.sentencepiece_model_path to the checkpoint's{where}.")


def _other_steps(path: str) -> str:
  step_dir = epath.Path(path).parent
  others = [s for s in run_dir_lib.RunDir.of_checkpoint(path).checkpoint_steps()
            if str(s) != step_dir.name]
  return f"other steps of this run: {others}" if others else "the run has no other complete step"


def _listed(names: List[str]) -> str:
  more = f" and {len(names) - 3} more" if len(names) > 3 else ""
  return ", ".join(names[:3]) + more


def _check_array_metadata(record: dict, saved_tree, path: str) -> None:
  """orbax's array metadata (paths, shapes, dtypes) against the record saved with the step."""
  saved = _flat_shapes(saved_tree)
  recorded = record["arrays"]
  differ = [name for name in sorted(set(saved) | set(recorded))
            if name not in saved or name not in recorded
            or tuple(saved[name].shape) != tuple(recorded[name]["shape"])
            or np.dtype(getattr(saved[name], "dtype", None)).name != recorded[name]["dtype"]]
  if differ:
    raise CheckpointError(
        f"The checkpoint {path} is damaged: its array metadata (_METADATA) does not match the "
        f"record saved with the step for {_listed(differ)}; {_other_steps(path)}.")


def _check_arrays(record: dict, tree, path: str, prefix: str = "") -> None:
  """Raises CheckpointError naming the arrays whose checksums differ from the record's."""
  got = checksums.array_checksums(tree)
  bad = [prefix + name for name, value in got.items()
         if record["arrays"].get(prefix + name, {}).get("checksum") != value]
  if bad:
    raise CheckpointError(
        f"The checkpoint {path} is damaged: {len(bad)} array(s) differ from the checksums "
        f"saved with them: {_listed(bad)}. It cannot be used; {_other_steps(path)}.")


def check_dataset_files(item_dir: str, iterator, record: Optional[dict]) -> None:
  """Verifies this process's input-pipeline files against the checksums saved with them."""
  prefix = _iterator_prefix(iterator)
  directory = epath.Path(item_dir)
  present = {p.name: p for p in directory.glob(prefix + ".*")} if directory.exists() else {}
  listing = directory / _dataset_checksums_name(prefix)
  if not listing.exists():
    if present and record is not None and record.get("dataset_checksums"):
      raise CheckpointError(f"The input-pipeline checksums {listing} are missing: the step is "
                            "damaged or incomplete.")
    if present and record is None:
      _warn_unrecorded(str(directory), "checksums of its input-pipeline files")
    return  # Nothing there: DatasetIterator.restore says which files it needed.
  try:
    expected = json.loads(listing.read_text())["files"]
  except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
    raise CheckpointError(f"The input-pipeline checksums {listing} are damaged "
                          f"({_reason(e)}).") from e
  differ = [name for name in sorted(set(expected) | set(present))
            if name not in present or name not in expected
            or checksums.file_sha256(present[name]) != expected[name]]
  if differ:
    raise CheckpointError(
        f"The input-pipeline state in {directory} is damaged: {_listed(differ)} "
        f"{'differs' if len(differ) == 1 else 'differ'} from the checksums saved with "
        f"{'it' if len(differ) == 1 else 'them'} ({listing.name}).")


@ocp.args.register_with_handler(DatasetCheckpointHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class DatasetArgs(ocp.args.CheckpointArgs):
  iterator: Any  # a data.DatasetIterator


def _all_processes(fn: Callable[[], Any], what: str):
  """Runs fn on every process; raises on all of them if it raised on any (no process waits
  alone in a later collective)."""
  error = None
  try:
    result = fn()
  except Exception as e:  # pylint: disable=broad-except
    error, result = e, None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
    if error is None and failed.any():
      error = CheckpointError(f"{what} failed on process(es) {np.flatnonzero(failed).tolist()} "
                              "(their logs say why)")
  if error is not None:
    raise error
  return result


def _reason(error: BaseException) -> str:
  """The error in one line (tensorstore's append a multi-line spec: dropped)."""
  if isinstance(error, CheckpointError):
    return str(error)
  text = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {text[:300]}"


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
        epath.Path(self.directory), item_names=(_STATE, _DATASET), options=options)
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
    # Every process computes the same record (global arrays); orbax writes process 0's.
    record = make_record(state, self.vocabulary, dataset=dataset_iterator is not None)
    with self._save_errors(step):
      saved = self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                                force=force, custom_metadata={_RECORD: record})
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
              f"Checkpoint step {step} in {self.directory} cannot be restored: {_reason(e)}. "
              "Set CheckpointConfig.restore_fallback = True to resume from the newest "
              "readable step instead.") from e
        skipped.append((step, _reason(e)))
        continue
      self._set_aside(skipped, step)
      return state
    raise CheckpointError(
        f"No checkpoint in {self.directory} can be restored: " +
        "; ".join(f"step {s}: {why}" for s, why in skipped) +
        ". Move the directory away (or choose another MODEL_DIR) to start from scratch.")

  def _restore_step(self, step: int, abstract_state: TrainState, dataset_iterator):
    step_dir = self.run_dir.checkpoint(step)
    record = _all_processes(lambda: read_record(step_dir), f"Reading step {step}'s metadata")
    # Before anything is read: another vocabulary is a settings error, not damage.
    check_vocabulary(record, state_path(step_dir), self.vocabulary)
    if dataset_iterator is not None:
      # First: it is cheap, and a state restore may take minutes.
      def restore_dataset():
        item_dir = str(epath.Path(step_dir) / _DATASET)
        check_dataset_files(item_dir, dataset_iterator, record)
        dataset_iterator.restore(item_dir)
      _all_processes(restore_dataset, f"Restoring the input-pipeline position of step {step}")
    return _all_processes(lambda: restore_state(state_path(step_dir), abstract_state),
                          f"Restoring step {step}")

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
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("t5x_lite_set_aside_damaged_checkpoints")
    self.manager.reload()


def _saved_tree_metadata(path: str):
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
  return getattr(metadata, "item_metadata", metadata).tree


def _restore_args(abstract_tree, record: Optional[dict], prefix: str = ""):
  """Restore into each leaf's sharding; in its saved dtype when the step recorded one (its
  checksum is of those bits: _cast casts after the check), else in the leaf's dtype."""
  def args(path, x):
    saved = record["arrays"].get(prefix + _path_name(path)) if record else None
    return ocp.ArrayRestoreArgs(sharding=x.sharding,
                                dtype=jnp.dtype(saved["dtype"]) if saved else x.dtype)
  return jax.tree_util.tree_map_with_path(args, abstract_tree)


def _cast(tree, abstract_tree):
  """Each leaf in its abstract leaf's dtype (e.g. saved f32 -> bf16 parameters)."""
  return jax.tree_util.tree_map(
      lambda a, x: a if a.dtype == x.dtype else a.astype(x.dtype), tree, abstract_tree)


@contextlib.contextmanager
def _reading(path: str):
  """Turns the errors of a damaged checkpoint (orbax, tensorstore, OS) into CheckpointError."""
  try:
    yield
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"Cannot read the checkpoint {path} ({_reason(e)}): it is damaged "
                          f"or incomplete; {_other_steps(path)}.") from e


def _read_checked(path: str, vocabulary: Optional[dict]):
  """(record, orbax tree metadata) of the state item at `path`, checked against each other."""
  record = read_record(str(epath.Path(path).parent))
  check_vocabulary(record, path, vocabulary)
  if record is None:
    _warn_unrecorded(path, "checksums of its arrays")
  with _reading(path):
    saved = _saved_tree_metadata(path)
  if record is not None:
    _check_array_metadata(record, saved, path)
  return record, saved


def restore_state(path: str, abstract_state: TrainState, vocabulary=None) -> TrainState:
  """Restores a TrainState saved at `path` (…/<step>/state), resharded and cast.

  Args:
    path: the state item of a step.
    abstract_state: the shapes, dtypes and shardings to restore into.
    vocabulary: the run's seqio vocabulary (refused if the step recorded another one).

  Raises:
    VocabularyMismatchError: the step was trained with another vocabulary.
    CheckpointMismatchError: the parameter shapes do not fit (every path listed).
    CheckpointError: the checkpoint is unreadable, holds non-finite parameters, or an array,
      its metadata or the step's record differs from the checksums saved with it.
  """
  path = run_dir_lib.absolute(path)
  vocabulary = None if vocabulary is None else vocabulary_identity(vocabulary)
  record, saved = _read_checked(path, vocabulary)
  check_shapes(_get(saved, "params"), abstract_state.params, path)
  with _reading(path):
    with ocp.PyTreeCheckpointer() as checkpointer:
      state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=abstract_state, restore_args=_restore_args(abstract_state, record)))
  check_finite(state.params, path)
  if record is not None:
    _check_arrays(record, state, path)
  return _cast(state, abstract_state)


def restore_params(path: str, abstract_params, vocabulary=None, subset=False) -> Any:
  """Restores only the parameters from a checkpoint (finetuning without optimizer state).

  Args: as restore_state (abstract_params: the parameters' shapes, dtypes and shardings;
    subset: whether abstract_params names only some of the saved top-level entries, e.g. a
    head's encoder, the rest being left unread).

  Raises: as restore_state.
  """
  path = run_dir_lib.absolute(path)
  vocabulary = None if vocabulary is None else vocabulary_identity(vocabulary)
  record, saved = _read_checked(path, vocabulary)
  saved_params = _get(saved, "params")
  if subset:
    saved_params = {k: v for k, v in saved_params.items() if k in abstract_params}
  check_shapes(saved_params, abstract_params, path)
  with _reading(path):
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item={"params": abstract_params},
          restore_args={"params": _restore_args(abstract_params, record, "params/")},
          partial_restore=True))
  check_finite(restored["params"], path)
  if record is not None:
    _check_arrays(record, restored["params"], path, prefix="params/")
  return _cast(restored["params"], abstract_params)


def _get(tree, key):
  return tree[key] if isinstance(tree, dict) else getattr(tree, key)


def state_path(step_dir: str) -> str:
  """The TrainState item of a checkpoint step directory."""
  return str(epath.Path(step_dir) / _STATE)


def resolve_checkpoint_path(path: str) -> str:
  """Accepts MODEL_DIR/checkpoints/<step>, …/<step>/state, or a checkpoints dir (latest step).

  Returns:
    The absolute path of the TrainState item (…/<step>/state).

  Raises:
    ValueError: the path is empty or holds no t5x_lite checkpoint (the message says what
      it holds instead when it can tell, e.g. a HF transformers directory).
  """
  if not str(path or "").strip():
    raise ValueError("The checkpoint path is empty: set CHECKPOINT_PATH (or "
                     "INITIAL_CHECKPOINT_PATH) to MODEL_DIR/checkpoints/<step>.")
  path = epath.Path(run_dir_lib.absolute(str(path).rstrip("/")))
  if path.name == _STATE:
    return str(path)
  if (path / _STATE).is_dir():
    return str(path / _STATE)
  steps = sorted(ocp.utils.checkpoint_steps(path)) if path.is_dir() else []
  if steps:
    return state_path(str(path / str(steps[-1])))
  what = "it does not exist" if not path.exists() else "it holds no numbered checkpoint step"
  if (path / "config.json").exists():
    what = ("it is a HF transformers directory (config.json): convert it with "
            "t5x_lite.interop.hf_checkpoint.load_hf_checkpoint, which reads T5 models only")
  # A step that is not there (…/checkpoints/400): name the steps that are.
  siblings = sorted(ocp.utils.checkpoint_steps(path.parent)) if path.parent.is_dir() else []
  if siblings:
    what += f"; the steps in {str(path.parent)!r} are {', '.join(map(str, siblings))}"
  raise ValueError(f"No checkpoint at {str(path)!r}: {what}. Expected MODEL_DIR/checkpoints/"
                   "<step> or a checkpoints directory with numbered steps (gin: "
                   "INITIAL_CHECKPOINT_PATH or CHECKPOINT_PATH).")


def checkpoint_step(path: str) -> int:
  """The step of MODEL_DIR/checkpoints/<step>[/state] (0 when the path names none)."""
  name = epath.Path(resolve_checkpoint_path(path)).parent.name
  return int(name) if name.isdigit() else 0


def restore_model_params(model, partitioner, checkpoint_path: str, vocabulary=None):
  """A model's parameters (no optimizer state) from a checkpoint, in the partitioner's shardings.

  Args:
    model: a model_interface.Model (its init of dummy_input_shapes() gives the parameter
      shapes).
    partitioner: a partitioning.Partitioner.
    checkpoint_path: MODEL_DIR/checkpoints/<step>, its .../state, or a checkpoints
      directory (its latest step).
    vocabulary: the seqio vocabulary the caller tokenizes with: a checkpoint trained with
      another one is refused (VocabularyMismatchError). None: not checked.

  Raises: as restore_state; a damaged or non-finite checkpoint is an error, never output.
  """
  shapes = model.dummy_input_shapes()
  # Parameter shapes do not depend on the batch shapes; eval_shape allocates nothing.
  boxed = jax.eval_shape(lambda r: model.init(r, shapes), jax.random.PRNGKey(0))
  shardings = partitioner.param_shardings(boxed)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed),
      shardings)
  path = resolve_checkpoint_path(checkpoint_path)
  log.info("Restoring parameters from %s.", path)
  return restore_params(path, abstract, vocabulary)
