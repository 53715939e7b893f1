"""One attention entry for every attention layer: encoder self, causal decoder self, cross, decode step.

`impl` picks the implementation:
  - "xla":    einsum + softmax with a dense [H, Lq, Lk] bias (reference; works everywhere).
  - "pallas": flash attention computing the T5 bias per tile from the [H, NB] table.
  - "cudnn":  jax.nn.dot_product_attention with a materialised bias (GPU comparison point).
"""

import functools
import logging

import jax
from jax.sharding import PartitionSpec as P

from t5x_lite.model.kernels.reference import relative_position_bucket, xla_attention

IMPLS = ("xla", "pallas", "cudnn")
log = logging.getLogger(__name__)


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
    from t5x_lite.model.kernels import flash  # pylint: disable=g-import-not-at-top
    kernel = functools.partial(flash.flash_attention, block_q=block_q, block_k=block_k)
    return _per_shard(kernel, query, key, value, **kwargs)
  from t5x_lite.model.kernels import cudnn  # pylint: disable=g-import-not-at-top
  return cudnn.cudnn_attention(query, key, value, **kwargs)


_REPLICATION_WARNED = set()


def shard_axes(mesh_shape, query_shape, key_shape):
  """The mesh axes that split the batch and the heads of a per-shard kernel call.

  The batch goes on the ("replica", "data") axes, the heads on "model", each only if it
  divides their size; otherwise that dimension is replicated: every device then runs the
  kernel on the whole batch (or all heads), a silent multiple of the work and memory. That is
  logged once per distinct shapes and mesh, with what to change.

  Args:
    mesh_shape: {axis name: size} of the mesh.
    query_shape: [B, Lq, H, D]; key_shape: [B, Lk, H, D] (for the message).

  Returns:
    (batch_axes, head_axis): a tuple of axis names or None; "model" or None.
  """
  data = tuple(a for a in ("replica", "data") if a in mesh_shape)
  data_size = 1
  for a in data:
    data_size *= mesh_shape[a]
  batch, heads = query_shape[0], query_shape[2]
  batch_axes = data if data and batch % data_size == 0 else None
  model_size = mesh_shape.get("model", 1)
  head_axis = "model" if "model" in mesh_shape and heads % model_size == 0 else None
  problems = []
  if data and batch_axes is None and data_size > 1:
    problems.append(f"the batch {batch} is not a multiple of the mesh's {'x'.join(data)} "
                    f"axes ({data_size} devices): make the batch of each call (the batch size, "
                    f"divided by train.num_microbatches) a multiple of {data_size}")
  if "model" in mesh_shape and head_axis is None and model_size > 1:
    problems.append(f"the {heads} heads are not a multiple of the mesh's 'model' axis "
                    f"({model_size} devices): make T5Config.num_heads a multiple of "
                    f"{model_size} or Partitioner.num_partitions a divisor of {heads}")
  key = (tuple(sorted(mesh_shape.items())), tuple(query_shape), tuple(key_shape))
  if problems and key not in _REPLICATION_WARNED:
    _REPLICATION_WARNED.add(key)
    log.warning(
        "attention_impl 'pallas' (query %s, key %s [B, L, H, D], mesh %s) runs replicated, "
        "every device on the whole %s: %s.", tuple(query_shape), tuple(key_shape),
        dict(mesh_shape), " and ".join(
            w for w, bad in (("batch", batch_axes is None and data_size > 1),
                             ("set of heads", head_axis is None and model_size > 1)) if bad),
        "; ".join(problems))
  return batch_axes, head_axis


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
  batch_axes, head_axis = shard_axes(dict(mesh.shape), query.shape, key.shape)
  qkv = P(batch_axes, None, head_axis, None)
  segments = P(batch_axes, None)
  spec = lambda x, s: None if x is None else s
  in_specs = (qkv, qkv, qkv, spec(bias_table, P(head_axis, None)),
              spec(query_segment_ids, segments), spec(kv_segment_ids, segments), P())
  return jax.shard_map(call, in_specs=in_specs, out_specs=qkv, check_vma=False)(
      query, key, value, bias_table, query_segment_ids, kv_segment_ids,
      jax.numpy.asarray(query_offset, jax.numpy.int32))


__all__ = ["attention", "relative_position_bucket", "xla_attention", "IMPLS"]
