"""Encoder-only models: sequence classification / regression, token classification, extractive QA.

Each model is the T5 encoder — the encoder-decoder's own `token_embedder` and `encoder`
modules, under the same parameter names — plus a small dense head (`classifier`, and
`pre_classifier_dense` if asked for). The decoder is never built, so a head model has the
encoder's parameters plus the head's: for T5-Efficient-TINY (vocab 32128) 11,372,928 +
the head against 15,570,688 for the encoder-decoder; without the shared embedding, the
encoder's layers are 43% of the two stacks' (the decoder's layers also cross-attend).

The models implement model_interface.Model, so the Trainer, the run modes and the
partitioner use them unchanged: init, loss_fn (summed metrics: loss, correct, labelled
count), normalizer, loss_weights, score_batch, predict_batch(_with_aux),
feature_converter(pack) — the seqio converter that makes their batches
(t5x_lite/data/head_features.py) — and initial_checkpoint_params = (token_embedder, encoder):
a head starts from an encoder-decoder checkpoint (orbax or HF directory, read by
t5x_lite.interop.initial_params) with the encoder loaded, the decoder dropped and the head fresh.
Predictions are ids of the task's targets vocabulary (t5x_lite.tasks.labels:
class c is id c + 1) or answer tokens, which seqio decodes as it decodes generated text.

Head parameters carry the logical axes `embed` and `labels` (the class axis; partitioning
and Adafactor have rules for it).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.data import head_features
from t5x_lite.model import layers
from t5x_lite.model import network
from t5x_lite.tasks import labels as labels_lib

LABELS = "labels"  # logical axis name of the class dimension of head parameters
POOLINGS = ("first", "mean", "max")
ENCODER_PARAMS = ("token_embedder", "encoder")
_MASKED = -1e9  # logit of positions a span cannot use (finite: log_softmax stays defined)


class BiasedDense(nn.Module):
  """Dense layer with a bias (heads have one, as HF's classifiers; the T5 body has none).

  Attributes:
    features: output width.
    axes: logical names of the kernel's (input, output) axes; the bias has the output's.
  """
  features: int
  axes: tuple[str, str]
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: [..., in] -> [..., features]."""
    kernel = self.param("kernel", nn.with_logical_partitioning(layers.dense_init, self.axes),
                        (x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                      (self.features,), self.param_dtype)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


def pool(encoded, mask, method: str):
  """One vector per example from the encoder output.

  Args:
    encoded: [batch, length, embed].
    mask: [batch, length] bool, True on real (non-padding) tokens.
    method: "first" (the first token), "mean" or "max" (over real tokens).

  Returns:
    [batch, embed]; an example with no real token pools to 0 under "mean" and "max".
  """
  if method == "first":
    return encoded[:, 0]
  m = mask[..., None]
  if method == "mean":
    return jnp.sum(jnp.where(m, encoded, 0), axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)
  if method == "max":
    pooled = jnp.max(jnp.where(m, encoded, -jnp.inf), axis=1)
    return jnp.where(jnp.any(m, axis=1), pooled, 0)
  raise ValueError(f"Unknown pooling {method!r}; use one of {POOLINGS} "
                   "(gin: SequenceClassificationModel.pooling).")


class EncoderHeadNetwork(nn.Module):
  """T5 encoder + dropout + dense head; pooled per example, or per token when pooling is None.

  Attributes:
    config: the T5Config (its decoder fields are unused).
    num_outputs: the head's width (classes; 1 for regression; 2 for a span's start/end).
    pooling: None (per-token outputs) or one of POOLINGS.
    pre_classifier: a dense + tanh layer (d_model wide) before the classifier, with dropout
      before and after, as HF's T5ClassificationHead.
    dropout_rate: the head's dropout (the encoder's own comes from config.dropout_rate).
  """
  config: network.T5Config
  num_outputs: int
  pooling: Optional[str] = None
  pre_classifier: bool = False
  dropout_rate: float = 0.0

  def setup(self):
    cfg = self.config
    dtypes = dict(dtype=cfg.activation_dtype, param_dtype=cfg.parameter_dtype)
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.d_model, **dtypes)
    self.encoder = network.Encoder(cfg, self.token_embedder)
    # Per-row masks from (the step's rng, the row's global id), as the encoder's: a
    # microbatched step then draws the masks of the full batch (layers.Dropout).
    self.dropout = layers.Dropout(self.dropout_rate)
    if self.pre_classifier:
      self.pre_classifier_dense = BiasedDense(cfg.d_model, ("embed", "mlp"), **dtypes)
    self.classifier = BiasedDense(self.num_outputs, ("embed", LABELS), **dtypes)

  def encode(self, tokens, segment_ids=None, deterministic=True, row_ids=None):
    """The encoder's output [batch, length, embed] (HF T5EncoderModel's last_hidden_state).

    row_ids: int [batch] global row ids of the dropout masks (None: 0..batch-1).
    """
    return self.encoder(tokens, segment_ids, deterministic, row_ids)

  def __call__(self, tokens, segment_ids=None, deterministic=True, row_ids=None):
    """tokens int [batch, length] -> float32 [batch, num_outputs] or [batch, length, num_outputs].

    row_ids: int [batch] global row ids of the dropout masks (None: 0..batch-1); the trainer
    passes them when microbatching.
    """
    x = self.encode(tokens, segment_ids, deterministic, row_ids)
    if self.pooling is not None:
      x = pool(x, tokens > 0, self.pooling)
    x = self.dropout(x, row_ids, deterministic)
    if self.pre_classifier:
      x = jnp.tanh(self.pre_classifier_dense(x))
      x = self.dropout(x, row_ids, deterministic)
    return self.classifier(x).astype(jnp.float32)


def _label_log_probs(logits, labels):
  """log p(label) [...] from logits [..., C]; negative labels (none) read class 0."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]


def _max_log_prob(logits):
  """log p of the most likely class [...], precise near certainty.

  -log1p(mass of the other classes relative to the best): log_softmax's log(1 + tiny)
  rounds to 0 once the margin passes ~17 in float32, making near-certain predictions tie.
  """
  best = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=bool)
  shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
  return -jnp.log1p(jnp.sum(jnp.where(best, 0.0, jnp.exp(shifted)), axis=-1))


class EncoderHeadModel:
  """What every head shares: the network, init and loss_fn; a model_interface.Model.

  Subclasses define feature_converter, loss_weights, _losses, score_batch and _predict_fn.
  """
  # model_interface.Model's attributes.
  # Heads predict deterministically: no DecodingSettings (the evaluator seeds sampling from it).
  decoding = None
  # Only the inputs are embedded; targets are labels, tags or answer positions.
  token_features = ("inputs",)
  # One label (or answer) per example: a row holds one example.
  can_pack = False
  # INITIAL_CHECKPOINT_PATH gives the encoder (t5x_lite.interop.initial_params): a T5 checkpoint's
  # decoder is dropped, the head starts fresh.
  initial_checkpoint_params = ENCODER_PARAMS
  # HF transformers has no T5 encoder with a pooled classifier or a span head.
  hf_export_format = None
  examples_heading = "Predicted examples (the model's head, no decoding):"

  def __init__(self, config: network.T5Config, num_outputs: int, pooling: Optional[str],
               pre_classifier: bool, dropout_rate: Optional[float]):
    self.config = config
    self.dropout_rate = config.dropout_rate if dropout_rate is None else dropout_rate
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"{type(self).__name__}.dropout_rate={dropout_rate} must be in [0, 1).")
    self.module = EncoderHeadNetwork(config, num_outputs, pooling, pre_classifier,
                                     self.dropout_rate)
    self._predict = jax.jit(self._predict_fn)

  @property
  def uses_dropout(self) -> bool:
    """Whether training needs a dropout RNG (the encoder's or the head's dropout is on)."""
    return bool(self.dropout_rate or self.config.dropout_rate or self.config.attention_dropout)

  def dummy_input_shapes(self):
    """Batch shapes for `init` (parameter shapes do not depend on them)."""
    return {"encoder_input_tokens": (1, 1)}

  def init(self, rng, input_shapes):
    """Boxed (logically partitioned) params from shapes {"encoder_input_tokens": (B, L), ...}."""
    tokens = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
    return self.module.init(rng, tokens)["params"]

  def outputs(self, params, batch, *, dropout_rng=None):
    """The head's float32 outputs; dropout is on when dropout_rng is given."""
    deterministic = dropout_rng is None
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch.get("encoder_segment_ids"),
        deterministic=deterministic, row_ids=batch.get("row_ids"),
        rngs=None if deterministic else {"dropout": dropout_rng})

  def normalizer(self, num_labelled):
    """The summed loss is a mean over the batch's labelled examples (tokens)."""
    return jnp.maximum(num_labelled, 1.0)

  def loss_fn(self, params, batch, dropout_rng=None, normalizer=None):
    """Normalised loss and summed metrics of one (micro)batch.

    Returns:
      (loss, metrics): metrics hold sums over labelled examples (tokens for token
      classification): loss_sum, z_loss_sum (0: heads have no z-loss), correct (0 for
      regression) and num_tokens (their count).
    """
    losses, correct = self._losses(self.outputs(params, batch, dropout_rng=dropout_rng), batch)
    weights = self.loss_weights(batch)
    if normalizer is None:
      normalizer = self.normalizer(jnp.sum(weights))
    loss_sum = jnp.sum(losses * weights)
    metrics = {"loss_sum": loss_sum, "z_loss_sum": jnp.zeros((), jnp.float32),
               "correct": jnp.sum(correct * weights), "num_tokens": jnp.sum(weights)}
    return loss_sum / normalizer, metrics

  def predict_batch_with_aux(self, params, batch, rng=None):
    """(predicted ids or tokens, {"scores": [B]}) — see the subclass's _predict_fn."""
    del rng  # Nothing is sampled.
    return self._predict(params, batch)

  def predict_batch(self, params, batch, rng=None):
    return self.predict_batch_with_aux(params, batch, rng)[0]


class SequenceClassificationModel(EncoderHeadModel):
  """One label per example: pooled encoder -> dropout -> dense (cross-entropy), or regression.

  Batches: encoder_input_tokens [B, L], labels [B] (int32 class, -1 for none; float32 for
  regression). Predictions: [B, 1] LabelVocabulary ids (class + 1), or the real value.

  Attributes (gin):
    config: the T5Config (a gin/models file).
    num_labels: classes (>= 2); ignored with regression.
    pooling: "first" token, "mean" or "max" over non-padding tokens.
    pre_classifier: dense + tanh (d_model) before the classifier.
    dropout_rate: the head's dropout; None: T5Config.dropout_rate.
    regression: one real output, squared-error loss (STS-B); accuracy reads 0.
  """

  def __init__(self, config: network.T5Config, num_labels: int = 2, pooling: str = "first",
               pre_classifier: bool = False, dropout_rate: Optional[float] = None,
               regression: bool = False):
    if pooling not in POOLINGS:
      raise ValueError(f"SequenceClassificationModel.pooling={pooling!r}; use one of "
                       f"{POOLINGS}.")
    if not regression and num_labels < 2:
      raise ValueError(f"SequenceClassificationModel.num_labels={num_labels}: a classifier "
                       "needs >= 2 classes; for one real output set regression = True.")
    self.num_labels, self.regression = num_labels, regression
    super().__init__(config, 1 if regression else num_labels, pooling, pre_classifier,
                     dropout_rate)

  def feature_converter(self, pack: bool):
    return head_features.SequenceClassificationFeatureConverter(
        None if self.regression else self.num_labels, pack)

  def loss_weights(self, batch):
    """1 for each example with a label (rows of padding and unlabelled examples: 0)."""
    real = jnp.any(batch["encoder_input_tokens"] > 0, axis=1)
    if not self.regression:
      real &= batch["labels"] >= 0
    return real.astype(jnp.float32)

  def _losses(self, outputs, batch):
    labels = batch["labels"]
    if self.regression:
      return jnp.square(outputs[:, 0] - labels), jnp.zeros_like(labels)
    correct = jnp.argmax(outputs, axis=-1) == labels
    return -_label_log_probs(outputs, labels), correct.astype(jnp.float32)

  def score_batch(self, params, batch):
    """log p(label) [B]; for regression minus the squared error."""
    outputs = self.outputs(params, batch)
    if self.regression:
      return -jnp.square(outputs[:, 0] - batch["labels"])
    return _label_log_probs(outputs, batch["labels"])

  def _predict_fn(self, params, batch):
    outputs = self.outputs(params, batch)
    if self.regression:
      return outputs, {"scores": jnp.zeros(outputs.shape[:1], jnp.float32)}
    best = jnp.argmax(outputs, axis=-1)
    ids = (best + labels_lib.FIRST_LABEL_ID)[:, None].astype(jnp.int32)
    return ids, {"scores": _max_log_prob(outputs)}


class TokenClassificationModel(EncoderHeadModel):
  """One label per token, as HF's T5ForTokenClassification: encoder -> dropout -> dense.

  Batches: encoder_input_tokens, encoder_target_tokens (tag ids: class + 1; 0 = no
  label: padding, EOS, sub-word continuations), encoder_loss_weights [B, L] (+ segment
  ids when packed). Cross-entropy over labelled tokens. Predictions: [B, L] tag ids at
  the labelled positions, 0 elsewhere.

  Attributes (gin):
    config: the T5Config.
    num_labels: tags (CoNLL-2003 NER: 9).
    dropout_rate: the head's dropout; None: T5Config.dropout_rate.
  """
  can_pack = True  # Tags are per token: packed rows keep each example's own.
  hf_export_format = "T5ForTokenClassification"

  def __init__(self, config: network.T5Config, num_labels: int = 9,
               dropout_rate: Optional[float] = None):
    if num_labels < 2:
      raise ValueError(f"TokenClassificationModel.num_labels={num_labels} must be >= 2.")
    self.num_labels = num_labels
    super().__init__(config, num_labels, None, False, dropout_rate)

  def feature_converter(self, pack: bool):
    return head_features.TokenClassificationFeatureConverter(self.num_labels, pack)

  def loss_weights(self, batch):
    return batch["encoder_loss_weights"].astype(jnp.float32)

  def _labels(self, batch):
    return batch["encoder_target_tokens"] - labels_lib.FIRST_LABEL_ID

  def _losses(self, outputs, batch):
    labels = self._labels(batch)
    correct = (jnp.argmax(outputs, axis=-1) == labels).astype(jnp.float32)
    return -_label_log_probs(outputs, labels), correct

  def score_batch(self, params, batch):
    """Summed log p(label) over each example's labelled tokens [B]."""
    log_probs = _label_log_probs(self.outputs(params, batch), self._labels(batch))
    return jnp.sum(log_probs * self.loss_weights(batch), axis=-1)

  def _predict_fn(self, params, batch):
    outputs = self.outputs(params, batch)
    weights = self.loss_weights(batch)
    ids = jnp.where(weights > 0, jnp.argmax(outputs, axis=-1) + labels_lib.FIRST_LABEL_ID, 0)
    return ids.astype(jnp.int32), {"scores": jnp.sum(_max_log_prob(outputs) * weights, axis=-1)}


def best_spans(start_log_probs, end_log_probs, valid, max_answer_length: int):
  """The span with the highest log p(start) + log p(end), at most max_answer_length tokens.

  Args:
    start_log_probs, end_log_probs: [batch, length].
    valid: [batch, length] bool: positions an answer may use (the context).
    max_answer_length: the longest span, in tokens.

  Returns:
    (start [batch], end [batch], score [batch]); score is -inf when no span is valid.
  """
  length = start_log_probs.shape[1]
  i, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
  allowed = ((j >= i) & (j < i + max_answer_length))[None] & valid[:, :, None] & valid[:, None, :]
  scores = jnp.where(allowed, start_log_probs[:, :, None] + end_log_probs[:, None, :], -jnp.inf)
  flat = jnp.argmax(scores.reshape(scores.shape[0], -1), axis=-1)
  return flat // length, flat % length, jnp.max(scores, axis=(1, 2))


class QuestionAnsweringModel(EncoderHeadModel):
  """Extractive QA: start / end logits over the context's tokens (encoder -> dropout -> dense 2).

  Batches: encoder_input_tokens [B, L], context_start, start_positions, end_positions [B]
  (-1: the answer was truncated away; no loss). The loss is the mean of the start and end
  cross-entropies over context positions (from context_start, padding and EOS excluded).
  Predictions: the best span's tokens [B, max_answer_length] (0 after it), which the
  task's vocabulary decodes to the answer text.

  Attributes (gin):
    config: the T5Config.
    max_answer_length: the longest predicted answer, in tokens (30 as in SQuAD baselines).
    dropout_rate: the head's dropout; None: T5Config.dropout_rate.
  """

  def __init__(self, config: network.T5Config, max_answer_length: int = 30,
               dropout_rate: Optional[float] = None):
    if max_answer_length < 1:
      raise ValueError(f"QuestionAnsweringModel.max_answer_length={max_answer_length} must "
                       "be positive.")
    self.max_answer_length = max_answer_length
    super().__init__(config, 2, None, False, dropout_rate)

  def feature_converter(self, pack: bool):
    return head_features.QuestionAnsweringFeatureConverter(pack)

  def loss_weights(self, batch):
    return (batch["start_positions"] >= 0).astype(jnp.float32)

  def _log_probs(self, outputs, batch):
    """(start, end) log-probabilities [B, L] over the context, and its mask."""
    tokens = batch["encoder_input_tokens"]
    positions = jnp.arange(tokens.shape[1])[None, :]
    # Token id 1 is EOS in T5's vocabularies; 0 is padding.
    valid = (positions >= batch["context_start"][:, None]) & (tokens > 1)
    logits = jnp.where(valid[..., None], outputs, _MASKED)
    return (jax.nn.log_softmax(logits[..., 0], axis=-1),
            jax.nn.log_softmax(logits[..., 1], axis=-1), valid)

  def _gold(self, log_probs, positions):
    return jnp.take_along_axis(log_probs, jnp.maximum(positions, 0)[:, None], axis=1)[:, 0]

  def _losses(self, outputs, batch):
    start, end, _ = self._log_probs(outputs, batch)
    starts, ends = batch["start_positions"], batch["end_positions"]
    nll = -(self._gold(start, starts) + self._gold(end, ends)) / 2
    correct = (jnp.argmax(start, -1) == starts) & (jnp.argmax(end, -1) == ends)
    return nll, correct.astype(jnp.float32)

  def score_batch(self, params, batch):
    """log p(start) + log p(end) of the gold span [B]."""
    start, end, _ = self._log_probs(self.outputs(params, batch), batch)
    return self._gold(start, batch["start_positions"]) + self._gold(end, batch["end_positions"])

  def _predict_fn(self, params, batch):
    start_lp, end_lp, valid = self._log_probs(self.outputs(params, batch), batch)
    start, end, score = best_spans(start_lp, end_lp, valid, self.max_answer_length)
    tokens = batch["encoder_input_tokens"]
    index = start[:, None] + jnp.arange(self.max_answer_length)[None, :]
    keep = (index <= end[:, None]) & jnp.isfinite(score)[:, None]
    answer = jnp.take_along_axis(tokens, jnp.minimum(index, tokens.shape[1] - 1), axis=1)
    return jnp.where(keep, answer, 0).astype(jnp.int32), {"scores": score}

