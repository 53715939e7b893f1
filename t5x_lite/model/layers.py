"""T5 building blocks in Flax linen: RMSNorm, Embed, MlpBlock, MultiHeadAttention, RelativePositionBias.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`,
`relpos_buckets`) so that partitioning is a rule table (see partitioning.py). Parameters are
stored in `param_dtype`; computation runs in `dtype` (bf16 on TPU/GPU, f32 on CPU).
No layer has an additive bias, as in T5.
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.model import kernels

Dtype = Any
Initializer = Callable[..., jax.Array]

# Logical names of activations (parameters use embed / mlp / heads / kv / vocab): separate
# names keep activation sharding rules apart from parameter rules (partitioning.py).
EMBED_ACTIVATION = ("activation_batch", "activation_length", "activation_embed")
MLP_ACTIVATION = ("activation_batch", "activation_length", "activation_mlp")
HEADS_ACTIVATION = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
VOCAB_ACTIVATION = ("activation_batch", "activation_length", "activation_vocab")

# t5x's initialisers: fan-in scaled truncated normal for dense kernels; the 1/sqrt(head_dim)
# that T5 leaves out of the attention logits is folded into the query initialiser.
dense_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
embedding_init = nn.initializers.normal(stddev=1.0)
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def _logical_param(module, name, init, shape, axes, param_dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, param_dtype)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no bias, no mean subtraction; variance in float32.

  Attributes:
    epsilon: added to the mean square (1e-6 in T5).
  """
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: [..., embed] -> [..., embed] in self.dtype."""
    scale = _logical_param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",),
                           self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return x32.astype(self.dtype) * scale.astype(self.dtype)


class Embed(nn.Module):
  """Token embedding: a gather lookup, and `attend` for tied output logits.

  A gather, not t5x's one-hot matmul: on CPU/GPU the gather is much faster and on TPU XLA
  lowers it well enough.
  """
  num_embeddings: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(embedding_init, ("vocab", "embed")),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids):
    """ids: int [batch, length] -> [batch, length, features]."""
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x):
    """x: [batch, length, features] -> logits [batch, length, num_embeddings]."""
    rows = x.reshape(-1, x.shape[-1])  # One row dimension: see DenseGeneral.
    logits = jnp.dot(rows, self.embedding.astype(self.dtype).T)
    return logits.reshape(x.shape[:-1] + (self.num_embeddings,))


class DenseGeneral(nn.Module):
  """A bias-free dense layer over named axes: kernel shape = in_shape + out_shape.

  Attributes:
    features: output shape (tuple).
    axes: logical names of the kernel axes (input axes then output axes).
    contract: number of trailing input axes to contract.
    kernel_init: initialiser of the kernel.
  """
  features: tuple[int, ...]
  axes: tuple[str, ...]
  contract: int = 1
  kernel_init: Initializer = dense_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[-self.contract:]
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self._init, self.axes),
        tuple(in_shape) + tuple(self.features), self.param_dtype)
    # One row dimension, not [batch, length]: XLA:CPU transposes a multi-dimensional
    # contraction into a copy before its matmul (the kernel gradient contracts batch and
    # length), a single row dimension maps onto the BLAS-style kernel directly.
    batch_shape = x.shape[:-self.contract]
    rows = x.reshape((math.prod(batch_shape),) + tuple(in_shape))
    y = jax.lax.dot_general(
        rows.astype(self.dtype), kernel.astype(self.dtype),
        ((tuple(range(1, 1 + self.contract)), tuple(range(self.contract))), ((), ())))
    return y.reshape(batch_shape + tuple(self.features))

  def _init(self, rng, shape, dtype):
    # Initialise as the equivalent 2D matrix so fan-in/fan-out match t5x's joined layout.
    flat_shape = (math.prod(shape[:self.contract]), math.prod(shape[self.contract:]))
    return self.kernel_init(rng, flat_shape, dtype).reshape(shape)


class Dropout(nn.Module):
  """Dropout with a mask drawn per batch row from (the 'dropout' rng, the row's global id).

  A microbatch of rows then draws the same masks as the full batch (exact gradient
  accumulation with dropout); see kernels.reference.row_dropout_mask.

  Attributes:
    rate: probability of zeroing an element.
  """
  rate: float

  @nn.compact
  def __call__(self, x, row_ids=None, deterministic=True):
    """x: [batch, ...]; row_ids: int [batch] or None (0..batch-1)."""
    if deterministic or self.rate == 0.0:
      return x
    keep = kernels.reference.row_dropout_mask(self.make_rng("dropout"), row_ids,
                                              1.0 - self.rate, x.shape)
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


class MlpBlock(nn.Module):
  """T5 feed-forward: relu (v1.0) or gated-gelu (v1.1 / Flan-T5, tanh-approximated gelu).

  Attributes:
    d_ff: hidden size.
    activation: "relu" or "gated-gelu".
    dropout_rate: dropout on the hidden activations.
  """
  d_ff: int
  activation: str = "relu"
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True, row_ids=None):
    """x: [batch, length, embed] -> [batch, length, embed]; row_ids: see Dropout."""
    dense = lambda feats, axes, name: DenseGeneral(
        (feats,), axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    if self.activation == "relu":
      h = nn.relu(dense(self.d_ff, ("embed", "mlp"), "wi")(x))
    elif self.activation == "gated-gelu":
      h = (nn.gelu(dense(self.d_ff, ("embed", "mlp"), "wi_0")(x), approximate=True)
           * dense(self.d_ff, ("embed", "mlp"), "wi_1")(x))
    else:
      raise ValueError(f"Unknown feed-forward activation {self.activation!r}; use 'relu' or "
                       "'gated-gelu' (gin: T5Config.feed_forward).")
    h = nn.with_logical_constraint(h, MLP_ACTIVATION)
    h = Dropout(self.dropout_rate)(h, row_ids, deterministic)
    return dense(x.shape[-1], ("mlp", "embed"), "wo")(h)


class RelativePositionBias(nn.Module):
  """The [heads, num_buckets] relative attention bias table of one stack (shared by its layers).

  The table itself is handed to the attention kernel, which computes the bias per tile.
  """
  num_heads: int
  num_buckets: int = 32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self):
    return _logical_param(self, "rel_embedding", relpos_init, (self.num_heads, self.num_buckets),
                          ("heads", "relpos_buckets"), self.param_dtype)


class MultiHeadAttention(nn.Module):
  """T5 attention: bias-free q/k/v/o projections, no logit scaling, kernel from kernels.attention.

  Attributes:
    num_heads, head_dim: attention shape (num_heads * head_dim need not equal d_model).
    dropout_rate: dropout on attention probabilities (xla kernel only).
    impl, block_q, block_k: attention kernel settings (see t5x_lite.model.kernels.attention).
    max_distance: relative position max distance (for the bias buckets).
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  impl: str = "xla"
  block_q: int = 128
  block_k: int = 128
  max_distance: int = 128
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _projection(self, name, init=dense_init):
    return DenseGeneral((self.num_heads, self.head_dim), ("embed", "heads", "kv"), kernel_init=init,
                        dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, *, bias_table=None, bidirectional=True,
               query_segment_ids=None, kv_segment_ids=None, causal=False,
               deterministic=True, decode=False, cross_attention=False, row_ids=None):
    """Attends inputs_q [batch, q_len, embed] over inputs_kv [batch, kv_len, embed].

    row_ids: int [batch] global row ids for the attention-probability dropout (see Dropout).

    decode=True (autoregressive decoding, inputs of length 1):
      self-attention keeps keys/values in the 'cache' collection (`cached_key`,
      `cached_value` [batch, heads, max_len, head_dim] and `cache_index`), created by a call
      on full-length inputs; cross-attention (cross_attention=True) projects the encoder
      output once, on the call that creates the cache, into `cached_key` / `cached_value`
      [enc_batch, heads, head_dim, enc_len], and reuses them at every step. These are the
      operand layouts XLA:CPU's attention matmuls read (decoding.init_cache keeps XLA from
      moving the transposes back into its loop): a [batch, length, heads, head_dim] cache was
      transposed whole, every layer, at every step. A step may decode
      several rows per encoder input (beams, samples: inputs_q has enc_batch * copies rows,
      batch-major); their queries then attend their input's one copy of the encoder
      keys/values as `copies` query positions, and query_segment_ids / kv_segment_ids keep
      their shapes [enc_batch * copies, 1] / [enc_batch, enc_len].

    Returns:
      [batch, q_len, embed].
    """
    depth_scaling = self.head_dim ** -0.5
    query_init = lambda *a: dense_init(*a) * depth_scaling
    query = self._projection("query", query_init)(inputs_q)
    key_projection, value_projection = self._projection("key"), self._projection("value")
    query_offset = 0
    rows = inputs_q.shape[0]
    if decode and cross_attention:
      # The projections run only when the cache entry is created (once per input).
      key = _from_cross_layout(self.variable(
          "cache", "cached_key", lambda: _to_cross_layout(key_projection(inputs_kv))).value)
      value = _from_cross_layout(self.variable(
          "cache", "cached_value", lambda: _to_cross_layout(value_projection(inputs_kv))).value)
      copies = rows // key.shape[0]
      if copies * key.shape[0] != rows:
        raise ValueError(f"Decoding {rows} rows against cross-attention keys/values of "
                         f"{key.shape[0]} encoder inputs: rows must be a multiple of them.")
      if copies > 1:  # the copies of an input become query positions of its one K/V copy
        query = query.reshape((key.shape[0], copies * query.shape[1]) + query.shape[2:])
        if query_segment_ids is not None:
          query_segment_ids = query_segment_ids.reshape(key.shape[0], -1)
    else:
      key, value = key_projection(inputs_kv), value_projection(inputs_kv)
      if decode:
        key, value, query_offset = self._update_cache(key, value)
        # One query against the whole cache: the causal mask at query_offset is the mask.
        query_segment_ids = kv_segment_ids = None
    query = nn.with_logical_constraint(query, HEADS_ACTIVATION)
    key = nn.with_logical_constraint(key, HEADS_ACTIVATION)
    value = nn.with_logical_constraint(value, HEADS_ACTIVATION)

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    out = kernels.attention(
        query, key, value, bias_table=bias_table, bidirectional=bidirectional,
        max_distance=self.max_distance, query_segment_ids=query_segment_ids,
        kv_segment_ids=kv_segment_ids, causal=causal, query_offset=query_offset,
        dropout_rate=0.0 if deterministic else self.dropout_rate, dropout_rng=dropout_rng,
        row_ids=row_ids, impl=self.impl, block_q=self.block_q, block_k=self.block_k)
    out = out.reshape((rows, -1) + out.shape[2:])  # folded copies back to their rows
    return DenseGeneral((inputs_q.shape[-1],), ("heads", "kv", "embed"), contract=2,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)

  def _update_cache(self, key, value):
    """Writes this step's key/value [batch, 1, heads, head_dim] at cache_index.

    Returns the full cached keys/values as [batch, max_len, heads, head_dim] views of the
    [batch, heads, max_len, head_dim] cache, and the query's absolute position.
    """
    is_initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, _cache_shape(key.shape),
                               key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, _cache_shape(value.shape),
                                 value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:  # The creating call only sizes the cache.
      return key, value, 0
    if key.shape[1] != 1:
      raise ValueError(f"Cached decoding feeds one token per step, got length {key.shape[1]}.")
    index = cache_index.value
    # [batch, 1, heads, d] -> [batch, heads, 1, d]: a reshape, no data movement (length 1).
    cached_key.value = jax.lax.dynamic_update_slice_in_dim(
        cached_key.value, _to_cache_layout(key), index, axis=2)
    cached_value.value = jax.lax.dynamic_update_slice_in_dim(
        cached_value.value, _to_cache_layout(value), index, axis=2)
    cache_index.value = index + 1
    return _from_cache_layout(cached_key.value), _from_cache_layout(cached_value.value), index


def _cache_shape(shape):
  """[batch, length, heads, head_dim] -> the cache's [batch, heads, length, head_dim]."""
  return (shape[0], shape[2], shape[1], shape[3])


def _to_cache_layout(x):
  """[batch, length, heads, head_dim] -> [batch, heads, length, head_dim]."""
  return jnp.swapaxes(x, 1, 2)


def _from_cache_layout(x):
  """[batch, heads, length, head_dim] -> a [batch, length, heads, head_dim] view: the
  attention einsums contract it in the cache's own layout (XLA folds the two transposes)."""
  return jnp.swapaxes(x, 1, 2)


def _to_cross_layout(x):
  """[batch, length, heads, head_dim] -> [batch, heads, head_dim, length]."""
  return jnp.transpose(x, (0, 2, 3, 1))


def _from_cross_layout(x):
  """[batch, heads, head_dim, length] -> a [batch, length, heads, head_dim] view."""
  return jnp.transpose(x, (0, 3, 1, 2))
