"""Attention kernels vs the XLA reference (t5x_lite.model.kernels.reference), on CPU and GPU.

On CPU Pallas runs in interpret mode, which is slow, so shapes are small (B=2, H=2, L<=136,
blocks of 32/64) while still covering ragged lengths, several tiles per row, packing,
padding, causal decoding with a traced offset, and distances past max_distance.

On a GPU the same tests compile the kernels with Triton (`pytest tests/test_kernels.py` on a
GPU machine); float32 tests then run with "highest" matmul precision on both sides (the
default lets XLA and Triton use TF32, which is not what a 1e-5 comparison checks), and the
bfloat16 tests use larger shapes.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.model import kernels
from t5x_lite.model.kernels import cudnn, flash, reference

ON_GPU = jax.default_backend() == "gpu"
# Tolerances come from the float32 reference's own error. Every result is compared with a
# float64 run of the same maths (`_attention_f64`); the float32 XLA reference's largest error
# against it, times ERR_MULTIPLE, plus TINY_REL of the largest float64 value, bounds the
# kernel's error. ERR_MULTIPLE = 8: the kernel rounds the same float32 terms as XLA but sums
# them in another order (key tiles, the online softmax's rescaling, FMA contraction), which
# moves its worst entry a few times past XLA's (2x to 4x seen on CPU and H100), never by an
# order of magnitude; a real bug (one tile's bias dropped, a bucket off by one) is off by
# about a table entry, ~1, i.e. thousands of times the bound
# (test_tolerance_rejects_a_perturbed_kernel). TINY_REL: a few float32 ulps of the largest
# value, for arrays that XLA happens to round (almost) exactly.
ERR_MULTIPLE = 8
TINY_REL = 1e-6


@pytest.fixture(autouse=True)
def _full_float32_matmuls():
  """float32 dots in full precision on GPU (TF32 otherwise), in XLA and in the kernels."""
  with jax.default_matmul_precision("highest"):
    yield


def _inputs(seed, batch, q_len, k_len, heads, dim, num_buckets=32):
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  q = jax.random.normal(ks[0], (batch, q_len, heads, dim), jnp.float32)
  k = jax.random.normal(ks[1], (batch, k_len, heads, dim), jnp.float32)
  v = jax.random.normal(ks[2], (batch, k_len, heads, dim), jnp.float32)
  table = jax.random.normal(ks[3], (heads, num_buckets), jnp.float32)
  cot = jax.random.normal(ks[4], (batch, q_len, heads, dim), jnp.float32)
  return q, k, v, table, cot


def _segments(lengths, total):
  """Packed segment ids [1]*n1 + [2]*n2 + ... then 0 padding up to `total`."""
  ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(
      total - sum(lengths))])
  return ids.astype(np.int32)


def _attention_f64(q, k, v, bias_table=None, *, bidirectional=True, max_distance=128,
                   query_segment_ids=None, kv_segment_ids=None, causal=False, query_offset=0):
  """`reference.xla_attention`'s maths in the inputs' dtype (float64 under jax.enable_x64).

  The reference itself pins float32 (logits and table), so it cannot be the float64 truth;
  this uses its bucket, bias and mask functions and softmax(q k^T + bias + mask) v.
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest")
  if bias_table is not None:
    logits = logits + reference.relative_position_bias(
        bias_table, q.shape[1], k.shape[1], bidirectional=bidirectional, max_distance=max_distance,
        query_offset=query_offset)[None]
  mask = reference.attention_mask(q.shape[1], k.shape[1], query_segment_ids=query_segment_ids,
                                  kv_segment_ids=kv_segment_ids, causal=causal,
                                  query_offset=query_offset)
  if mask is not None:
    logits = jnp.where(mask, logits, reference.MASK_VALUE)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v, precision="highest")


def _f64(fn, *args):
  """fn(*args) with x64 enabled and every float argument cast to float64; numpy results."""
  with jax.enable_x64(True):
    args = [None if a is None else jnp.asarray(np.asarray(a, np.float64)) for a in args]
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), jax.jit(fn)(*args))


def _assert_close_to_f64(got, xla, truth, name, multiple=ERR_MULTIPLE, tiny_rel=TINY_REL):
  """|got - truth| <= multiple * max |xla - truth| + tiny_rel * max |truth|, elementwise.

  Args:
    got: the kernel's result (any float dtype); xla: the XLA reference's result in the same
      dtype; truth: the float64 result; name: what is compared (for the message).
  """
  got, xla, truth = (np.asarray(x).astype(np.float64) for x in (got, xla, truth))
  assert got.shape == truth.shape == xla.shape, (name, got.shape, xla.shape, truth.shape)
  xla_err = float(np.max(np.abs(xla - truth), initial=0.0))
  bound = multiple * xla_err + tiny_rel * float(np.max(np.abs(truth), initial=0.0))
  err = np.abs(got - truth)
  worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
  assert err.size == 0 or err.max() <= bound, (
      f"{name}: max |kernel - float64| = {err.max():.3g} at {worst} > bound {bound:.3g} "
      f"({multiple} x the XLA reference's own max error {xla_err:.3g} + {tiny_rel} x "
      f"max |float64| {np.max(np.abs(truth)):.3g})")


def _compare(q, k, v, table, cot, *, block_q=32, block_k=32, grads=True, **kwargs):
  """Asserts pallas is as close to the float64 truth as xla (`_assert_close_to_f64`), for the
  output and the gradients of <out, cot>; returns the results of "xla", "pallas" and "f64"."""
  argnums = (0, 1, 2, 3) if table is not None else (0, 1, 2)

  def loss(attend, q, k, v, table, cot):
    out = attend(q, k, v, table)
    return jnp.sum(out * cot), out

  def run(attend):  # a function of (q, k, v, table, cot) -> (gradients or (), out)
    if not grads:
      return lambda *a: ((), loss(attend, *a)[1])
    return jax.grad(lambda *a: loss(attend, *a), argnums=argnums, has_aux=True)

  impls = {impl: functools.partial(lambda q, k, v, t, impl: kernels.attention(
      q, k, v, bias_table=t, impl=impl, block_q=block_q, block_k=block_k, **kwargs), impl=impl)
           for impl in ("xla", "pallas")}
  results = {impl: jax.jit(run(attend))(q, k, v, table, cot) for impl, attend in impls.items()}
  results["f64"] = _f64(run(lambda q, k, v, t: _attention_f64(q, k, v, t, **kwargs)), q, k, v,
                        table, cot)
  (g_pallas, out_pallas), (g_xla, out_xla), (g_f64, out_f64) = (
      results[r] for r in ("pallas", "xla", "f64"))
  _assert_close_to_f64(out_pallas, out_xla, out_f64, "out")
  for name, got, xla, truth in zip(("dq", "dk", "dv", "dtable"), g_pallas, g_xla, g_f64):
    _assert_close_to_f64(got, xla, truth, name)
  return results


def test_encoder_packed_padded_ragged_length():
  """Bidirectional buckets, 114 tokens (not a block multiple), 3 packed segments + padding."""
  q, k, v, table, cot = _inputs(0, 2, 114, 114, 2, 32)
  seg = jnp.asarray(np.stack([_segments([40, 50, 10], 114), _segments([114], 114)]))
  _compare(q, k, v, table, cot, bidirectional=True, query_segment_ids=seg, kv_segment_ids=seg)


def test_decoder_causal_packed():
  """Causal buckets + causal mask (tile skipping) with packed targets and padding."""
  q, k, v, table, cot = _inputs(1, 2, 114, 114, 2, 16)
  seg = jnp.asarray(np.stack([_segments([30, 60], 114), _segments([100], 114)]))
  _compare(q, k, v, table, cot, bidirectional=False, causal=True, query_segment_ids=seg,
           kv_segment_ids=seg)


def test_cross_attention_rows_without_keys():
  """Lq != Lk, no bias table; padded decoder rows (segment 0) have no valid encoder key and
  must average v uniformly over all Lk keys, as the reference does."""
  q, k, v, _, cot = _inputs(2, 2, 50, 114, 2, 16)
  q_seg = jnp.asarray(np.stack([_segments([20, 25], 50), _segments([50], 50)]))
  kv_seg = jnp.asarray(np.stack([_segments([60, 54], 114), _segments([100], 114)]))
  _compare(q, k, v, None, cot, query_segment_ids=q_seg, kv_segment_ids=kv_seg)


def test_causal_rows_without_keys():
  """Causal with rows that match no key segment: the kernel must still visit the tiles it
  normally skips (forward) and give those rows' uniform P to every key (dk/dv)."""
  q, k, v, table, cot = _inputs(3, 2, 64, 64, 2, 16)
  q_seg = jnp.asarray(np.stack([np.r_[np.full(40, 1), np.full(24, 3)],
                                np.full(64, 1)]).astype(np.int32))
  kv_seg = jnp.asarray(np.stack([np.full(64, 1), np.full(64, 1)]).astype(np.int32))
  q_seg = q_seg.at[0, 5].set(7)  # one empty row in the first q tile too
  _compare(q, k, v, table, cot, bidirectional=False, causal=True, query_segment_ids=q_seg,
           kv_segment_ids=kv_seg)


def test_long_distances_use_the_last_buckets():
  """Length 136 > max_distance 128: far keys share the last bucket; gradients reach it."""
  q, k, v, table, cot = _inputs(4, 1, 136, 136, 2, 16)
  rel = jnp.arange(136)[None, :] - jnp.arange(136)[:, None]
  buckets = reference.relative_position_bucket(rel, bidirectional=True)
  used = np.zeros(32, bool)
  used[np.unique(np.asarray(buckets))] = True
  assert used[15] and used[31]  # the saturated "farther than max_distance" buckets
  results = _compare(q, k, v, table, cot, block_q=64, block_k=64, bidirectional=True)
  # Gradient exactly where buckets occur (16, "distance +0", never does), across all heads.
  np.testing.assert_array_equal(np.abs(np.asarray(results["pallas"][0][3])) > 0,
                                np.broadcast_to(used, (2, 32)))


def test_small_max_distance():
  """max_distance 16 with 16 buckets: most pairs sit in the logarithmic / saturated buckets."""
  q, k, v, table, cot = _inputs(5, 2, 48, 48, 2, 16, num_buckets=16)
  _compare(q, k, v, table, cot, block_q=16, block_k=16, bidirectional=False, causal=True,
           max_distance=16)


def _drop_last_bucket_of_each_tile(original):
  """An off-by-one in the tile's bucket range: the per-bucket loop misses bucket hi."""
  def bucket_range(qpos, kpos, cfg):
    lo, hi = original(qpos, kpos, cfg)
    return lo, jnp.where(lo < hi, hi - 1, hi)
  return bucket_range


def _drop_bias_of_one_tile(original):
  """The tile of queries 0.. and keys 16.. loses its relative position bias."""
  def tile_logits(q, k, qpos, kpos, qseg, kseg, table_ref, head, cfg):
    s, valid, bucket_range = original(q, k, qpos, kpos, qseg, kseg, table_ref, head, cfg)
    unbiased = original(q, k, qpos, kpos, qseg, kseg, None, head, cfg)[0]
    return jnp.where((qpos[0] == 0) & (kpos[0] == 16), unbiased, s), valid, bucket_range
  return tile_logits


def test_tolerance_rejects_a_perturbed_kernel():
  """The float64-derived bound accepts the kernel and rejects it with a realistic bug."""
  q, k, v, table, cot = _inputs(13, 1, 48, 48, 1, 16)
  kw = dict(block_q=16, block_k=16, grads=False, bidirectional=True)
  _compare(q, k, v, table, cot, **kw)
  for name, patch in (("_tile_bucket_range", _drop_last_bucket_of_each_tile),
                      ("_tile_logits", _drop_bias_of_one_tile)):
    with pytest.MonkeyPatch.context() as monkeypatch:
      monkeypatch.setattr(flash, name, patch(getattr(flash, name)))
      with pytest.raises(AssertionError, match=r"out: max \|kernel - float64\|"):
        _compare(q, k, v, table, cot, **kw)


def test_decode_step_traced_offset():
  """Lq=1 against a KV cache of 40, causal, offset traced under jit (one compile, many steps)."""
  q, k, v, table, _ = _inputs(6, 2, 1, 40, 2, 16)

  @jax.jit
  def step(offset):
    kw = dict(bias_table=table, bidirectional=False, causal=True, query_offset=offset)
    return (flash.flash_attention(q, k, v, block_q=32, block_k=32, **kw),
            reference.xla_attention(q, k, v, **kw))

  for offset in (0, 17, 39):
    got, want = step(jnp.int32(offset))
    truth = _f64(lambda q, k, v, t: _attention_f64(
        q, k, v, t, bidirectional=False, causal=True, query_offset=offset), q, k, v, table)
    _assert_close_to_f64(got, want, truth, f"out at offset {offset}")
  # The offset matters: step 17 differs from step 39.
  assert not np.allclose(step(jnp.int32(17))[0], step(jnp.int32(39))[0])


def test_bfloat16_output_dtype_and_value():
  q, k, v, table, _ = _inputs(7, 2, 40, 40, 2, 16)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  kw = dict(bias_table=table, bidirectional=True)
  got = flash.flash_attention(q, k, v, block_q=32, block_k=32, **kw)
  want = reference.xla_attention(q, k, v, **kw)
  assert got.dtype == want.dtype == jnp.bfloat16
  # The truth from the same bfloat16 inputs: both sides then differ from it by the rounding of
  # their bfloat16 output (and of P before P v), not by the inputs' rounding.
  truth = _f64(lambda q, k, v, t: _attention_f64(q, k, v, t, bidirectional=True), q, k, v,
               table)
  _assert_close_to_f64(got, want, truth, "bfloat16 out")


def _relative_error(x, truth):
  x, truth = np.asarray(x, np.float32), np.asarray(truth, np.float32)
  return float(np.max(np.abs(x - truth)) / np.max(np.abs(truth)))


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_forward_and_backward_no_worse_than_xla(causal):
  """bf16 q/k/v: output and gradients of the kernel are as close to the float64 truth (of the
  float32 inputs) as the XLA reference's own bf16 results are: within 2x + 4e-3 x max |truth|.

  The stated tolerance: in bf16 both are about 1e-2 relative off the truth (8 mantissa bits),
  mostly from rounding the same inputs; the kernel accumulates in float32 like XLA, so it must
  not be worse than that.
  """
  batch, length, heads, dim, block = (2, 1000, 4, 64, 128) if ON_GPU else (1, 72, 2, 16, 32)
  q, k, v, table, cot = _inputs(11, batch, length, length, heads, dim)
  seg = jnp.asarray(np.stack([_segments([length // 3, length // 2], length)] * batch))
  kw = dict(bidirectional=not causal, causal=causal, query_segment_ids=seg, kv_segment_ids=seg)

  def grads(attend, dtype):
    def loss(q, k, v, t, cot):
      out = attend(q.astype(dtype), k.astype(dtype), v.astype(dtype), t)
      return jnp.sum(out.astype(cot.dtype) * cot), out
    return jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)

  def impl(name):
    return lambda q, k, v, t: kernels.attention(q, k, v, bias_table=t, impl=name, block_q=block,
                                                block_k=block, **kw)

  truth_g, truth_out = _f64(grads(lambda q, k, v, t: _attention_f64(q, k, v, t, **kw),
                                  jnp.float64), q, k, v, table, cot)
  xla_g, xla_out = jax.jit(grads(impl("xla"), jnp.bfloat16))(q, k, v, table, cot)
  pallas_g, pallas_out = jax.jit(grads(impl("pallas"), jnp.bfloat16))(q, k, v, table, cot)
  assert pallas_out.dtype == jnp.bfloat16
  for name, got, ref, truth in zip(("out", "dq", "dk", "dv", "dtable"),
                                   (pallas_out,) + pallas_g, (xla_out,) + xla_g,
                                   (truth_out,) + truth_g):
    _assert_close_to_f64(got, ref, truth, name, multiple=2, tiny_rel=4e-3)
    assert _relative_error(got, truth) < 5e-2, name


@pytest.mark.skipif(not ON_GPU, reason="needs a GPU: checks the kernel compiles with Triton")
def test_gpu_runs_compiled_triton_kernels():
  """On a GPU the kernel is compiled (not interpret mode): a Triton custom call in the HLO."""
  q, k, v, table, _ = _inputs(12, 1, 256, 256, 2, 64)
  hlo = jax.jit(lambda *a: flash.flash_attention(*a, bias_table=table)).lower(q, k, v).as_text()
  assert "triton" in hlo


def test_replicated_per_shard_call_warns_once_with_shapes_mesh_and_fix(caplog):
  """kernels.shard_axes: a batch or head count that the mesh axes do not divide is replicated
  (every device runs the whole of it); that is logged once per shapes and mesh."""
  mesh = {"data": 4, "model": 2}
  q, k = (6, 10, 3, 16), (6, 12, 3, 16)
  with caplog.at_level("WARNING", logger="t5x_lite.model.kernels"):
    assert kernels.shard_axes(mesh, (8, 10, 4, 16), (8, 12, 4, 16)) == (("data",), "model")
    assert not caplog.records
    assert kernels.shard_axes(mesh, q, k) == (None, None)
    assert kernels.shard_axes(mesh, q, k) == (None, None)  # the same call: no second line
    assert kernels.shard_axes({"replica": 2, "data": 2, "model": 1}, (4, 10, 3, 16),
                              (4, 12, 3, 16)) == (("replica", "data"), "model")
  assert len(caplog.records) == 1
  message = caplog.records[0].getMessage()
  assert message == (
      "attention_impl 'pallas' (query (6, 10, 3, 16), key (6, 12, 3, 16) [B, L, H, D], mesh "
      "{'data': 4, 'model': 2}) runs replicated, every device on the whole batch and set of "
      "heads: the batch 6 is not a multiple of the mesh's data axes (4 devices): make the "
      "batch of each call (the batch size, divided by train.num_microbatches) a multiple of "
      "4; the 3 heads are not a multiple of the mesh's 'model' axis (2 devices): make "
      "T5Config.num_heads a multiple of 2 or Partitioner.num_partitions a divisor of 3.")
  caplog.clear()
  with caplog.at_level("WARNING", logger="t5x_lite.model.kernels"):
    assert kernels.shard_axes(mesh, (8, 10, 3, 16), (8, 12, 3, 16)) == (("data",), None)
  assert [r.getMessage().split("whole ", 1)[1] for r in caplog.records] == [
      "set of heads: the 3 heads are not a multiple of the mesh's 'model' axis (2 devices): make "
      "T5Config.num_heads a multiple of 2 or Partitioner.num_partitions a divisor of 3."]


def test_bad_block_size_names_the_gin_binding():
  q, k, v, _, _ = _inputs(8, 1, 16, 16, 1, 16)
  with pytest.raises(ValueError, match="attention_block_q"):
    flash.flash_attention(q, k, v, block_q=24)


@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_matches_reference(causal):
  """On CPU cudnn_attention runs jax.nn.dot_product_attention's XLA implementation."""
  q, k, v, table, cot = _inputs(9, 2, 30, 30, 2, 16)
  seg = jnp.asarray(np.stack([_segments([10, 15], 30), _segments([30], 30)]))
  kw = dict(bias_table=table, bidirectional=not causal, causal=causal, query_segment_ids=seg,
            kv_segment_ids=seg)

  def loss(fn, q, k, v, t):
    out = fn(q, k, v, **dict(kw, bias_table=t))
    return jnp.sum(out * cot.astype(out.dtype)), out

  grad = lambda fn: jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2, 3), has_aux=True)  # noqa
  g_c, out_c = jax.jit(grad(cudnn.cudnn_attention))(q, k, v, table)
  g_x, out_x = jax.jit(grad(reference.xla_attention))(q, k, v, table)
  g_t, out_t = _f64(grad(_attention_f64), q, k, v, table)
  for name, a, b, t in zip(("out", "dq", "dk", "dv", "dtable"), (out_c,) + g_c, (out_x,) + g_x,
                           (out_t,) + g_t):
    _assert_close_to_f64(a, b, t, name)


def _tensor_sizes(hlo_text):
  """Element counts of every tensor type in StableHLO text."""
  sizes = set()
  for dims in re.findall(r"tensor<((?:\d+x)+)[a-z]", hlo_text):
    sizes.add(int(np.prod([int(d) for d in dims.rstrip("x").split("x")])))
  return sizes


def test_no_dense_bias_or_logits_in_pallas_forward_and_backward():
  """96 x 96 with blocks of 32: an [Lq, Lk] (9216), [H, Lq, Lk] or [B, H, Lq, Lk] array would
  show up as a tensor of that many elements; tiles are 32 x 32 and q/k/v have 6144."""
  batch, heads, length, dim = 2, 2, 96, 16
  q, k, v, table, cot = _inputs(10, batch, length, length, heads, dim)
  seg = jnp.ones((batch, length), jnp.int32)
  dense = {length * length, heads * length * length, batch * heads * length * length}

  def lowered(impl):
    def loss(q, k, v, t):
      out = kernels.attention(q, k, v, bias_table=t, bidirectional=False, causal=True,
                              query_segment_ids=seg, kv_segment_ids=seg, impl=impl,
                              block_q=32, block_k=32)
      return jnp.sum(out * cot)
    fwd = jax.jit(loss).lower(q, k, v, table).as_text()
    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(q, k, v, table).as_text()
    return _tensor_sizes(fwd), _tensor_sizes(bwd)

  xla_fwd, xla_bwd = lowered("xla")
  assert dense & xla_fwd and dense & xla_bwd  # the check can fail: the reference has them
  pallas_fwd, pallas_bwd = lowered("pallas")
  assert not dense & pallas_fwd, sorted(dense & pallas_fwd)
  assert not dense & pallas_bwd, sorted(dense & pallas_bwd)


def _float64_attention_in_float32_model(query, key, value, **kwargs):
  """For kernels.xla_attention: the attention in float64 (x64 on), its output float32."""
  kwargs = {k: v for k, v in kwargs.items() if k not in ("dropout_rate", "dropout_rng",
                                                         "row_ids")}
  up = lambda x: None if x is None else x.astype(jnp.float64)  # noqa
  bias_table = kwargs.pop("bias_table")
  return _attention_f64(up(query), up(key), up(value), up(bias_table), **kwargs).astype(
      query.dtype)


def test_tiny_t5_same_loss_and_gradients_with_pallas(monkeypatch):
  """A whole T5 (encoder self, causal decoder self and cross-attention, padded batch) gives
  the same loss and parameter gradients with attention_impl "pallas" as with "xla": as close
  to the same float32 model with float64 attention as the "xla" model is."""
  from t5x_lite.model import network  # pylint: disable=g-import-not-at-top

  def make(impl):
    return network.Transformer(network.T5Config(
        vocab_size=64, d_model=32, d_ff=64, d_kv=16, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=1, dropout_rate=0.0, attention_impl=impl, attention_block_q=32,
        attention_block_k=32))

  rng = np.random.RandomState(0)
  enc = rng.randint(2, 64, size=(2, 40)).astype(np.int32)
  enc[1, 29:] = 0  # padding
  tgt = rng.randint(2, 64, size=(2, 24)).astype(np.int32)
  tgt[0, 17:] = 0
  dec_in = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
  params = make("xla").init(jax.random.PRNGKey(0), enc, dec_in, tgt)["params"]

  def loss(params, impl):
    logits = make(impl).apply({"params": params}, enc, dec_in, tgt).astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * (tgt > 0)) / jnp.sum(tgt > 0)

  loss_x, grads_x = jax.jit(jax.value_and_grad(lambda p: loss(p, "xla")))(params)
  loss_p, grads_p = jax.jit(jax.value_and_grad(lambda p: loss(p, "pallas")))(params)
  with monkeypatch.context() as patch, jax.enable_x64(True):
    patch.setattr(kernels, "xla_attention", _float64_attention_in_float32_model)
    loss_t, grads_t = jax.jit(jax.value_and_grad(lambda p: loss(p, "xla")))(params)
  assert loss_t.dtype == jnp.float32
  _assert_close_to_f64(loss_p, loss_x, loss_t, "loss")
  flat_x = jax.tree_util.tree_leaves_with_path(grads_x)
  flat_p, flat_t = jax.tree_util.tree_leaves(grads_p), jax.tree_util.tree_leaves(grads_t)
  assert len(flat_x) == len(flat_p) == len(flat_t) > 10
  for (path, g_x), g_p, g_t in zip(flat_x, flat_p, flat_t):
    _assert_close_to_f64(g_p, g_x, g_t, jax.tree_util.keystr(path))


def test_forward_and_backward_lower_to_triton():
  """Cross-lowers for platform "cuda" on this CPU machine: every primitive in the kernels
  has a Triton lowering and every loaded tile has a power-of-two size (not compiled to PTX)."""
  q = jnp.zeros((2, 100, 2, 64), jnp.bfloat16)
  table = jnp.zeros((2, 32), jnp.float32)
  seg = jnp.ones((2, 100), jnp.int32)

  def fwd_bwd(q, k, v, table):
    def f(q, k, v, table):
      out = flash.flash_attention(q, k, v, bias_table=table, bidirectional=False, causal=True,
                                  query_segment_ids=seg, kv_segment_ids=seg, block_q=64,
                                  block_k=32, interpret=False, backend="gpu")
      return jnp.sum(out.astype(jnp.float32))
    return jax.value_and_grad(f, argnums=(0, 1, 2, 3))(q, k, v, table)

  triton = "__gpu$xla.gpu.triton"
  exported = jax.export.export(
      jax.jit(fwd_bwd), platforms=["cuda"],
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(triton)])(q, q, q, table)
  assert exported.mlir_module().count(f"@{triton}") == 3  # forward, dq + dtable, dk + dv


@pytest.mark.parametrize("bidirectional", [True, False])
def test_tile_bucket_range_holds_every_bucket_of_the_tile(bidirectional):
  """The kernels loop only over [lo, hi] per tile: that range must cover the tile's buckets."""
  cfg = flash._Config(block_q=16, block_k=16, q_len=0, k_len=0, num_buckets=32,
                      bidirectional=bidirectional, max_distance=128, causal=False,
                      has_segments=False, interpret=True, platform="cpu")
  tile_buckets = jax.jit(lambda qpos, kpos: (flash._tile_buckets(qpos, kpos, cfg),)
                         + flash._tile_bucket_range(qpos, kpos, cfg))
  tiles = widths = single = 0
  for q0 in range(0, 400, 16):
    for k0 in range(0, 400, 16):
      qpos, kpos = jnp.arange(q0, q0 + 16), jnp.arange(k0, k0 + 16)
      bucket, lo, hi = (np.asarray(x) for x in tile_buckets(qpos, kpos))
      assert lo <= bucket.min() and bucket.max() <= hi, (q0, k0, lo, hi)
      tiles, widths, single = tiles + 1, widths + (hi - lo + 1), single + int(lo == hi)
      if lo == hi:  # the kernels' scalar fast path: the whole tile is that one bucket
        assert (bucket == lo).all(), (q0, k0)
  assert single > 0.5 * tiles
  assert widths < 0.5 * tiles * 32  # and the ranges are mostly narrow (far tiles: one bucket)


def test_cached_greedy_decoding_same_with_pallas():
  """Decoding steps run the kernel with Lq=1 against the KV cache at a traced query_offset
  (decoding.decode's loop): same tokens and scores as with xla attention."""
  from t5x_lite.model import decoding, network  # pylint: disable=g-import-not-at-top

  def make(impl):
    return network.Transformer(network.T5Config(
        vocab_size=64, d_model=32, d_ff=64, d_kv=16, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=1, dropout_rate=0.0, attention_impl=impl))

  enc = np.random.RandomState(1).randint(2, 64, size=(2, 12)).astype(np.int32)
  enc[1, 7:] = 0
  params = make("xla").init(jax.random.PRNGKey(1), enc, enc)["params"]
  # Larger weights than the init so that the greedy path varies from step to step.
  params = jax.tree_util.tree_map(lambda p: p * 3.0, params)
  tokens_x, scores_x = decoding.decode(make("xla"), params, enc, max_decode_length=8)
  tokens_p, scores_p = decoding.decode(make("pallas"), params, enc, max_decode_length=8)
  with pytest.MonkeyPatch.context() as patch, jax.enable_x64(True):
    patch.setattr(kernels, "xla_attention", _float64_attention_in_float32_model)
    tokens_t, scores_t = decoding.decode(make("xla"), params, enc, max_decode_length=8)
  assert len(set(np.asarray(tokens_x).ravel().tolist())) > 2  # not one repeated token
  np.testing.assert_array_equal(tokens_p, tokens_x)
  np.testing.assert_array_equal(tokens_t, tokens_x)
  _assert_close_to_f64(scores_p, scores_x, scores_t, "scores")
