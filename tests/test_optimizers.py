"""Adafactor as T5 configures it, checked against a NumPy transcription of the algorithm."""

import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import optimizers


def reference_adafactor_steps(param, grads, lr, decay_rate=0.8, clip=1.0, eps=1e-30, eps2=1e-3):
  """Adafactor (Shazeer & Stern 2018) for one matrix with factored second moments."""
  param = param.astype(np.float64)
  v_row = np.zeros(param.shape[0])
  v_col = np.zeros(param.shape[1])
  for step, grad in enumerate(grads):
    beta2 = 1.0 - (step + 1) ** -decay_rate
    g2 = grad.astype(np.float64) ** 2 + eps
    v_row = beta2 * v_row + (1 - beta2) * g2.mean(axis=1)
    v_col = beta2 * v_col + (1 - beta2) * g2.mean(axis=0)
    v_hat = np.outer(v_row / v_row.mean(), v_col)
    update = grad / np.sqrt(v_hat)
    update = update / max(1.0, np.sqrt(np.mean(update ** 2)) / clip)
    update = update * max(np.sqrt(np.mean(param ** 2)), eps2)
    param = param - lr * update
  return param


def test_adafactor_matches_reference_for_a_factored_matrix():
  rng = np.random.RandomState(0)
  param = rng.randn(256, 128).astype(np.float32) * 0.05
  grads = [rng.randn(256, 128).astype(np.float32) for _ in range(3)]
  tx, schedule = optimizers.adafactor(optimizers.constant_schedule(1e-2))
  state = tx.init(jnp.asarray(param))
  p = jnp.asarray(param)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, p)
    p = p + updates
  expected = reference_adafactor_steps(param, grads, 1e-2)
  np.testing.assert_allclose(np.asarray(p), expected, rtol=1e-4, atol=1e-6)
  assert float(schedule(123)) == pytest.approx(1e-2)


def test_adafactor_keeps_no_momentum_and_factors_large_matrices():
  tx, _ = optimizers.adafactor()
  params = {"big": jnp.zeros((256, 512)), "small": jnp.zeros((64, 512)), "vec": jnp.zeros((512,))}
  leaves = {}
  import jax  # pylint: disable=g-import-not-at-top
  for path, leaf in jax.tree_util.tree_flatten_with_path(tx.init(params))[0]:
    leaves["/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)] = leaf.shape
  # Factored: row and column statistics only; unfactored (a dim < 128, or 1-D): full v.
  assert leaves["0/v_row/big"] == (256,) and leaves["0/v_col/big"] == (512,)
  assert leaves["0/v/big"] == (1,)
  assert leaves["0/v/small"] == (64, 512) and leaves["0/v/vec"] == (512,)
  assert not any("mu" in k for k in leaves)


def test_schedules():
  rsqrt = optimizers.rsqrt_schedule(learning_rate=1.0, warmup_steps=10_000)
  assert float(rsqrt(0)) == pytest.approx(0.01)
  assert float(rsqrt(40_000)) == pytest.approx(0.005)
  linear = optimizers.linear_decay_schedule(learning_rate=1.0, warmup_steps=10, decay_steps=100)
  assert float(linear(5)) == pytest.approx(0.5)
  assert float(linear(60)) == pytest.approx(0.5)
  cosine = optimizers.cosine_decay_schedule(learning_rate=1.0, warmup_steps=0, decay_steps=100)
  assert float(cosine(50)) == pytest.approx(0.5, abs=1e-6)
