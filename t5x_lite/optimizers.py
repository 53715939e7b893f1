"""Adafactor (optax) as T5 trains with it, and learning-rate schedules (constant by default)."""

import jax.numpy as jnp
import optax


def constant_schedule(learning_rate=1e-3):
  """Constant learning rate (t5x / Flan finetuning use 1e-3)."""
  return optax.constant_schedule(learning_rate)


def rsqrt_schedule(learning_rate=1.0, warmup_steps=10_000):
  """T5 pretraining: learning_rate / sqrt(max(step, warmup_steps)) (0.01 for 10k steps)."""
  return lambda step: learning_rate * jnp.reciprocal(
      jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps)))


def linear_decay_schedule(learning_rate=1e-3, warmup_steps=0, decay_steps=10_000, end_value=0.0):
  """Linear warmup from 0, then linear decay to end_value over decay_steps."""
  return optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
       optax.linear_schedule(learning_rate, end_value, decay_steps)], [warmup_steps])


def cosine_decay_schedule(learning_rate=1e-3, warmup_steps=0, decay_steps=10_000, end_value=0.0):
  """Linear warmup from 0, then cosine decay to end_value (nanoT5's schedule)."""
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                            warmup_steps + decay_steps, end_value)


def adafactor(learning_rate_schedule=None, decay_rate=0.8, clipping_threshold=1.0,
              multiply_by_parameter_scale=True, min_dim_size_to_factor=128, factored=True,
              momentum=None, weight_decay_rate=None, epsilon=1e-30):
  """T5's Adafactor: factored second moments, no momentum, update clipping 1.0.

  Args:
    learning_rate_schedule: a schedule (step -> learning rate); None gives the constant
      schedule. gin: e.g. `adafactor.learning_rate_schedule = @rsqrt_schedule()`.
    decay_rate: second-moment decay exponent (0.8 in T5: beta2 = 1 - step**-0.8).
    clipping_threshold: clip updates to this RMS (1.0).
    multiply_by_parameter_scale: scale updates by the parameter RMS (relative step).
    min_dim_size_to_factor: dims below this are not factored (128).
    factored: factor second moments of matrices into row and column statistics.
    momentum: None for no first moment (T5); a float (e.g. 0.9) to add one.
    weight_decay_rate: optional decoupled weight decay.
    epsilon: regulariser added to squared gradients (1e-30).

  Returns:
    (optax.GradientTransformation, schedule).
  """
  if learning_rate_schedule is None:
    learning_rate_schedule = constant_schedule()
  tx = optax.adafactor(
      learning_rate=learning_rate_schedule, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum,
      weight_decay_rate=weight_decay_rate, eps=epsilon, factored=factored)
  return tx, learning_rate_schedule
