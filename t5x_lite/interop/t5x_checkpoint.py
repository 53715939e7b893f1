"""google-research/t5x checkpoints <-> t5x_lite parameters and Adafactor state.

Import: `load_t5x_checkpoint(path, config)` reads a checkpoint directory that t5x's
`checkpoints.Checkpointer` wrote (`checkpoint_<step>/`, local or gs://) and returns
t5x_lite params; with `with_optimizer_state=True` also t5x's Adafactor statistics as
t5x_lite's `optimizers.AdafactorState` and the step, to go on training where t5x stopped.
`config_from_t5x_checkpoint(path)` reads the T5Config off the arrays' shapes (t5x keeps
the architecture in gin, not in the checkpoint). Export: `save_t5x_checkpoint(model_dir,
params, step, optimizer_state, config=...)` writes `model_dir/checkpoint_<step>/`, which
t5x's Checkpointer restores.

The format (t5x/checkpoints.py, VERSION 3): `checkpoint_<step>/checkpoint` is a msgpack
(flax.serialization) of
  {"version": 3, "optimizer": {"target": params,
                               "state": {"step": int, "param_states": params' tree of
                                         {"v_row", "v_col", "v", "m"}}}}
where each leaf is either an array in the msgpack itself or a TensorStore spec (a dict with
"driver": "zarr" and a "kvstore" path relative to the checkpoint directory) of a zarr array
beside it. Both of t5x's code paths name the parameters alike, and as t5x_lite does:
t5x's `examples/t5` network and flaxformer's T5 architecture (with a shared relative
position bias per stack, as the released T5 checkpoints have). The only layout difference:
t5x stores attention kernels 2-D, [d_model, heads * d_kv] for query/key/value and
[heads * d_kv, d_model] for out (logical axis `joined_kv`); t5x_lite's are
[d_model, heads, d_kv] and [heads, d_kv, d_model]. Flaxformer's scanned stacks
(`encoder/encoder/...`, one relative bias table per layer) do not map onto t5x_lite's one
table per stack and are refused by name.

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

import copy
import dataclasses
import os
import posixpath
import re
import time
from typing import Any, Mapping, Optional

from etils import epath
import flax.linen as nn
from flax import serialization
from flax import traverse_util
import jax
import numpy as np
import tensorstore as ts

from t5x_lite.model import network
from t5x_lite.training import optimizers

FORMAT_VERSION = 3
CHECKPOINT_FILE = "checkpoint"
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
_STATS = ("v_row", "v_col", "v", "m")
# t5x's zarr chunks hold at most this many bytes.
_CHUNK_BYTES = 64 * 1024 * 1024
_PLACEHOLDER = np.zeros((1,), np.float32)  # t5x's stand-in for a statistic it does not keep
# Files only orbax writes (t5x's checkpoint_utils tells the formats apart by them too).
_ORBAX_FILES = ("_METADATA", "_CHECKPOINT_METADATA")


class T5xCheckpointError(ValueError):
  """A path that is not a readable t5x checkpoint, or one that does not fit the T5Config."""


# ---------------------------------------------------------------- paths


def checkpoint_dir(path) -> epath.Path:
  """The `checkpoint_<step>` directory of `path` (that directory or its `checkpoint` file).

  Raises:
    T5xCheckpointError: `path` is neither; when it is a model directory holding t5x
      checkpoints, the message lists them.
  """
  path = epath.Path(path)
  if path.name == CHECKPOINT_FILE and path.is_file():
    path = path.parent
  if (path / CHECKPOINT_FILE).is_file():
    if any((path / name).exists() for name in _ORBAX_FILES):
      raise T5xCheckpointError(
          f"{path} is an orbax checkpoint (it has {' or '.join(_ORBAX_FILES)}), not one in "
          "t5x's msgpack + TensorStore layout.")
    return path
  if path.is_dir():
    steps = sorted((int(m.group(1)), child.name) for child in path.iterdir()
                   if (m := _STEP_DIR.match(child.name)) and (child / CHECKPOINT_FILE).exists())
    if steps:
      raise T5xCheckpointError(
          f"{path} is a t5x model directory, not one checkpoint: pass one of its checkpoint "
          f"directories, e.g. {path / steps[-1][1]} (steps {[s for s, _ in steps]}).")
    if (path / "state" / CHECKPOINT_FILE).exists():
      raise T5xCheckpointError(
          f"{path} is a t5x checkpoint in the orbax layout (state/checkpoint); only t5x's "
          "msgpack + TensorStore layout (a `checkpoint` file beside zarr arrays) is read.")
  raise T5xCheckpointError(
      f"{path} is not a t5x checkpoint: t5x writes a directory checkpoint_<step>/ holding a "
      f"msgpack file `{CHECKPOINT_FILE}`, and there is none "
      f"{'in it' if path.is_dir() else 'at that path'}.")


def is_t5x_checkpoint(path) -> bool:
  """Whether `path` is a t5x checkpoint directory (or its `checkpoint` file): cheap, no read."""
  try:
    checkpoint_dir(path)
  except T5xCheckpointError:
    return False
  return True


# ---------------------------------------------------------------- reading


def _is_spec(leaf) -> bool:
  return isinstance(leaf, Mapping) and "driver" in leaf and (
      "kvstore" in leaf or "path" in leaf)


def _flatten(tree):
  """Nested dict -> {path tuple: leaf}; TensorStore spec dicts are leaves."""
  return traverse_util.flatten_dict(tree, is_leaf=lambda _, value: _is_spec(value))


_unflatten = traverse_util.unflatten_dict


def _kvstore(directory: epath.Path, name: str) -> dict:
  """TensorStore kvstore of the array `name` (a path relative to the checkpoint directory)."""
  text = os.fspath(directory)
  if text.startswith("gs://"):
    bucket, _, prefix = text[len("gs://"):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": posixpath.join(prefix, name)}
  return {"driver": "file", "path": os.path.join(text, name)}


def _absolute_spec(spec: Mapping[str, Any], directory: epath.Path) -> dict:
  """A spec as t5x wrote it (relative path; a dummy bucket for gs://) for this directory."""
  spec = copy.deepcopy(dict(spec))
  kvstore = dict(spec.get("kvstore") or {})
  # tensorstore < 0.1.14 and t5x's gcs specs keep the path beside the kvstore.
  name = kvstore.get("path") or spec.pop("path", None)
  spec.pop("path", None)
  if not name:
    raise T5xCheckpointError(f"t5x checkpoint {directory}: a TensorStore spec without a path: "
                             f"{spec}.")
  spec["kvstore"] = _kvstore(directory, name)
  return spec


def _chunk_count(spec_json) -> int:
  meta = spec_json["metadata"]
  return int(np.prod([-(-n // c) for n, c in zip(meta["shape"], meta["chunks"])]))


def _read_arrays(specs: Mapping[tuple, Mapping], directory: epath.Path) -> dict:
  """{path: np.ndarray} for {path: t5x TensorStore spec}, all read concurrently.

  A missing or truncated array file raises T5xCheckpointError naming the array and file: a
  zarr chunk that is absent would otherwise read as zeros.
  """
  # Parameters by their names; statistics as state/param_states/<name>/<statistic>.
  named = lambda path: "/".join(path[1:] if path[0] == "target" else path)
  opened = {}
  for path, spec in specs.items():
    absolute = _absolute_spec(spec, directory)
    opened[path] = (absolute, ts.open(absolute, open=True, read=True))
  arrays, reads = {}, {}
  for path, (absolute, future) in opened.items():
    where = absolute["kvstore"]["path"]
    try:
      store = future.result()
      listing = ts.KvStore.open(dict(absolute["kvstore"], path=where.rstrip("/") + "/")
                                ).result().list().result()
      chunks = [key for key in listing if not key.decode().startswith(".")]
      expected = _chunk_count(store.spec().to_json())
      if len(chunks) < expected:
        raise ValueError(f"{expected - len(chunks)} of its {expected} chunk files are missing")
      reads[path] = (where, store.read())
    except ValueError as error:
      raise T5xCheckpointError(
          f"t5x checkpoint {directory}: cannot read array {named(path)} from {where}: "
          f"{error}. The checkpoint is incomplete or damaged (copy it again).") from error
  for path, (where, future) in reads.items():
    try:
      arrays[path] = np.asarray(future.result())
    except ValueError as error:
      raise T5xCheckpointError(
          f"t5x checkpoint {directory}: cannot read array {named(path)} from {where}: "
          f"{error}. The file is truncated or damaged (copy the checkpoint again).") from error
  return arrays


def read_t5x_checkpoint(path, with_optimizer_state: bool = True):
  """The raw contents of a t5x checkpoint, in t5x's names and shapes.

  Args:
    path: a checkpoint_<step> directory (or its `checkpoint` file), local or gs://.
    with_optimizer_state: also read the optimizer statistics' arrays.

  Returns:
    (target, param_states, step): {path tuple: np.ndarray} of the parameters, the same of
    the statistics (paths end in v_row / v_col / v / m; empty without the optimizer
    state), and the step (int).
  """
  directory = checkpoint_dir(path)
  data = (directory / CHECKPOINT_FILE).read_bytes()
  if data.startswith(b"model_checkpoint_path"):
    raise T5xCheckpointError(
        f"{directory / CHECKPOINT_FILE} is a TensorFlow checkpoint index (Mesh TensorFlow T5), "
        "not a t5x checkpoint: convert it with t5x first.")
  try:
    contents = serialization.msgpack_restore(data)
  except Exception as error:  # pylint: disable=broad-except
    raise T5xCheckpointError(
        f"{directory / CHECKPOINT_FILE} is not a t5x checkpoint file (not msgpack: "
        f"{type(error).__name__}: {error}).") from error
  optimizer = contents.get("optimizer") if isinstance(contents, Mapping) else None
  if not isinstance(optimizer, Mapping) or "target" not in optimizer:
    keys = sorted(contents) if isinstance(contents, Mapping) else type(contents).__name__
    raise T5xCheckpointError(
        f"{directory / CHECKPOINT_FILE} is not a t5x checkpoint file: t5x's holds "
        f"{{'version', 'optimizer': {{'target', 'state'}}}}, this one {keys}.")
  state = optimizer.get("state") or {}
  step = int(np.asarray(state.get("step", 0)))
  leaves = {("target",) + p: v for p, v in _flatten(optimizer["target"]).items()}
  if with_optimizer_state:
    leaves.update({("state",) + p: v
                   for p, v in _flatten(state.get("param_states") or {}).items()})
  arrays = _read_arrays({p: v for p, v in leaves.items() if _is_spec(v)}, directory)
  values = {p: arrays[p] if p in arrays else np.asarray(v) for p, v in leaves.items()}
  target = {p[1:]: v for p, v in values.items() if p[0] == "target"}
  param_states = {p[1:]: v for p, v in values.items() if p[0] == "state"}
  return target, param_states, step


# ---------------------------------------------------------------- names and shapes


def _is_joined(path) -> str:
  """'qkv' / 'out' for an attention kernel (2-D in t5x), '' for any other parameter."""
  if len(path) >= 3 and path[-1] == "kernel" and path[-3] in (
      "attention", "self_attention", "encoder_decoder_attention"):
    return "out" if path[-2] == "out" else "qkv"
  return ""


def _t5x_shape(path, shape):
  """t5x's shape of the t5x_lite parameter `path` of `shape` (per-layer layout)."""
  kind = _is_joined(path)
  if kind == "qkv":  # [d_model, H, D] -> [d_model, H * D]
    return (shape[0], shape[1] * shape[2])
  if kind == "out":  # [H, D, d_model] -> [H * D, d_model]
    return (shape[0] * shape[1], shape[2])
  return tuple(shape)


def _boxed(config: network.T5Config):
  """{path: nn.LogicallyPartitioned of ShapeDtypeStruct} of config's parameters."""
  return _flatten(network._param_shapes(config))  # pylint: disable=protected-access


def _per_layer(config):
  return dataclasses.replace(config, scan_layers=False)


def _describe(target) -> str:
  """What a checkpoint's shapes say it is, for messages."""
  try:
    found = config_from_arrays({p: a.shape for p, a in target.items()})
  except T5xCheckpointError:
    return ""
  fields = ("vocab_size", "d_model", "d_ff", "d_kv", "num_heads", "num_encoder_layers",
            "num_decoder_layers", "feed_forward", "tie_word_embeddings")
  return (" Its shapes say " + ", ".join(f"{f}={getattr(found, f)!r}" for f in fields)
          + " (t5x_checkpoint.config_from_t5x_checkpoint reads them).")


def _hints(unknown) -> str:
  hints = []
  if any("relpos_bias" in p and any(k.startswith("layers") for k in p) for p in unknown):
    hints.append(" The checkpoint has a relative position bias table per layer (flaxformer "
                 "without a shared relpos_bias): t5x_lite has one per stack.")
  if any(len(p) > 1 and p[0] == p[1] for p in unknown):
    hints.append(" It holds scanned flaxformer stacks (encoder/encoder/...), which have a "
                 "relative position bias table per layer: t5x_lite has one per stack.")
  return "".join(hints)


def _check_names(target, expected, what: str) -> None:
  """Raises T5xCheckpointError naming missing and unknown arrays of `what`."""
  unknown = sorted(p for p in target if p not in expected)
  missing = sorted(p for p in expected if p not in target)
  if unknown or missing:
    listed = lambda paths: [("/".join(p)) for p in paths[:8]] + (["..."] if len(paths) > 8
                                                                 else [])
    raise T5xCheckpointError(
        f"{what} does not fit this T5Config: "
        + (f"arrays it lacks: {listed(missing)}; " if missing else "")
        + (f"arrays the config has no place for: {listed(unknown)}." if unknown else "")
        + _hints(unknown) + _describe(target))


def config_from_arrays(shapes: Mapping[tuple, tuple], **overrides) -> network.T5Config:
  """T5Config from {t5x parameter path: shape} (see config_from_t5x_checkpoint)."""
  try:
    vocab_size, d_model = shapes[("token_embedder", "embedding")]
    num_heads, buckets = shapes[("encoder", "relpos_bias", "rel_embedding")]
    query = shapes[("encoder", "layers_0", "attention", "query", "kernel")]
    gated = ("encoder", "layers_0", "mlp", "wi_0", "kernel") in shapes
    d_ff = shapes[("encoder", "layers_0", "mlp", "wi_0" if gated else "wi", "kernel")][-1]
  except (KeyError, ValueError) as error:
    raise T5xCheckpointError(f"not a T5 parameter tree: no {error}") from error
  count = lambda stack: len({p[1] for p in shapes if p[0] == stack and p[1].startswith(
      "layers_")})
  fields = dict(
      vocab_size=vocab_size, d_model=d_model, d_ff=d_ff, num_heads=num_heads,
      d_kv=query[-1] // num_heads if len(query) == 2 else query[-1],
      num_encoder_layers=count("encoder"), num_decoder_layers=count("decoder"),
      feed_forward="gated-gelu" if gated else "relu",
      tie_word_embeddings=("decoder", "logits_dense", "kernel") not in shapes,
      relative_attention_num_buckets=buckets)
  fields.update(overrides)
  return network.T5Config(**fields)


def config_from_t5x_checkpoint(path, **overrides) -> network.T5Config:
  """The T5Config of a t5x checkpoint, from its parameters' shapes (no array is read).

  What shapes cannot tell keeps T5Config's defaults (relative_attention_max_distance 128,
  layer_norm_epsilon 1e-6, dropout_rate 0.1): pass overrides, e.g. dropout_rate=0.0,
  scan_layers=True.
  """
  directory = checkpoint_dir(path)
  contents = serialization.msgpack_restore((directory / CHECKPOINT_FILE).read_bytes())
  shapes = {}
  for p, leaf in _flatten(contents["optimizer"]["target"]).items():
    if _is_spec(leaf):
      shapes[p] = tuple(leaf["metadata"]["shape"])
    else:
      shapes[p] = tuple(np.shape(leaf))
  return config_from_arrays(shapes, **overrides)


# ---------------------------------------------------------------- Adafactor statistics


def _t5x_factored_dims(t5x_shape):
  """(dim v_row runs along, dim v_col runs along) of t5x's size rule for a 2-D parameter."""
  order = np.argsort(t5x_shape, kind="stable")
  return int(order[-2]), int(order[-1])


def _t5x_dim_of(path, lite_dims):
  """t5x's 2-D dim holding t5x_lite's dims `lite_dims` of parameter `path` (per layer)."""
  kind = _is_joined(path)
  if kind == "qkv":  # [d_model | H, D]
    return 0 if tuple(lite_dims) == (0,) else 1
  if kind == "out":  # [H, D | d_model]
    return 1 if tuple(lite_dims) == (2,) else 0
  return lite_dims[0]


def _is_placeholder(value, shape) -> bool:
  return value is None or (np.shape(value) == (1,) and tuple(shape) != (1,))


def _lite_param_state(path, stats, lite_shape, factoring, directory, momentum):
  """t5x_lite ParamState of one per-layer parameter from t5x's {v_row, v_col, v, m}."""
  t5x_shape = _t5x_shape(path, lite_shape)
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
  t5x_shape = _t5x_shape(path, lite_shape)
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


# ---------------------------------------------------------------- load


def _stack_tree(flat_per_layer, config):
  """{per-layer path: value} -> {scanned path: value stacked on a leading layer axis}."""
  out, groups = {}, {}
  for path, value in flat_per_layer.items():
    if len(path) > 1 and path[1].startswith("layers_"):
      groups.setdefault((path[0],) + ("layers",) + path[2:], {})[int(path[1][7:])] = value
    else:
      out[path] = value
  depth = {"encoder": config.num_encoder_layers, "decoder": config.num_decoder_layers}
  for path, by_layer in groups.items():
    out[path] = np.stack([by_layer[i] for i in range(depth[path[0]])])
  return out


def _unstack_tree(flat):
  """The inverse of _stack_tree: `layers` entries split into layers_0, layers_1, ..."""
  out = {}
  for path, value in flat.items():
    if len(path) > 1 and path[1] == "layers":
      for i in range(value.shape[0]):
        out[(path[0], f"layers_{i}") + path[2:]] = value[i]
    else:
      out[path] = value
  return out


def load_t5x_checkpoint(path, config: network.T5Config, *, with_optimizer_state: bool = False,
                        factor_rules=None, momentum: bool = False):
  """t5x_lite params (and optionally Adafactor state and step) from a t5x checkpoint.

  Args:
    path: a t5x checkpoint_<step> directory (or its `checkpoint` file), local or gs://.
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
  directory = checkpoint_dir(path)
  target, t5x_states, step = read_t5x_checkpoint(directory, with_optimizer_state)
  per_layer = _per_layer(config)
  boxes = _boxed(per_layer)
  _check_names(target, boxes, f"t5x checkpoint {directory}")
  dtype = config.parameter_dtype
  flat = {}
  for p, box in boxes.items():
    shape = tuple(box.value.shape)
    found = tuple(target[p].shape)
    if found not in (shape, _t5x_shape(p, shape)):
      lite = f" (t5x_lite's {shape})" if _t5x_shape(p, shape) != shape else ""
      raise T5xCheckpointError(
          f"t5x checkpoint {directory}: array {'/'.join(p)} has shape {found}; the T5Config "
          f"expects {_t5x_shape(p, shape)}{lite}.{_describe(target)}")
    flat[p] = np.asarray(target[p]).reshape(shape).astype(dtype)
  params_flat = _stack_tree(flat, config) if config.scan_layers else flat
  params = _unflatten(params_flat)
  if not with_optimizer_state:
    return params
  stats = {}
  for p, box in boxes.items():
    f = optimizers.factoring(box.value.shape, box.names, factor_rules)
    found = {k[-1]: v for k, v in t5x_states.items() if k[:-1] == p}
    stats[p] = _lite_param_state(p, found, tuple(box.value.shape), f, directory, momentum)
  if config.scan_layers:
    stats = _stack_stats(stats, config)
  scanned_boxes = _boxed(config)
  param_states = {}
  for p, box in scanned_boxes.items():
    f = optimizers.factoring(box.value.shape, box.names, factor_rules)
    s = stats[p]
    param_states[p] = optimizers.ParamState(
        v_row=s.get("v_row"), v_col=s.get("v_col"), v=s.get("v"), m=s.get("m"), factoring=f)
  opt_state = optimizers.AdafactorState(count=np.asarray(step, np.int32),
                                        param_states=_unflatten(param_states))
  return params, opt_state, step


def _stack_stats(stats, config):
  """Per-layer {path: {stat: array}} -> scanned paths, each statistic stacked per layer."""
  names = sorted({k for s in stats.values() for k in s})
  out = {}
  for name in names:
    stacked = _stack_tree({p: s[name] for p, s in stats.items() if name in s}, config)
    for p, value in stacked.items():
      out.setdefault(p, {})[name] = value
  return out


# ---------------------------------------------------------------- save


def _chunks(shape, itemsize):
  """t5x's chunk shape: shrink the largest dim to its next divisor until under 64 MiB."""
  chunks = [max(int(n), 1) for n in shape]
  while int(np.prod(chunks)) * itemsize > _CHUNK_BYTES:
    i = int(np.argmax(chunks))
    chunks[i] = max(d for d in range(1, chunks[i]) if shape[i] % d == 0)
  return chunks


def _spec(name: str, array: np.ndarray, gcs: bool) -> dict:
  """The TensorStore spec t5x writes into the msgpack for array `name` (relative path)."""
  spec = {"driver": "zarr", "dtype": array.dtype.name,
          "metadata": {"compressor": {"id": "gzip", "level": 1}, "shape": list(array.shape),
                       "chunks": _chunks(array.shape, array.dtype.itemsize)}}
  if gcs:  # t5x's portable gcs spec: a dummy bucket, replaced by the reader's
    spec.update(kvstore={"driver": "gcs", "bucket": "t5x-dummy-bucket"}, path=name)
  else:
    spec["kvstore"] = {"driver": "file", "path": name + "/"}
  return spec


def _plain_params(params):
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
      statistics are laid out as t5x_lite factors it (see the module docstring).
    config: the params' T5Config.

  Returns:
    The checkpoint directory written.

  Raises:
    T5xCheckpointError: a parameter is missing, unknown or of another shape than config
      implies; FileExistsError: the checkpoint directory exists already.
  """
  params = _plain_params(params)
  flat = {p: np.asarray(v) for p, v in _flatten(params).items()}
  if "layers" in params.get("encoder", {}):
    flat = _unstack_tree(flat)
  per_layer = _per_layer(config)
  boxes = _boxed(per_layer)
  final = epath.Path(model_dir) / f"checkpoint_{int(step)}"
  _check_names(flat, boxes, "params")
  for p, box in boxes.items():
    if tuple(flat[p].shape) != tuple(box.value.shape):
      raise T5xCheckpointError(f"parameter {'/'.join(p)} has shape {tuple(flat[p].shape)}; the "
                               f"T5Config expects {tuple(box.value.shape)}.")
  if final.exists():
    raise FileExistsError(f"{final} exists already: remove it or save another step.")
  stats = _lite_stats(optimizer_state, boxes, config)
  gcs = os.fspath(final).startswith("gs://")
  # Locally, write beside the final name and rename at the end, as t5x does: a killed save
  # leaves no directory that looks like a checkpoint.
  directory = final if gcs else final.parent / f"{final.name}.tmp-{int(time.time())}"
  directory.mkdir(parents=True, exist_ok=True)
  tree, opened = {}, []

  def add(path, array, to_tensorstore):
    if not to_tensorstore:
      tree[path] = array
      return
    name = ".".join(path)
    spec = _spec(name, array, gcs)
    tree[path] = spec
    absolute = dict(_absolute_spec(spec, directory), dtype=array.dtype.name)
    opened.append((ts.open(absolute, create=True, delete_existing=True), array))

  for p in boxes:
    add(("target",) + p, np.ascontiguousarray(flat[p].reshape(_t5x_shape(p, flat[p].shape))),
        True)
    for key, value in _t5x_param_state(p, stats[p], tuple(boxes[p].value.shape)).items():
      # As t5x: factored vectors and placeholders in the msgpack, full-size ones zarr.
      add(("state", "param_states") + p + (key,), value,
          key in ("v", "m") and value.shape != _PLACEHOLDER.shape)
  # All opens, then all writes, in flight together (a bucket answers each in a round trip).
  writes = [store.result().write(array) for store, array in opened]
  for write in writes:
    write.result()
  tree[("state", "step")] = np.asarray(step, np.int32)
  contents = {"version": FORMAT_VERSION, "optimizer": _unflatten(tree)}
  # The msgpack last: readers open it first, so a partial save never looks complete.
  (directory / CHECKPOINT_FILE).write_bytes(serialization.msgpack_serialize(contents))
  if directory != final:
    directory.rename(final)
  return os.fspath(final)


def _lite_stats(optimizer_state, boxes, config):
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
      flat = _unstack_tree(flat)
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
  out = {}
  for key, value in tree.items():
    if isinstance(value, optimizers.ParamState):
      out[prefix + (key,)] = value
    else:
      out.update(_flatten_param_states(value, prefix + (key,)))
  return out
