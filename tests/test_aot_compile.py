"""Ahead-of-time compilation for a TPU topology (v5e:2x2) on this CPU host, through libtpu: the
`compile` run mode and its command line, t5x_lite.tools.aot_compile."""

import dataclasses
import re

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t5x_lite import main as t5x_main
from t5x_lite.model import encoder_decoder, network
from t5x_lite.modes import compile as compile_lib
from t5x_lite.parallel import partitioning
from t5x_lite.tools import aot_compile
from t5x_lite.training import memory_planner
from t5x_lite.training import optimizers
from t5x_lite.training import trainer as trainer_lib

TOPOLOGY = "v5e:2x2"


@pytest.fixture(scope="module")
def devices():
  return compile_lib.get_topology(TOPOLOGY)


def tiny_config():
  # Dims of 128 (the TPU lane width) so that parameter shards need little tile padding.
  return network.T5Config(vocab_size=256, d_model=128, d_ff=256, d_kv=64, num_heads=4,
                          num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)


def test_topology_is_four_v5e_chips_and_per_chip_figures_are_exact(devices):
  assert len(devices) == 4 and {d.platform for d in devices} == {"tpu"}
  assert compile_lib.chip_of(devices[0]).name == "v5e"
  mesh = Mesh(np.array(devices).reshape(2, 2), ("data", "model"))
  x = jax.ShapeDtypeStruct((256, 512), jnp.float32, sharding=NamedSharding(mesh, P("data")))
  w = jax.ShapeDtypeStruct((512, 128), jnp.float32,
                           sharding=NamedSharding(mesh, P(None, "model")))
  compiled = jax.jit(lambda a, b: a @ b).lower(x, w).compile()
  report = compile_lib._report("matmul", compiled, devices, 0.0)  # pylint: disable=protected-access
  # Per chip: x [128, 512] and w [512, 64] in, y [128, 64] out; a quarter of 2*M*N*K FLOPs.
  assert report.argument_bytes == 4 * (128 * 512 + 512 * 64)
  assert report.output_bytes == 4 * 128 * 64
  assert report.flops == 2 * 256 * 512 * 128 / 4


def test_train_and_decode_steps_compile_for_v5e_2x2(devices):
  cfg = tiny_config()
  partitioner = partitioning.Partitioner(mesh_shape=(2, 2), devices=devices)
  model = encoder_decoder.EncoderDecoderModel(cfg)
  trainer = trainer_lib.Trainer(model, optimizers.adafactor(), partitioner)
  batch, inputs, targets = 8, 32, 16
  compiled, _ = compile_lib.compile_train_step(trainer, batch, inputs, targets, pack=False)
  report = compile_lib._report("train", compiled, devices, 0.0,  # pylint: disable=protected-access
                               compile_lib.train_step_flops(cfg, batch, inputs, targets) / 4)
  params, opt, _ = memory_planner.parameter_and_optimizer_bytes(cfg, {"data": 2, "model": 2})
  state = params + opt
  batch_bytes = 4 * batch // 2 * (inputs + 3 * targets)  # int32, rows split over 'data'
  # The arguments are the state and the batch: exactly the planner's per-chip bytes, plus TPU
  # tile padding of the arrays smaller than a tile (norm scales, Adafactor's factored
  # second moments, the two step counters): 1.0% here.
  assert state + batch_bytes <= report.argument_bytes <= 1.02 * (state + batch_bytes)
  # The state is donated: the new state reuses its buffers, only the metrics are fresh.
  assert report.output_bytes - report.alias_bytes < 8 * 1024
  assert report.alias_bytes >= state
  assert report.total_bytes == (report.argument_bytes + report.output_bytes
                                - report.alias_bytes + report.temp_bytes)
  assert report.fits
  # XLA counts every FLOP (softmax, norms, Adafactor); the model FLOPs only the matmuls:
  # 94.4% of XLA's here. Without the backward pass the model figure would be a third.
  assert 0.85 < report.model_flops / report.flops < 1.0, (report.model_flops, report.flops)
  assert not report.loop_undercounted
  assert report.roofline_seconds == report.flops / 197e12
  assert report.max_mfu == pytest.approx(report.model_flops / report.flops, rel=1e-12)

  compiled, _ = compile_lib.compile_decode_step(model, partitioner, batch, inputs, targets)
  decode = compile_lib._report("decode", compiled, devices, 0.0)  # pylint: disable=protected-access
  # Parameters (no optimizer state) and the two token arrays; tokens and scores come out.
  tokens = 4 * batch // 2 * (inputs + targets)
  assert params + tokens <= decode.argument_bytes <= 1.02 * (params + tokens)
  assert decode.alias_bytes == 0 and decode.flops > 0

  # One decoded token (greedy: 8 rows) on the KV cache, the cache donated. Per chip (rows over
  # 'data', heads over 'model'): self keys and values [4, 2, 16, 64] (head dim minor) and cross
  # [4, 2, 64, 32] (length minor), float32, each laid out in twice its unpadded bytes (TPU
  # tiles: the self cache's 64 is padded to 128 lanes), and the scalar cache index.
  (token,) = compile_lib.compile_steps(model, None, partitioner, batch, inputs, targets,
                                       steps=("decode_token",))
  cache = 2 * (4 * 2 * targets * 128 + 4 * 2 * inputs * 128) * 4
  assert cache <= token.alias_bytes <= cache + 1024
  # Fresh outputs: the logits, float32 [4, 256] per chip (rows over 'data'), and a scalar.
  assert 4 * 256 * 4 <= token.output_bytes - token.alias_bytes <= 4 * 256 * 4 + 512
  # All parameters stay resident (the encoder's too), with the cache and the token arrays.
  assert params + cache <= token.argument_bytes <= 1.01 * (params + cache)
  # The model's matmul FLOPs are 98.3% of XLA's (which adds softmax and norms).
  assert token.model_flops == compile_lib.decode_token_flops(cfg, batch, inputs, targets) / 4
  assert 0.95 < token.model_flops / token.flops < 1.0, (token.model_flops, token.flops)
  # Reading the decoder's parameters and the cache from HBM bounds the step, not FLOPs.
  assert cache < token.min_hbm_bytes < token.argument_bytes
  assert token.roofline_seconds == token.min_hbm_bytes / 819e9 > token.flops / 197e12


@pytest.mark.parametrize("scan_layers", [False, True])
def test_beam_reorder_of_the_cache_reads_only_each_chips_own_inputs(devices, scan_layers):
  # Rows (batch x beams) are split over 'data'. A reorder by global row numbers made XLA
  # all-gather every layer's self-attention keys and values ([32 rows, 2 heads, 16, 64] per
  # chip, the whole batch); by beam within each input it is a local gather. What is left is
  # the logits' gather over the vocabulary, split over 'model': f32 [16 rows, 256].
  cfg = dataclasses.replace(tiny_config(), num_decoder_layers=2, scan_layers=scan_layers)
  partitioner = partitioning.Partitioner(mesh_shape=(2, 2), devices=devices)
  model = encoder_decoder.EncoderDecoderModel(
      cfg, decoding=encoder_decoder.DecodingSettings(method="beam", num_beams=4))
  compiled, _ = compile_lib.compile_decode_token_step(model, partitioner, 8, 32, 16)
  gathered = re.findall(r"= (\w+\[[\d,]*\])\S* all-gather\(", compiled.as_text())
  assert gathered and set(gathered) == {"f32[16,256]"}, gathered


def test_mesh_that_does_not_match_the_chip_count_is_one_line(devices):
  with pytest.raises(compile_lib.ConfigError) as e:
    compile_lib.make_partitioner(partitioning.Partitioner, devices, TOPOLOGY, mesh_shape=(8, 2))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith("v5e:2x2 has 4 chips: Partitioner.mesh_shape=(8, 2)")


def test_batch_that_does_not_divide_is_one_line(devices):
  partitioner = partitioning.Partitioner(mesh_shape=(4, 1), devices=devices)
  compile_lib.check_batch(8, partitioner, 2, TOPOLOGY)  # 8 rows = 4 chips x 2 microbatches
  with pytest.raises(compile_lib.ConfigError) as e:
    compile_lib.check_batch(6, partitioner, 1, TOPOLOGY)
  assert str(e.value).startswith("BATCH_SIZE=6 does not divide over 4 data-parallel chips x 1 "
                                 "microbatch(es)")
  assert "use a multiple of 4" in str(e.value)


def test_unknown_topology_names_the_format():
  with pytest.raises(compile_lib.ConfigError, match="'<v4|v5e|v5p|v6e>:<AxB"):
    compile_lib.get_topology("v5x:2x2")


def test_model_flops_of_one_layer_pair_by_hand():
  cfg = network.T5Config(vocab_size=100, d_model=10, d_ff=20, d_kv=3, num_heads=2,
                         num_encoder_layers=1, num_decoder_layers=1, feed_forward="relu")
  b, li, lt, hd = 2, 5, 4, 6
  enc = li * (2 * (4 * 10 * hd + 2 * 10 * 20) + 4 * li * hd)
  dec = lt * (2 * (6 * 10 * hd + 2 * 10 * 20) + 4 * lt * hd + 4 * li * hd)
  cross_kv = li * 2 * 2 * 10 * hd
  logits = lt * 2 * 10 * 100
  assert compile_lib.train_step_flops(cfg, b, li, lt) == 3 * b * (enc + dec + cross_kv + logits)
  # One decoded token per row (batch x beams): the decoder on one token, its self-attention
  # over the whole cache; cross keys/values come from the cache.
  cache = 7
  token = 2 * (6 * 10 * hd + 2 * 10 * 20) + 4 * cache * hd + 4 * li * hd + 2 * 10 * 100
  assert compile_lib.decode_token_flops(cfg, 8, li, cache) == 8 * token


def test_pallas_attention_for_tpu_stops_before_lowering_with_the_reason(devices):
  from t5x_lite.model.kernels import flash  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.array(devices[:1]).reshape(1, 1), ("data", "model"))
  rep = NamedSharding(mesh, P())
  q = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.bfloat16, sharding=rep)
  table = jax.ShapeDtypeStruct((2, 32), jnp.float32, sharding=rep)
  attend = lambda q, table: flash.flash_attention(q, q, q, bias_table=table, causal=True)
  with jax.set_mesh(mesh), pytest.raises(NotImplementedError) as e:
    jax.jit(attend).lower(q, table)
  assert str(e.value) == flash.TPU_UNSUPPORTED
  assert "T5Config.attention_impl = 'xla'" in str(e.value)
  with pytest.raises(compile_lib.ConfigError, match="does not lower to TPU"):
    compile_lib.check_model(network.T5Config(attention_impl="pallas"))
  compile_lib.check_model(network.T5Config(attention_impl="xla"))


def test_a_loop_counted_once_falls_back_to_the_model_flops():
  chip = compile_lib.CHIPS["TPU v5 lite"]
  common = dict(name="train", chip=chip, num_chips=256, argument_bytes=0, output_bytes=0,
                alias_bytes=0, temp_bytes=0, bytes_accessed=0.0, compile_seconds=0.0)
  # A scanned 24-layer stack: XLA counts the body once, far below the model's matmuls.
  scanned = compile_lib.StepReport(flops=1.0e12, model_flops=2.0e13, **common)
  assert scanned.loop_undercounted
  assert scanned.roofline_seconds == 2.0e13 / 197e12 and scanned.max_mfu == 1.0
  unrolled = compile_lib.StepReport(flops=2.5e13, model_flops=2.0e13, **common)
  assert not unrolled.loop_undercounted
  assert unrolled.roofline_seconds == 2.5e13 / 197e12 and unrolled.max_mfu == pytest.approx(0.8)


def test_a_step_that_exceeds_hbm_is_one_line_with_xla_figures(devices):
  mesh = Mesh(np.array(devices[:1]).reshape(1, 1), ("data", "model"))
  a = jax.ShapeDtypeStruct((65536, 128), jnp.float32, sharding=NamedSharding(mesh, P()))
  # [65536, 65536] float32 scores (16 GiB) and their sorted copy: 32 GiB of temporaries.
  big = lambda: (jax.jit(lambda a: jnp.sort(a @ a.T, axis=1)[:, :4]).lower(a).compile(), 0.0)
  compiled, why = compile_lib.compile_or_none("train", big)
  assert compiled is None and "\n" not in why
  assert why.startswith("train step does NOT fit: RESOURCE_EXHAUSTED")
  # 2 * 65536**2 * 4 bytes = 32.0 GiB; compile_lib.CHIPS holds the available figure.
  assert "(32.03G) exceeds available HBM (15.75G)" in why
  assert compile_lib.CHIPS["TPU v5 lite"].hbm_bytes == int(15.75 * 2**30)


# tiny_config through gin: models/tiny.gin, one layer each side, a 256-token vocabulary.
TINY_GIN = ["--gin_file=models/tiny.gin", "--gin.T5Config.vocab_size=256",
            "--gin.T5Config.d_model=128", "--gin.T5Config.d_ff=256",
            "--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1",
            "--gin.Partitioner.num_partitions=2"]
RUN_MODE = ["--run_mode=compile", *TINY_GIN, "--gin_file=runs/compile.gin",
            "--gin.TOPOLOGY=v5e:2x2", "--gin.BATCH_SIZE=8",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}",
            "--gin.compile.steps=('train',)"]


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _figures(out: str) -> list:
  """The printed per-chip lines, less the compile time (this machine's, not XLA's)."""
  return [re.sub(r" \(compiled in [0-9.]+ s\)", "", line) for line in out.splitlines()
          if line.startswith(("v5e:2x2:", "train step", "  "))]


def test_compile_run_mode_prints_the_tools_per_chip_figures(devices, capsys, clean_gin):
  del devices, clean_gin  # libtpu described once for the module
  reports = t5x_main.main(RUN_MODE)
  run_mode_out = capsys.readouterr().out
  gin.clear_config()
  assert aot_compile.main(["--topology=v5e:2x2", *TINY_GIN, "--batch=8", "--inputs=32",
                           "--targets=16", "--steps=train"]) == 0
  tool_out = capsys.readouterr().out
  (report,) = reports
  figures = _figures(run_mode_out)
  assert figures == _figures(tool_out) and len(figures) == 7, (run_mode_out, tool_out)
  assert figures[0] == "v5e:2x2: batch 8, lengths 32/16, mesh {'data': 2, 'model': 2}"
  assert figures[1] == "train step on 4 x v5e, per chip:"
  mib = lambda b: f"{b / 2**20:.2f} MiB"
  assert figures[2].startswith(f"  arguments {mib(report.argument_bytes)}, ")
  # The arguments are the state and the packed batch: the planner's exact per-chip bytes plus
  # TPU tile padding of the arrays smaller than a tile.
  cfg = tiny_config()
  params, opt, _ = memory_planner.parameter_and_optimizer_bytes(cfg, {"data": 2, "model": 2})
  batch_bytes = 4 * 8 // 2 * (3 * 32 + 5 * 16)  # int32 packed features, rows over 'data'
  assert params + opt + batch_bytes <= report.argument_bytes
  assert report.argument_bytes <= 1.02 * (params + opt + batch_bytes)
  assert report.model_flops == compile_lib.train_step_flops(cfg, 8, 32, 16) / 4
  assert report.fits


def test_compile_run_mode_stops_on_mesh_or_batch_with_one_line(devices, capsys, clean_gin):
  del devices, clean_gin
  assert t5x_main.run(RUN_MODE + ["--gin.Partitioner.mesh_shape=(8, 2)"]) == 1
  last = capsys.readouterr().err.strip().splitlines()[-1]
  gin.clear_config()
  assert last.startswith("t5x-lite: ConfigError: v5e:2x2 has 4 chips: "
                         "Partitioner.mesh_shape=(8, 2)"), last
  assert t5x_main.run(RUN_MODE + ["--gin.BATCH_SIZE=7"]) == 1
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith("t5x-lite: ConfigError: BATCH_SIZE=7 does not divide over 2 "
                         "data-parallel chips x 1 microbatch(es) (mesh {'data': 2, 'model': 2} "
                         "on v5e:2x2): use a multiple of 2"), last
