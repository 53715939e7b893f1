"""t5x's Adafactor statistics <-> t5x_lite's AdafactorState, parameter by parameter.

Adafactor state: t5x factors a 2-D parameter's second moment by size (its two dims, if the
smaller is >= Adafactor.min_dim_size_to_factor, 128 by default; v_row runs along the
smaller dim, v_col along the larger), t5x_lite by logical axis (v_row along `embed`). The
two describe the same estimate; conversion moves each vector to the dims it runs along.
A parameter that t5x kept unfactored and t5x_lite factors gets the row and column means
of t5x's full v: exactly the statistics t5x_lite would have accumulated (the mean of an
exponential moving average is the moving average of the means). The opposite (factored
in t5x, not in t5x_lite) cannot be undone and is refused. On export every parameter is
written factored as t5x_lite factors it; t5x restores that layout when its
min_dim_size_to_factor is at most the smallest factored dim (always the case at T5's
sizes; toy widths need it lowered in the t5x gin config).
"""

from typing import Any, Mapping

import jax
import numpy as np

from t5x_lite.interop import t5x_format
from t5x_lite.interop import t5x_param_layout
from t5x_lite.interop.t5x_format import T5xCheckpointError
from t5x_lite.training import optimizers

_STATS = ("v_row", "v_col", "v", "m")
_PLACEHOLDER = np.zeros((1,), np.float32)  # t5x's stand-in for a statistic it does not keep


def _t5x_factored_dims(t5x_shape):
  """(dim v_row runs along, dim v_col runs along) of t5x's size rule for a 2-D parameter."""
  order = np.argsort(t5x_shape, kind="stable")
  return int(order[-2]), int(order[-1])


def _t5x_dim_of(path, lite_dims):
  """t5x's 2-D dim holding t5x_lite's dims `lite_dims` of parameter `path` (per layer)."""
  kind = t5x_param_layout.joined_kind(path)
  if kind == "qkv":  # [d_model | H, D]
    return 0 if tuple(lite_dims) == (0,) else 1
  if kind == "out":  # [H, D | d_model]
    return 1 if tuple(lite_dims) == (2,) else 0
  return lite_dims[0]


def _is_placeholder(value, shape) -> bool:
  """Whether t5x kept no such statistic for a parameter of `shape` (None or its [1] stand-in)."""
  return value is None or (np.shape(value) == (1,) and tuple(shape) != (1,))


def _lite_param_state(path, stats, lite_shape, factoring, directory, momentum):
  """t5x_lite ParamState of one per-layer parameter from t5x's {v_row, v_col, v, m}."""
  t5x_shape = t5x_param_layout.t5x_shape(path, lite_shape)
  name = "/".join(path)
  v_row, v_col, v, m = (stats.get(k) for k in _STATS)
  has_full = not _is_placeholder(v, t5x_shape)
  has_factors = not (_is_placeholder(v_row, t5x_shape) or _is_placeholder(v_col, t5x_shape))
  if not (has_full or has_factors):
    raise T5xCheckpointError(f"t5x checkpoint {directory}: no Adafactor statistics (v or "
                             f"v_row/v_col) for {name}.")
  f = factoring
  new = {}
  if has_full:
    full = np.asarray(v, np.float32).reshape(lite_shape)
    if f.factored:  # the statistics t5x_lite would have kept (means of t5x's moving average)
      new["v_row"] = full.mean(axis=f.cols)
      new["v_col"] = full.mean(axis=f.rows)
    else:
      new["v"] = full
  else:
    if not f.factored:
      raise T5xCheckpointError(
          f"t5x checkpoint {directory}: {name} has a factored second moment (v_row, v_col), "
          "which t5x_lite keeps in full for this parameter; a full moment cannot be rebuilt "
          "from factors (load without the optimizer state).")
    along_row, along_col = _t5x_factored_dims(t5x_shape)
    vectors = {along_row: np.asarray(v_row, np.float32), along_col: np.asarray(v_col, np.float32)}
    lite_row_dim = _t5x_dim_of(path, f.rows)
    lite_col_dim = 1 - lite_row_dim
    row_shape = tuple(n for i, n in enumerate(lite_shape) if i not in f.cols)
    col_shape = tuple(n for i, n in enumerate(lite_shape) if i not in f.rows)
    for key, dim, shape in (("v_row", lite_row_dim, row_shape), ("v_col", lite_col_dim,
                                                                  col_shape)):
      vector = vectors[dim]
      if vector.size != int(np.prod(shape)):
        raise T5xCheckpointError(
            f"t5x checkpoint {directory}: Adafactor statistic of {name} has shape "
            f"{vector.shape}; the parameter {t5x_shape} implies {shape} for t5x_lite's {key}.")
      new[key] = vector.reshape(shape)
  if momentum:
    if _is_placeholder(m, t5x_shape):
      raise T5xCheckpointError(f"t5x checkpoint {directory}: no momentum (m) for {name}; the "
                               "t5x run had no beta1: use adafactor(momentum=None).")
    new["m"] = np.asarray(m, np.float32).reshape(lite_shape)
  return new


def _t5x_param_state(path, state, lite_shape):
  """t5x's {v_row, v_col, v, m} of one per-layer parameter from t5x_lite's statistics."""
  t5x_shape = t5x_param_layout.t5x_shape(path, lite_shape)
  out = {k: _PLACEHOLDER for k in _STATS}
  f = state["factoring"]
  if f.factored:
    along_row, _ = _t5x_factored_dims(t5x_shape)
    lite_row_dim = _t5x_dim_of(path, f.rows)
    row, col = (np.asarray(state["v_row"], np.float32).reshape(-1),
                np.asarray(state["v_col"], np.float32).reshape(-1))
    out["v_row"], out["v_col"] = (row, col) if lite_row_dim == along_row else (col, row)
  else:
    out["v"] = np.asarray(state["v"], np.float32).reshape(t5x_shape)
  if state.get("m") is not None:
    out["m"] = np.asarray(state["m"], np.float32).reshape(t5x_shape)
  return out


def adafactor_state_from_t5x(t5x_states: Mapping[tuple, Any], boxes, config, step: int,
                             directory, *, factor_rules=None, momentum: bool = False):
  """t5x_lite's AdafactorState from a t5x checkpoint's statistics.

  Args:
    t5x_states: {per-layer t5x parameter path + (statistic,): np.ndarray}, the statistic one of
      v_row / v_col / v / m (t5x_format.read_t5x_checkpoint's second value).
    boxes: t5x_param_layout.param_boxes of the per-layer config.
    config: the params' T5Config; the state comes in its layout (config.scan_layers).
    step: the checkpoint's step (the state's count).
    directory: the checkpoint directory, for messages.
    factor_rules, momentum: as load_t5x_checkpoint.

  Returns:
    optimizers.AdafactorState as adafactor().init would build it for these params.

  Raises:
    T5xCheckpointError: a parameter's statistics are missing, of another size, or factored
      where t5x_lite keeps them in full.
  """
  stats = {}
  for p, box in boxes.items():
    f = optimizers.factoring(box.value.shape, box.names, factor_rules)
    found = {k[-1]: v for k, v in t5x_states.items() if k[:-1] == p}
    stats[p] = _lite_param_state(p, found, tuple(box.value.shape), f, directory, momentum)
  if config.scan_layers:
    stats = _stack_stats(stats, config)
  scanned_boxes = t5x_param_layout.param_boxes(config)
  param_states = {}
  for p, box in scanned_boxes.items():
    f = optimizers.factoring(box.value.shape, box.names, factor_rules)
    s = stats[p]
    param_states[p] = optimizers.ParamState(
        v_row=s.get("v_row"), v_col=s.get("v_col"), v=s.get("v"), m=s.get("m"), factoring=f)
  opt_state = optimizers.AdafactorState(count=np.asarray(step, np.int32),
                                        param_states=t5x_format.unflatten(param_states))
  return opt_state


def _stack_stats(stats, config):
  """Per-layer {path: {stat: array}} -> scanned paths, each statistic stacked per layer."""
  names = sorted({k for s in stats.values() for k in s})
  out = {}
  for name in names:
    stacked = t5x_param_layout.stack_layers(
        {p: s[name] for p, s in stats.items() if name in s}, config)
    for p, value in stacked.items():
      out.setdefault(p, {})[name] = value
  return out


def t5x_statistics_leaves(optimizer_state, boxes) -> dict:
  """The statistics as t5x's msgpack holds them, for t5x_format.write_t5x_checkpoint.

  Args:
    optimizer_state: t5x_lite's AdafactorState (per-layer or scanned), or None (zeros).
    boxes: t5x_param_layout.param_boxes of the per-layer config.

  Returns:
    {("state", "param_states") + parameter path + (statistic,): (np.ndarray, whether t5x
    writes it as a zarr array)}.
  """
  stats = _lite_statistics(optimizer_state, boxes)
  leaves = {}
  for p, box in boxes.items():
    for key, value in _t5x_param_state(p, stats[p], tuple(box.value.shape)).items():
      # As t5x: factored vectors and placeholders in the msgpack, full-size ones zarr.
      leaves[("state", "param_states") + p + (key,)] = (
          value, key in ("v", "m") and value.shape != _PLACEHOLDER.shape)
  return leaves


def _lite_statistics(optimizer_state, boxes):
  """{per-layer path: {"factoring", "v_row", "v_col", "v", "m"}} of an AdafactorState."""
  if optimizer_state is None:
    out = {}
    for p, box in boxes.items():
      shape = tuple(box.value.shape)
      f = optimizers.factoring(shape, box.names)
      zeros = lambda dims, shape=shape: np.zeros(
          [n for i, n in enumerate(shape) if i not in dims], np.float32)
      out[p] = {"factoring": f, "v_row": zeros(f.cols) if f.factored else None,
                "v_col": zeros(f.rows) if f.factored else None,
                "v": None if f.factored else zeros(())}
    return out
  states = _flatten_param_states(optimizer_state.param_states)
  per_stat = {}
  for p, s in states.items():
    for key in _STATS:
      value = getattr(s, key)
      if value is not None:
        per_stat.setdefault(key, {})[p] = np.asarray(jax.device_get(value))
  out = {}
  for key, flat in per_stat.items():
    if any(len(p) > 1 and p[1] == "layers" for p in flat):
      flat = t5x_param_layout.unstack_layers(flat)
    for p, value in flat.items():
      out.setdefault(p, {})[key] = value
  missing = sorted("/".join(p) for p in boxes if p not in out)
  if missing:
    raise T5xCheckpointError(f"optimizer_state has no statistics for {missing[:8]}: pass the "
                             "AdafactorState of these params.")
  for p, box in boxes.items():
    out[p]["factoring"] = optimizers.factoring(tuple(box.value.shape), box.names)
    if out[p]["factoring"].factored != ("v_row" in out[p]):
      raise T5xCheckpointError(
          f"optimizer_state of {'/'.join(p)} is {'' if 'v_row' in out[p] else 'not '}factored,"
          " unlike t5x_lite's standard factor rules: save with the standard adafactor().")
  return out


def _flatten_param_states(tree, prefix=()):
  """{parameter path: ParamState} of an AdafactorState's nested param_states."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, optimizers.ParamState):
      out[prefix + (key,)] = value
    else:
      out.update(_flatten_param_states(value, prefix + (key,)))
  return out
