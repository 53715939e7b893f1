"""t5x parameter names and shapes against t5x_lite's, and the T5Config a checkpoint implies.

Both of t5x's code paths name the parameters alike, and as t5x_lite does: t5x's `examples/t5`
network and flaxformer's T5 architecture (with a shared relative position bias per stack, as
the released T5 checkpoints have). The only layout difference: t5x stores attention kernels
2-D, [d_model, heads * d_kv] for query/key/value and [heads * d_kv, d_model] for out (logical
axis `joined_kv`); t5x_lite's are [d_model, heads, d_kv] and [heads, d_kv, d_model]. t5x keeps
one entry per layer (layers_0, layers_1, ...); t5x_lite's scanned stacks (scan_layers) stack
them on a leading `layers` axis. Flaxformer's scanned stacks (`encoder/encoder/...`, one
relative bias table per layer) do not map onto t5x_lite's one table per stack and are refused
by name.
"""

import dataclasses
from typing import Mapping

import numpy as np

from t5x_lite.interop import t5x_format
from t5x_lite.interop.t5x_format import T5xCheckpointError
from t5x_lite.model import network


def joined_kind(path) -> str:
  """'qkv' / 'out' for an attention kernel (2-D in t5x), '' for any other parameter."""
  if len(path) >= 3 and path[-1] == "kernel" and path[-3] in (
      "attention", "self_attention", "encoder_decoder_attention"):
    return "out" if path[-2] == "out" else "qkv"
  return ""


def t5x_shape(path, shape):
  """t5x's shape of the t5x_lite parameter `path` of `shape` (per-layer layout)."""
  kind = joined_kind(path)
  if kind == "qkv":  # [d_model, H, D] -> [d_model, H * D]
    return (shape[0], shape[1] * shape[2])
  if kind == "out":  # [H, D, d_model] -> [H * D, d_model]
    return (shape[0] * shape[1], shape[2])
  return tuple(shape)


def param_boxes(config: network.T5Config):
  """{path: nn.LogicallyPartitioned of ShapeDtypeStruct} of config's parameters."""
  return t5x_format.flatten(network._param_shapes(config))  # pylint: disable=protected-access


def per_layer(config):
  """config with one entry per layer (layers_0, ...), t5x's layout."""
  return dataclasses.replace(config, scan_layers=False)


def describe(target) -> str:
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
  """Why arrays that no T5Config has a place for are there, when their names tell."""
  hints = []
  if any("relpos_bias" in p and any(k.startswith("layers") for k in p) for p in unknown):
    hints.append(" The checkpoint has a relative position bias table per layer (flaxformer "
                 "without a shared relpos_bias): t5x_lite has one per stack.")
  if any(len(p) > 1 and p[0] == p[1] for p in unknown):
    hints.append(" It holds scanned flaxformer stacks (encoder/encoder/...), which have a "
                 "relative position bias table per layer: t5x_lite has one per stack.")
  return "".join(hints)


def check_names(target, expected, what: str) -> None:
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
        + _hints(unknown) + describe(target))


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
  return config_from_arrays(t5x_format.read_target_shapes(path), **overrides)


def stack_layers(flat_per_layer, config):
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


def unstack_layers(flat):
  """The inverse of stack_layers: `layers` entries split into layers_0, layers_1, ..."""
  out = {}
  for path, value in flat.items():
    if len(path) > 1 and path[1] == "layers":
      for i in range(value.shape[0]):
        out[(path[0], f"layers_{i}") + path[2:]] = value[i]
    else:
      out[path] = value
  return out
