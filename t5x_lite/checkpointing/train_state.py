"""TrainState: what a checkpoint holds (t5x_lite.checkpointing.checkpoints) and a train step updates."""

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """The step, the (unboxed) params and the optimizer state."""
  step: jax.Array
  params: Any
  opt_state: Any
