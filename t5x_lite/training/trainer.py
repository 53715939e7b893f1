"""The jitted, sharded train / eval steps (with microbatching) of any model_interface.Model."""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from t5x_lite.checkpointing.train_state import TrainState
from t5x_lite.model import model_interface
from t5x_lite.parallel import partitioning


def _all_finite(tree) -> jax.Array:
  """One boolean: no NaN or inf anywhere in the tree."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _split_microbatches(batch, num_microbatches):
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"Batch size {x.shape[0]} is not divisible by num_microbatches="
                       f"{num_microbatches} (gin: train.num_microbatches).")
    return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])
  return jax.tree_util.tree_map(split, batch)


def with_shardings(abstract, shardings):
  """`abstract`'s ShapeDtypeStructs (or arrays) with the matching `shardings` attached."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _boxed_params(model: model_interface.Model, input_shapes, seed: int = 0):
  """Abstract params in their nn.LogicallyPartitioned boxes (shapes and axis names only)."""
  return jax.eval_shape(lambda r: model.init(r, input_shapes), jax.random.PRNGKey(seed))


def abstract_params(model: model_interface.Model, partitioner: partitioning.Partitioner,
                    input_shapes=None):
  """The model's parameters as ShapeDtypeStructs in the partitioner's shardings.

  What a checkpoint is read into when no optimizer state is needed (prediction, export);
  computed from shapes only (jax.eval_shape allocates nothing).

  Args:
    model: a model_interface.Model.
    partitioner: its mesh and rules.
    input_shapes: {feature: shape} the model is initialised with; None:
      `model.dummy_input_shapes()` (parameter shapes do not depend on the batch shapes).
  """
  if input_shapes is None:
    input_shapes = model.dummy_input_shapes()
  boxed = _boxed_params(model, input_shapes)
  return with_shardings(nn.unbox(boxed), partitioner.param_shardings(boxed))


class Trainer:
  """Owns the model, optimizer and partitioner; builds jitted steps with in/out shardings.

  Args:
    model: a model_interface.Model (EncoderDecoderModel, a t5x_lite/model/heads.py model, ...).
    optimizer: (optax.GradientTransformation, schedule) as optimizers.adafactor returns;
      its init gets the boxed params (Adafactor reads their logical axis names), its update
      the train step as `step` (a skipped non-finite step still advances the schedule).
    partitioner: a partitioning.Partitioner (mesh + rules).
    num_microbatches: split each batch into this many sequential microbatches and
      accumulate gradients (same update as the full batch, less activation memory).
    seed: base of the parameter-init and dropout RNGs (dropout uses fold_in(seed, step) and
      each row's global id, so a resumed run draws the same masks as an uninterrupted one and
      a microbatched step the same masks as the full batch).
  """

  def __init__(self, model: model_interface.Model, optimizer,
               partitioner: partitioning.Partitioner, num_microbatches: int = 1, seed: int = 0):
    self.model = model
    tx, self.schedule = optimizer
    # The train step is passed to every update (the schedule's step); a transformation
    # that takes no extra arguments ignores it.
    self.tx = optax.with_extra_args_support(tx)
    self.partitioner = partitioner
    self.num_microbatches = num_microbatches
    self.seed = seed
    self._train_step = None
    self._eval_step = None

  # ---- state ------------------------------------------------------------------------------

  def _init_fn(self, input_shapes):
    def init(rng):
      boxed = self.model.init(rng, input_shapes)
      # The boxes carry the logical axis names by which Adafactor factors each parameter.
      return TrainState(step=jnp.zeros((), jnp.int32), params=nn.unbox(boxed),
                        opt_state=self.tx.init(boxed))
    return init

  def state_shardings(self, input_shapes):
    """(abstract TrainState, TrainState of NamedShardings) — computed from shapes only."""
    rng = jax.random.PRNGKey(self.seed)
    boxed = _boxed_params(self.model, input_shapes, self.seed)
    param_shardings = self.partitioner.param_shardings(boxed)
    abstract = jax.eval_shape(self._init_fn(input_shapes), rng)
    opt_shardings = self.partitioner.opt_state_shardings(abstract.opt_state, param_shardings)
    shardings = TrainState(step=self.partitioner.sharding(jax.sharding.PartitionSpec()),
                           params=param_shardings, opt_state=opt_shardings)
    return abstract, shardings

  def abstract_state(self, input_shapes) -> TrainState:
    """The TrainState as ShapeDtypeStructs in their shardings (what a checkpoint is read into,
    what a train step is compiled for); computed from shapes only.

    Args:
      input_shapes: {feature: [global batch, length]} of the train batches.
    """
    return with_shardings(*self.state_shardings(input_shapes))

  def init_state(self, input_shapes) -> TrainState:
    """Fresh TrainState, created directly sharded (never whole on one device)."""
    _, shardings = self.state_shardings(input_shapes)
    with self.partitioner.context():
      init = jax.jit(self._init_fn(input_shapes), out_shardings=shardings)
      return init(jax.random.PRNGKey(self.seed))

  def state_from_params(self, params, input_shapes) -> TrainState:
    """TrainState at step 0 with given (sharded) params and a fresh optimizer state.

    Finetuning from parameters only: no fresh parameters are initialised and discarded.
    """
    _, shardings = self.state_shardings(input_shapes)
    boxes = _boxed_params(self.model, input_shapes, self.seed)

    def init_opt_state(params):
      # Adafactor reads each parameter's logical axis names from its box.
      boxed = jax.tree_util.tree_map(lambda box, value: box.replace_boxed(value), boxes, params,
                                     is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
      return self.tx.init(boxed)

    with self.partitioner.context():
      opt_state = jax.jit(init_opt_state, out_shardings=shardings.opt_state)(params)
    return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
                      params=params, opt_state=opt_state)

  # ---- steps ------------------------------------------------------------------------------

  def _dropout_rng(self, step):
    if not self.model.uses_dropout:
      return None
    return jax.random.fold_in(jax.random.PRNGKey(self.seed + 1), step)

  def _grads_and_metrics(self, params, batch, step):
    model = self.model
    normalizer = model.normalizer(jnp.sum(model.loss_weights(batch)))
    dropout_rng = self._dropout_rng(step)
    grad_fn = jax.grad(model.loss_fn, has_aux=True)
    if self.num_microbatches == 1:
      return grad_fn(params, batch, dropout_rng, normalizer)
    # Every microbatch uses the step's dropout rng with its rows' global ids, so each row
    # draws the dropout masks it would draw in the full batch (layers.Dropout).
    rows = next(iter(batch.values())).shape[0]
    batch = dict(batch, row_ids=jnp.arange(rows, dtype=jnp.int32))

    def body(carry, microbatch):
      grads_acc, metrics_acc = carry
      grads, metrics = grad_fn(params, microbatch, dropout_rng, normalizer)
      add = lambda a, b: jax.tree_util.tree_map(jnp.add, a, b)
      return (add(grads_acc, grads), add(metrics_acc, metrics)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    zero_metrics = {k: jnp.zeros((), jnp.float32) for k in model_interface.LOSS_METRICS}
    microbatches = _split_microbatches(batch, self.num_microbatches)
    (grads, metrics), _ = jax.lax.scan(body, (zeros, zero_metrics), microbatches)
    return grads, metrics

  def _summarize(self, metrics, batch, step):
    tokens = jnp.maximum(metrics["num_tokens"], 1.0)
    # Every label slot of the batch (target tokens; examples or tokens for the heads).
    slots = self.model.loss_weights(batch).size
    return {
        "loss": metrics["loss_sum"] / tokens,
        "z_loss": metrics["z_loss_sum"] / tokens,
        "accuracy": 100.0 * metrics["correct"] / tokens,  # percent, like seqio's metrics
        "num_tokens": metrics["num_tokens"],
        "nonpadding_fraction": metrics["num_tokens"] / slots,
        "learning_rate": jnp.asarray(self.schedule(step), jnp.float32),
    }

  def _train_step_fn(self, state: TrainState, batch):
    grads, metrics = self._grads_and_metrics(state.params, batch, state.step)
    # The step counter drives the schedule (as in t5x): after a skipped non-finite step the
    # learning rate applied is still schedule(state.step), the one the summary logs.
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params, step=state.step)
    params = jax.tree_util.tree_map(jnp.add, state.params, updates)
    summary = self._summarize(metrics, batch, state.step)
    # A step with a non-finite loss or update is dropped here, on the device, so parameters
    # and optimizer state never hold NaN; the host learns of it from "nonfinite" without
    # waiting for the step. Non-finite updates cover non-finite gradients (NaN propagates).
    finite = jnp.isfinite(metrics["loss_sum"]) & _all_finite(updates)
    keep = lambda new, old: jnp.where(finite, new, old)
    new_state = TrainState(step=state.step + 1,
                           params=jax.tree_util.tree_map(keep, params, state.params),
                           opt_state=jax.tree_util.tree_map(keep, opt_state, state.opt_state))
    summary["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    return new_state, summary

  def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    """One optimizer update on a global batch (dict of [B, ...] arrays).

    A step whose loss or update is not finite leaves params and optimizer state as they
    were (the step counter, and with it the learning-rate schedule, still advances: the batch
    is consumed) and returns
    metrics["nonfinite"] = 1.0; train.train applies its nonfinite_policy.
    """
    if self._train_step is None:
      shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
      self._train_step = jax.jit(
          self._train_step_fn, in_shardings=(shardings, self.partitioner.batch_sharding()),
          out_shardings=(shardings, self.partitioner.sharding(jax.sharding.PartitionSpec())),
          donate_argnums=(0,))
    with self.partitioner.context():
      return self._train_step(state, batch)

  def _eval_step_fn(self, params, batch):
    _, metrics = self.model.loss_fn(params, batch)
    return metrics

  def eval_step(self, params, batch) -> dict:
    """Summed teacher-forced metrics of one batch: loss_sum, z_loss_sum, correct, num_tokens."""
    if self._eval_step is None:
      self._eval_step = jax.jit(
          self._eval_step_fn, in_shardings=(
              jax.tree_util.tree_map(lambda x: x.sharding, params),
              self.partitioner.batch_sharding()))
    with self.partitioner.context():
      return self._eval_step(params, batch)


def evaluate_loss(trainer: Trainer, params, batches, max_batches: Optional[int] = None) -> dict:
  """Teacher-forced loss and token accuracy over batches (global arrays)."""
  totals = None
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    metrics = jax.device_get(trainer.eval_step(params, batch))
    totals = metrics if totals is None else {k: totals[k] + metrics[k] for k in totals}
  if totals is None:
    raise ValueError("Evaluation got no batches: is the eval split empty?")
  tokens = max(float(totals["num_tokens"]), 1.0)
  return {"loss": float(totals["loss_sum"]) / tokens,
          "accuracy": 100.0 * float(totals["correct"]) / tokens,
          "z_loss": float(totals["z_loss_sum"]) / tokens}
