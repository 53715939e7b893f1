"""The layout of a run directory (MODEL_DIR): the one module that knows where files go.

  MODEL_DIR/
    config.gin                          the operative gin config of the last start
    lock.json                           the lease of the training process writing here
    checkpoints/<step>/                 one orbax checkpoint, committed as a whole:
      state/                              the TrainState (step, params, optimizer state)
      dataset/                            each process's input-pipeline position at <step>
      record/record.json                  the step's array checksums and vocabulary (step_record)
    checkpoints/<step>.orbax-checkpoint-tmp*/   a save in progress (removed at the next start)
    checkpoints/damaged/<step>-<time>/  steps a resume could not read, set aside
    train/, eval/, eval_<split>/        TensorBoard event files
    train_metrics.jsonl, eval_metrics.jsonl, eval_<split>_metrics.jsonl
                                        one JSON object per write: {"step": s, metric: value}
    infer_eval_predictions/<step>.jsonl predictions of training's infer-eval
    eval_<split>_predictions/<step>.jsonl   predictions of the eval run mode
    loss.png                            train / eval loss curves

Paths are strings handled through `etils.epath`, so MODEL_DIR may be local or remote
(gs://... and the other schemes epath reaches through tf.io.gfile / fsspec).
"""

from typing import List

from etils import epath
import orbax.checkpoint as ocp

from t5x_lite.checkpointing import storage

CHECKPOINTS = "checkpoints"
# Item names inside a checkpoint step directory.
STATE_ITEM = "state"
DATASET_ITEM = "dataset"
DAMAGED = "damaged"
LOCK = "lock.json"


def join(*parts) -> str:
  """Joins path parts (local or remote) as epath does."""
  return str(epath.Path(parts[0]).joinpath(*(str(p) for p in parts[1:])))


def absolute(path: str) -> str:
  """Remote paths as given; local paths made absolute (orbax needs absolute paths)."""
  path = str(path)
  return str(epath.Path(path).absolute()) if storage.is_local(path) else path


class RunDir:
  """Names of everything a run writes under `model_dir`."""

  def __init__(self, model_dir: str):
    self.root = absolute(model_dir)

  @classmethod
  def of_checkpoint(cls, checkpoint_path: str) -> "RunDir":
    """The run a checkpoint (MODEL_DIR/checkpoints/<step>[/item]) belongs to."""
    path = epath.Path(absolute(checkpoint_path))
    for parent in (path, *path.parents):
      if parent.name == CHECKPOINTS:
        return cls(str(parent.parent))
    return cls(str(path.parent))

  @property
  def checkpoints(self) -> str:
    return join(self.root, CHECKPOINTS)

  def checkpoint(self, step: int) -> str:
    return join(self.checkpoints, step)

  def checkpoint_steps(self) -> List[int]:
    """Finalised checkpoint steps, ascending (orbax's listing: no temporary directories)."""
    if not epath.Path(self.checkpoints).exists():
      return []
    return sorted(ocp.utils.checkpoint_steps(self.checkpoints))

  def damaged_checkpoint(self, step: int, when: int) -> str:
    """Where a step that could not be restored is moved (`when`: seconds since the epoch)."""
    return join(self.checkpoints, DAMAGED, f"{step}-{when}")

  @property
  def lock(self) -> str:
    return join(self.root, LOCK)

  def tensorboard(self, name: str) -> str:
    return join(self.root, name)

  def metrics_history(self, name: str) -> str:
    return join(self.root, f"{name}_metrics.jsonl")

  def predictions(self, name: str, step: int) -> str:
    """`name` is "infer_eval" (training) or "eval_<split>" (the eval run mode)."""
    return join(self.root, f"{name}_predictions", f"{step}.jsonl")

  @property
  def config_gin(self) -> str:
    return join(self.root, "config.gin")

  @property
  def loss_png(self) -> str:
    return join(self.root, "loss.png")
