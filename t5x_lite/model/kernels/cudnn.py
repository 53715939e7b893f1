"""T5 attention through `jax.nn.dot_product_attention` (cuDNN fused attention on GPU).

A comparison point for the Pallas kernel: cuDNN takes the bias as a dense tensor, so the
[1, H, Lq, Lk] relative position bias IS materialised here (that is the cost the Pallas
kernel avoids). On CPU, or for float32 inputs (cuDNN fused attention wants bf16 / fp16),
`jax.nn.dot_product_attention` runs its XLA implementation, which has the reference's
semantics exactly (masked logits replaced by a constant, softmax in float32).

Verified on CPU (the XLA implementation) only; the cuDNN path is unverified here. Note that
cuDNN may not reproduce the reference's "uniform average" on rows with no valid key.
"""

import jax
import jax.numpy as jnp

from t5x_lite.model.kernels.reference import attention_mask, relative_position_bias

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def cudnn_attention(query, key, value, *, bias_table=None, bidirectional=True, max_distance=128,
                    query_segment_ids=None, kv_segment_ids=None, causal=False, query_offset=0,
                    implementation=None):
  """T5 attention (no 1/sqrt(D) scaling) via jax.nn.dot_product_attention.

  Args:
    query: [B, Lq, H, D].
    key, value: [B, Lk, H, D].
    bias_table: optional [H, NB] relative position bias table.
    bidirectional, max_distance: bucket settings (see `reference.relative_position_bucket`).
    query_segment_ids: optional int [B, Lq]; kv_segment_ids: optional int [B, Lk].
    causal: mask keys after the query (built as an explicit mask so query_offset works).
    query_offset: absolute position of query 0 (int or traced scalar).
    implementation: None picks "cudnn" on GPU for bf16/fp16 inputs and "xla" otherwise;
      or force "xla" / "cudnn".

  Returns:
    [B, Lq, H, D] in query.dtype.
  """
  q_len, k_len = query.shape[1], key.shape[1]
  if implementation is None:
    use_cudnn = jax.default_backend() == "gpu" and query.dtype in _CUDNN_DTYPES
    implementation = "cudnn" if use_cudnn else "xla"
  bias = None
  if bias_table is not None:
    bias = relative_position_bias(bias_table.astype(jnp.float32), q_len, k_len,
                                  bidirectional=bidirectional, max_distance=max_distance,
                                  query_offset=query_offset)[None]  # [1, H, Lq, Lk]
    # cuDNN wants the bias in the activation dtype; the XLA path adds it in float32.
    bias = bias.astype(query.dtype) if implementation == "cudnn" else bias
  mask = attention_mask(q_len, k_len, query_segment_ids=query_segment_ids,
                        kv_segment_ids=kv_segment_ids, causal=causal,
                        query_offset=query_offset)  # [B or 1, 1, Lq, Lk] or None
  out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=1.0,
                                     implementation=implementation)
  return out.astype(query.dtype)
