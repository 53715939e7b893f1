"""T5Config and the T5 encoder-decoder network (Encoder, Decoder, Transformer) in Flax linen.

T5 as the paper, t5x and HF transformers define it: pre-norm RMSNorm, no additive biases,
one relative position bias table per stack (bidirectional buckets in the encoder, causal in
the decoder, none in cross-attention), no 1/sqrt(d) logit scaling, dropout after the
embedding, every sublayer and the final norm.
"""

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.model import layers

FEED_FORWARDS = ("relu", "gated-gelu")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and settings of a T5 model; the gin files in gin/models/ bind these.

  Attributes:
    vocab_size: rows of the embedding (32128 for the T5 SentencePiece model padded to 128).
    d_model: width of the residual stream ("embed").
    d_ff: hidden width of the feed-forward block ("mlp").
    d_kv: width of one attention head; num_heads * d_kv need not equal d_model.
    num_heads: attention heads.
    num_encoder_layers, num_decoder_layers: depth of each stack.
    feed_forward: "relu" (T5 v1.0, T5-efficient) or "gated-gelu" (T5 v1.1, Flan-T5).
    tie_word_embeddings: output logits through the input embedding, scaled by
      d_model**-0.5 (v1.0); False gives a separate `logits_dense` layer (v1.1).
    dropout_rate: dropout everywhere (0.1 to finetune, 0.0 to pretrain v1.1).
    attention_dropout_rate: dropout on attention probabilities; None means dropout_rate.
      The pallas kernel has none: set it to 0.0 to train with impl "pallas" and dropout.
    relative_attention_num_buckets, relative_attention_max_distance: 32 and 128 in T5.
    layer_norm_epsilon: 1e-6 in T5.
    dtype: activation dtype name ("float32"; "bfloat16" on TPU/GPU).
    param_dtype: parameter dtype name ("float32").
    attention_impl: "xla", "pallas" or "cudnn" (see t5x_lite.model.kernels).
    attention_block_q, attention_block_k: pallas tile sizes.
    scan_layers: run each stack as one nn.scan over stacked layer parameters (fast compiles
      for deep models; parameters get a leading "layers" axis).
    remat_policy: activation checkpointing per layer: "none", "full", "dots",
      "dots_with_no_batch_dims".
  """
  vocab_size: int = 32128
  d_model: int = 512
  d_ff: int = 2048
  d_kv: int = 64
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  feed_forward: str = "relu"
  tie_word_embeddings: bool = True
  dropout_rate: float = 0.1
  attention_dropout_rate: Optional[float] = None
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  attention_block_q: int = 128
  attention_block_k: int = 128
  scan_layers: bool = False
  remat_policy: str = "none"

  def __post_init__(self):
    if self.feed_forward not in FEED_FORWARDS:
      raise ValueError(f"T5Config.feed_forward={self.feed_forward!r}; choose one of "
                       f"{FEED_FORWARDS}.")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"T5Config.remat_policy={self.remat_policy!r}; choose one of "
                       f"{sorted(REMAT_POLICIES)}.")

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def parameter_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def attention_dropout(self):
    return self.dropout_rate if self.attention_dropout_rate is None else self.attention_dropout_rate


def _norm(config, name):
  return layers.RMSNorm(config.layer_norm_epsilon, config.activation_dtype, config.parameter_dtype,
                        name=name)


def _attention(config, name):
  return layers.MultiHeadAttention(
      num_heads=config.num_heads, head_dim=config.d_kv, dropout_rate=config.attention_dropout,
      impl=config.attention_impl, block_q=config.attention_block_q,
      block_k=config.attention_block_k, max_distance=config.relative_attention_max_distance,
      dtype=config.activation_dtype, param_dtype=config.parameter_dtype, name=name)


def _mlp(config):
  return layers.MlpBlock(config.d_ff, config.feed_forward, config.dropout_rate,
                         config.activation_dtype, config.parameter_dtype, name="mlp")


def _residual_dropout(config, x, deterministic, row_ids):
  return layers.Dropout(config.dropout_rate)(x, row_ids, deterministic)


def _constrain(x):
  return nn.with_logical_constraint(x, layers.EMBED_ACTIVATION)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + feed-forward, each added to the residual stream."""
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, bias_table, segment_ids, row_ids):
    """x: [batch, length, embed]; bias_table: [heads, buckets]; segment_ids: [batch, length];
    row_ids: [batch] global row ids (dropout masks, see layers.Dropout)."""
    cfg, det = self.config, self.deterministic
    y = _norm(cfg, "pre_attention_layer_norm")(x)
    y = _attention(cfg, "attention")(y, y, bias_table=bias_table, bidirectional=True,
                                     query_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                                     deterministic=det, row_ids=row_ids)
    x = _constrain(x + _residual_dropout(cfg, y, det, row_ids))
    y = _mlp(cfg)(_norm(cfg, "pre_mlp_layer_norm")(x), deterministic=det, row_ids=row_ids)
    return _constrain(x + _residual_dropout(cfg, y, det, row_ids))


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention and feed-forward."""
  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, encoded, bias_table, decoder_segment_ids, encoder_segment_ids,
               row_ids):
    """x: [batch, length, embed]; encoded: [batch, enc_length, embed]; ids: [batch, *]."""
    cfg, det = self.config, self.deterministic
    y = _norm(cfg, "pre_self_attention_layer_norm")(x)
    y = _attention(cfg, "self_attention")(
        y, y, bias_table=bias_table, bidirectional=False, causal=True,
        query_segment_ids=decoder_segment_ids, kv_segment_ids=decoder_segment_ids,
        deterministic=det, decode=self.decode, row_ids=row_ids)
    x = _constrain(x + _residual_dropout(cfg, y, det, row_ids))
    y = _norm(cfg, "pre_cross_attention_layer_norm")(x)
    y = _attention(cfg, "encoder_decoder_attention")(
        y, encoded, query_segment_ids=decoder_segment_ids, kv_segment_ids=encoder_segment_ids,
        deterministic=det, decode=self.decode, cross_attention=True, row_ids=row_ids)
    x = _constrain(x + _residual_dropout(cfg, y, det, row_ids))
    y = _mlp(cfg)(_norm(cfg, "pre_mlp_layer_norm")(x), deterministic=det, row_ids=row_ids)
    return _constrain(x + _residual_dropout(cfg, y, det, row_ids))


def _stack(config, layer_cls, num_layers, x, broadcast_args, layer_kwargs, scan_variable_axes):
  """Applies num_layers copies of layer_cls, as named modules or one nn.scan."""
  policy = REMAT_POLICIES[config.remat_policy]
  if config.remat_policy != "none":
    layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=not config.scan_layers)
  if not config.scan_layers:
    for i in range(num_layers):
      x = layer_cls(config, **layer_kwargs, name=f"layers_{i}")(x, *broadcast_args)
    return x

  def body(module, carry, *args):
    return module(carry, *args), None

  scanned = nn.scan(
      body, variable_axes={axis: 0 for axis in scan_variable_axes},
      split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * len(broadcast_args),
      length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
  x, _ = scanned(layer_cls(config, **layer_kwargs, name="layers"), x, *broadcast_args)
  return x


def default_segment_ids(tokens):
  """Unpacked batches: segment 1 for real tokens, 0 for padding. [batch, length] int32."""
  return (tokens > 0).astype(jnp.int32)


def default_row_ids(tokens):
  """Rows 0..batch-1: [batch] int32 (the trainer passes global ids when microbatching)."""
  return jnp.arange(tokens.shape[0], dtype=jnp.int32)


class Encoder(nn.Module):
  """Token embedding -> encoder layers -> final RMSNorm. Output: [batch, length, embed]."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens, segment_ids=None, deterministic=True, row_ids=None):
    """tokens: int [batch, length]; segment_ids: [batch, length] (packed), else from tokens > 0;
    row_ids: [batch] global row ids of the dropout masks (None: 0..batch-1)."""
    cfg = self.config
    if segment_ids is None:
      segment_ids = default_segment_ids(tokens)
    row_ids = default_row_ids(tokens) if row_ids is None else row_ids
    bias_table = layers.RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                                             cfg.parameter_dtype, name="relpos_bias")()
    x = _residual_dropout(cfg, self.shared_embedding(tokens), deterministic, row_ids)
    x = _stack(cfg, EncoderLayer, cfg.num_encoder_layers, _constrain(x),
               (bias_table, segment_ids, row_ids), {"deterministic": deterministic}, ("params",))
    x = _norm(cfg, "encoder_norm")(x)
    return _residual_dropout(cfg, x, deterministic, row_ids)


class Decoder(nn.Module):
  """Token embedding -> decoder layers -> final RMSNorm -> logits [batch, length, vocab]."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded, tokens, *, encoder_segment_ids, decoder_segment_ids,
               deterministic=True, decode=False, row_ids=None):
    """Decodes tokens [batch, length] (shifted right) against encoded [batch, enc_len, embed].

    Args:
      encoder_segment_ids: [batch, enc_len] segment ids of the encoder input (0 = padding).
      decoder_segment_ids: [batch, length] segment ids of the decoder input.
      decode: one-token step against the 'cache' collection (see MultiHeadAttention).
      row_ids: [batch] global row ids of the dropout masks (None: 0..batch-1).
    """
    cfg = self.config
    row_ids = default_row_ids(tokens) if row_ids is None else row_ids
    bias_table = layers.RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                                             cfg.parameter_dtype, name="relpos_bias")()
    x = _residual_dropout(cfg, self.shared_embedding(tokens), deterministic, row_ids)
    x = _stack(cfg, DecoderLayer, cfg.num_decoder_layers, _constrain(x),
               (encoded, bias_table, decoder_segment_ids, encoder_segment_ids, row_ids),
               {"deterministic": deterministic, "decode": decode}, ("params", "cache"))
    x = _norm(cfg, "decoder_norm")(x)
    x = _residual_dropout(cfg, x, deterministic, row_ids)
    if cfg.tie_word_embeddings:
      logits = self.shared_embedding.attend(x * (cfg.d_model ** -0.5))
    else:
      logits = layers.DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), dtype=cfg.activation_dtype,
                                   param_dtype=cfg.parameter_dtype, name="logits_dense")(x)
    return nn.with_logical_constraint(logits, layers.VOCAB_ACTIVATION)


class Transformer(nn.Module):
  """The T5 encoder-decoder. `encode` and `decode` are callable separately (apply(method=...))."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.d_model, cfg.activation_dtype,
                                       cfg.parameter_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, deterministic=True,
             row_ids=None):
    """[batch, enc_len] tokens -> [batch, enc_len, embed]."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids, deterministic, row_ids)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
             encoder_segment_ids=None, decoder_segment_ids=None, deterministic=True,
             decode=False, row_ids=None):
    """Logits [batch, dec_len, vocab] for decoder_input_tokens given the encoder output.

    Unpacked batches derive segment ids from the tokens: the encoder's from
    encoder_input_tokens > 0, the decoder's from decoder_target_tokens > 0 (the decoder
    input starts with the pad id 0), or all ones when there are no targets (decoding).
    """
    if encoder_segment_ids is None:
      encoder_segment_ids = default_segment_ids(encoder_input_tokens)
    if decoder_segment_ids is None:
      decoder_segment_ids = (default_segment_ids(decoder_target_tokens)
                             if decoder_target_tokens is not None
                             else jnp.ones_like(decoder_input_tokens, jnp.int32))
    return self.decoder(encoded, decoder_input_tokens, encoder_segment_ids=encoder_segment_ids,
                        decoder_segment_ids=decoder_segment_ids, deterministic=deterministic,
                        decode=decode, row_ids=row_ids)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, deterministic=True,
               decode=False, row_ids=None):
    """Teacher-forced logits [batch, dec_len, vocab] (float in config.dtype).

    row_ids: [batch] global row ids of the dropout masks (None: 0..batch-1).
    """
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, deterministic, row_ids)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       encoder_segment_ids, decoder_segment_ids, deterministic, decode, row_ids)


@functools.lru_cache(maxsize=None)
def _param_shapes(config):
  model = Transformer(config)
  ids = jnp.ones((1, 8), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids))["params"]


def count_params(config):
  """Number of parameters of `config`, from shapes only (jax.eval_shape: no memory)."""
  shapes = nn.unbox(_param_shapes(config))
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(shapes))
