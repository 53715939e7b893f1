"""t5x_lite's T5 network against HF transformers' PyTorch T5 (the numerics reference).

Every case builds a random-weight HF T5ForConditionalGeneration (float32, eval mode), saves
it with save_pretrained (safetensors) or as a pytorch_model.bin, imports it with
t5x_lite.interop.hf_checkpoint, and compares logits on padded random batches.

Logits are compared at non-padded decoder positions only: t5x_lite masks attention by
segment ids, so a padded query attends only to padded keys (its row never becomes empty),
while HF lets padded queries attend to the real keys. Padded positions are outputs nobody
uses (the loss and decoding ignore them); real positions see the same keys in both.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_utils
from t5x_lite.interop import hf_checkpoint
from t5x_lite.interop import hf_param_layout
from t5x_lite.model import kernels, network

# (name, T5Config fields): both families, num_heads * d_kv != d_model, unequal depths, and
# non-default relative attention settings with sequences longer than max_distance.
SHAPES = {
    "relu_tied": dict(vocab_size=96, d_model=32, d_ff=48, d_kv=12, num_heads=3,
                      num_encoder_layers=3, num_decoder_layers=2),
    "gated_untied": dict(vocab_size=80, d_model=24, d_ff=40, d_kv=8, num_heads=4,
                         num_encoder_layers=2, num_decoder_layers=3, feed_forward="gated-gelu",
                         tie_word_embeddings=False),
    "gated_untied_buckets": dict(vocab_size=64, d_model=16, d_ff=32, d_kv=8, num_heads=2,
                                 num_encoder_layers=1, num_decoder_layers=2,
                                 feed_forward="gated-gelu", tie_word_embeddings=False,
                                 relative_attention_num_buckets=16,
                                 relative_attention_max_distance=12),
}
# (shape, file format, scan_layers): every shape with both formats and both layouts overall.
CASES = [("relu_tied", "safetensors", False), ("relu_tied", "bin", True),
         ("gated_untied", "safetensors", True), ("gated_untied", "bin", False),
         ("gated_untied_buckets", "safetensors", False), ("gated_untied_buckets", "bin", True)]


def _save(model, directory, fmt):
  if fmt == "safetensors":
    model.save_pretrained(directory)
  else:  # HF's legacy format: a torch state dict (with the tied aliases), read weights_only.
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))


@pytest.mark.parametrize("shape,fmt,scan", CASES)
def test_logits_match_hf(shape, fmt, scan, tmp_path):
  config = network.T5Config(dropout_rate=0.0, **SHAPES[shape])
  model = hf_utils.hf_model(config)
  _save(model, str(tmp_path), fmt)
  assert os.path.exists(tmp_path / ("model.safetensors" if fmt == "safetensors"
                                    else "pytorch_model.bin"))

  loaded_config, params = hf_checkpoint.load_hf_checkpoint(str(tmp_path), dropout_rate=0.0,
                                                     scan_layers=scan)
  assert loaded_config == network.T5Config(dropout_rate=0.0, scan_layers=scan, **SHAPES[shape])
  if scan:
    assert "layers" in params["encoder"] and "layers_0" not in params["encoder"]

  long = shape == "gated_untied_buckets"  # longer than max_distance: exercises the log buckets
  enc, dec_in, tgt = hf_utils.random_batch(config, enc_len=40 if long else 11,
                                           dec_len=30 if long else 7)
  expected = hf_utils.hf_logits(model, enc, dec_in, tgt)
  logits = np.asarray(network.Transformer(loaded_config).apply({"params": params}, enc, dec_in,
                                                               tgt))
  real = tgt > 0
  assert real.sum() < real.size  # the batch does have padding
  diff = np.abs(logits - expected)[real]
  assert diff.max() <= 1e-4, f"max abs diff {diff.max()}"
  assert np.abs(expected[real]).mean() > 0.1  # not trivially small logits


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 40)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_matches_hf(num_buckets, max_distance, bidirectional):
  from transformers.models.t5.modeling_t5 import T5Attention
  distances = np.arange(-300, 301)  # key position - query position
  expected = T5Attention._relative_position_bucket(  # pylint: disable=protected-access
      torch.from_numpy(distances), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance).numpy()
  got = np.asarray(kernels.relative_position_bucket(
      distances, bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance))
  np.testing.assert_array_equal(got, expected)
  # The range reaches every bucket (the positive-side bucket of distance 0 is never used:
  # distance 0 lands in bucket 0).
  assert len(np.unique(got)) == (num_buckets - 1 if bidirectional else num_buckets)


def test_remat_and_scan_give_the_same_loss_and_gradients():
  """Activation checkpointing and scan over layers change memory and compile time only."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from t5x_lite.model import encoder_decoder  # pylint: disable=g-import-not-at-top
  base = network.T5Config(vocab_size=64, d_model=32, d_ff=64, d_kv=8, num_heads=4,
                          num_encoder_layers=2, num_decoder_layers=3, dropout_rate=0.0,
                          feed_forward="gated-gelu", tie_word_embeddings=False)
  rng = np.random.RandomState(0)
  targets = rng.randint(2, 64, (2, 7)).astype(np.int32)
  batch = {"encoder_input_tokens": rng.randint(2, 64, (2, 9)).astype(np.int32),
           "decoder_input_tokens": np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], 1),
           "decoder_target_tokens": targets}
  shapes = {k: v.shape for k, v in batch.items()}
  params = nn.unbox(encoder_decoder.EncoderDecoderModel(base).init(jax.random.PRNGKey(0), shapes))

  def loss_and_grads(config, p):
    return jax.value_and_grad(lambda q: encoder_decoder.EncoderDecoderModel(config).loss_fn(q, batch)[0])(p)

  loss, grads = loss_and_grads(base, params)
  for remat in ("full", "dots"):
    other_loss, other_grads = loss_and_grads(dataclasses.replace(base, remat_policy=remat), params)
    np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                           other_grads, grads)
  scanned = dataclasses.replace(base, scan_layers=True, remat_policy="full")
  scan_loss, scan_grads = loss_and_grads(scanned, hf_param_layout.stack_layers(params, base))
  np.testing.assert_allclose(scan_loss, loss, rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         hf_param_layout.unstack_layers(scan_grads, base), grads)


# bfloat16 parity: a v1.0 (ReLU, tied) and a v1.1 (gated-GELU, untied) shape.
BF16_SHAPES = {"v1_0": SHAPES["relu_tied"], "v1_1": SHAPES["gated_untied"]}


@pytest.mark.parametrize("family", sorted(BF16_SHAPES))
def test_bfloat16_logits_are_as_close_to_float64_as_hf_bfloat16(family, tmp_path):
  """t5x_lite in bfloat16 (params float32, T5Config.dtype='bfloat16') vs HF loaded in bfloat16.

  The reference is HF's float64 forward. HF-bf16's own error against it sets the
  tolerance: t5x_lite-bf16's error may be at most 1.5x HF-bf16's (max and RMS over real
  positions), and the two bf16 models differ by at most 2x HF-bf16's RMS error (two
  independent roundings of similar size differ by about sqrt(2)x one). Measured (seed 0,
  RMS / max of the logits' error; logits' RMS 1.1 for v1.0, 4.8 for v1.1):
    v1.0: HF-bf16 8.0e-3 / 4.2e-2, t5x_lite-bf16 8.1e-3 / 4.4e-2 (float32: 2.5e-7 / 1.3e-6)
    v1.1: HF-bf16 5.9e-2 / 3.1e-1, t5x_lite-bf16 6.4e-2 / 3.8e-1 (float32: 1.6e-6 / 8.5e-6)
  transformers 5 loads every weight in bfloat16 with dtype=torch.bfloat16, `wo` included:
  T5's `_keep_in_fp32_modules = ["wo"]` applies to float16 loading only. t5x_lite casts every
  float32 parameter to bfloat16 where it is used (the same rounding), and keeps RMSNorm's
  variance, the attention softmax and the loss in float32.
  """
  config = network.T5Config(dropout_rate=0.0, **BF16_SHAPES[family])
  model = hf_utils.hf_model(config)
  model.save_pretrained(str(tmp_path))
  loaded_config, params = hf_checkpoint.load_hf_checkpoint(str(tmp_path), dropout_rate=0.0)
  enc, dec_in, tgt = hf_utils.random_batch(config, batch=4, enc_len=16, dec_len=12)
  real = tgt > 0
  reference = hf_utils.hf_logits(model.double(), enc, dec_in, tgt)[real]
  hf_bf16 = transformers.T5ForConditionalGeneration.from_pretrained(
      str(tmp_path), dtype=torch.bfloat16).eval()
  assert {p.dtype for p in hf_bf16.parameters()} == {torch.bfloat16}  # `wo` too
  hf = hf_utils.hf_logits(hf_bf16, enc, dec_in, tgt)[real]

  def ours(dtype):
    cfg = dataclasses.replace(loaded_config, dtype=dtype)
    # jit: one compilation per dtype is cheaper than eager op-by-op dispatch.
    logits = jax.jit(network.Transformer(cfg).apply)({"params": params}, enc, dec_in, tgt)
    assert logits.dtype == jnp.dtype(dtype)
    return np.asarray(logits.astype(jnp.float32))[real]

  rms = lambda x: float(np.sqrt(np.mean(np.square(x))))
  bf16, f32 = ours("bfloat16"), ours("float32")
  hf_error, our_error = hf - reference, bf16 - reference
  assert rms(our_error) <= 1.5 * rms(hf_error), (rms(our_error), rms(hf_error))
  assert np.abs(our_error).max() <= 1.5 * np.abs(hf_error).max()
  assert rms(bf16 - hf) <= 2.0 * rms(hf_error)
  # Both really ran in bfloat16 (bf16 rounding, 2**-8 relative, not float32's 2**-24).
  assert rms(hf_error) > 1e-3 * rms(reference) and rms(our_error) > 1e-3 * rms(reference)
  assert rms(f32 - reference) <= 1e-5 * rms(reference)
