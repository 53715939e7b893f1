"""Loss of EncoderDecoderModel against a NumPy transcription of T5's loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.model import encoder_decoder, network


def reference_loss(logits, targets, weights, z_loss, label_smoothing):
  logits = logits.astype(np.float64)
  vocab = logits.shape[-1]
  log_z = np.log(np.exp(logits).sum(-1))
  log_probs = logits - log_z[..., None]
  confidence, low = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
  soft = np.full(logits.shape, low)
  np.put_along_axis(soft, targets[..., None], confidence, axis=-1)
  cross_entropy = -(soft * log_probs).sum(-1)
  if label_smoothing:
    cross_entropy += confidence * np.log(confidence) + (vocab - 1) * low * np.log(low)
  per_token = cross_entropy + z_loss * log_z ** 2
  return (per_token * weights).sum(), (z_loss * log_z ** 2 * weights).sum()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_with_z_loss_matches_reference(label_smoothing):
  rng = np.random.RandomState(0)
  logits = rng.randn(3, 5, 11).astype(np.float32) * 3
  targets = rng.randint(0, 11, (3, 5))
  weights = (rng.rand(3, 5) > 0.3).astype(np.float32)
  loss, z = encoder_decoder.cross_entropy_with_z_loss(jnp.asarray(logits), jnp.asarray(targets),
                                             jnp.asarray(weights), z_loss=1e-2,
                                             label_smoothing=label_smoothing)
  expected_loss, expected_z = reference_loss(logits, targets, weights, 1e-2, label_smoothing)
  np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
  np.testing.assert_allclose(float(z), expected_z, rtol=1e-5)


def test_label_smoothing_minimum_is_zero():
  vocab, smoothing = 7, 0.2
  probs = np.full(vocab, smoothing / (vocab - 1))
  probs[3] = 1 - smoothing
  logits = jnp.asarray(np.log(probs))[None, None]  # the optimum: the smoothed distribution
  loss, _ = encoder_decoder.cross_entropy_with_z_loss(logits, jnp.array([[3]]), jnp.ones((1, 1)),
                                             z_loss=0.0, label_smoothing=smoothing)
  assert float(loss) == pytest.approx(0.0, abs=1e-5)


def test_loss_normalizing_factor_options():
  model = lambda factor: encoder_decoder.EncoderDecoderModel(network.T5Config(),
                                                    loss_normalizing_factor=factor)
  assert float(model("NUM_REAL_TARGET_TOKENS").normalizer(jnp.asarray(40.0))) == 40.0
  assert model("NONE").normalizer(40.0) == 1.0
  assert model(233472).normalizer(40.0) == 233472.0
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    model("MEAN")


def test_decoding_settings_beam_width_reaches_beam_search():
  """DecodingSettings.num_beams is the beam width (not max(num_decodes, 4))."""
  from t5x_lite.model import decoding  # pylint: disable=g-import-not-at-top
  config = network.T5Config(vocab_size=64, d_model=32, d_ff=64, d_kv=8, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  enc = np.random.RandomState(0).randint(2, 64, size=(4, 7)).astype(np.int32)
  model = encoder_decoder.EncoderDecoderModel(config, decoding=encoder_decoder.DecodingSettings(
      method="beam", num_beams=2, max_decode_length=8))
  params = model.module.init(jax.random.PRNGKey(0), enc, enc)["params"]
  _, aux = model.predict_batch_with_aux(params, {"encoder_input_tokens": enc})
  beam = lambda width: decoding.decode(model.module, params, enc, max_decode_length=8,
                                       method="beam", num_beams=width)[1][:, 0]
  np.testing.assert_allclose(aux["scores"], beam(2), rtol=1e-6)
  assert not np.allclose(aux["scores"], beam(4), rtol=1e-3)  # the width matters here
