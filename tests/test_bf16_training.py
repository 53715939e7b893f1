"""Training in bfloat16 activations (T5Config.dtype='bfloat16', params float32) follows float32.

A tiny T5 v1.1 (gated-GELU, untied) learns a copy task for 300 Adafactor steps twice, in
float32 and in bfloat16, on the same batches from the same initial parameters. The bf16 run
must stay finite (no skipped step) and end where the float32 run ends: the mean loss over the
last N steps of the two runs may differ by at most the float32 run's own step-to-step noise
(the standard deviation of one step's loss around its trend, from consecutive differences).
"""

import jax
import numpy as np

from t5x_lite.model import encoder_decoder, network
from t5x_lite.parallel import partitioning
from t5x_lite.training import optimizers, trainer

VOCAB, LENGTH, BATCH, STEPS, LAST = 64, 10, 16, 300, 50


def _batch(rng):
  """A copy task: the targets repeat the inputs (random ids 2.., then EOS 1)."""
  targets = rng.randint(2, VOCAB, (BATCH, LENGTH)).astype(np.int32)
  targets[:, -1] = 1
  inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], 1)
  return dict(encoder_input_tokens=targets.copy(), decoder_input_tokens=inputs,
              decoder_target_tokens=targets, decoder_loss_weights=np.ones_like(targets))


def _train(dtype):
  """Per-step losses [STEPS] and skipped-step flags [STEPS] of a run in `dtype` activations."""
  config = network.T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_heads=4,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0,
                            feed_forward="gated-gelu", tie_word_embeddings=False, dtype=dtype)
  t = trainer.Trainer(encoder_decoder.EncoderDecoderModel(config),
                      optimizers.adafactor(optimizers.constant_schedule(1e-2)),
                      partitioning.Partitioner())
  rng = np.random.RandomState(0)
  state = t.init_state({k: v.shape for k, v in _batch(rng).items()})
  assert {p.dtype for p in jax.tree_util.tree_leaves(state.params)} == {np.dtype("float32")}
  rng = np.random.RandomState(0)  # The same batches in both runs.
  metrics = []
  for _ in range(STEPS):
    state, step_metrics = t.train_step(state, _batch(rng))
    metrics.append((step_metrics["loss"], step_metrics["nonfinite"]))
  return (np.array([float(m[0]) for m in metrics]), np.array([float(m[1]) for m in metrics]))


def test_bfloat16_training_ends_within_float32_step_noise():
  f32, f32_skipped = _train("float32")
  bf16, bf16_skipped = _train("bfloat16")
  assert not f32_skipped.any() and not bf16_skipped.any()
  assert np.isfinite(bf16).all()
  # Both learn (random initial logits: the first losses exceed ln(62), a uniform guess's).
  assert f32[:5].mean() > 4.0 and f32[-LAST:].mean() < 0.8 * f32[:5].mean()
  noise = np.std(np.diff(f32[-LAST:])) / np.sqrt(2)
  gap = abs(bf16[-LAST:].mean() - f32[-LAST:].mean())
  assert gap <= noise, (gap, noise, f32[-LAST:].mean(), bf16[-LAST:].mean())
