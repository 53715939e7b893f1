"""Memory planner: bytes per device for parameters, optimizer state and activations.

For a T5Config, a mesh shape and a batch, before any device exists (shapes only, through
jax.eval_shape): parameters and Adafactor state are exact for the sharding rules;
activations are an estimate of what the backward pass keeps alive (documented per term
below), for the xla or pallas attention and the remat policy.

From the command line: `python -m t5x_lite.tools.plan_memory` (t5x_lite/tools/plan_memory.py).
"""

import dataclasses
import math
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.model import network
from t5x_lite.parallel import partitioning
from t5x_lite.training import optimizers

GiB = 1024 ** 3


def _shard_shape(shape, spec, mesh_shape: Mapping[str, int]):
  """Per-device shape of an array of `shape` under PartitionSpec `spec` (ceil division)."""
  out = []
  for i, dim in enumerate(shape):
    axes = spec[i] if i < len(spec) else None
    axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    out.append(math.ceil(dim / math.prod(mesh_shape.get(a, 1) for a in axes)))
  return out


def _nbytes(shape, dtype):
  return math.prod(shape) * jnp.dtype(dtype).itemsize


@dataclasses.dataclass
class MemoryPlan:
  """Bytes per device; `total` adds gradients (one param-sized transient), the compute-dtype
  copy of the scanned parameters (`compute_copy_bytes`) and, with FSDP, the gathered weights
  of the layer being computed (`fsdp_gathered_bytes`)."""
  params: int
  optimizer_state: int
  gradients: int
  activations: int
  num_params: int
  fsdp_gathered: int = 0
  compute_copy: int = 0

  @property
  def total(self):
    return (self.params + self.optimizer_state + self.gradients + self.activations
            + self.fsdp_gathered + self.compute_copy)

  def table(self) -> str:
    rows = [("parameters", self.params), ("optimizer state (Adafactor)", self.optimizer_state),
            ("gradients", self.gradients), ("activations (estimate)", self.activations)]
    if self.compute_copy:
      rows.append(("parameters in compute dtype (scan)", self.compute_copy))
    if self.fsdp_gathered:
      rows.append(("FSDP gathered layer (estimate)", self.fsdp_gathered))
    rows.append(("total", self.total))
    lines = ["| per device | GiB |", "|---|---:|"]
    lines += [f"| {name} | {value / GiB:.2f} |" for name, value in rows]
    return "\n".join(lines)


def parameter_and_optimizer_bytes(config: network.T5Config, mesh_shape: Mapping[str, int],
                                  rules: Optional[Sequence] = None):
  """(param bytes, optimizer-state bytes, num params) per device; exact for the rules."""
  rules = rules if rules is not None else partitioning.standard_logical_axis_rules()
  ids = jnp.ones((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: network.Transformer(config).init(jax.random.PRNGKey(0), ids,
                                                                   ids))["params"]
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  logical = jax.tree_util.tree_leaves(nn.get_partition_spec(boxed), is_leaf=is_spec)
  specs = jax.tree_util.tree_leaves(nn.logical_to_mesh(nn.get_partition_spec(boxed), rules),
                                    is_leaf=is_spec)
  shapes = jax.tree_util.tree_leaves(nn.unbox(boxed))
  param_bytes = opt_bytes = num_params = 0
  for shape, spec, axes in zip(shapes, specs, logical):
    num_params += math.prod(shape.shape)
    param_bytes += _nbytes(_shard_shape(shape.shape, spec, mesh_shape), shape.dtype)
    # Adafactor's float32 statistics: v_row (without the cols) and v_col (without the rows),
    # or a full v, each sharded like the parameter's remaining dims.
    factoring = optimizers.factoring(shape.shape, tuple(axes))
    for dropped in [factoring.cols, factoring.rows] if factoring.factored else [()]:
      keep = [i for i in range(len(shape.shape)) if i not in dropped]
      opt_bytes += _nbytes(_shard_shape([shape.shape[i] for i in keep],
                                        [spec[i] if i < len(spec) else None for i in keep],
                                        mesh_shape), jnp.float32)
  return param_bytes, opt_bytes, num_params


def activation_bytes(config: network.T5Config, mesh_shape: Mapping[str, int], batch_size: int,
                     inputs_length: int, targets_length: int, num_microbatches: int = 1) -> int:
  """Estimate of activations kept for the backward pass, per device.

  Per token and layer (without remat): the residual stream and normalised inputs
  (2 * d_model per sublayer), q/k/v and the attention output (4 * heads * d_kv), the MLP
  hidden activations (2 * d_ff for relu, 4 * d_ff gated: both branches, gelu, product),
  and attention probabilities (heads * key_length) with impl "xla" — the pallas kernel
  keeps two floats per row instead. Decoder layers add cross-attention (queries, output,
  probabilities over the inputs, and the encoder keys/values per layer). Heads, MLP and
  vocab dims divide by the 'model' axis, the batch by the data axes. With remat the layer
  inputs are kept plus one layer's activations being recomputed. Logits: float32
  [batch, targets, vocab], twice (logits and their gradient).
  """
  data = mesh_shape.get("data", 1) * mesh_shape.get("replica", 1)
  model = mesh_shape.get("model", 1)
  b = math.ceil(batch_size / data / num_microbatches)
  width = jnp.dtype(config.dtype).itemsize
  hd = config.num_heads * config.d_kv / model
  mlp = (4 if config.feed_forward == "gated-gelu" else 2) * config.d_ff / model
  heads = config.num_heads / model
  pallas = config.attention_impl == "pallas"

  def attention_probs(q_len, k_len):
    return heads * q_len * (2 if pallas else k_len)

  def layer(q_len, k_len, cross_len=None):
    per_token = 4 * config.d_model + 4 * hd + mlp
    total = q_len * per_token + attention_probs(q_len, k_len)
    if cross_len is not None:
      total += q_len * (2 * config.d_model + 2 * hd) + attention_probs(q_len, cross_len)
      total += 2 * cross_len * hd
    return total

  enc = layer(inputs_length, inputs_length)
  dec = layer(targets_length, targets_length, inputs_length)
  if config.remat_policy == "none":
    kept = config.num_encoder_layers * enc + config.num_decoder_layers * dec
  else:
    kept = (config.num_encoder_layers * inputs_length + config.num_decoder_layers *
            targets_length) * config.d_model + max(enc, dec)
  logits = 2 * targets_length * math.ceil(config.vocab_size / model) * 4
  return int(b * (kept * width + logits))


def fsdp_gathered_bytes(config: network.T5Config, mesh_shape: Mapping[str, int]) -> int:
  """Transient bytes per device of FSDP: the largest layer's weights all-gathered over 'data'
  for its forward (and remat / backward) and that layer's whole gradient before the
  reduce-scatter, i.e. 2 x its parameters in param_dtype (still split over 'model').

  XLA compiling T5 v1.1 XXL for v5e-256 (256x1 FSDP, batch 256, 512/114, bf16, scan, full
  remat; t5x_lite.tools.aot_compile) needs 2.44 GiB per chip; with this term the plan gives 2.52.
  """
  hd = config.num_heads * config.d_kv
  mlp = (3 if config.feed_forward == "gated-gelu" else 2) * config.d_model * config.d_ff
  decoder_layer = 8 * config.d_model * hd + mlp + 3 * config.d_model
  encoder_layer = 4 * config.d_model * hd + mlp + 2 * config.d_model
  layer = max(decoder_layer if config.num_decoder_layers else 0, encoder_layer)
  width = jnp.dtype(config.param_dtype).itemsize
  return int(2 * layer * width / mesh_shape.get("model", 1))


def compute_copy_bytes(config: network.T5Config, param_bytes: int) -> int:
  """Bytes per device of the parameters cast to the compute dtype, held through the step.

  With scan_layers and T5Config.dtype narrower than param_dtype (bfloat16 over float32),
  XLA casts each stacked [layers, ...] kernel shard once, before the layer loop, and carries
  the casts through the forward, remat and backward loops: a copy of the device's parameter
  shards in dtype (param_bytes x 2 / 4). XLA's buffer assignment for T5 v1.1 XXL on
  v5e-256 (32x8, batch 256, 512/114, full remat) holds at its peak a bfloat16 copy of each
  of the 18 stacked kernels (2.53 GiB per chip, and 0.03 GiB of embedding casts); with this
  term the plan is 14.13 GiB against XLA's 14.14 (11.54 without). Unscanned layers are not
  counted (not measured).
  """
  narrow = jnp.dtype(config.dtype).itemsize
  wide = jnp.dtype(config.param_dtype).itemsize
  if not config.scan_layers or narrow >= wide:
    return 0
  return param_bytes * narrow // wide


def plan(config: network.T5Config, mesh_shape: Mapping[str, int], batch_size: int,
         inputs_length: int, targets_length: int, fsdp: bool = False,
         num_microbatches: int = 1) -> MemoryPlan:
  """The MemoryPlan of training `config` on a mesh {"data": D, "model": M} at this batch."""
  rules = partitioning.standard_logical_axis_rules(fsdp=fsdp)
  params, opt, num = parameter_and_optimizer_bytes(config, mesh_shape, rules)
  acts = activation_bytes(config, mesh_shape, batch_size, inputs_length, targets_length,
                          num_microbatches)
  gathered = fsdp_gathered_bytes(config, mesh_shape) if fsdp else 0
  return MemoryPlan(params=params, optimizer_state=opt, gradients=params, activations=acts,
                    num_params=num, fsdp_gathered=gathered,
                    compute_copy=compute_copy_bytes(config, params))

