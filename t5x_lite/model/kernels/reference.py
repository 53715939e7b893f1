"""Reference (XLA) attention with the T5 relative position bias: the ground truth for the kernels.

Shapes use B = batch, Lq / Lk = query / key length, H = heads, D = head dim, NB = buckets.
"""

import jax
import jax.numpy as jnp

# Large but finite: a row with no valid key stays finite (a uniform average) instead of NaN,
# and the Pallas kernel uses the same constant so the two agree on such rows too.
MASK_VALUE = -1e10


def relative_position_bucket(relative_position, *, bidirectional, num_buckets=32, max_distance=128):
  """Maps key_position - query_position to a bucket id, exactly as T5 / t5x / HF do.

  Half of the buckets (of each direction) are exact distances, the other half grow
  logarithmically up to `max_distance`; farther distances share the last bucket.

  Args:
    relative_position: int array, key position minus query position (any shape).
    bidirectional: True for the encoder (separate buckets for keys before / after the
      query), False for the causal decoder (keys after the query all map to bucket 0).
    num_buckets: number of buckets.
    max_distance: distance at which the last bucket starts.

  Returns:
    int32 array of the same shape, values in [0, num_buckets).
  """
  relative_position = relative_position.astype(jnp.int32)
  bucket = jnp.zeros_like(relative_position)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # float32 log, as in HF and t5x; max(n, 1) keeps log finite where the value is unused.
  n_float = jnp.maximum(n, 1).astype(jnp.float32)
  val_if_large = max_exact + (
      jnp.log(n_float / max_exact) / jnp.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return bucket + jnp.where(is_small, n, val_if_large)


def relative_position_bias(bias_table, query_length, key_length, *, bidirectional, max_distance=128,
                           query_offset=0):
  """Dense bias from the [H, NB] table: [H, Lq, Lk] (the array the Pallas kernel avoids).

  Args:
    bias_table: [H, NB] learned relative attention bias.
    query_length, key_length: static lengths.
    bidirectional: see `relative_position_bucket`.
    max_distance: see `relative_position_bucket`.
    query_offset: position of the first query (int or traced int32 scalar); decoding a
      single step against a cache uses the step index here.
  """
  num_buckets = bias_table.shape[-1]
  q_pos = jnp.arange(query_length, dtype=jnp.int32)[:, None] + query_offset
  k_pos = jnp.arange(key_length, dtype=jnp.int32)[None, :]
  buckets = relative_position_bucket(k_pos - q_pos, bidirectional=bidirectional,
                                     num_buckets=num_buckets, max_distance=max_distance)
  return jnp.take(bias_table, buckets, axis=-1)  # [H, Lq, Lk]


def attention_mask(query_length, key_length, *, query_segment_ids=None, kv_segment_ids=None,
                   causal=False, query_offset=0):
  """Boolean mask broadcastable to [B, 1, Lq, Lk]: True where a query may attend a key.

  Segment ids are int [B, L]; a query attends keys of its own segment (padding is segment 0,
  so padded queries see only padded keys and rows never become empty in self-attention).
  `causal` allows keys at positions <= query position (+ query_offset). Returns None when
  nothing is masked.
  """
  mask = None
  if query_segment_ids is not None or kv_segment_ids is not None:
    if query_segment_ids is None or kv_segment_ids is None:
      raise ValueError("Give both query_segment_ids and kv_segment_ids, or neither.")
    mask = (query_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :])
  if causal:
    q_pos = jnp.arange(query_length, dtype=jnp.int32)[:, None] + query_offset
    k_pos = jnp.arange(key_length, dtype=jnp.int32)[None, :]
    causal_mask = (k_pos <= q_pos)[None, None]
    mask = causal_mask if mask is None else jnp.logical_and(mask, causal_mask)
  return mask


def row_dropout_mask(rng, row_ids, keep_prob, shape):
  """Bernoulli(keep_prob) keep-mask of `shape` [B, ...] drawn row by row.

  Row b's mask comes from fold_in(rng, row_ids[b]) alone, so a microbatch holding rows
  [i, j) of a batch draws exactly the masks those rows get in the full batch: gradient
  accumulation is exact with dropout too.

  Args:
    rng: a PRNG key.
    row_ids: int [B] global row ids; None: 0..B-1.
    keep_prob: probability of keeping an element.
    shape: [B, ...] mask shape.

  Returns:
    bool [B, ...].
  """
  if row_ids is None:
    row_ids = jnp.arange(shape[0], dtype=jnp.int32)
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, row_ids)
  return jax.vmap(lambda key: jax.random.bernoulli(key, keep_prob, shape[1:]))(keys)


def xla_attention(query, key, value, *, bias_table=None, bidirectional=True, max_distance=128,
                  query_segment_ids=None, kv_segment_ids=None, causal=False, query_offset=0,
                  dropout_rate=0.0, dropout_rng=None, row_ids=None):
  """Plain einsum + softmax attention, T5-style (no 1/sqrt(D) scaling: T5 folds it into init).

  Args:
    query: [B, Lq, H, D].
    key, value: [B, Lk, H, D].
    bias_table: optional [H, NB] relative position bias table (None in cross-attention).
    bidirectional, max_distance: bucket settings (see `relative_position_bucket`).
    query_segment_ids: optional int [B, Lq]; kv_segment_ids: optional int [B, Lk].
    causal: mask keys after the query.
    query_offset: absolute position of query 0 (decoding step); int or traced scalar.
    dropout_rate, dropout_rng: dropout on the attention probabilities (training only).
    row_ids: int [B] global batch row of each example; its dropout mask depends only on
      (dropout_rng, row id): see `row_dropout_mask`. None: 0..B-1.

  Returns:
    [B, Lq, H, D] in query.dtype.
  """
  q_len, k_len = query.shape[1], key.shape[1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  if bias_table is not None:
    logits = logits + relative_position_bias(
        bias_table.astype(jnp.float32), q_len, k_len, bidirectional=bidirectional,
        max_distance=max_distance, query_offset=query_offset)[None]
  mask = attention_mask(q_len, k_len, query_segment_ids=query_segment_ids,
                        kv_segment_ids=kv_segment_ids, causal=causal, query_offset=query_offset)
  if mask is not None:
    logits = jnp.where(mask, logits, MASK_VALUE)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout_rate > 0.0:
    keep = row_dropout_mask(dropout_rng, row_ids, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  weights = weights.astype(value.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value).astype(query.dtype)
