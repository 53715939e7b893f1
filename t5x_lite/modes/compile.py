"""Run mode `compile`: ahead-of-time compilation for a TPU topology, on any host (no TPU needed).

libtpu (the `[tpu]` extra) lets JAX describe a TPU slice (`jax.experimental.topologies`) and
compile a sharded program for it on a CPU host. This builds the sharded train step (and the
decode step) of a model for the named topology, compiles them, and prints per chip: XLA's
argument, output, temporary and total bytes against the chip's HBM, XLA's FLOPs
(`cost_analysis()`), the step time at the chip's peak FLOP/s (a roofline bound), and the MFU a
run could at most reach at that step time. The `decode_token` step is one decoded token (the
decoder on the KV cache, donated): its arguments are the parameters and the cache, and its
roofline also reads them once from HBM at the chip's bandwidth.

  python -m t5x_lite.main --run_mode=compile --gin_file=models/t5_1_1/xxl.gin \
      --gin_file=runs/compile.gin --gin.TOPOLOGY=v5e:16x16 --gin.BATCH_SIZE=256 \
      --gin.T5Config.vocab_size=32128 --gin.T5Config.dtype=bfloat16 \
      --gin.T5Config.scan_layers=True --gin.T5Config.remat_policy=full \
      --gin.Partitioner.num_partitions=8

(`python -m t5x_lite.tools.aot_compile --topology=...` is the same with flags.) Topology names
are libtpu's: `v4:4x4x8` (v4-256: 128 chips), `v5e:16x16` (v5e-256), `v5p:4x4x8` (v5p-256:
128 chips), `v5p:4x8x8` (v5p-512: 256 chips), `v6e:16x16`. v4 is compiled in megacore mode
(one device per chip, as v4 pods run).
"""

import dataclasses
import importlib.util
import math
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from t5x_lite.training import trainer as trainer_lib

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip: the HBM a program may use, the peak dense bf16 FLOP/s and HBM bytes/s.

  hbm_bytes is what XLA lets one program use (less than the nominal 16/32/95 GiB): the
  "available HBM" of its RESOURCE_EXHAUSTED message, libtpu 0.0.42.1. Peak FLOP/s and HBM
  bandwidth from Google Cloud's TPU system-architecture pages.
  """
  name: str
  hbm_bytes: int
  peak_flops: float
  hbm_bandwidth: float  # bytes/s


# By jax's device_kind.
CHIPS = {
    "TPU v4": Chip("v4", int(30.75 * GiB), 275e12, 1200e9),
    "TPU v5 lite": Chip("v5e", int(15.75 * GiB), 197e12, 819e9),
    "TPU v5": Chip("v5p", int(95.74 * GiB), 459e12, 2765e9),
    "TPU v6 lite": Chip("v6e", int(31.25 * GiB), 918e12, 1640e9),
}


class ConfigError(ValueError):
  """A setting that cannot work on the topology; its message names what to change."""


def _check_libtpu():
  if importlib.util.find_spec("libtpu") is None:
    raise ConfigError("Compiling for a TPU topology needs libtpu: pip install "
                      "'t5x_lite[tpu]' (or 'libtpu==0.0.42.*', the version jax 0.10.2 wants).")


def get_topology(topology: str, num_slices: int = 1):
  """The devices of a TPU topology such as 'v5e:2x2' (no TPU needed).

  Args:
    topology: libtpu's name, '<generation>:<AxB[xC]>' (v4, v5e, v5p, v6e).
    num_slices: slices of that topology (multi-slice, over DCN).

  Returns:
    list of jax devices (platform 'tpu', not addressable: compile only).
  """
  _check_libtpu()
  generation, _, dims = topology.partition(":")
  try:
    shape = [int(d) for d in dims.split("x")]
  except ValueError:
    shape = []
  if not shape or generation not in ("v4", "v5e", "v5p", "v6e"):
    raise ConfigError(f"--topology={topology!r}: use '<v4|v5e|v5p|v6e>:<AxB[xC]>', e.g. "
                      "'v5e:16x16' or 'v4:4x4x8'.")
  # Another process (a test run, a notebook) may hold libtpu's lock file; compiling for a
  # described topology does not touch a TPU, so it needs no exclusive access.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # A host drives at most 2x2 chips; smaller slices fit on one host.
  bounds = tuple(min(d, 2) for d in shape[:2]) + (1,)
  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=topology,
        chip_config_name="megacore" if generation == "v4" else "default",
        chips_per_host_bounds=bounds, num_slices=num_slices)
  except Exception as e:  # pylint: disable=broad-except  # libtpu's errors are untyped
    raise ConfigError(f"libtpu cannot describe --topology={topology!r}: "
                      f"{str(e).splitlines()[0]}") from e
  return list(desc.devices)


def chip_of(device) -> Chip:
  try:
    return CHIPS[device.device_kind]
  except KeyError:
    raise ConfigError(f"No chip figures for device kind {device.device_kind!r}; add it to "
                      "t5x_lite.modes.compile.CHIPS.") from None


def _decoder_token_flops(config, inputs: int, targets: int) -> float:
  """Forward FLOPs of one decoder token: self q,k,v,o + cross q,o + MLP per layer, attention
  over `targets` self keys and `inputs` cross keys, and the output layer."""
  hd = config.num_heads * config.d_kv
  mlp = (3 if config.feed_forward == "gated-gelu" else 2) * config.d_model * config.d_ff
  per_layer = 2 * (6 * config.d_model * hd + mlp) + 4 * targets * hd + 4 * inputs * hd
  return config.num_decoder_layers * per_layer + 2 * config.d_model * config.vocab_size


def train_step_flops(config, batch: int, inputs: int, targets: int) -> float:
  """Model FLOPs of one train step (forward + backward = 3x forward), all chips together.

  Matmuls only (2 FLOPs per multiply-add): per token, each layer's projections, attention's
  q.k and p.v over every key (no causal halving: the xla impl computes them all), and the
  output layer. Remat recomputation is not model FLOPs: it is what MFU leaves out.
  """
  hd = config.num_heads * config.d_kv
  mlp = (3 if config.feed_forward == "gated-gelu" else 2) * config.d_model * config.d_ff
  enc_token = config.num_encoder_layers * (2 * (4 * config.d_model * hd + mlp) + 4 * inputs * hd)
  # Cross-attention keys/values: once per encoder token and decoder layer.
  cross_kv = config.num_decoder_layers * 2 * 2 * config.d_model * hd
  forward = batch * (inputs * (enc_token + cross_kv)
                     + targets * _decoder_token_flops(config, inputs, targets))
  return 3.0 * forward


def decode_token_flops(config, rows: int, inputs: int, cache_length: int) -> float:
  """Model FLOPs of one decoded token for `rows` sequences (batch x beams), all chips: the
  decoder's forward on one token per row, its self-attention over the whole cache
  (`cache_length` keys: the xla impl reads every slot, the mask hides the empty ones)."""
  return float(rows * _decoder_token_flops(config, inputs, cache_length))


@dataclasses.dataclass
class StepReport:
  """XLA's per-chip figures of one compiled step."""
  name: str
  chip: Chip
  num_chips: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  flops: float             # XLA's, per chip
  bytes_accessed: float    # XLA's, per chip
  compile_seconds: float
  model_flops: Optional[float] = None  # per chip
  # Bytes each chip must read from HBM per step (decode_token: its parameters and cache), for
  # a bandwidth bound on the step time; None: FLOPs only.
  min_hbm_bytes: Optional[int] = None

  @property
  def total_bytes(self) -> int:
    """Peak per chip: arguments + outputs (less the donated buffers they reuse) + temps."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.chip.hbm_bytes

  @property
  def loop_undercounted(self) -> bool:
    """XLA's cost analysis counts a loop body once (not once per iteration): with
    scan_layers, microbatches or a decode loop its FLOPs can fall below the model's."""
    return self.model_flops is not None and self.flops < self.model_flops

  @property
  def flops_seconds(self) -> float:
    """Step time at the chip's peak FLOP/s, for XLA's FLOPs (the model's where XLA counted a
    loop body once and so reports fewer)."""
    return max(self.flops, self.model_flops or 0.0) / self.chip.peak_flops

  @property
  def hbm_seconds(self) -> float:
    """Time to read min_hbm_bytes once at the chip's HBM bandwidth (0 without them)."""
    return (self.min_hbm_bytes or 0) / self.chip.hbm_bandwidth

  @property
  def roofline_seconds(self) -> float:
    """The step can be no faster than its FLOPs at peak nor its HBM reads at full bandwidth."""
    return max(self.flops_seconds, self.hbm_seconds)

  @property
  def max_mfu(self) -> Optional[float]:
    """Model FLOPs / (peak FLOP/s x roofline step time): the MFU no real run can exceed."""
    if self.model_flops is None or self.roofline_seconds <= 0:
      return None
    return self.model_flops / (self.chip.peak_flops * self.roofline_seconds)

  def lines(self) -> list:
    # MiB below a GiB: a small model's figures would all read 0.00 GiB.
    g = lambda b: f"{b / GiB:.2f} GiB" if abs(b) >= GiB else f"{b / 2**20:.2f} MiB"
    margin = self.chip.hbm_bytes - self.total_bytes
    verdict = (f"fits ({g(margin)} to spare)" if margin >= 0
               else f"does NOT fit ({g(-margin)} over)")
    out = [f"{self.name} step on {self.num_chips} x {self.chip.name} "
           f"(compiled in {self.compile_seconds:.1f} s), per chip:",
           f"  arguments {g(self.argument_bytes)}, outputs {g(self.output_bytes)} "
           f"(aliased {g(self.alias_bytes)}), temporaries {g(self.temp_bytes)}",
           f"  total {g(self.total_bytes)} of {g(self.chip.hbm_bytes)} HBM: {verdict}",
           f"  XLA FLOPs {self.flops:.4g}, bytes accessed {self.bytes_accessed:.4g}"
           + (" (a loop body counted once: scan_layers, microbatches or decoding)"
              if self.loop_undercounted or self.model_flops is None else "")]
    if self.model_flops is not None:
      source = "the model's FLOPs" if self.loop_undercounted else "XLA's FLOPs"
      out.append(f"  model FLOPs {self.model_flops:.4g}")
      if self.min_hbm_bytes is not None:
        bound = "HBM" if self.hbm_seconds > self.flops_seconds else "FLOPs"
        out.append(f"  roofline {self.roofline_seconds * 1e3:.3f} ms per token ({bound}-bound: "
                   f"{g(self.min_hbm_bytes)} of parameters and cache at "
                   f"{self.chip.hbm_bandwidth / 1e9:.0f} GB/s take {self.hbm_seconds * 1e3:.3f} "
                   f"ms, {source} at {self.chip.peak_flops / 1e12:.0f} TFLOP/s "
                   f"{self.flops_seconds * 1e3:.3f} ms): MFU at most {100 * self.max_mfu:.1f}%")
      else:
        out.append(f"  roofline step time {self.roofline_seconds * 1e3:.2f} ms ({source} at "
                   f"{self.chip.peak_flops / 1e12:.0f} TFLOP/s): MFU at most "
                   f"{100 * self.max_mfu:.1f}%")
    return out


def _report(name, compiled, devices, seconds, model_flops=None,
            min_hbm_bytes=None) -> StepReport:
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return StepReport(
      name=name, chip=chip_of(devices[0]), num_chips=len(devices),
      argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
      alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
      flops=float(cost.get("flops", 0.0)), bytes_accessed=float(cost.get("bytes accessed", 0.0)),
      compile_seconds=seconds, model_flops=model_flops, min_hbm_bytes=min_hbm_bytes)


def check_batch(batch: int, partitioner, num_microbatches: int, topology: str) -> None:
  """One clear line when the batch cannot be split over the data-parallel chips."""
  data = partitioner.data_parallel_size
  if batch % (data * num_microbatches):
    raise ConfigError(
        f"BATCH_SIZE={batch} does not divide over {data} data-parallel chips x "
        f"{num_microbatches} microbatch(es) (mesh {dict(partitioner.mesh.shape)} on "
        f"{topology}): use a multiple of {data * num_microbatches} (gin BATCH_SIZE), or change "
        "Partitioner.num_partitions / mesh_shape or compile.num_microbatches.")


def batch_shapes(batch: int, inputs: int, targets: int, pack: bool) -> Mapping[str, tuple]:
  """The train batch's features and shapes (packed batches add segment ids and positions)."""
  shapes = {"encoder_input_tokens": (batch, inputs), "decoder_input_tokens": (batch, targets),
            "decoder_target_tokens": (batch, targets), "decoder_loss_weights": (batch, targets)}
  if pack:
    shapes.update(encoder_segment_ids=(batch, inputs), decoder_segment_ids=(batch, targets),
                  encoder_positions=(batch, inputs), decoder_positions=(batch, targets))
  return shapes


def compile_train_step(trainer, batch: int, inputs: int, targets: int, pack: bool = True):
  """(jax Compiled, seconds): the sharded train step, as Trainer.train_step jits it."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  partitioner = trainer.partitioner
  shapes = batch_shapes(batch, inputs, targets, pack)
  state = trainer.abstract_state(shapes)
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  batch_sharding = partitioner.batch_sharding()
  batch_spec = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=batch_sharding)
                for k, v in shapes.items()}
  start = time.perf_counter()
  with partitioner.context():
    # The same jit as Trainer.train_step: state donated, metrics replicated.
    step = jax.jit(trainer._train_step_fn,  # pylint: disable=protected-access
                   out_shardings=(shardings, partitioner.sharding(jax.sharding.PartitionSpec())),
                   donate_argnums=(0,))
    compiled = step.lower(state, batch_spec).compile()
  return compiled, time.perf_counter() - start


def compile_decode_step(model, partitioner, batch: int, inputs: int, targets: int):
  """(jax Compiled, seconds): model.predict_batch (encode + the whole decode loop, the
  model's DecodingSettings) over a batch sharded like training's."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  shapes = {"encoder_input_tokens": (batch, inputs), "decoder_input_tokens": (batch, targets)}
  params = trainer_lib.abstract_params(model, partitioner, shapes)
  batch_sharding = partitioner.batch_sharding()
  batch_spec = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=batch_sharding)
                for k, v in shapes.items()}
  start = time.perf_counter()
  with partitioner.context():
    compiled = jax.jit(model.predict_batch).lower(params, batch_spec).compile()
  return compiled, time.perf_counter() - start


def _decode_rows(model) -> int:
  """Decoder rows per input: beams (beam search) or samples (num_decodes)."""
  settings = model.decoding
  if settings.method == "beam":
    return settings.num_beams or max(settings.num_decodes, 4)
  return settings.num_decodes


def compile_decode_token_step(model, partitioner, batch: int, inputs: int, targets: int):
  """(jax Compiled, seconds): one decoded token, as each iteration of predict_batch's loop
  runs it: the decoder on one token per row [batch x beams, 1] against the KV cache (self
  keys/values for `targets` positions per row, cross keys/values once per input), giving the
  logits and the updated cache. The cache is donated (updated in place, as in the loop) and
  sharded by the rules' activation axes (batch over the data axes, heads over 'model'), as
  the model's constraints shard it inside predict_batch; beam search also reorders the
  self-attention rows of each input (decoding.gather_cache_beams) each step."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from t5x_lite.model import decoding  # pylint: disable=g-import-not-at-top
  config, module = model.config, model.module
  copies = _decode_rows(model)
  beam = model.decoding.method == "beam"
  shapes = {"encoder_input_tokens": (batch, inputs), "decoder_input_tokens": (batch, targets)}
  params = trainer_lib.abstract_params(model, partitioner, shapes)
  tokens_spec = jax.ShapeDtypeStruct((batch, inputs), jnp.int32,
                                     sharding=partitioner.batch_sharding())

  def encoded(rows):
    # Read only for its shape: the cross-attention keys/values are in the cache.
    return jnp.zeros((rows, inputs, config.d_model), config.dtype)

  cache = jax.eval_shape(
      lambda p, t: decoding.init_cache(module, p, encoded(batch), t, targets, copies),
      params, tokens_spec)
  heads = ("activation_batch", "activation_heads", "activation_length", "activation_kv")

  def cache_sharding(x):
    if x.ndim < len(heads):  # cache_index
      return partitioner.sharding(jax.sharding.PartitionSpec())
    return partitioner.logical_sharding((None,) * (x.ndim - len(heads)) + heads)

  cache_shardings = jax.tree_util.tree_map(cache_sharding, cache)
  cache = trainer_lib.with_shardings(cache, cache_shardings)
  rows = batch * copies
  rows_sharding = partitioner.batch_sharding()
  step_spec = jax.ShapeDtypeStruct((rows, 1), jnp.int32, sharding=rows_sharding)
  order_spec = jax.ShapeDtypeStruct((batch, copies), jnp.int32, sharding=rows_sharding)

  def token_step(params, cache, encoder_input_tokens, tokens, order):
    if beam:
      cache = decoding.gather_cache_beams(cache, order, config.scan_layers)
    step = decoding.make_tokens_to_logits(module, params, encoded(batch), encoder_input_tokens)
    return step(tokens, cache)

  start = time.perf_counter()
  with partitioner.context():
    # keep_unused: the encoder's parameters stay in HBM while decoding, unread by this step.
    compiled = jax.jit(token_step, out_shardings=(rows_sharding, cache_shardings),
                       donate_argnums=(1,), keep_unused=True).lower(
                           params, cache, tokens_spec, step_spec, order_spec).compile()
  return compiled, time.perf_counter() - start


def unread_bytes_per_chip(model, partitioner, batch: int, inputs: int, targets: int) -> int:
  """Bytes per chip of what a decoded token does not read: the encoder's parameters (the
  embedding is shared with the decoder) and the token arrays (unpadded)."""
  import jax  # pylint: disable=g-import-not-at-top
  shapes = {"encoder_input_tokens": (batch, inputs), "decoder_input_tokens": (batch, targets)}
  total = 0
  params = trainer_lib.abstract_params(model, partitioner, shapes)
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    if any(getattr(k, "key", None) == "encoder" for k in path):
      total += math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
  rows = batch * _decode_rows(model)
  return total + 4 * (batch * inputs + 2 * rows) // partitioner.data_parallel_size


def check_model(config) -> None:
  """Settings that cannot compile for TPU, as one line before any tracing."""
  if config.attention_impl == "pallas":
    from t5x_lite.model.kernels import flash  # pylint: disable=g-import-not-at-top
    raise ConfigError(flash.TPU_UNSUPPORTED)
  if config.attention_impl == "cudnn":
    raise ConfigError("attention_impl='cudnn' is GPU only; set T5Config.attention_impl = 'xla' "
                      "(gin) on TPU.")


def make_partitioner(factory, devices, topology: str, **kwargs):
  """factory(devices=devices, **kwargs) (a Partitioner); one clear line when its mesh does
  not match the topology's chip count."""
  try:
    return factory(devices=devices, **kwargs)
  except ValueError as e:
    raise ConfigError(f"{topology} has {len(devices)} chips: {e}") from None


def compile_or_none(name, compile_fn, *args):
  """(Compiled, seconds), or (None, XLA's one-line reason) when the step does not fit: XLA
  refuses to compile a program whose buffers exceed the chip's HBM."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    return compile_fn(*args)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return None, f"{name} step does NOT fit: {str(e).splitlines()[0]}"


STEPS = ("train", "decode", "decode_token")
DEFAULT_STEPS = ("train", "decode")


def compile_steps(model, optimizer, partitioner, batch: int, inputs: int, targets: int,
                  steps: Sequence[str] = ("train",), pack: bool = True,
                  num_microbatches: int = 1) -> list:
  """Compiles the requested steps ("train", "decode", "decode_token") on the partitioner's
  mesh: a StepReport each, or the line saying why XLA found that it does not fit in HBM."""
  devices = list(partitioner.mesh.devices.flat)
  reports = []
  if "train" in steps:
    trainer = trainer_lib.Trainer(model, optimizer, partitioner, num_microbatches)
    compiled, seconds = compile_or_none("train", compile_train_step, trainer, batch, inputs,
                                         targets, pack)
    flops = train_step_flops(model.config, batch, inputs, targets) / len(devices)
    reports.append(seconds if compiled is None
                   else _report("train", compiled, devices, seconds, flops))
  if "decode" in steps:
    compiled, seconds = compile_or_none("decode", compile_decode_step, model, partitioner,
                                         batch, inputs, targets)
    reports.append(seconds if compiled is None else _report("decode", compiled, devices, seconds))
  if "decode_token" in steps:
    compiled, seconds = compile_or_none("decode_token", compile_decode_token_step, model,
                                         partitioner, batch, inputs, targets)
    rows = batch * _decode_rows(model)
    flops = decode_token_flops(model.config, rows, inputs, targets) / len(devices)
    # The decoder's parameters and the whole cache are read once per token: the arguments
    # less the encoder and the tokens.
    unread = unread_bytes_per_chip(model, partitioner, batch, inputs, targets)
    reports.append(seconds if compiled is None else _report(
        "decode_token", compiled, devices, seconds, flops,
        min_hbm_bytes=compiled.memory_analysis().argument_size_in_bytes - unread))
  return reports


def compile_for_topology(topology: str, model, optimizer, partitioner: Callable[..., Any],
                         batch_size: int, task_feature_lengths: Mapping[str, int],
                         steps: Sequence[str] = DEFAULT_STEPS, pack: bool = True,
                         num_microbatches: int = 1, num_slices: int = 1,
                         print_fn: Callable[[str], None] = print) -> list:
  """The run mode: compiles the model's steps for `topology` and prints XLA's per-chip figures.

  Every setting is checked before anything is traced; a wrong one stops with one line that
  names what to change (ConfigError).

  Args:
    topology: libtpu's name, e.g. 'v5e:16x16' (gin TOPOLOGY).
    model: an EncoderDecoderModel (gin MODEL).
    optimizer: the training run's optimizer (its state is part of the train step's arguments).
    partitioner: a Partitioner factory (gin `@Partitioner`, not called): it is given the
      topology's devices.
    batch_size: rows of the global batch (gin BATCH_SIZE).
    task_feature_lengths: {'inputs': encoder length, 'targets': decoder length}.
    steps: which of "train", "decode" (predict_batch: encoder and the whole decoding loop)
      and "decode_token" (one decoded token on the KV cache) to compile.
    pack: train batches with segment ids and positions (packed, as the train run feeds them).
    num_microbatches: the training run's train.num_microbatches.
    num_slices: slices of the topology (multi-slice, over DCN).
    print_fn: where the report lines go.

  Returns:
    A StepReport per step (or the one-line reason XLA gave that it does not fit).

  Raises:
    ConfigError: a step name, lengths, the model kind, the mesh, the batch or the attention
      implementation that cannot work on the topology.
  """
  unknown = [s for s in steps if s not in STEPS]
  if unknown or not steps:
    raise ConfigError(f"compile.steps={tuple(steps)!r}: use one or more of {STEPS}.")
  if not {"inputs", "targets"} <= set(task_feature_lengths):
    raise ConfigError(f"TASK_FEATURE_LENGTHS={dict(task_feature_lengths)!r} needs 'inputs' and "
                      "'targets' (the encoder and decoder lengths to compile for).")
  # The batches it traces are the encoder-decoder's (inputs and targets as tokens).
  if tuple(model.token_features) != ("inputs", "targets"):
    raise ConfigError(f"The compile run mode compiles an encoder-decoder model (token features "
                      f"inputs and targets); MODEL is a {type(model).__name__}: give a model "
                      "file (models/...) first.")
  check_model(model.config)
  devices = get_topology(topology, num_slices)
  partitioner = make_partitioner(partitioner, devices, topology)
  check_batch(batch_size, partitioner, num_microbatches, topology)
  inputs, targets = task_feature_lengths["inputs"], task_feature_lengths["targets"]
  reports = compile_steps(model, optimizer, partitioner, batch_size, inputs, targets, steps,
                          pack, num_microbatches)
  print_fn(f"{topology}: batch {batch_size}, lengths {inputs}/{targets}, "
           f"mesh {dict(partitioner.mesh.shape)}")
  for report in reports:
    print_fn(report if isinstance(report, str) else "\n".join(report.lines()))
  return reports
