"""EncoderDecoderModel: the T5 network plus its loss, scoring and prediction.

Batches are dicts of int32 arrays as seqio's EncDecFeatureConverter makes them:
encoder_input_tokens [B, Li], decoder_input_tokens / decoder_target_tokens /
decoder_loss_weights [B, Lt], and, when packed, encoder_segment_ids, decoder_segment_ids
(and positions, which T5's relative attention does not need).
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from t5x_lite import settings
from t5x_lite.model import beam_search
from t5x_lite.model import decoding
from t5x_lite.model import network

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


@dataclasses.dataclass(frozen=True)
class DecodingSettings:
  """How predict_batch generates (gin: `DecodingSettings.method = 'beam'`, ...).

  Attributes (gin):
    method: "greedy", "sample" (temperature / top_k / top_p) or "beam" (alpha, length_penalty).
    num_decodes: candidates per input (samples or beams); predict_batch returns the one
      with the highest score.
    num_beams: beam width of "beam" (>= num_decodes); None: max(num_decodes, 4).
    temperature, top_k, top_p: sampling settings (decoding.warp_logits).
    alpha: beam-search length-penalty exponent; length_penalty "t5x" or "hf".
    max_decode_length: generated tokens per input; None uses the batch's targets length
      (TASK_FEATURE_LENGTHS['targets']).
    seed: PRNG seed for sampling when predict_batch gets no rng.
  """
  method: str = "greedy"
  num_decodes: int = 1
  num_beams: Optional[int] = None
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  alpha: float = 0.6
  length_penalty: str = "t5x"
  max_decode_length: Optional[int] = None
  seed: int = 0

  def __post_init__(self):
    # Checked when gin builds the model, before any checkpoint is read or step compiled.
    for name, choices in (("method", decoding.METHODS),
                          ("length_penalty", beam_search.LENGTH_PENALTIES)):
      if getattr(self, name) not in choices:
        raise ValueError(f"DecodingSettings.{name}={getattr(self, name)!r}: choose one of "
                         f"{choices}.")
    settings.check_int("DecodingSettings.num_decodes", self.num_decodes)
    settings.check_int("DecodingSettings.top_k", self.top_k, minimum=0)
    if self.max_decode_length is not None:
      settings.check_int("DecodingSettings.max_decode_length", self.max_decode_length)
    for name in ("temperature", "top_p", "alpha"):
      if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name),
                                                                  (int, float)):
        raise TypeError(f"DecodingSettings.{name}={getattr(self, name)!r} must be a number.")
    if self.temperature < 0 or (self.method == "sample" and self.temperature == 0):
      raise ValueError(f"DecodingSettings.temperature={self.temperature} must be > 0 (for the "
                       "most likely token, set DecodingSettings.method = 'greedy').")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"DecodingSettings.top_p={self.top_p} must be in (0, 1] (1 keeps every "
                       "token).")


class EncoderDecoderModel:
  """T5 model = network + loss; a model_interface.Model (what the run modes call).

  Attributes (gin):
    config: the T5Config (gin: `EncoderDecoderModel.config = @T5Config()`, in the family
      files that every gin/models/*.gin file includes).
    z_loss: z-loss coefficient (1e-4 in T5).
    label_smoothing: label smoothing (0.0 in T5).
    loss_normalizing_factor: "NUM_REAL_TARGET_TOKENS" (mean over real target tokens of the
      whole batch, microbatches included), "NONE" (sum), or a number to divide the sum by
      (t5x pretraining uses a constant, e.g. 233472).
    decoding: DecodingSettings for predict_batch (default: greedy, targets length).
  """
  # model_interface.Model's attributes.
  # Task features read as tokens of the shared embedding (data.check_task checks their
  # vocabulary against config.vocab_size).
  token_features = ("inputs", "targets")
  can_pack = True
  # All parameters from INITIAL_CHECKPOINT_PATH (t5x_lite.interop.initial_params).
  initial_checkpoint_params = None
  hf_export_format = "T5ForConditionalGeneration"
  examples_heading = "Generated examples (greedy unless DecodingSettings says otherwise):"

  def __init__(self, config: network.T5Config, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
               decoding: Optional[DecodingSettings] = None):
    self.config = config
    self.decoding = decoding if decoding is not None else DecodingSettings()
    self.module = network.Transformer(self.config)
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    if isinstance(loss_normalizing_factor, str) and loss_normalizing_factor not in NORMALIZERS:
      raise ValueError(f"EncoderDecoderModel.loss_normalizing_factor="
                       f"{loss_normalizing_factor!r}: use one of {NORMALIZERS} or a number.")
    self.loss_normalizing_factor = loss_normalizing_factor

  @property
  def uses_dropout(self) -> bool:
    """Whether training needs a dropout RNG."""
    return bool(self.config.dropout_rate or self.config.attention_dropout)

  def feature_converter(self, pack: bool):
    """The seqio.FeatureConverter that makes this model's batches (module docstring)."""
    import seqio  # pylint: disable=g-import-not-at-top  # keep `import models` free of TF
    return seqio.EncDecFeatureConverter(pack=pack)

  def dummy_input_shapes(self):
    """Batch shapes for `init` (parameter shapes do not depend on them)."""
    return {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}

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
        row_ids=batch.get("row_ids"), rngs=None if deterministic else {"dropout": dropout_rng})

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

  def predict_batch_with_aux(self, params, batch, rng=None):
    """Generates targets for batch["encoder_input_tokens"] with self.decoding.

    Args:
      params: unboxed params.
      batch: needs encoder_input_tokens [B, Li]; decoder_input_tokens [B, Lt] (if present)
        sets the default decode length Lt.
      rng: PRNG key for sampling (default: PRNGKey(self.decoding.seed)), or one key per row
        (uint32 [B, 2]): a row's sample then depends only on its own key and inputs.

    Returns:
      (tokens int32 [B, L], {"scores": float32 [B]}): per input the best of num_decodes
      candidates by score (summed log-probability; beam: divided by the length penalty),
      0 after EOS.
    """
    settings = self.decoding
    length = settings.max_decode_length
    if length is None:
      if "decoder_input_tokens" not in batch:
        raise ValueError("predict_batch needs DecodingSettings.max_decode_length or a batch "
                         "with decoder_input_tokens (whose length is the targets length).")
      length = batch["decoder_input_tokens"].shape[1]
    if rng is None:
      rng = jax.random.PRNGKey(settings.seed)
    tokens, scores = decoding.decode(
        self.module, params, batch["encoder_input_tokens"], max_decode_length=length,
        method=settings.method, num_decodes=settings.num_decodes, num_beams=settings.num_beams,
        temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
        alpha=settings.alpha, length_penalty=settings.length_penalty, rng=rng)
    best = jnp.argmax(scores, axis=1)  # [B]
    rows = jnp.arange(tokens.shape[0])
    return tokens[rows, best], {"scores": scores[rows, best]}

  def predict_batch(self, params, batch, rng=None):
    """Generated tokens [B, L] (see predict_batch_with_aux)."""
    return self.predict_batch_with_aux(params, batch, rng)[0]
