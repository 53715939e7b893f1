"""t5x's orbax checkpoint layout: checkpoint_<step>/state/, an orbax PyTree of the train state.

t5x's newer checkpointing (t5x/checkpoints.py's OrbaxCheckpointManagerInterface, what t5x's
train uses with `train.use_orbax = True`, its default; checkpoint_utils' CheckpointTypes.ORBAX)
writes one orbax CheckpointManager step per save:

  checkpoint_<step>/_CHECKPOINT_METADATA
  checkpoint_<step>/state/     orbax PyTreeCheckpointHandler (OCDBT) of the train state's
                               state_dict: {"target": params, "state": {"step": int,
                               "param_states": params' tree of {"v_row", "v_col", "v", "m"}}}
  checkpoint_<step>/dataset/   the input pipeline's position (not read)

The tree is the classic layout's `optimizer` entry (t5x_lite.interop.t5x_format), so the
parameters and statistics read here go through the same t5x_param_layout and t5x_adafactor.
t5x_lite's own checkpoints are orbax steps with a `state` item too (MODEL_DIR/checkpoints/<step>
/state); the tree's top-level names tell them apart: t5x's has `target`, t5x_lite's `params`.
"""

import json
import os
from typing import Optional

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from t5x_lite.interop import t5x_format
from t5x_lite.interop.t5x_format import T5xCheckpointError

STATE_ITEM = "state"  # t5x's checkpoints._STATE_KEY
# orbax's tree metadata file in an item directory (t5x's checkpoint_utils tells the layout by it).
_TREE_METADATA = "_METADATA"


def _absolute(path: epath.Path) -> epath.Path:
  """orbax reads OCDBT only from absolute paths; a bucket's are already."""
  text = os.fspath(path)
  return path if "://" in text else epath.Path(os.path.abspath(text))


def state_item(path) -> Optional[epath.Path]:
  """The `state` item of `path` if it is an orbax step or item directory, else None.

  Files only: `path` is checkpoint_<step>/ holding state/_METADATA, or that state/ itself.
  Whether the tree is t5x's (not t5x_lite's) is top_level_names'.
  """
  path = epath.Path(path)
  for item in (path / STATE_ITEM, path):
    if item.name == STATE_ITEM and (item / _TREE_METADATA).is_file():
      return _absolute(item)
  return None


def top_level_names(item: epath.Path) -> set:
  """The top-level names of the orbax tree in `item`, from its _METADATA alone (one small read).

  Raises:
    T5xCheckpointError: the file is not orbax's tree metadata.
  """
  try:
    tree = json.loads((item / _TREE_METADATA).read_text())["tree_metadata"]
    return {entry["key_metadata"][0]["key"] for entry in tree.values()}
  except (ValueError, KeyError, IndexError, TypeError) as error:
    raise T5xCheckpointError(
        f"{item / _TREE_METADATA} is not orbax's tree metadata ({type(error).__name__}: "
        f"{error}): the checkpoint is damaged or incomplete (copy it again).") from error


def is_t5x_tree(item: epath.Path) -> bool:
  """Whether the orbax tree in `item` is a t5x train state (`target`, `state`)."""
  return "target" in top_level_names(item)


def _metadata(item: epath.Path):
  """The orbax tree of ArrayMetadata (shape, dtype) of `item`, as nested dicts."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(item)
  except Exception as error:  # pylint: disable=broad-except
    raise T5xCheckpointError(
        f"t5x checkpoint {item}: cannot read its orbax metadata ({type(error).__name__}: "
        f"{error}). The checkpoint is damaged or incomplete (copy it again).") from error
  finally:
    handler.close()
  return getattr(metadata, "tree", metadata)


def read_target_shapes(item: epath.Path) -> dict:
  """{t5x parameter path: shape} of the orbax tree in `item`, from its metadata (no array)."""
  tree = _metadata(item)
  return {p: tuple(leaf.shape) for p, leaf in t5x_format.flatten(tree["target"]).items()}


def read(item: epath.Path, with_optimizer_state: bool = True):
  """The raw contents of a t5x orbax-layout checkpoint, as t5x_format.read_t5x_checkpoint's.

  Args:
    item: its `state` item directory (state_item's).
    with_optimizer_state: also read the optimizer statistics' arrays.

  Returns:
    (target, param_states, step), in t5x's names and shapes (t5x_format.read_t5x_checkpoint).

  Raises:
    T5xCheckpointError: the tree has no `target`, or an array cannot be read (the message
      names the checkpoint and orbax's error, which names the array).
  """
  tree = _metadata(item)
  if not isinstance(tree, dict) or "target" not in tree:
    names = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise T5xCheckpointError(
        f"{item} is not a t5x checkpoint: t5x's orbax state holds {{'target', 'state'}}, this "
        f"one {names}.")
  state = tree.get("state") or {}
  wanted = {"target": tree["target"], "state": {}}
  if "step" in state:
    wanted["state"]["step"] = state["step"]
  if with_optimizer_state and state.get("param_states"):
    wanted["state"]["param_states"] = state["param_states"]
  # numpy arrays, on no device: t5x_lite casts and shards them later, as for the classic layout.
  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                        wanted)
  handler = ocp.PyTreeCheckpointHandler()
  try:
    restored = handler.restore(item, args=ocp.args.PyTreeRestore(
        item=wanted, restore_args=restore_args, partial_restore=True))
  except Exception as error:  # pylint: disable=broad-except
    raise T5xCheckpointError(
        f"t5x checkpoint {item}: cannot read its arrays ({type(error).__name__}: {error}). "
        "The checkpoint is incomplete or damaged (copy it again).") from error
  finally:
    handler.close()
  step = int(np.asarray(restored["state"].get("step", 0)))
  target = {p: np.asarray(v) for p, v in t5x_format.flatten(restored["target"]).items()}
  param_states = {p: np.asarray(v) for p, v in t5x_format.flatten(
      restored["state"].get("param_states") or {}).items()}
  return target, param_states, step
