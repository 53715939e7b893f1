"""Reading one checkpoint step: its path, its state or parameters, checked, cast, resharded.

`resolve_checkpoint_path` turns what a user passes (CHECKPOINT_PATH, INITIAL_CHECKPOINT_PATH: a
step, its state item, or a checkpoints directory) into the state item of one step;
`restore_state`, `restore_params` and `restore_model_params` read it into the given shardings
and dtypes after checking it against the record saved with the step
(t5x_lite.checkpointing.step_record). CheckpointManager.restore reads a run's steps through
`restore_state`.
"""

import contextlib
import logging
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite.checkpointing import checksums
from t5x_lite.checkpointing import run_dir as run_dir_lib
from t5x_lite.checkpointing import step_record
from t5x_lite.checkpointing.train_state import TrainState

log = logging.getLogger(__name__)

_STATE = run_dir_lib.STATE_ITEM


def _saved_tree_metadata(path: str):
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
  return getattr(metadata, "item_metadata", metadata).tree


def _restore_args(abstract_tree, record: Optional[dict], prefix: str = ""):
  """Restore into each leaf's sharding; in its saved dtype when the step recorded one (its
  checksum is of those bits: _cast casts after the check), else in the leaf's dtype."""
  def args(path, x):
    saved = record["arrays"].get(prefix + checksums.path_name(path)) if record else None
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
  except step_record.CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise step_record.CheckpointError(
        f"Cannot read the checkpoint {path} ({step_record.describe_error(e)}): it is damaged "
        f"or incomplete; {step_record.other_steps(path)}.") from e


def _read_checked(path: str, vocabulary: Optional[dict]):
  """(record, orbax tree metadata) of the state item at `path`, checked against each other."""
  record = step_record.read_record(str(epath.Path(path).parent))
  step_record.check_vocabulary(record, path, vocabulary)
  if record is None:
    step_record.warn_unrecorded(path, "checksums of its arrays")
  with _reading(path):
    saved = _saved_tree_metadata(path)
  if record is not None:
    step_record.check_array_metadata(record, saved, path)
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
  vocabulary = None if vocabulary is None else step_record.vocabulary_identity(vocabulary)
  record, saved = _read_checked(path, vocabulary)
  step_record.check_shapes(_get(saved, "params"), abstract_state.params, path)
  with _reading(path):
    with ocp.PyTreeCheckpointer() as checkpointer:
      state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=abstract_state, restore_args=_restore_args(abstract_state, record)))
  # Damage first: a flipped byte may also read as NaN, and the checksums name the array.
  if record is not None:
    step_record.check_arrays(record, checksums.dispatch_checksums(state), path)
  step_record.check_finite(state.params, path)
  return _cast(state, abstract_state)


def restore_params(path: str, abstract_params, vocabulary=None, subset=False) -> Any:
  """Restores only the parameters from a checkpoint (finetuning without optimizer state).

  Args: as restore_state (abstract_params: the parameters' shapes, dtypes and shardings;
    subset: whether abstract_params names only some of the saved top-level entries, e.g. a
    head's encoder, the rest being left unread).

  Raises: as restore_state.
  """
  path = run_dir_lib.absolute(path)
  vocabulary = None if vocabulary is None else step_record.vocabulary_identity(vocabulary)
  record, saved = _read_checked(path, vocabulary)
  saved_params = _get(saved, "params")
  if subset:
    saved_params = {k: v for k, v in saved_params.items() if k in abstract_params}
  step_record.check_shapes(saved_params, abstract_params, path)
  with _reading(path):
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item={"params": abstract_params},
          restore_args={"params": _restore_args(abstract_params, record, "params/")},
          partial_restore=True))
  if record is not None:  # damage first, as in restore_state
    step_record.check_arrays(record, checksums.dispatch_checksums(restored["params"]), path,
                             prefix="params/")
  step_record.check_finite(restored["params"], path)
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
