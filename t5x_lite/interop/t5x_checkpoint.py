"""google-research/t5x checkpoints <-> t5x_lite parameters and Adafactor state.

Import: `load_t5x_checkpoint(path, config)` reads a checkpoint directory that t5x wrote
(`checkpoint_<step>/`, local or gs://: its `checkpoints.Checkpointer`'s msgpack + TensorStore
layout or its OrbaxCheckpointManagerInterface's `state/` orbax layout) and returns
t5x_lite params; with `with_optimizer_state=True` also t5x's Adafactor statistics as
t5x_lite's `optimizers.AdafactorState` and the step, to go on training where t5x stopped.
`config_from_t5x_checkpoint(path)` reads the T5Config off the arrays' shapes (t5x keeps
the architecture in gin, not in the checkpoint). Export: `save_t5x_checkpoint(model_dir,
params, step, optimizer_state, config=...)` writes `model_dir/checkpoint_<step>/`, which
t5x's Checkpointer restores.

Where each part lives: t5x_lite.interop.t5x_format (the checkpoint_<step>/ directory, its
msgpack and TensorStore arrays) and t5x_orbax_format (its orbax layout), t5x_param_layout
(t5x's parameter names and shapes against t5x_lite's, the T5Config a checkpoint implies) and
t5x_adafactor (t5x's Adafactor statistics against t5x_lite's AdafactorState); this module puts
them together and is where callers import the public names from.
"""

from etils import epath
import flax.linen as nn
import numpy as np

from t5x_lite.interop import t5x_adafactor
from t5x_lite.interop import t5x_format
from t5x_lite.interop import t5x_param_layout
from t5x_lite.model import network
# Part of this module's public API (README "Coming from t5x"); the library imports them from
# their own modules.
from t5x_lite.interop.t5x_format import (  # pylint: disable=unused-import
    T5xCheckpointError, is_t5x_checkpoint, read_t5x_checkpoint)
from t5x_lite.interop.t5x_param_layout import (  # pylint: disable=unused-import
    config_from_arrays, config_from_t5x_checkpoint)


def load_t5x_checkpoint(path, config: network.T5Config, *, with_optimizer_state: bool = False,
                        factor_rules=None, momentum: bool = False):
  """t5x_lite params (and optionally Adafactor state and step) from a t5x checkpoint.

  Args:
    path: a t5x checkpoint_<step> directory (or its `checkpoint` file, or its orbax `state`
      item), local or gs://.
    config: the T5Config the checkpoint must match (config_from_t5x_checkpoint reads it);
      the params come in its layout (config.scan_layers) and parameter dtype.
    with_optimizer_state: also convert t5x's Adafactor statistics.
    factor_rules: t5x_lite's adafactor.factor_rules (None: the standard ones), which decide
      the layout of the statistics.
    momentum: the checkpoint's run had Adafactor beta1: convert its `m` too (then train with
      adafactor(momentum=...)).

  Returns:
    params (numpy arrays, without the outer "params" key); with with_optimizer_state,
    (params, optimizers.AdafactorState, step): the state as adafactor().init would build it
    for these params, count = step.

  Raises:
    T5xCheckpointError: the path is no t5x checkpoint, an array file is missing or damaged,
      or an array is missing, unknown or of another shape than the config implies (the
      message names the array and both shapes, and what the checkpoint's shapes say).
  """
  directory = t5x_format.checkpoint_dir(path)
  target, t5x_states, step = read_t5x_checkpoint(directory, with_optimizer_state)
  per_layer = t5x_param_layout.per_layer(config)
  boxes = t5x_param_layout.param_boxes(per_layer)
  t5x_param_layout.check_names(target, boxes, f"t5x checkpoint {directory}")
  dtype = config.parameter_dtype
  flat = {}
  for p, box in boxes.items():
    shape = tuple(box.value.shape)
    found = tuple(target[p].shape)
    t5x_shape = t5x_param_layout.t5x_shape(p, shape)
    if found not in (shape, t5x_shape):
      lite = f" (t5x_lite's {shape})" if t5x_shape != shape else ""
      raise T5xCheckpointError(
          f"t5x checkpoint {directory}: array {'/'.join(p)} has shape {found}; the T5Config "
          f"expects {t5x_shape}{lite}.{t5x_param_layout.describe(target)}")
    flat[p] = np.asarray(target[p]).reshape(shape).astype(dtype)
  params_flat = t5x_param_layout.stack_layers(flat, config) if config.scan_layers else flat
  params = t5x_format.unflatten(params_flat)
  if not with_optimizer_state:
    return params
  opt_state = t5x_adafactor.adafactor_state_from_t5x(
      t5x_states, boxes, config, step, directory, factor_rules=factor_rules, momentum=momentum)
  return params, opt_state, step


def _plain_params(params):
  """The parameter tree itself: unboxed, without the outer "params" key."""
  params = nn.meta.unbox(params)
  if "params" in params and "token_embedder" not in params:
    params = params["params"]
  return params


def save_t5x_checkpoint(model_dir, params, step: int, optimizer_state=None, *,
                        config: network.T5Config) -> str:
  """Writes `model_dir/checkpoint_<step>/` in t5x's format (t5x's Checkpointer restores it).

  Args:
    model_dir: t5x's checkpoints directory (its MODEL_DIR), local or gs://.
    params: t5x_lite params (boxed or plain, with or without the "params" key, per-layer or
      scanned).
    step: the train step to record (t5x's `state/step`).
    optimizer_state: t5x_lite's optimizers.AdafactorState of these params; None writes
      zero statistics (what t5x's Adafactor starts from). Either way every parameter's
      statistics are laid out as t5x_lite factors it (see t5x_adafactor's docstring).
    config: the params' T5Config.

  Returns:
    The checkpoint directory written.

  Raises:
    T5xCheckpointError: a parameter is missing, unknown or of another shape than config
      implies; FileExistsError: the checkpoint directory exists already.
  """
  params = _plain_params(params)
  flat = {p: np.asarray(v) for p, v in t5x_format.flatten(params).items()}
  if "layers" in params.get("encoder", {}):
    flat = t5x_param_layout.unstack_layers(flat)
  per_layer = t5x_param_layout.per_layer(config)
  boxes = t5x_param_layout.param_boxes(per_layer)
  final = epath.Path(model_dir) / f"checkpoint_{int(step)}"
  t5x_param_layout.check_names(flat, boxes, "params")
  for p, box in boxes.items():
    if tuple(flat[p].shape) != tuple(box.value.shape):
      raise T5xCheckpointError(f"parameter {'/'.join(p)} has shape {tuple(flat[p].shape)}; the "
                               f"T5Config expects {tuple(box.value.shape)}.")
  if final.exists():
    raise FileExistsError(f"{final} exists already: remove it or save another step.")
  leaves = {("target",) + p: (np.ascontiguousarray(
      flat[p].reshape(t5x_param_layout.t5x_shape(p, flat[p].shape))), True) for p in boxes}
  leaves.update(t5x_adafactor.t5x_statistics_leaves(optimizer_state, boxes))
  return t5x_format.write_t5x_checkpoint(final, leaves, step)
