"""Orbax checkpoints: save periodically, keep N (or the best), restore with dtype cast and resharding.

Layout (t5x_lite.run_dir): MODEL_DIR/checkpoints/<step>/state (the TrainState as an orbax
PyTree) and MODEL_DIR/checkpoints/dataset_state/<step> (each process's input-pipeline
position, so a resumed run continues the data order exactly).
"""

import logging
from typing import Any, Optional

import flax.linen as nn
import jax
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite import configs
from t5x_lite import run_dir as run_dir_lib
from t5x_lite.trainer import TrainState

_STATE = "state"


def _flat_shapes(tree):
  return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
    raise ValueError(f"The checkpoint {source} does not fit the model (check the model gin file "
                     "and T5Config bindings):\n" + "\n".join(problems))


class CheckpointManager:
  """Wraps orbax.checkpoint.CheckpointManager for TrainStates of one run directory.

  Args:
    run_dir: the run's RunDir (checkpoints go to MODEL_DIR/checkpoints).
    config: a configs.CheckpointConfig (period, keep, keep-best, async).
  """

  def __init__(self, run_dir: run_dir_lib.RunDir, config: configs.CheckpointConfig):
    self.run_dir = run_dir
    self.directory = run_dir.checkpoints
    best_fn = None
    if config.keep_best_metric is not None:
      best_fn = lambda metrics: metrics[config.keep_best_metric]
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=config.period, max_to_keep=config.keep, best_fn=best_fn,
        best_mode=config.keep_best_mode,
        keep_checkpoints_without_metrics=config.keep_best_metric is None,
        enable_async_checkpointing=config.async_save, create=True)
    self.manager = ocp.CheckpointManager(
        epath.Path(self.directory), item_names=(_STATE,), options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, state: TrainState, dataset_iterator=None, metrics=None, force=False) -> bool:
    """Saves `state` (and each process's data position) if the save period says so."""
    step = int(jax.device_get(state.step))
    saved = self.manager.save(step, args=ocp.args.Composite(**{_STATE: ocp.args.PyTreeSave(state)}),
                              metrics=metrics, force=force)
    if saved and dataset_iterator is not None:
      dataset_iterator.save(self.run_dir.dataset_state(step))
    if saved:
      self._prune_dataset_states()
    return saved

  def _prune_dataset_states(self):
    """Drops input-pipeline states of steps orbax no longer keeps."""
    root = epath.Path(self.run_dir.dataset_state())
    kept = {str(s) for s in self.manager.all_steps()}
    if jax.process_index() == 0 and root.exists():
      for path in root.iterdir():
        if path.name not in kept:
          path.rmtree(missing_ok=True)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()

  def restore(self, abstract_state: TrainState, step: Optional[int] = None,
              dataset_iterator=None) -> TrainState:
    """Restores a full TrainState (resume) into abstract_state's shardings and dtypes."""
    step = self.latest_step() if step is None else step
    state = restore_state(state_path(self.run_dir.checkpoint(step)), abstract_state)
    if dataset_iterator is not None:
      dataset_dir = self.run_dir.dataset_state(step)
      if not epath.Path(dataset_dir).exists():
        raise ValueError(f"Checkpoint step {step} has no input-pipeline state at {dataset_dir}; "
                         "cannot resume the data order exactly.")
      dataset_iterator.restore(dataset_dir)
    return state


def _saved_tree_metadata(path: str):
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
  return getattr(metadata, "item_metadata", metadata).tree


def _restore_args(abstract_tree):
  """Restore into each leaf's sharding and dtype (orbax casts, e.g. f32 -> bf16)."""
  return jax.tree_util.tree_map(
      lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), abstract_tree)


def restore_state(path: str, abstract_state: TrainState) -> TrainState:
  """Restores a TrainState saved at `path` (…/<step>/state), resharded and cast."""
  path = run_dir_lib.absolute(path)
  saved = _saved_tree_metadata(path)
  check_shapes(_get(saved, "params"), abstract_state.params, path)
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=abstract_state, restore_args=_restore_args(abstract_state)))


def restore_params(path: str, abstract_params) -> Any:
  """Restores only the parameters from a checkpoint (finetuning without optimizer state)."""
  path = run_dir_lib.absolute(path)
  saved = _saved_tree_metadata(path)
  check_shapes(_get(saved, "params"), abstract_params, path)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item={"params": abstract_params}, restore_args={"params": _restore_args(abstract_params)},
        partial_restore=True))
  return restored["params"]


def _get(tree, key):
  return tree[key] if isinstance(tree, dict) else getattr(tree, key)


def state_path(step_dir: str) -> str:
  """The TrainState item of a checkpoint step directory."""
  return str(epath.Path(step_dir) / _STATE)


def resolve_checkpoint_path(path: str) -> str:
  """Accepts MODEL_DIR/checkpoints/<step>, …/<step>/state, or a checkpoints dir (latest step).

  Returns:
    The absolute path of the TrainState item (…/<step>/state).
  """
  path = epath.Path(run_dir_lib.absolute(str(path).rstrip("/")))
  if path.name == _STATE:
    return str(path)
  if (path / _STATE).is_dir():
    return str(path / _STATE)
  steps = sorted(ocp.utils.checkpoint_steps(path)) if path.is_dir() else []
  if steps:
    return state_path(str(path / str(steps[-1])))
  raise ValueError(f"No checkpoint at {str(path)!r}: expected MODEL_DIR/checkpoints/<step> or a "
                   "checkpoints directory with numbered steps (gin: INITIAL_CHECKPOINT_PATH or "
                   "CHECKPOINT_PATH).")


def checkpoint_step(path: str) -> int:
  """The step of MODEL_DIR/checkpoints/<step>[/state] (0 when the path names none)."""
  name = epath.Path(resolve_checkpoint_path(path)).parent.name
  return int(name) if name.isdigit() else 0


def restore_model_params(model, partitioner, checkpoint_path: str):
  """A model's parameters (no optimizer state) from a checkpoint, in the partitioner's shardings.

  Args:
    model: an EncoderDecoderModel (its init gives the parameter shapes).
    partitioner: a partitioning.Partitioner.
    checkpoint_path: MODEL_DIR/checkpoints/<step>, its .../state, or a checkpoints
      directory (its latest step).
  """
  shapes = {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}
  # Parameter shapes do not depend on the batch shapes; eval_shape allocates nothing.
  boxed = jax.eval_shape(lambda r: model.init(r, shapes), jax.random.PRNGKey(0))
  shardings = partitioner.param_shardings(boxed)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed),
      shardings)
  path = resolve_checkpoint_path(checkpoint_path)
  logging.info("Restoring parameters from %s.", path)
  return restore_params(path, abstract)
