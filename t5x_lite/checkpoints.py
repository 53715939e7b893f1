"""Orbax checkpoints: save periodically, keep N (or the best), restore with dtype cast and resharding.

Layout: MODEL_DIR/checkpoints/<step>/state (the TrainState as an orbax PyTree) and
MODEL_DIR/checkpoints/dataset_state/<step> (each process's input-pipeline position,
so a resumed run continues the data order exactly).
"""

import os
import shutil
from typing import Any, Optional

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite.trainer import TrainState

_STATE = "state"


def _flat_shapes(tree):
  return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _absolute(path: str) -> str:
  """Orbax needs absolute paths; remote ones (gs://...) already are."""
  path = str(path)
  return path if "://" in path else os.path.abspath(path)


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
  if problems:
    raise ValueError(f"The checkpoint {source} does not fit the model (check the model gin file "
                     "and T5Config bindings):\n" + "\n".join(problems))


@gin.configurable
class CheckpointManager:
  """Wraps orbax.checkpoint.CheckpointManager for TrainStates.

  Attributes (gin):
    directory: where checkpoints go (MODEL_DIR/checkpoints).
    save_period: save every this many steps (and always at the end of training).
    keep: keep this many most recent checkpoints (None keeps all).
    keep_best_metric: if set (an eval metric name, e.g. "loss" or "average/exact_match"),
      keep the `keep` best checkpoints by this metric instead of the most recent;
      keep_best_mode "min" or "max". Training passes eval metrics with the checkpoints of
      evaluation steps; others are eligible for deletion, so set
      train.checkpoint_period = train.eval_period.
    async_save: write in a background thread while training continues.
  """

  def __init__(self, directory: str, save_period: int = 1000, keep: Optional[int] = 3,
               keep_best_metric: Optional[str] = None, keep_best_mode: str = "min",
               async_save: bool = True):
    self.directory = _absolute(directory)
    best_fn = None
    if keep_best_metric is not None:
      best_fn = lambda metrics: metrics[keep_best_metric]
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_period, max_to_keep=keep, best_fn=best_fn,
        best_mode=keep_best_mode, keep_checkpoints_without_metrics=keep_best_metric is None,
        enable_async_checkpointing=async_save, create=True)
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
      dataset_iterator.save(self._dataset_dir(step))
    if saved:
      self._prune_dataset_states()
    return saved

  def _prune_dataset_states(self):
    """Drops input-pipeline states of steps orbax no longer keeps."""
    root = os.path.join(self.directory, "dataset_state")
    kept = {str(s) for s in self.manager.all_steps()}
    if jax.process_index() == 0 and os.path.isdir(root):
      for name in os.listdir(root):
        if name not in kept:
          shutil.rmtree(os.path.join(root, name), ignore_errors=True)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()

  def _dataset_dir(self, step):
    return os.path.join(self.directory, "dataset_state", str(step))

  def restore(self, abstract_state: TrainState, step: Optional[int] = None,
              dataset_iterator=None) -> TrainState:
    """Restores a full TrainState (resume) into abstract_state's shardings and dtypes."""
    step = self.latest_step() if step is None else step
    state = restore_state(os.path.join(self.directory, str(step), _STATE), abstract_state)
    if dataset_iterator is not None:
      dataset_dir = self._dataset_dir(step)
      if not os.path.exists(dataset_dir):
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
  path = _absolute(path)
  saved = _saved_tree_metadata(path)
  check_shapes(_get(saved, "params"), abstract_state.params, path)
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=abstract_state, restore_args=_restore_args(abstract_state)))


def restore_params(path: str, abstract_params) -> Any:
  """Restores only the parameters from a checkpoint (finetuning without optimizer state)."""
  path = _absolute(path)
  saved = _saved_tree_metadata(path)
  check_shapes(_get(saved, "params"), abstract_params, path)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item={"params": abstract_params}, restore_args={"params": _restore_args(abstract_params)},
        partial_restore=True))
  return restored["params"]


def _get(tree, key):
  return tree[key] if isinstance(tree, dict) else getattr(tree, key)


def resolve_checkpoint_path(path: str) -> str:
  """Accepts MODEL_DIR/checkpoints/<step>, …/<step>/state, or a checkpoints dir (latest step)."""
  path = str(path).rstrip("/")
  if os.path.basename(path) == _STATE:
    return path
  if os.path.isdir(os.path.join(path, _STATE)):
    return os.path.join(path, _STATE)
  steps = sorted(int(name) for name in (os.listdir(path) if os.path.isdir(path) else [])
                 if name.isdigit())
  if steps:
    return os.path.join(path, str(steps[-1]), _STATE)
  raise ValueError(f"No checkpoint at {path!r}: expected MODEL_DIR/checkpoints/<step> or a "
                   "checkpoints directory with numbered steps (gin: INITIAL_CHECKPOINT_PATH or "
                   "CHECKPOINT_PATH).")


def tree_max_abs_diff(a, b) -> float:
  """Largest absolute difference between two trees of arrays (for tests and logs)."""
  diffs = jax.tree_util.tree_map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
      a, b)
  return max(jax.tree_util.tree_leaves(diffs), default=0.0)

