"""One attention entry for every attention layer: encoder self, causal decoder self, cross, decode step.

`impl` picks the implementation:
  - "xla":    einsum + softmax with a dense [H, Lq, Lk] bias (reference; works everywhere).
  - "pallas": flash attention computing the T5 bias per tile from the [H, NB] table.
  - "cudnn":  jax.nn.dot_product_attention with a materialised bias (GPU comparison point).
"""

import functools

import jax
from jax.sharding import PartitionSpec as P

from t5x_lite.kernels.reference import relative_position_bucket, xla_attention

IMPLS = ("xla", "pallas", "cudnn")


def attention(query, key, value, *, bias_table=None, bidirectional=True, max_distance=128,
              query_segment_ids=None, kv_segment_ids=None, causal=False, query_offset=0,
              dropout_rate=0.0, dropout_rng=None, row_ids=None, impl="xla", block_q=128,
              block_k=128):
  """T5 attention: softmax(q k^T + relative_bias + mask) v, no 1/sqrt(D) scaling.

  Args:
    query: [B, Lq, H, D].
    key, value: [B, Lk, H, D].
    bias_table: optional [H, NB] relative position bias table (None in cross-attention).
    bidirectional: bucket layout (True in the encoder, False in the decoder).
    max_distance: relative distance where the last bucket starts.
    query_segment_ids: optional int [B, Lq]; kv_segment_ids: optional int [B, Lk]. A query
      attends only keys of equal segment id (0 marks padding).
    causal: mask keys at positions after the query's.
    query_offset: absolute position of query 0 (a decode step against a KV cache).
    dropout_rate, dropout_rng, row_ids: dropout on attention probabilities (xla only), the
      mask of each row from (dropout_rng, its global row id): `reference.row_dropout_mask`.
    impl: "xla", "pallas" or "cudnn".
    block_q, block_k: tile sizes of the pallas kernel.

  Returns:
    [B, Lq, H, D] in query.dtype.
  """
  kwargs = dict(bias_table=bias_table, bidirectional=bidirectional, max_distance=max_distance,
                query_segment_ids=query_segment_ids, kv_segment_ids=kv_segment_ids,
                causal=causal, query_offset=query_offset)
  if impl == "xla":
    return xla_attention(query, key, value, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                         row_ids=row_ids, **kwargs)
  if impl not in IMPLS:
    raise ValueError(f"Unknown attention impl {impl!r}; choose one of {IMPLS} "
                     "(gin: T5Config.attention_impl).")
  if dropout_rate > 0.0:
    raise ValueError(
        f"attention impl {impl!r} has no dropout on attention probabilities; set "
        "T5Config.attention_dropout_rate = 0.0 in gin (other dropout stays) or use impl 'xla'.")
  if impl == "pallas":
    from t5x_lite.kernels import flash  # pylint: disable=g-import-not-at-top
    kernel = functools.partial(flash.flash_attention, block_q=block_q, block_k=block_k)
    return _per_shard(kernel, query, key, value, **kwargs)
  from t5x_lite.kernels import cudnn  # pylint: disable=g-import-not-at-top
  return cudnn.cudnn_attention(query, key, value, **kwargs)


def _per_shard(kernel, query, key, value, *, bias_table, query_segment_ids, kv_segment_ids,
               query_offset, **static):
  """Runs a custom kernel on each device's batch/head shard under the ambient mesh.

  XLA cannot partition a Pallas call: under a multi-device mesh it would gather q/k/v onto
  every device. shard_map hands each device its own [B/data, L, H/model, D] block instead
  (attention is independent per example and per head). Without a mesh, a plain call.
  """
  mesh = jax.sharding.get_abstract_mesh()
  call = lambda q, k, v, table, qs, ks, off: kernel(
      q, k, v, bias_table=table, query_segment_ids=qs, kv_segment_ids=ks, query_offset=off,
      **static)
  if mesh.empty or mesh.size == 1:
    return call(query, key, value, bias_table, query_segment_ids, kv_segment_ids, query_offset)
  data = tuple(a for a in ("replica", "data") if a in mesh.axis_names)
  data_size = 1
  for a in data:
    data_size *= mesh.shape[a]
  batch_axes = data if data and query.shape[0] % data_size == 0 else None
  heads = query.shape[2]
  head_axis = "model" if "model" in mesh.axis_names and heads % mesh.shape["model"] == 0 else None
  qkv = P(batch_axes, None, head_axis, None)
  segments = P(batch_axes, None)
  spec = lambda x, s: None if x is None else s
  in_specs = (qkv, qkv, qkv, spec(bias_table, P(head_axis, None)),
              spec(query_segment_ids, segments), spec(kv_segment_ids, segments), P())
  return jax.shard_map(call, in_specs=in_specs, out_specs=qkv, check_vma=False)(
      query, key, value, bias_table, query_segment_ids, kv_segment_ids,
      jax.numpy.asarray(query_offset, jax.numpy.int32))


__all__ = ["attention", "relative_position_bucket", "xla_attention", "IMPLS"]
