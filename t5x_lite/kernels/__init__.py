"""One attention entry for every attention layer: encoder self, causal decoder self, cross, decode step.

`impl` picks the implementation:
  - "xla":    einsum + softmax with a dense [H, Lq, Lk] bias (reference; works everywhere).
  - "pallas": flash attention computing the T5 bias per tile from the [H, NB] table.
  - "cudnn":  jax.nn.dot_product_attention with a materialised bias (GPU comparison point).
"""

from t5x_lite.kernels.reference import relative_position_bucket, xla_attention

IMPLS = ("xla", "pallas", "cudnn")


def attention(query, key, value, *, bias_table=None, bidirectional=True, max_distance=128,
              query_segment_ids=None, kv_segment_ids=None, causal=False, query_offset=0,
              dropout_rate=0.0, dropout_rng=None, impl="xla", block_q=128, block_k=128):
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
    dropout_rate, dropout_rng: dropout on attention probabilities (xla only).
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
                         **kwargs)
  if impl not in IMPLS:
    raise ValueError(f"Unknown attention impl {impl!r}; choose one of {IMPLS} "
                     "(gin: T5Config.attention_impl).")
  if dropout_rate > 0.0:
    raise ValueError(
        f"attention impl {impl!r} has no dropout on attention probabilities; set "
        "T5Config.attention_dropout_rate = 0.0 in gin (other dropout stays) or use impl 'xla'.")
  if impl == "pallas":
    from t5x_lite.kernels import flash  # pylint: disable=g-import-not-at-top
    return flash.flash_attention(query, key, value, block_q=block_q, block_k=block_k, **kwargs)
  from t5x_lite.kernels import cudnn  # pylint: disable=g-import-not-at-top
  return cudnn.cudnn_attention(query, key, value, **kwargs)


__all__ = ["attention", "relative_position_bucket", "xla_attention", "IMPLS"]
