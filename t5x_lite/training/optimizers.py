"""Adafactor as t5x trains T5 with it, and learning-rate schedules (constant by default)."""

import dataclasses
from typing import Any, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def constant_schedule(learning_rate=1e-3):
  """Constant learning rate (t5x / Flan finetuning use 1e-3)."""
  return optax.constant_schedule(learning_rate)


def rsqrt_schedule(learning_rate=1.0, warmup_steps=10_000):
  """T5 pretraining: learning_rate / sqrt(max(step, warmup_steps)) (0.01 for 10k steps)."""
  return lambda step: learning_rate * jnp.reciprocal(
      jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps)))


def linear_decay_schedule(learning_rate=1e-3, warmup_steps=0, decay_steps=10_000, end_value=0.0):
  """Linear warmup from 0, then linear decay to end_value over decay_steps."""
  return optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
       optax.linear_schedule(learning_rate, end_value, decay_steps)], [warmup_steps])


def cosine_decay_schedule(learning_rate=1e-3, warmup_steps=0, decay_steps=10_000, end_value=0.0):
  """Linear warmup from 0, then cosine decay to end_value (nanoT5's schedule)."""
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                            warmup_steps + decay_steps, end_value)



# Adafactor, as t5x's adafactor.py defines it. optax.adafactor cannot express it: optax picks the
# factored dims by size (the two largest, the smaller >= 128), so a [embed, heads, kv] kernel with
# kv = 64 keeps a full second moment, and it has no batch axis, so on a scanned [layers, ...] stack
# update clipping and the parameter scale span all layers. Here each dim's role comes from the
# parameter's logical axis name, and `layers` dims get their own statistics.

ROW, COLUMN, BATCH, NONE = "row", "column", "batch", "none"


def standard_logical_factor_rules():
  """t5x's `standard_logical_factor_rules` for the logical axes of t5x_lite's parameters.

  Returns:
    {logical axis name: role}: ROW dims are what v_col is averaged over (`embed`), COLUMN
    dims what v_row is averaged over (`vocab`, `mlp`, `heads`, `kv`, `joined_kv`, and
    `labels`, the class axis of t5x_lite/model/heads.py), BATCH dims (`layers`) keep separate
    statistics, update clipping and parameter scale per index, and NONE dims leave the
    parameter unfactored.
  """
  return {"embed": ROW, "vocab": COLUMN, "mlp": COLUMN, "heads": COLUMN, "kv": COLUMN,
          "joined_kv": COLUMN, "relpos_buckets": NONE, "layers": BATCH,
          # Encoder heads' label axis: an [embed, labels] classifier is factored like an
          # [embed, vocab] output layer; a [labels] bias keeps a full second moment.
          "labels": COLUMN}


@dataclasses.dataclass(frozen=True)
class Factoring:
  """How Adafactor keeps one parameter's second moment: dims by role (t5x's FactorDim).

  Factored (rows and cols non-empty): v_row has the parameter's shape without the cols dims,
  v_col its shape without the rows dims. Unfactored: a full v. Statistics (the parameter
  RMS, the update RMS for clipping, the v_row mean) average over every dim not in batch.
  """
  rows: tuple[int, ...] = ()
  cols: tuple[int, ...] = ()
  batch: tuple[int, ...] = ()

  @property
  def factored(self) -> bool:
    return bool(self.rows)


def factoring(shape, axes, rules=None) -> Factoring:
  """The Factoring of a parameter of `shape` with logical axis names `axes`.

  t5x's rule (Adafactor.set_param_axes): each name maps to its role; a parameter with no
  ROW or no COLUMN dim is unfactored (its batch dims stay). Unlike t5x, a 2-D parameter
  outside a scanned stack is factored by its names too: t5x falls back to its size rule
  there (factor the two dims if the smaller is >= 128), which picks the same rows and
  columns for every T5 size but leaves toy widths unfactored, and then a scanned stack
  (factored by name) would train differently from the same layers unscanned.

  Args:
    shape: the parameter's shape.
    axes: one logical axis name per dim, e.g. ("layers", "embed", "heads", "kv").
    rules: {name: ROW | COLUMN | BATCH | NONE}; None gives standard_logical_factor_rules().

  Returns:
    The Factoring: e.g. rows (1,), cols (2, 3), batch (0,) for that example.
  """
  rules = standard_logical_factor_rules() if rules is None else rules
  if len(axes) != len(shape):
    raise ValueError(f"A parameter of shape {tuple(shape)} has logical axes {tuple(axes)}: "
                     "give each dim one name (nn.with_logical_partitioning).")
  unknown = [name for name in axes if name not in rules]
  if unknown:
    raise ValueError(f"Adafactor has no factor rule for the logical axes {unknown} (of "
                     f"{tuple(axes)}): bind adafactor.factor_rules to a dict that names each "
                     f"as '{ROW}', '{COLUMN}', '{BATCH}' or '{NONE}'.")
  roles = [rules[name] for name in axes]
  rows, cols, batch = (tuple(i for i, r in enumerate(roles) if r == role)
                       for role in (ROW, COLUMN, BATCH))
  if not (rows and cols):
    return Factoring(batch=batch)
  if NONE in roles:
    raise ValueError(f"Logical axes {tuple(axes)} mix factored dims with an unfactored one "
                     f"({roles}): change adafactor.factor_rules to factor all of them (no "
                     f"'{NONE}') or none (no '{ROW}' or no '{COLUMN}').")
  return Factoring(rows, cols, batch)


@flax.struct.dataclass
class ParamState:
  """Adafactor's float32 statistics of one parameter; fields it does not use are None.

  Attributes:
    v_row: factored second moment, [shape without factoring.cols].
    v_col: factored second moment, [shape without factoring.rows].
    v: unfactored second moment, [shape].
    m: momentum, [shape] (only with adafactor.momentum).
    factoring: the decision that shaped them (static: neither traced nor checkpointed).
  """
  v_row: Optional[jax.Array]
  v_col: Optional[jax.Array]
  v: Optional[jax.Array]
  m: Optional[jax.Array]
  factoring: Factoring = flax.struct.field(pytree_node=False)


class AdafactorState(NamedTuple):
  # int32 []: updates applied (the Trainer keeps the old state on a skipped non-finite step,
  # so this can lag TrainState.step, which is what the schedule and beta2 read in training).
  count: jax.Array
  param_states: Any  # the params' tree, a ParamState per parameter


def adafactor(learning_rate_schedule=None, decay_rate=0.8, clipping_threshold=1.0,
              multiply_by_parameter_scale=True, factor_rules=None, momentum=None,
              weight_decay_rate=None, epsilon1=1e-30, epsilon2=1e-3):
  """T5's Adafactor, as t5x defines it: second moments factored by logical axis, no momentum.

  Update of a parameter p with gradient g at step t (from 0: the train step, see update),
  per slice of its batch dims:
  v = beta2 * v + (1 - beta2) * (g**2 + epsilon1) with beta2 = 1 - (t + 1)**-decay_rate
  (factored: the row and column means of that, v ~ v_row v_col / mean(v_row));
  u = g / sqrt(v), divided by max(1, rms(u) / clipping_threshold);
  p -= learning_rate(t) * max(rms(p), epsilon2) * u.

  Args:
    learning_rate_schedule: a schedule (step -> learning rate); None gives the constant
      schedule. gin: e.g. `adafactor.learning_rate_schedule = @rsqrt_schedule()`.
    decay_rate: second-moment decay exponent (0.8 in T5).
    clipping_threshold: clip updates to this RMS (1.0); None: no clipping.
    multiply_by_parameter_scale: scale updates by the parameter RMS (relative step).
    factor_rules: {logical axis name: 'row' | 'column' | 'batch' | 'none'}; None gives
      standard_logical_factor_rules() (see `factoring`).
    momentum: None for no first moment (T5); a float (e.g. 0.9) to add one.
    weight_decay_rate: optional decoupled weight decay (p *= 1 - rate).
    epsilon1: regulariser added to squared gradients (1e-30).
    epsilon2: lower bound of the parameter scale (1e-3).

  Returns:
    (optax.GradientTransformationExtraArgs, schedule). Its init takes the boxed params
    (nn.LogicallyPartitioned leaves, as model.init returns them), whose axis names decide
    each parameter's Factoring; update takes plain gradients and params, and `step`: the
    train step t, as t5x's Adafactor reads the step of the train state. The Trainer passes
    TrainState.step, so a step skipped for a non-finite loss still advances the schedule
    (the learning rate applied at step t is schedule(t), the one logged); without `step`,
    t is the state's count of updates.
  """
  if learning_rate_schedule is None:
    learning_rate_schedule = constant_schedule()

  def init_param(path, boxed):
    if not isinstance(boxed, nn.LogicallyPartitioned):
      raise ValueError(f"Adafactor factors parameters by their logical axis names: give init "
                       f"the boxed params (model.init's output, before nn.unbox); "
                       f"{jax.tree_util.keystr(path)} has no names.")
    shape = boxed.value.shape
    f = factoring(shape, boxed.names, factor_rules)
    zeros_without = lambda dims: jnp.zeros([n for i, n in enumerate(shape) if i not in dims],
                                           jnp.float32)
    return ParamState(v_row=zeros_without(f.cols) if f.factored else None,
                      v_col=zeros_without(f.rows) if f.factored else None,
                      v=None if f.factored else zeros_without(()),
                      m=None if momentum is None else zeros_without(()), factoring=f)

  def init(params):
    return AdafactorState(
        count=jnp.zeros((), jnp.int32),
        param_states=jax.tree_util.tree_map_with_path(
            init_param, params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)))

  def update_param(grad, state, param, learning_rate, beta2):
    f = state.factoring
    averaged = tuple(i for i in range(param.ndim) if i not in f.batch)
    grad = grad.astype(jnp.float32)
    update_scale = learning_rate
    if multiply_by_parameter_scale:
      update_scale *= jnp.maximum(
          jnp.sqrt(jnp.mean(param * param, axis=averaged, keepdims=True)), epsilon2)
    grad_sqr = grad * grad + epsilon1
    if f.factored:
      v_row = beta2 * state.v_row + (1.0 - beta2) * jnp.mean(grad_sqr, axis=f.cols)
      v_col = beta2 * state.v_col + (1.0 - beta2) * jnp.mean(grad_sqr, axis=f.rows)
      rows_in_v_row = tuple(d - sum(c < d for c in f.cols) for d in f.rows)
      row_factor = (v_row / jnp.mean(v_row, axis=rows_in_v_row, keepdims=True)) ** -0.5
      y = grad * jnp.expand_dims(row_factor, f.cols) * jnp.expand_dims(v_col ** -0.5, f.rows)
      state = state.replace(v_row=v_row, v_col=v_col)
    else:
      v = beta2 * state.v + (1.0 - beta2) * grad_sqr
      y = grad * v ** -0.5
      state = state.replace(v=v)
    if clipping_threshold is not None:
      y /= jnp.maximum(
          1.0, jnp.sqrt(jnp.mean(y * y, axis=averaged, keepdims=True)) / clipping_threshold)
    subtrahend = update_scale * y
    if momentum is not None:
      subtrahend = momentum * state.m + (1.0 - momentum) * subtrahend
      state = state.replace(m=subtrahend)
    if weight_decay_rate is not None:
      subtrahend = subtrahend + weight_decay_rate * param
    return (-subtrahend).astype(param.dtype), state

  def update(grads, state, params=None, *, step=None, **extra_args):
    del extra_args  # Other transformations' arguments (optax's extra-args protocol).
    if params is None:
      raise ValueError("Adafactor's update needs the params (tx.update(grads, state, params)).")
    step = state.count if step is None else jnp.asarray(step, jnp.int32)
    learning_rate = learning_rate_schedule(step)
    beta2 = 1.0 - (step.astype(jnp.float32) + 1.0) ** -decay_rate
    out = jax.tree_util.tree_map(
        lambda g, s, p: update_param(g, s, p, learning_rate, beta2),
        grads, state.param_states, params)
    updates = jax.tree_util.tree_map(lambda _, o: o[0], grads, out)
    param_states = jax.tree_util.tree_map(lambda _, o: o[1], grads, out)
    return updates, AdafactorState(state.count + 1, param_states)

  return optax.GradientTransformationExtraArgs(init, update), learning_rate_schedule
