"""EncoderDecoderModel: the T5 network plus its loss, scoring and prediction.

Batches are dicts of int32 arrays as seqio's EncDecFeatureConverter makes them:
encoder_input_tokens [B, Li], decoder_input_tokens / decoder_target_tokens /
decoder_loss_weights [B, Lt], and, when packed, encoder_segment_ids, decoder_segment_ids
(and positions, which T5's relative attention does not need).
"""

from typing import Optional

import gin
import jax
import jax.numpy as jnp

from t5x_lite import network

NORMALIZERS = ("NUM_REAL_TARGET_TOKENS", "NONE")


def cross_entropy_with_z_loss(logits, targets, weights, *, z_loss=1e-4, label_smoothing=0.0):
  """Token cross-entropy with T5's z-loss and optional label smoothing.

  Label smoothing puts 1 - label_smoothing on the target and spreads the rest uniformly
  over the other ids; its minimum-entropy constant is subtracted (as in t5x) so that a
  perfect prediction scores 0.

  Args:
    logits: [B, L, V] (any float dtype; computed in float32).
    targets: int [B, L].
    weights: [B, L] loss weights (0 on padding).
    z_loss: coefficient of log(Z)^2, which keeps the softmax normaliser near 1.
    label_smoothing: in [0, 1).

  Returns:
    (loss_sum, z_loss_sum) over weighted tokens; loss_sum includes z-loss.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  if label_smoothing > 0.0:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    mean_logit_others = (jnp.sum(logits, axis=-1) - target_logit) / (vocab - 1)
    smoothed = confidence * nll + label_smoothing * (log_z - mean_logit_others)
    # Entropy of the smoothed target distribution: the loss's lower bound.
    normalizing_constant = -(confidence * jnp.log(confidence) +
                             (vocab - 1) * low * jnp.log(low + 1e-20))
    nll = smoothed - normalizing_constant
  z_term = z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  return jnp.sum((nll + z_term) * weights), jnp.sum(z_term * weights)


@gin.configurable
class EncoderDecoderModel:
  """T5 model = network + loss; what the trainer, evaluator and decoders call.

  Attributes (gin):
    config: the T5Config (bound by a gin/models/*.gin file).
    z_loss: z-loss coefficient (1e-4 in T5).
    label_smoothing: label smoothing (0.0 in T5).
    loss_normalizing_factor: "NUM_REAL_TARGET_TOKENS" (mean over real target tokens of the
      whole batch, microbatches included), "NONE" (sum), or a number to divide the sum by
      (t5x pretraining uses a constant, e.g. 233472).
  """

  def __init__(self, config: Optional[network.T5Config] = None, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS"):
    self.config = config if config is not None else network.T5Config()
    self.module = network.Transformer(self.config)
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    if isinstance(loss_normalizing_factor, str) and loss_normalizing_factor not in NORMALIZERS:
      raise ValueError(f"EncoderDecoderModel.loss_normalizing_factor="
                       f"{loss_normalizing_factor!r}: use one of {NORMALIZERS} or a number.")
    self.loss_normalizing_factor = loss_normalizing_factor

  def init(self, rng, input_shapes):
    """Boxed (logically partitioned) params from shapes {"encoder_input_tokens": (B, Li), ...}."""
    enc = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
    dec = jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32)
    return self.module.init(rng, enc, dec, dec)["params"]

  def logits(self, params, batch, *, dropout_rng=None):
    """Teacher-forced logits [B, Lt, V]; dropout is on when dropout_rng is given."""
    deterministic = dropout_rng is None
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        batch["decoder_target_tokens"], batch.get("encoder_segment_ids"),
        batch.get("decoder_segment_ids"), deterministic=deterministic,
        rngs=None if deterministic else {"dropout": dropout_rng})

  def loss_weights(self, batch):
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = batch["decoder_target_tokens"] > 0
    return weights.astype(jnp.float32)

  def normalizer(self, num_real_tokens):
    """What the summed loss is divided by, given the batch's real target-token count."""
    if self.loss_normalizing_factor == "NUM_REAL_TARGET_TOKENS":
      return jnp.maximum(num_real_tokens, 1.0)
    if self.loss_normalizing_factor == "NONE":
      return 1.0
    return float(self.loss_normalizing_factor)

  def loss_fn(self, params, batch, dropout_rng=None, normalizer=None):
    """Normalised loss and summed metrics of one (micro)batch.

    Args:
      normalizer: divide sums by this (the whole batch's factor when microbatching);
        None computes it from this batch.

    Returns:
      (loss, metrics) where metrics holds sums: loss, z_loss, correct tokens, tokens.
    """
    logits = self.logits(params, batch, dropout_rng=dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = self.loss_weights(batch)
    loss_sum, z_sum = cross_entropy_with_z_loss(
        logits, targets, weights, z_loss=self.z_loss, label_smoothing=self.label_smoothing)
    if normalizer is None:
      normalizer = self.normalizer(jnp.sum(weights))
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
    metrics = {"loss_sum": loss_sum, "z_loss_sum": z_sum, "correct": correct,
               "num_tokens": jnp.sum(weights)}
    return loss_sum / normalizer, metrics

  def score_batch(self, params, batch):
    """Per-example log-likelihood of the targets: sum of log p(target token) [B].

    Weighted by decoder_loss_weights (real target tokens); unpacked batches only.
    """
    logits = self.logits(params, batch).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_log_probs = jnp.take_along_axis(
        log_probs, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
    return jnp.sum(token_log_probs * self.loss_weights(batch), axis=-1)
