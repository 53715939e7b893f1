"""What every checkpoint step records about itself, and the checks of a step against it.

Every step records, in its `record` item (<step>/record/record.json, written within orbax's
background save, before the step is committed), the shape, dtype and checksum of every array
of the state (t5x_lite.checkpointing.checksums: computed where the arrays live, the same on
every process) and the identity of the run's vocabulary (t5x_lite.checkpointing.vocab_identity),
with a sha256 digest of that record itself; the step metadata (<step>/_CHECKPOINT_METADATA,
custom_metadata "t5x_lite") says the step has one. Steps saved by earlier versions hold the
record itself there; both restore. Each process writes checksums-<its data files>.json beside its
input-pipeline files (sha256 of each, read back after writing). Every restore (resume, initial
checkpoint, eval, infer, export) checks all of it: damage (a checksum, shape or file that
differs) is a CheckpointError naming the array or file and the run's other steps; parameter
shapes that do not fit the model are a CheckpointMismatchError and another vocabulary a
VocabularyMismatchError naming both (settings errors: no fallback past them). Steps saved
before these records restore with a warning.
"""

import hashlib
import json
import logging
import threading
from typing import List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from t5x_lite.checkpointing import checksums
from t5x_lite.checkpointing import run_dir as run_dir_lib
from t5x_lite.checkpointing import vocab_identity

log = logging.getLogger(__name__)


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


# ---- the record -------------------------------------------------------------------------------

RECORD_KEY = "t5x_lite"  # the key in orbax's custom_metadata
_STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's step metadata file, in <step>/
RECORD_ITEM = "record"  # the step's item that holds the record: <step>/record/record.json
RECORD_FILE = "record.json"
# What the step metadata's custom_metadata[RECORD_KEY] holds for a step whose record is in the
# record item: a record missing from such a step is damage, not an older step.
RECORD_POINTER = {"record_file": f"{RECORD_ITEM}/{RECORD_FILE}"}


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


class PendingRecord:
  """A step's record whose array checksums are computed on the devices.

  start(state) dispatches them; result() waits for them and returns the record. result() may
  run on another thread (orbax's background save, RecordCheckpointHandler in
  t5x_lite.checkpointing.checkpoints), where it first waits for start().
  """

  def __init__(self, state, vocabulary: Optional[dict], dataset: bool):
    # Shapes and dtypes now: the arrays may be donated to the next step before result().
    self._arrays = {_path_name(path): {"shape": list(x.shape), "dtype": np.dtype(x.dtype).name}
                    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    self._vocabulary, self._dataset = vocabulary, bool(dataset)
    self._sums: Optional[checksums.PendingChecksums] = None
    self._started = threading.Event()

  def start(self, state) -> None:
    """Dispatches the checksums of `state` (on the thread that will next donate it)."""
    try:
      if self._sums is None:
        self._sums = checksums.dispatch_checksums(state)
    finally:
      self._started.set()  # result() raises if the dispatch did

  def result(self) -> dict:
    self._started.wait()
    if self._sums is None:
      raise CheckpointError("The checksums of the step's arrays could not be started (the "
                            "error was raised where the step was saved).")
    sums = self._sums.result()
    arrays = {name: dict(entry, checksum=sums[name]) for name, entry in self._arrays.items()}
    record = {"version": 1, "arrays": arrays, "dataset_checksums": self._dataset,
              "vocabulary": self._vocabulary}
    record["digest"] = _digest(record)
    return record


def start_record(state, vocabulary: Optional[dict] = None, dataset: bool = False,
                 start: bool = True) -> PendingRecord:
  """The record saved with a step: every array's shape, dtype and checksum, the vocabulary
  (see PendingRecord).

  Args:
    state: the TrainState (global arrays; every process calls this with its shards).
    vocabulary: vocabulary_identity(...) of the run's vocabulary, or None.
    dataset: whether each process saved checksums of its input-pipeline files.
    start: whether to dispatch the checksums now (else the caller calls start(state)).
  """
  record = PendingRecord(state, vocabulary, dataset)
  if start:
    record.start(state)
  return record


def make_record(state, vocabulary: Optional[dict] = None, dataset: bool = False) -> dict:
  """The record of start_record(...), awaited."""
  return start_record(state, vocabulary, dataset).result()


def write_record(item_dir, record: dict) -> None:
  """Writes the record into a step's record item directory."""
  (epath.Path(item_dir) / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))


def _checked(record, path, what: str) -> dict:
  if not isinstance(record, dict) or record.get("digest") != _digest(record):
    raise CheckpointError(f"The checkpoint {what} {path} is damaged: the record of the "
                          "step's arrays does not match its digest; the step cannot be used.")
  return record


def read_record(step_dir: str) -> Optional[dict]:
  """The record saved with a step, or None for a step saved without one (older t5x_lite).

  Steps hold it in their record item (<step>/record/record.json); steps saved by earlier
  versions of t5x_lite in orbax's step metadata (custom_metadata[RECORD_KEY]).

  Raises:
    CheckpointError: the record or the step metadata cannot be parsed, the record fails its
      digest, or the step metadata names a record that is missing.
  """
  record_path = epath.Path(step_dir) / RECORD_ITEM / RECORD_FILE
  if record_path.exists():
    try:
      record = json.loads(record_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
      raise CheckpointError(f"The checkpoint record {record_path} is damaged "
                            f"({describe_error(e)}); it holds the checksums of the step's "
                            "arrays, so the step cannot be used.") from e
    return _checked(record, record_path, "record")
  path = epath.Path(step_dir) / _STEP_METADATA
  if not path.exists():
    return None
  try:
    record = (json.loads(path.read_text()).get("custom_metadata") or {}).get(RECORD_KEY)
  except (ValueError, UnicodeDecodeError, AttributeError) as e:
    raise CheckpointError(f"The checkpoint metadata {path} is damaged ({describe_error(e)}); it "
                          "holds the checksums of the step's arrays, so the step cannot be "
                          "used.") from e
  if record is None:
    return None
  if record == RECORD_POINTER:
    raise CheckpointError(f"The checkpoint record {record_path} is missing: it holds the "
                          "checksums of the step's arrays, so the step cannot be used.")
  return _checked(record, path, "metadata")


_warned_unrecorded = set()


def warn_unrecorded(path: str, what: str) -> None:
  """Warns once per path and record that a step was saved without it (it loads unchecked)."""
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
    warn_unrecorded(path, "the identity of its vocabulary")
    return
  if saved["fingerprint"] != vocabulary["fingerprint"]:
    where = f" ({saved['path']})" if saved.get("path") else ""
    raise VocabularyMismatchError(
        f"The checkpoint {epath.Path(path).parent} was trained with vocabulary {saved['name']} "
        f"({saved['size']} ids); this run uses {vocabulary['name']} ({vocabulary['size']} ids): "
        f"bind get_vocabulary.sentencepiece_model_path to the checkpoint's{where}.")


def other_steps(path: str) -> str:
  """The complete steps of the run of the state item `path`, other than its own, in words."""
  step_dir = epath.Path(path).parent
  others = [s for s in run_dir_lib.RunDir.of_checkpoint(path).checkpoint_steps()
            if str(s) != step_dir.name]
  return f"other steps of this run: {others}" if others else "the run has no other complete step"


def _listed(names: List[str]) -> str:
  more = f" and {len(names) - 3} more" if len(names) > 3 else ""
  return ", ".join(names[:3]) + more


def check_array_metadata(record: dict, saved_tree, path: str) -> None:
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
        f"record saved with the step for {_listed(differ)}; {other_steps(path)}.")


def check_arrays(record: dict, tree, path: str, prefix: str = "") -> None:
  """Raises CheckpointError naming the arrays whose checksums differ from the record's.

  `tree`: the arrays, or checksums.dispatch_checksums(arrays) (already started).
  """
  pending = tree if isinstance(tree, checksums.PendingChecksums) else (
      checksums.dispatch_checksums(tree))
  got = pending.result()
  bad = [prefix + name for name, value in got.items()
         if record["arrays"].get(prefix + name, {}).get("checksum") != value]
  if bad:
    raise CheckpointError(
        f"The checkpoint {path} is damaged: {len(bad)} array(s) differ from the checksums "
        f"saved with them: {_listed(bad)}. It cannot be used; {other_steps(path)}.")


# ---- the input-pipeline files' checksums ------------------------------------------------------


def iterator_prefix(iterator) -> str:
  """The file prefix of a DatasetIterator's state files (data_iterator-<i>-of-<n>)."""
  return iterator._prefix  # pylint: disable=protected-access


def dataset_checksums_name(prefix: str) -> str:
  """The name of the file that lists the sha256 of each of a process's input-pipeline files."""
  # Outside DatasetIterator.restore's glob (<prefix>.*): it copies only the files it reads.
  return f"checksums-{prefix}.json"


def check_dataset_files(item_dir: str, iterator, record: Optional[dict]) -> None:
  """Verifies this process's input-pipeline files against the checksums saved with them."""
  prefix = iterator_prefix(iterator)
  directory = epath.Path(item_dir)
  present = {p.name: p for p in directory.glob(prefix + ".*")} if directory.exists() else {}
  listing = directory / dataset_checksums_name(prefix)
  if not listing.exists():
    if present and record is not None and record.get("dataset_checksums"):
      raise CheckpointError(f"The input-pipeline checksums {listing} are missing: the step is "
                            "damaged or incomplete.")
    if present and record is None:
      warn_unrecorded(str(directory), "checksums of its input-pipeline files")
    return  # Nothing there: DatasetIterator.restore says which files it needed.
  try:
    expected = json.loads(listing.read_text())["files"]
  except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
    raise CheckpointError(f"The input-pipeline checksums {listing} are damaged "
                          f"({describe_error(e)}).") from e
  differ = [name for name in sorted(set(expected) | set(present))
            if name not in present or name not in expected
            or checksums.file_sha256(present[name]) != expected[name]]
  if differ:
    raise CheckpointError(
        f"The input-pipeline state in {directory} is damaged: {_listed(differ)} "
        f"{'differs' if len(differ) == 1 else 'differ'} from the checksums saved with "
        f"{'it' if len(differ) == 1 else 'them'} ({listing.name}).")


def describe_error(error: BaseException) -> str:
  """The error in one line (tensorstore's append a multi-line spec: dropped)."""
  if isinstance(error, CheckpointError):
    return str(error)
  text = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {text[:300]}"
