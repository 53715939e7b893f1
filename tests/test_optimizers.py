"""Adafactor as t5x defines it: checked against a float64 transcription of t5x's adafactor.py,
golden values of the real t5x code, and scanned vs unscanned training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.model import encoder_decoder, network
from t5x_lite.parallel import partitioning
from t5x_lite.training import optimizers, trainer

# (path, shape, logical axes, (rows, cols, batch) by t5x's standard_logical_factor_rules):
# T5-Efficient-TINY's widths (d_model 256, d_ff 1024, 4 heads of d_kv 64), the vocabulary cut to
# 1024 rows; `encoder/layers_0` is an unscanned layer, `decoder/layers` a scanned stack of two.
T5_LEAVES = [
    ("token_embedder/embedding", (1024, 256), ("vocab", "embed"), ((1,), (0,), ())),
    ("decoder/logits_dense/kernel", (256, 1024), ("embed", "vocab"), ((0,), (1,), ())),
    ("encoder/relpos_bias/rel_embedding", (4, 32), ("heads", "relpos_buckets"), ((), (), ())),
    ("encoder/encoder_norm/scale", (256,), ("embed",), ((), (), ())),
    ("encoder/layers_0/attention/query/kernel", (256, 4, 64), ("embed", "heads", "kv"),
     ((0,), (1, 2), ())),
    ("encoder/layers_0/attention/out/kernel", (4, 64, 256), ("heads", "kv", "embed"),
     ((2,), (0, 1), ())),
    ("encoder/layers_0/mlp/wi/kernel", (256, 1024), ("embed", "mlp"), ((0,), (1,), ())),
    ("encoder/layers_0/mlp/wo/kernel", (1024, 256), ("mlp", "embed"), ((1,), (0,), ())),
    ("encoder/layers_0/pre_mlp_layer_norm/scale", (256,), ("embed",), ((), (), ())),
    ("decoder/layers/self_attention/query/kernel", (2, 256, 4, 64),
     ("layers", "embed", "heads", "kv"), ((1,), (2, 3), (0,))),
    ("decoder/layers/self_attention/out/kernel", (2, 4, 64, 256),
     ("layers", "heads", "kv", "embed"), ((3,), (1, 2), (0,))),
    ("decoder/layers/mlp/wi_0/kernel", (2, 256, 1024), ("layers", "embed", "mlp"),
     ((1,), (2,), (0,))),
    ("decoder/layers/mlp/wo/kernel", (2, 1024, 256), ("layers", "mlp", "embed"),
     ((2,), (1,), (0,))),
    ("decoder/layers/pre_mlp_layer_norm/scale", (2, 256), ("layers", "embed"), ((), (), (0,))),
]

# A small tree for the real t5x code, whose 2-D matrices are >= 128 on both dims (below that
# t5x factors 2-D parameters by size, not by name: see optimizers.factoring).
SMALL_LEAVES = [
    ("token_embedder/embedding", (256, 128), ("vocab", "embed")),
    ("encoder/relpos_bias/rel_embedding", (2, 32), ("heads", "relpos_buckets")),
    ("encoder/encoder_norm/scale", (128,), ("embed",)),
    ("encoder/layers_0/attention/query/kernel", (128, 2, 16), ("embed", "heads", "kv")),
    ("encoder/layers_0/attention/out/kernel", (2, 16, 128), ("heads", "kv", "embed")),
    ("encoder/layers_0/mlp/wi/kernel", (128, 256), ("embed", "mlp")),
    ("encoder/layers_0/mlp/wo/kernel", (256, 128), ("mlp", "embed")),
    ("decoder/layers/self_attention/query/kernel", (2, 128, 2, 16),
     ("layers", "embed", "heads", "kv")),
    ("decoder/layers/mlp/wo/kernel", (2, 256, 128), ("layers", "mlp", "embed")),
    ("decoder/layers/pre_mlp_layer_norm/scale", (2, 128), ("layers", "embed")),
]


def learning_rate(step):
  return 1e-2 / (1.0 + step)


def make_problem(leaves, num_steps, seed=0):
  """Float32 params and per-step grads {path: array}; layers of a stack differ in scale.

  Layer i of a `layers` stack gets params 1 + 3i and grads 10**i times the others, so stack-wide
  statistics would differ from per-layer ones; grads grow 30x after half the steps (clipping
  bites) and the embedding's last 64 rows get none (unused tokens).
  """
  rng = np.random.RandomState(seed)

  def layer_scale(shape, axes, per_layer):
    if "layers" not in axes:
      return 1.0
    return np.reshape(per_layer(np.arange(shape[0])), (-1,) + (1,) * (len(shape) - 1))

  params = {path: (rng.randn(*shape) * 0.05 * layer_scale(shape, axes, lambda i: 1 + 3 * i)
                   ).astype(np.float32) for path, shape, axes, *_ in leaves}
  grads = []
  for step in range(num_steps):
    step_grads = {}
    for path, shape, axes, *_ in leaves:
      g = rng.randn(*shape) * layer_scale(shape, axes, lambda i: 10.0 ** i)
      g *= 30.0 if step >= num_steps // 2 else 1.0
      if path == "token_embedder/embedding":
        g[-64:] = 0.0
      step_grads[path] = g.astype(np.float32)
    grads.append(step_grads)
  return params, grads


def boxed(params, leaves):
  return {path: nn.LogicallyPartitioned(jnp.asarray(params[path]), axes)
          for path, _, axes, *_ in leaves}


def t5x_step(params, grads, step, factorings, moments, momenta, momentum=None,
             weight_decay_rate=None):
  """One step of t5x's Adafactor.apply_param_gradient (t5x/adafactor.py) in float64 NumPy with
  T5's settings: decay_rate 0.8 (beta2 = 1 - (step + 1)**-0.8), epsilon1 1e-30,
  clipping_threshold 1.0, multiply_by_parameter_scale with epsilon2 1e-3; beta1 (momentum)
  and weight_decay_rate optional. Updates the second moments {path: (v_row, v_col) or v}
  and momenta in place.

  Returns:
    ({path: new param - param}, number of (leaf, layer) updates that clipping scaled down).
  """
  decay = 1.0 - (step + 1.0) ** -0.8
  updates, clipped = {}, 0
  for path, (rows, cols, batch) in factorings.items():
    param, grad = params[path].astype(np.float64), grads[path].astype(np.float64)
    averaging = tuple(i for i in range(param.ndim) if i not in batch)
    update_scale = learning_rate(step) * np.maximum(
        np.sqrt(np.mean(param * param, axis=averaging, keepdims=True)), 1e-3)
    grad_sqr = grad * grad + 1e-30
    if rows:
      v_row, v_col = moments.get(path, (0.0, 0.0))
      v_row = decay * v_row + (1.0 - decay) * grad_sqr.mean(axis=cols)
      v_col = decay * v_col + (1.0 - decay) * grad_sqr.mean(axis=rows)
      moments[path] = (v_row, v_col)
      reduced_rows = tuple(d - sum(c < d for c in cols) for d in rows)
      row_factor = (v_row / v_row.mean(axis=reduced_rows, keepdims=True)) ** -0.5
      y = grad * np.expand_dims(row_factor, cols) * np.expand_dims(v_col ** -0.5, rows)
    else:
      moments[path] = decay * moments.get(path, 0.0) + (1.0 - decay) * grad_sqr
      y = grad * moments[path] ** -0.5
    clipping_denom = np.maximum(1.0, np.sqrt(np.mean(y * y, axis=averaging, keepdims=True)))
    clipped += int(np.sum(clipping_denom > 1.0))
    subtrahend = update_scale * (y / clipping_denom)
    if momentum is not None:
      momenta[path] = momentum * momenta.get(path, 0.0) + (1.0 - momentum) * subtrahend
      subtrahend = momenta[path]
    decayed = param if weight_decay_rate is None else (1.0 - weight_decay_rate) * param
    updates[path] = decayed - subtrahend - param
  return updates, clipped


def flat_state(state):
  return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(state.param_states)[0]}


def test_every_t5_parameter_is_factored_by_its_logical_axes():
  tx, _ = optimizers.adafactor()
  state = jax.eval_shape(tx.init, boxed({p: np.zeros(s, np.float32) for p, s, *_ in T5_LEAVES},
                                        T5_LEAVES))
  stats = flat_state(state)
  for path, shape, axes, (rows, cols, batch) in T5_LEAVES:
    assert optimizers.factoring(shape, axes) == optimizers.Factoring(rows, cols, batch), path
    if rows:  # v_row drops the column dims, v_col the row dims: [embed] and [heads, kv] for q
      assert stats[path + "/v_row"].shape == tuple(n for i, n in enumerate(shape) if i not in cols)
      assert stats[path + "/v_col"].shape == tuple(n for i, n in enumerate(shape) if i not in rows)
      assert path + "/v" not in stats
    else:
      assert stats[path + "/v"].shape == shape and path + "/v_row" not in stats
  # 3-D attention kernels with kv = 64 are factored (optax's size rule kept a full moment).
  assert stats["encoder/layers_0/attention/query/kernel/v_col"].shape == (4, 64)
  assert stats["decoder/layers/self_attention/query/kernel/v_row"].shape == (2, 256)
  assert not any(key.endswith("/m") for key in stats)  # no momentum
  # Toy widths are factored by name too (t5x's size fallback would keep a full moment here).
  assert optimizers.factoring((32, 64), ("embed", "mlp")) == optimizers.Factoring((0,), (1,))


@pytest.mark.parametrize("num_steps,kwargs", [
    (20, {}),
    (5, {"momentum": 0.9, "weight_decay_rate": 1e-3}),
])
def test_adafactor_equals_a_transcription_of_t5x(num_steps, kwargs):
  params, grads = make_problem(T5_LEAVES, num_steps)
  factorings = {path: f for path, _, _, f in T5_LEAVES}
  tx, _ = optimizers.adafactor(learning_rate, **kwargs)
  state = tx.init(boxed(params, T5_LEAVES))
  update = jax.jit(tx.update)
  moments, momenta, clipped = {}, {}, 0
  for step, step_grads in enumerate(grads):
    updates, state = update(step_grads, state, params)
    expected, n = t5x_step(params, step_grads, step, factorings, moments, momenta, **kwargs)
    clipped += n
    for path, value in expected.items():
      # Relative to each update; momentum and weight decay add terms of both signs, so
      # elements near zero are compared at 1e-6 of the leaf's largest update.
      np.testing.assert_allclose(updates[path], value, rtol=1e-6,
                                 atol=1e-6 * np.abs(value).max(), err_msg=f"{path} step {step}")
    params = {k: v + np.asarray(updates[k]) for k, v in params.items()}
  assert clipped > 0  # update clipping took part
  stats = flat_state(state)
  for path, value in moments.items():
    for name, v in zip(("v_row", "v_col"), value) if factorings[path][0] else [("v", value)]:
      np.testing.assert_allclose(stats[f"{path}/{name}"], v, rtol=1e-6, err_msg=path)


# The real t5x Adafactor, run once outside this repository on make_problem(SMALL_LEAVES, 5):
# google-research/t5x at commit cc342d419ec3e3e9c4bf1df33c82330cafdc1e16 (t5x/adafactor.py blob
# be0789c1, last changed in 94a89731), with the two modules it imports stubbed to the names it
# uses (t5x.utils.flatten_dict_string_keys, t5x.optimizers.OptimizerDef / OptimizerState):
# Adafactor(logical_factor_rules=standard_logical_factor_rules()), set_param_axes with
# SMALL_LEAVES' names, then apply_gradient at learning rate 0.3 / (1 + step) for 5 steps.
# path: (sum of (params after - before) * RandomState(1) N(0, 1) weights drawn leaf by leaf in
#        SMALL_LEAVES order, {t5x's non-placeholder statistic: (shape, sum)}).
T5X_GOLDEN = {
    "token_embedder/embedding": (
        0.7755750252322837, {"v_row": ((128,), 62338.754821777344),
                             "v_col": ((256,), 124677.50939941406)}),
    "encoder/relpos_bias/rel_embedding": (-0.1360915704581796, {"v": ((2, 32), 37267.39238357544)}),
    "encoder/encoder_norm/scale": (0.05884634899567534, {"v": ((128,), 95678.42757034302)}),
    "encoder/layers_0/attention/query/kernel": (
        -2.492482342827036, {"v_row": ((128,), 82658.14981079102),
                             "v_col": ((2, 16), 20664.537536621094)}),
    "encoder/layers_0/attention/out/kernel": (
        -0.040313185603974455, {"v_row": ((128,), 82124.6870727539),
                                "v_col": ((2, 16), 20531.17169189453)}),
    "encoder/layers_0/mlp/wi/kernel": (
        -1.4339929856493072, {"v_row": ((128,), 82375.07525634766),
                              "v_col": ((256,), 164750.15032958984)}),
    "encoder/layers_0/mlp/wo/kernel": (
        1.8190973900634477, {"v_row": ((128,), 82559.0609741211),
                             "v_col": ((256,), 165118.12036132812)}),
    "decoder/layers/self_attention/query/kernel": (
        -4.554298824036872, {"v_row": ((2, 128), 8400559.708007812),
                             "v_col": ((2, 2, 16), 2100139.964050293)}),
    "decoder/layers/mlp/wo/kernel": (
        18.313197770131655, {"v_row": ((2, 128), 8309565.577575684),
                             "v_col": ((2, 256), 16619131.14038086)}),
    "decoder/layers/pre_mlp_layer_norm/scale": (
        -0.8963336783897025, {"v": ((2, 128), 8756740.873823166)}),
}


def test_adafactor_matches_golden_values_of_the_real_t5x_code():
  params, grads = make_problem(SMALL_LEAVES, 5)
  tx, _ = optimizers.adafactor(lambda step: 0.3 / (1.0 + step))
  state = tx.init(boxed(params, SMALL_LEAVES))
  final = params
  for step_grads in grads:
    updates, state = jax.jit(tx.update)(step_grads, state, final)
    final = {k: v + np.asarray(updates[k]) for k, v in final.items()}
  stats = flat_state(state)
  weights = np.random.RandomState(1)
  for path, shape, _ in SMALL_LEAVES:
    projection, golden_stats = T5X_GOLDEN[path]
    change = final[path].astype(np.float64) - params[path]
    # Seen: within 9e-7 of t5x (float32 rounding of the same operations).
    assert np.sum(change * weights.randn(*shape)) == pytest.approx(projection, rel=1e-5), path
    assert {k.rsplit("/", 1)[1] for k in stats if k.rsplit("/", 1)[0] == path} == set(golden_stats)
    for name, (stat_shape, stat_sum) in golden_stats.items():
      assert stats[f"{path}/{name}"].shape == stat_shape, (path, name)
      assert np.sum(np.asarray(stats[f"{path}/{name}"]), dtype=np.float64) == pytest.approx(
          stat_sum, rel=1e-6), (path, name)


def tiny_config(**overrides):
  return network.T5Config(vocab_size=64, d_model=32, d_ff=64, d_kv=8, num_heads=2,
                          num_encoder_layers=2, num_decoder_layers=2, feed_forward="gated-gelu",
                          tie_word_embeddings=False, dropout_rate=0.0, **overrides)


def stack_layers(params):
  """Unscanned params in the scanned layout: each stack's layers_i stacked on a leading axis."""
  stacked = {}
  for name, sub in params.items():
    num_layers = sum(key.startswith("layers_") for key in sub)
    stacked[name] = {k: v for k, v in sub.items() if not k.startswith("layers_")}
    if num_layers:
      stacked[name]["layers"] = jax.tree_util.tree_map(
          lambda *xs: np.stack(xs), *(sub[f"layers_{i}"] for i in range(num_layers)))
  return stacked


def train_steps(config, params, optimizer, batches):
  t = trainer.Trainer(encoder_decoder.EncoderDecoderModel(config), optimizer, partitioning.Partitioner())
  state = t.init_state({k: v.shape for k, v in batches[0].items()})
  state = state.replace(params=jax.device_put(
      params, jax.tree_util.tree_map(lambda x: x.sharding, state.params)))
  for batch in batches:
    state, _ = t.train_step(state, batch)
  return jax.device_get(state.params)


def test_scanned_and_unscanned_layers_get_the_same_updates():
  rng = np.random.RandomState(0)
  batches = []
  for _ in range(5):
    targets = rng.randint(1, 64, (4, 6)).astype(np.int32)
    batches.append({"encoder_input_tokens": rng.randint(1, 64, (4, 8)).astype(np.int32),
                    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
                    "decoder_target_tokens": targets})
  t = trainer.Trainer(encoder_decoder.EncoderDecoderModel(tiny_config()), optimizers.adafactor(),
                      partitioning.Partitioner())
  params = jax.device_get(t.init_state({k: v.shape for k, v in batches[0].items()}).params)
  for stack in ("encoder", "decoder"):  # layers of different scale: per-layer statistics matter
    params[stack]["layers_1"] = jax.tree_util.tree_map(lambda x: x / 2, params[stack]["layers_1"])
  optimizer = lambda **kwargs: optimizers.adafactor(optimizers.constant_schedule(1e-2), **kwargs)
  unscanned = stack_layers(train_steps(tiny_config(), params, optimizer(), batches))
  scanned = train_steps(tiny_config(scan_layers=True), stack_layers(params), optimizer(), batches)
  jax.tree_util.tree_map_with_path(
      lambda path, a, b: np.testing.assert_allclose(a, b, atol=1e-5,
                                                    err_msg=jax.tree_util.keystr(path)),
      scanned, unscanned)
  # Control: statistics across the stack (`layers` as a factored column, no batch axis) move
  # the same scanned params far more than that tolerance.
  across = train_steps(tiny_config(scan_layers=True), stack_layers(params), optimizer(
      factor_rules={**optimizers.standard_logical_factor_rules(), "layers": optimizers.COLUMN}),
                       batches)
  difference = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), across, unscanned)
  assert max(jax.tree_util.tree_leaves(difference)) > 1e-3


def test_errors_name_the_fix():
  tx, _ = optimizers.adafactor()
  with pytest.raises(ValueError, match=r"boxed params .*\['w'\] has no names"):
    tx.init({"w": jnp.zeros((4, 4))})
  with pytest.raises(ValueError, match=r"\['experts'\].*adafactor.factor_rules"):
    optimizers.factoring((8, 4, 16), ("experts", "embed", "mlp"))
  with pytest.raises(ValueError, match="mix factored dims"):
    optimizers.factoring((4, 32, 16), ("heads", "relpos_buckets", "embed"))


def test_schedules():
  rsqrt = optimizers.rsqrt_schedule(learning_rate=1.0, warmup_steps=10_000)
  assert float(rsqrt(0)) == pytest.approx(0.01)
  assert float(rsqrt(40_000)) == pytest.approx(0.005)
  linear = optimizers.linear_decay_schedule(learning_rate=1.0, warmup_steps=10, decay_steps=100)
  assert float(linear(5)) == pytest.approx(0.5)
  assert float(linear(60)) == pytest.approx(0.5)
  cosine = optimizers.cosine_decay_schedule(learning_rate=1.0, warmup_steps=0, decay_steps=100)
  assert float(cosine(50)) == pytest.approx(0.5, abs=1e-6)
