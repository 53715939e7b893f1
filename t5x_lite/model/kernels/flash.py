"""Flash attention in Pallas with the T5 relative position bias computed per tile.

softmax(q k^T + bias + mask) v, tiled flash-attention style (online softmax over key tiles),
forward and backward (flash-attention-2 style: P is recomputed from saved row statistics).
The bias comes from the small [H, NB] table: each tile computes its bucket ids with
`reference.relative_position_bucket` and selects table entries bucket by bucket, so no
[H, Lq, Lk] (or [Lq, Lk]) array exists in the forward or the backward; the table gradient
is reduced per tile into a [B, H, num_q_blocks, NB] array and summed outside.

Layout inside: [B, H, L, D], lengths padded to the block sizes (padded keys are excluded
from the softmax entirely, padded queries are sliced off), D padded to a power of two >= 16.
Rows with no valid key (e.g. padded decoder queries in cross-attention) average v over all
Lk keys exactly as the reference does, also under causal tile skipping: the forward then
visits the skipped tiles for that q block, the dk/dv kernel the q tiles holding such rows.

Verification status: numerics checked against `reference.xla_attention` on CPU in Pallas
interpret mode (tests/test_kernels.py) and, with the same tests, compiled by Triton on an NVIDIA
H100 (bench/README.md). Never lowered through Mosaic (that needs a TPU). The code sticks to
constructs both backends lower (static shapes, power-of-two tiles, single-axis reductions,
dynamic-bound fori_loop and lax.cond, scalar table reads, SMEM for the table on TPU). Known
TPU caveat: 1-D blocks of the row statistics and segment ids probably need block_q / block_k
>= 128 to meet Mosaic's lane tiling.
Cost of the bias: a tile whose distances all fall in one bucket (most tiles of a long
sequence) adds one table entry as a scalar; other tiles (near the diagonal) compute bucket ids
per element and do one select (one tile reduction for the table gradient) per bucket in range.
"""

import dataclasses
import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from t5x_lite.model.kernels.reference import MASK_VALUE, relative_position_bucket

# Padded keys (beyond Lk) get a logit far below MASK_VALUE: exp(PAD - MASK_VALUE) == 0, so they
# never enter a row's sum, even a row whose real keys are all masked (that row must average
# over exactly the Lk real keys, like the reference).
PAD_VALUE = -1e30
# A row max below this means the row has no valid key (all logits are MASK_VALUE).
_EMPTY_ROW = MASK_VALUE / 2
MIN_BLOCK = 16  # Triton's smallest dot tile.


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static kernel settings (hashable: a nondiff argument of the custom_vjp)."""
  block_q: int
  block_k: int
  q_len: int        # real (unpadded) lengths
  k_len: int
  num_buckets: int  # real table width (0: no bias)
  bidirectional: bool
  max_distance: int
  causal: bool
  has_segments: bool
  interpret: bool
  platform: str     # jax.default_backend(): "cpu", "gpu" or "tpu"

  def compiler_params(self):
    """Triton settings on GPU (they also select Triton over Mosaic GPU); None elsewhere."""
    if self.platform != "gpu" or self.interpret:
      return None
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
    return plgpu.CompilerParams(num_warps=4 if self.block_q * self.block_k <= 64 * 64 else 8,
                                num_stages=2)


def _pow2_at_least(n, lo=MIN_BLOCK):
  return max(lo, pl.next_power_of_2(n))


# ----------------------------------------------------------------------------- tile helpers


def _unpack(refs, cfg):
  """Splits the flat ref list into (qpos, qseg, kseg, table, *rest); absent inputs are None."""
  refs = list(refs)
  qpos = refs.pop(0)
  qseg = refs.pop(0) if cfg.has_segments else None
  kseg = refs.pop(0) if cfg.has_segments else None
  table = refs.pop(0) if cfg.num_buckets else None
  return qpos, qseg, kseg, table, refs


def _bucket_fn(cfg):
  return functools.partial(relative_position_bucket, bidirectional=cfg.bidirectional,
                           num_buckets=cfg.num_buckets, max_distance=cfg.max_distance)


def _tile_bucket_range(qpos, kpos, cfg):
  """A range [lo, hi] of bucket ids that holds every bucket of the tile (scalars only).

  Buckets are monotone in the distance on each side of 0, so the ids of a tile lie between
  those of its extreme relative positions (from 0 if the tile straddles the diagonal). Most
  tiles of a long sequence hold one bucket (lo == hi): distances past max_distance share the
  last one, and the logarithmic buckets are wide.
  """
  bucket_of = _bucket_fn(cfg)
  r_min, r_max = jnp.min(kpos) - jnp.max(qpos), jnp.max(kpos) - jnp.min(qpos)
  b_min, b_max = bucket_of(r_min), bucket_of(r_max)
  lo = jnp.where((r_min <= 0) & (r_max >= 0), 0, jnp.minimum(b_min, b_max))
  return lo, jnp.maximum(b_min, b_max)


def _tile_buckets(qpos, kpos, cfg):
  """Bucket ids of a tile: int32 [bq, bk] (a float log per element: only where lo < hi)."""
  return _bucket_fn(cfg)(kpos[None, :] - qpos[:, None])


def _tile_logits(q, k, qpos, kpos, qseg, kseg, table_ref, head, cfg):
  """Masked logits of one [block_q, block_k] tile.

  Args:
    q: [bq, D]; k: [bk, D]; qpos: int32 [bq] absolute query positions; kpos: int32 [bk];
    qseg / kseg: int32 [bq] / [bk] or None; table_ref: [H, NB_pad] ref or None; head: scalar.

  Returns:
    s: f32 [bq, bk] logits (masked entries = MASK_VALUE, padded keys = PAD_VALUE);
    valid: bool [bq, bk], True where the logit depends on q, k and the bias (its gradient
      is nonzero only there); bucket_range: `_tile_bucket_range`'s (lo, hi), or None.
  """
  s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  bucket_range = None
  if table_ref is not None:
    bucket_range = lo, hi = _tile_bucket_range(qpos, kpos, cfg)

    def varied_bias():
      # A select per bucket instead of a gather: gathers do not lower on Triton / Mosaic.
      bucket = _tile_buckets(qpos, kpos, cfg)
      return lax.fori_loop(lo, hi + 1,
                           lambda b, acc: jnp.where(bucket == b, table_ref[head, b], acc),
                           jnp.zeros_like(s))
    # One bucket (most tiles): a scalar add, no per-element bucket computation.
    s = lax.cond(lo == hi, lambda: s + table_ref[head, lo], lambda: s + varied_bias())
  valid = jnp.broadcast_to((kpos < cfg.k_len)[None, :], s.shape)
  mask = None
  if cfg.has_segments:
    mask = qseg[:, None] == kseg[None, :]
  if cfg.causal:
    causal = kpos[None, :] <= qpos[:, None]
    mask = causal if mask is None else jnp.logical_and(mask, causal)
  if mask is not None:
    s = jnp.where(mask, s, MASK_VALUE)  # replaced, not added: same as the reference
    valid = jnp.logical_and(valid, mask)
  s = jnp.where(kpos[None, :] < cfg.k_len, s, PAD_VALUE)
  return s, valid, bucket_range


def _causal_num_k_blocks(qpos, cfg, num_k_blocks):
  """Number of leading key tiles holding any key at or before the tile's last query."""
  last = jnp.maximum(jnp.max(qpos), -1)
  # lax.div (truncating) on a non-negative value: `//` does not lower on Triton scalars.
  return jnp.minimum(lax.div(last + cfg.block_k, cfg.block_k), num_k_blocks)


def _has_empty_row(m, row0, cfg):
  """True if a real (unpadded) query row of the tile saw no valid key (row max == MASK_VALUE)."""
  rows = row0 + lax.broadcasted_iota(jnp.int32, m.shape, 0)
  return jnp.max(jnp.where((m < _EMPTY_ROW) & (rows < cfg.q_len), 1, 0)) > 0


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(*refs, cfg):
  """One (batch, head, q block): loop over key tiles with the online softmax."""
  qpos_ref, qseg_ref, kseg_ref, table_ref, (q_ref, k_ref, v_ref, o_ref, m_ref, l_ref) = (
      _unpack(refs, cfg))
  head, qi = pl.program_id(1), pl.program_id(2)
  bq, bk = cfg.block_q, cfg.block_k
  num_k_blocks = k_ref.shape[0] // bk
  q = q_ref[...]
  qpos = qpos_ref[...]
  qseg = qseg_ref[...] if qseg_ref is not None else None

  def body(kb, carry):
    o, m, l = carry
    start = pl.multiple_of(kb * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    kpos = start + lax.broadcasted_iota(jnp.int32, (bk,), 0)
    kseg = kseg_ref[pl.ds(start, bk)] if kseg_ref is not None else None
    s, _, _ = _tile_logits(q, k, qpos, kpos, qseg, kseg, table_ref, head, cfg)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    l = alpha * l + jnp.sum(p, axis=1)
    o = alpha[:, None] * o + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o, m_new, l

  carry = (jnp.zeros(q.shape, jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
           jnp.zeros((bq,), jnp.float32))
  if cfg.causal:
    upper = _causal_num_k_blocks(qpos, cfg, num_k_blocks)
    carry = lax.fori_loop(0, upper, body, carry)
    # A row with no valid key at all must average v over all Lk keys, like the reference:
    # only then visit the skipped (fully causal-masked) tiles. Normally an empty loop.
    upper2 = jnp.where(_has_empty_row(carry[1], qi * bq, cfg), num_k_blocks, upper)
    carry = lax.fori_loop(upper, upper2, body, carry)
  else:
    carry = lax.fori_loop(0, num_k_blocks, body, carry)
  o, m, l = carry
  o_ref[...] = (o / l[:, None]).astype(o_ref.dtype)
  m_ref[...] = m
  l_ref[...] = l


def _aux_inputs(qpos, qseg, kseg, table, cfg, *, tiled_q, tiled_k):
  """(arrays, BlockSpecs) of the position / segment / table inputs for a (B, H, blocks) grid.

  Args:
    qpos: int32 [Lq_pad]; qseg: int32 [B, Lq_pad]; kseg: int32 [B, Lk_pad]; table: f32
      [H, NB_pad] (the last three may be None, matching cfg).
    tiled_q / tiled_k: the grid's third axis walks q (resp. k) blocks; the other side is
      passed whole and sliced inside the kernel.
  """
  bq, bk = cfg.block_q, cfg.block_k
  arrays = [qpos]
  specs = [pl.BlockSpec((bq,), lambda b, h, i: (i,)) if tiled_q
           else pl.BlockSpec(qpos.shape, lambda b, h, i: (0,))]
  if cfg.has_segments:
    arrays += [qseg, kseg]
    specs.append(pl.BlockSpec((None, bq), lambda b, h, i: (b, i)) if tiled_q
                 else pl.BlockSpec((None, qseg.shape[1]), lambda b, h, i: (b, 0)))
    specs.append(pl.BlockSpec((None, bk), lambda b, h, i: (b, i)) if tiled_k
                 else pl.BlockSpec((None, kseg.shape[1]), lambda b, h, i: (b, 0)))
  if cfg.num_buckets:
    arrays.append(table)
    if cfg.platform == "tpu" and not cfg.interpret:  # scalar table reads need SMEM on TPU
      from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
      specs.append(pl.BlockSpec(memory_space=pltpu.SMEM))
    else:
      specs.append(pl.BlockSpec(table.shape, lambda b, h, i: (0, 0)))
  return arrays, specs


def _forward(q, k, v, table, qpos, qseg, kseg, cfg):
  """Padded [B, H, L, D] inputs -> (o [B, H, Lq_pad, D], m, l: f32 [B, H, Lq_pad])."""
  batch, heads, lq, d = q.shape
  lk = k.shape[2]
  bq = cfg.block_q
  aux, aux_specs = _aux_inputs(qpos, qseg, kseg, table, cfg, tiled_q=True, tiled_k=False)
  kv_spec = pl.BlockSpec((None, None, lk, d), lambda b, h, i: (b, h, 0, 0))
  row_spec = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
  stat = jax.ShapeDtypeStruct((batch, heads, lq), jnp.float32)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg),
      grid=(batch, heads, lq // bq),
      in_specs=aux_specs + [pl.BlockSpec((None, None, bq, d), lambda b, h, i: (b, h, i, 0)),
                            kv_spec, kv_spec],
      out_specs=[pl.BlockSpec((None, None, bq, d), lambda b, h, i: (b, h, i, 0)),
                 row_spec, row_spec],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), stat, stat],
      interpret=cfg.interpret, compiler_params=cfg.compiler_params(), name="t5_flash_fwd",
  )(*aux, q, k, v)


# ----------------------------------------------------------------------------- backward


def _dq_kernel(*refs, cfg):
  """One (batch, head, q block): dq and the per-bucket sums of dLogits, looping key tiles."""
  qpos_ref, qseg_ref, kseg_ref, table_ref, rest = _unpack(refs, cfg)
  q_ref, k_ref, v_ref, do_ref, m_ref, l_ref, delta_ref, dq_ref, *dtab_ref = rest
  head = pl.program_id(1)
  bk = cfg.block_k
  num_k_blocks = k_ref.shape[0] // bk
  q, do = q_ref[...], do_ref[...]
  m, inv_l, delta = m_ref[...], 1.0 / l_ref[...], delta_ref[...]
  qpos = qpos_ref[...]
  qseg = qseg_ref[...] if qseg_ref is not None else None
  nb_pad = dtab_ref[0].shape[-1] if dtab_ref else 0

  def body(kb, carry):
    dq, dtab = carry
    start = pl.multiple_of(kb * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    kpos = start + lax.broadcasted_iota(jnp.int32, (bk,), 0)
    kseg = kseg_ref[pl.ds(start, bk)] if kseg_ref is not None else None
    s, valid, bucket_range = _tile_logits(q, k, qpos, kpos, qseg, kseg, table_ref, head, cfg)
    # exp(s - m) / l rather than exp(s - lse): for a row with no valid key m = -1e10 and
    # log(l) vanishes in float32 next to it, which would give P = 1 instead of 1 / Lk.
    p = jnp.exp(s - m[:, None]) * inv_l[:, None]
    dp = lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    ds = jnp.where(valid, p * (dp - delta[:, None]), 0.0)  # masked logits are constants
    dq = dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
    if bucket_range is not None:
      lo, hi = bucket_range
      lane = lax.broadcasted_iota(jnp.int32, (nb_pad,), 0)

      def tile_sum(x):  # one axis at a time: Triton's reduction lowering takes a single axis
        return jnp.sum(jnp.sum(x, axis=1), axis=0)

      def per_bucket(dtab):
        bucket = _tile_buckets(qpos, kpos, cfg)
        return lax.fori_loop(lo, hi + 1, lambda b, acc: acc + jnp.where(
            lane == b, tile_sum(jnp.where(bucket == b, ds, 0.0)), 0.0), dtab)
      dtab = lax.cond(lo == hi, lambda d: d + jnp.where(lane == lo, tile_sum(ds), 0.0),
                      per_bucket, dtab)
    return dq, dtab

  # Tiles past the causal bound contribute nothing: there ds == 0 (masked), even for empty rows.
  upper = _causal_num_k_blocks(qpos, cfg, num_k_blocks) if cfg.causal else num_k_blocks
  dq, dtab = lax.fori_loop(0, upper, body, (jnp.zeros(q.shape, jnp.float32),
                                            jnp.zeros((max(nb_pad, 1),), jnp.float32)))
  dq_ref[...] = dq.astype(dq_ref.dtype)
  if dtab_ref:
    dtab_ref[0][...] = dtab


def _dkdv_kernel(*refs, cfg):
  """One (batch, head, k block): dk and dv, looping over query tiles."""
  qpos_ref, qseg_ref, kseg_ref, table_ref, rest = _unpack(refs, cfg)
  q_ref, k_ref, v_ref, do_ref, m_ref, l_ref, delta_ref, dk_ref, dv_ref = rest
  head, kb = pl.program_id(1), pl.program_id(2)
  bq, bk = cfg.block_q, cfg.block_k
  num_q_blocks = q_ref.shape[0] // bq
  k, v = k_ref[...], v_ref[...]
  kpos = kb * bk + lax.broadcasted_iota(jnp.int32, (bk,), 0)
  kseg = kseg_ref[...] if kseg_ref is not None else None

  def compute(qb, carry):
    dk, dv = carry
    start = pl.multiple_of(qb * bq, bq)
    q = q_ref[pl.ds(start, bq), :]
    do = do_ref[pl.ds(start, bq), :]
    m, l, delta = m_ref[pl.ds(start, bq)], l_ref[pl.ds(start, bq)], delta_ref[pl.ds(start, bq)]
    qpos = qpos_ref[pl.ds(start, bq)]
    qseg = qseg_ref[pl.ds(start, bq)] if qseg_ref is not None else None
    s, valid, _ = _tile_logits(q, k, qpos, kpos, qseg, kseg, table_ref, head, cfg)
    p = jnp.exp(s - m[:, None]) * (1.0 / l)[:, None]
    dv = dv + lax.dot_general(p.astype(do.dtype), do, (((0,), (0,)), ((), ())),
                              preferred_element_type=jnp.float32)
    dp = lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    ds = jnp.where(valid, p * (dp - delta[:, None]), 0.0)
    dk = dk + lax.dot_general(ds.astype(q.dtype), q, (((0,), (0,)), ((), ())),
                              preferred_element_type=jnp.float32)
    return dk, dv

  def body(qb, carry):
    if not cfg.causal:
      return compute(qb, carry)
    start = pl.multiple_of(qb * bq, bq)
    # A q tile matters if some query sees this key tile, or if it has an empty row (whose
    # uniform P reaches every key, so dv gets a share even from causally masked tiles).
    visible = jnp.max(qpos_ref[pl.ds(start, bq)]) >= kb * bk
    needed = jnp.logical_or(visible, _has_empty_row(m_ref[pl.ds(start, bq)], start, cfg))
    return lax.cond(needed, functools.partial(compute, qb), lambda c: c, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, num_q_blocks, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(q, k, v, table, qpos, qseg, kseg, o, m, l, do, cfg):
  """Gradients (dq, dk, dv, dtable) of the padded problem; dtable is [H, NB_pad] or None."""
  batch, heads, lq, d = q.shape
  lk = k.shape[2]
  bq, bk = cfg.block_q, cfg.block_k
  # rowsum(dO * O): the softmax-Jacobian term, O(B H Lq D) work, so plain XLA is fine.
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
  aux_q, specs_q = _aux_inputs(qpos, qseg, kseg, table, cfg, tiled_q=True, tiled_k=False)
  aux_k, specs_k = _aux_inputs(qpos, qseg, kseg, table, cfg, tiled_q=False, tiled_k=True)
  q_tile = pl.BlockSpec((None, None, bq, d), lambda b, h, i: (b, h, i, 0))
  k_tile = pl.BlockSpec((None, None, bk, d), lambda b, h, i: (b, h, i, 0))
  q_full = pl.BlockSpec((None, None, lq, d), lambda b, h, i: (b, h, 0, 0))
  k_full = pl.BlockSpec((None, None, lk, d), lambda b, h, i: (b, h, 0, 0))
  row_tile = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
  row_full = pl.BlockSpec((None, None, lq), lambda b, h, i: (b, h, 0))

  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  out_specs = [q_tile]
  nb_pad = table.shape[-1] if cfg.num_buckets else 0
  if cfg.num_buckets:
    out_shape.append(jax.ShapeDtypeStruct((batch, heads, lq // bq, nb_pad), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, None, nb_pad), lambda b, h, i: (b, h, i, 0)))
  res = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg),
      grid=(batch, heads, lq // bq),
      in_specs=specs_q + [q_tile, k_full, k_full, q_tile, row_tile, row_tile, row_tile],
      out_specs=out_specs, out_shape=out_shape, interpret=cfg.interpret,
      compiler_params=cfg.compiler_params(), name="t5_flash_dq",
  )(*aux_q, q, k, v, do, m, l, delta)
  dq = res[0]
  dtable = jnp.sum(res[1], axis=(0, 2)) if cfg.num_buckets else None

  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, cfg=cfg),
      grid=(batch, heads, lk // bk),
      in_specs=specs_k + [q_full, k_tile, k_tile, q_full, row_full, row_full, row_full],
      out_specs=[k_tile, k_tile],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      interpret=cfg.interpret, compiler_params=cfg.compiler_params(), name="t5_flash_dkdv",
  )(*aux_k, q, k, v, do, m, l, delta)
  return dq, dk, dv, dtable


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _flash(q, k, v, table, qpos, qseg, kseg, cfg):
  return _forward(q, k, v, table, qpos, qseg, kseg, cfg)[0]


def _flash_fwd(q, k, v, table, qpos, qseg, kseg, cfg):
  o, m, l = _forward(q, k, v, table, qpos, qseg, kseg, cfg)
  return o, (q, k, v, table, qpos, qseg, kseg, o, m, l)


def _flash_bwd(cfg, res, do):
  q, k, v, table, qpos, qseg, kseg, o, m, l = res
  dq, dk, dv, dtable = _backward(q, k, v, table, qpos, qseg, kseg, o, m, l, do, cfg)
  return dq, dk, dv, dtable, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------- public entry


# Compiled for a TPU topology (t5x_lite.tools.aot_compile, jax 0.10.2 + libtpu 0.0.42.1), the
# forward kernel stops in Mosaic's block check: the [B, H, L] row statistics (m, l) and the
# [B, L] segment ids are tiled with blocks whose last two dims are (squeezed head or batch,
# block) -- neither (8, 128)-aligned nor the whole array, which Mosaic requires of every block.
TPU_UNSUPPORTED = (
    "attention_impl='pallas' does not lower to TPU (Mosaic) yet: its [B, H, L] row statistics "
    "and [B, L] segment ids use blocks whose last two dims are neither (8, 128)-aligned nor "
    "whole, as Mosaic requires; set T5Config.attention_impl = 'xla' (gin) on TPU.")


def target_platform() -> str:
  """The platform being compiled for: that of the current mesh's devices (jax.set_mesh, e.g.
  a TPU topology compiled on a CPU host), else jax.default_backend()."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


def flash_attention(query, key, value, *, block_q=128, block_k=128, bias_table=None,
                    bidirectional=True, max_distance=128, query_segment_ids=None,
                    kv_segment_ids=None, causal=False, query_offset=0, interpret=None,
                    backend=None):
  """T5 flash attention: softmax(q k^T + relative_bias + mask) v, no 1/sqrt(D) scaling.

  Same semantics as `reference.xla_attention` (masked logits are replaced by MASK_VALUE, so a
  query with no valid key averages v uniformly over the Lk keys), differentiable in query,
  key, value and bias_table through Pallas backward kernels.

  Args:
    query: [B, Lq, H, D].
    key, value: [B, Lk, H, D].
    block_q, block_k: tile sizes (powers of two; clipped to the padded lengths, at least 16).
    bias_table: optional [H, NB] relative position bias table.
    bidirectional, max_distance: bucket settings (see `reference.relative_position_bucket`).
    query_segment_ids: optional int [B, Lq]; kv_segment_ids: optional int [B, Lk] (either
      may be broadcastable to that shape, as in the reference).
    causal: mask keys after the query (key tiles entirely after a query tile are skipped).
    query_offset: absolute position of query 0 (int or traced int32 scalar, for decoding).
    interpret: run Pallas in interpret mode; None means "when the backend is CPU".
    backend: "cpu", "gpu" or "tpu" to lower for; None means `target_platform()` (set it
      to cross-lower, e.g. to check the Triton lowering on a machine without a GPU).

  Returns:
    [B, Lq, H, D] in query.dtype.

  Raises:
    NotImplementedError: compiled for TPU (not interpreted): TPU_UNSUPPORTED says why.
  """
  for name, blk in (("block_q", block_q), ("block_k", block_k)):
    if blk < MIN_BLOCK or blk & (blk - 1):
      raise ValueError(f"{name}={blk} must be a power of two >= {MIN_BLOCK} "
                       "(gin: T5Config.attention_block_q / attention_block_k).")
  if (query_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Give both query_segment_ids and kv_segment_ids, or neither.")
  batch, q_len, heads, d = query.shape
  k_len = key.shape[1]
  backend = backend or target_platform()
  if interpret is None:
    interpret = backend == "cpu"
  if backend == "tpu" and not interpret:
    raise NotImplementedError(TPU_UNSUPPORTED)
  # Small problems (a decode step) get the smallest tile that covers them.
  bq = min(block_q, _pow2_at_least(q_len))
  bk = min(block_k, _pow2_at_least(k_len))
  lq_pad, lk_pad, d_pad = -(-q_len // bq) * bq, -(-k_len // bk) * bk, _pow2_at_least(d)

  def prep(x, length):  # [B, L, H, D] -> [B, H, L_pad, D_pad]
    x = jnp.swapaxes(x, 1, 2)
    return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, d_pad - d)))

  q, k, v = prep(query, lq_pad), prep(key, lk_pad), prep(value, lk_pad)
  qpos = jnp.arange(lq_pad, dtype=jnp.int32) + jnp.asarray(query_offset, jnp.int32)
  qseg = kseg = table = None
  if query_segment_ids is not None:
    # Broadcast like the reference's mask does: a decode step passes its [B, 1] decoder
    # segment ids as kv_segment_ids against a longer KV cache.
    qseg = jnp.broadcast_to(query_segment_ids.astype(jnp.int32), (batch, q_len))
    kseg = jnp.broadcast_to(kv_segment_ids.astype(jnp.int32), (batch, k_len))
    qseg = jnp.pad(qseg, ((0, 0), (0, lq_pad - q_len)))
    kseg = jnp.pad(kseg, ((0, 0), (0, lk_pad - k_len)))
  num_buckets = 0
  if bias_table is not None:
    num_buckets = bias_table.shape[-1]
    # Power-of-two width for the per-tile table-gradient vector; padded buckets never occur.
    table = jnp.pad(bias_table.astype(jnp.float32),
                    ((0, 0), (0, pl.next_power_of_2(num_buckets) - num_buckets)))
  cfg = _Config(block_q=bq, block_k=bk, q_len=q_len, k_len=k_len, num_buckets=num_buckets,
                bidirectional=bidirectional, max_distance=max_distance, causal=causal,
                has_segments=qseg is not None, interpret=interpret, platform=backend)
  out = _flash(q, k, v, table, qpos, qseg, kseg, cfg)  # [B, H, Lq_pad, D_pad]
  return jnp.swapaxes(out[:, :, :q_len, :d], 1, 2).astype(query.dtype)
