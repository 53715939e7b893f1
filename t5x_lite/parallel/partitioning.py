"""Mesh, logical axis rules and shardings: partitioning is a rule table, not code.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, ...) and
activations their own (`activation_batch`, `activation_embed`, `activation_mlp`, ...). A rule
table maps each to a mesh axis ('data', 'model', optionally 'replica') or to None
(replicated). t5x's standard rules shard heads/mlp/vocab over 'model' and the batch over
'data'; the FSDP option also shards parameters' `embed` over 'data'.
"""

import contextlib
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

LogicalRules = Sequence[tuple[str, Optional[str]]]


def standard_logical_axis_rules(fsdp: bool = False, activation_partitioning: bool = True):
  """t5x's standard rules (+ FSDP: `embed` parameters sharded over 'data').

  Parameters and activations have separate logical names (activations are `activation_*`,
  as in MaxText), so a rule for one never moves the other.

  Args:
    fsdp: shard the `embed` axis of parameters (and their optimizer state) over 'data',
      so each data-parallel replica holds a slice of every weight (ZeRO-3 style).
    activation_partitioning: shard activations' mlp/heads/vocab axes over 'model'
      (the usual tensor parallelism); False keeps activations replicated over 'model'
      (parameters stay sharded).
  """
  activation_model = "model" if activation_partitioning else None
  return [
      # Parameters.
      ("vocab", "model"),
      ("mlp", "model"),
      ("heads", "model"),
      ("joined_kv", "model"),
      ("kv", None),
      ("embed", "data" if fsdp else None),
      ("relpos_buckets", None),
      # The label axis of encoder heads (t5x_lite/model/heads.py): a few classes, replicated.
      ("labels", None),
      ("layers", None),
      # Activations.
      ("activation_batch", ("replica", "data")),
      ("activation_length", None),
      ("activation_embed", None),
      ("activation_mlp", activation_model),
      ("activation_heads", activation_model),
      ("activation_kv", None),
      ("activation_vocab", activation_model),
  ]


def _mesh_axes_present(rules, mesh):
  """Drops mesh axes the mesh lacks (e.g. 'replica' on a single slice)."""
  fixed = []
  for name, axis in rules:
    if isinstance(axis, tuple):
      axis = tuple(a for a in axis if a in mesh.axis_names) or None
      if axis is not None and len(axis) == 1:
        axis = axis[0]
    elif axis is not None and axis not in mesh.axis_names:
      axis = None
    fixed.append((name, axis))
  return fixed


class Partitioner:
  """Builds the mesh and turns logical axis names into NamedShardings.

  Attributes (gin):
    num_partitions: size of the 'model' axis (tensor parallelism); 'data' takes the rest.
    mesh_shape: explicit (data, model) or (replica, data, model) shape; overrides
      num_partitions. The product must equal the number of devices.
    logical_axis_rules: the rule table; None gives standard_logical_axis_rules().
  """

  def __init__(self, num_partitions: int = 1, mesh_shape: Optional[Sequence[int]] = None,
               logical_axis_rules: Optional[LogicalRules] = None, devices=None):
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if mesh_shape is None:
      if n % num_partitions:
        raise ValueError(f"Partitioner.num_partitions={num_partitions} does not divide the "
                         f"{n} devices.")
      mesh_shape = (n // num_partitions, num_partitions)
    mesh_shape = tuple(int(d) for d in mesh_shape)
    names = {2: ("data", "model"), 3: ("replica", "data", "model")}.get(len(mesh_shape))
    if names is None or math.prod(mesh_shape) != n:
      raise ValueError(f"Partitioner.mesh_shape={mesh_shape} must be (data, model) or "
                       f"(replica, data, model) with product {n} (the device count).")
    # Auto axes: XLA's sharding propagation (GSPMD) fills in what the rules leave open.
    self.mesh = jax.make_mesh(mesh_shape, names, axis_types=(AxisType.Auto,) * len(names),
                              devices=devices)
    rules = logical_axis_rules if logical_axis_rules is not None else standard_logical_axis_rules()
    self.rules = tuple(_mesh_axes_present(rules, self.mesh))

  @property
  def data_axes(self):
    return tuple(a for a in ("replica", "data") if a in self.mesh.axis_names)

  @property
  def data_parallel_size(self):
    return math.prod(self.mesh.shape[a] for a in self.data_axes)

  def sharding(self, spec: P) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def logical_sharding(self, logical_axes) -> NamedSharding:
    """NamedSharding for a tuple of logical axis names."""
    return self.sharding(nn.logical_to_mesh_axes(logical_axes, self.rules))

  def batch_sharding(self) -> NamedSharding:
    """Batches are split along their first (batch) axis over the data axes."""
    return self.sharding(P(self.data_axes))

  def param_shardings(self, boxed_params):
    """Shardings of (abstract) boxed params, from their logical axis metadata."""
    specs = nn.get_partition_spec(boxed_params)
    return nn.logical_to_mesh_sharding(specs, self.mesh, self.rules)

  def context(self):
    """The mesh and the logical rules, for tracing jitted steps: with it, the model's
    nn.with_logical_constraint calls shard activations (and decode caches) by the rules."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def opt_state_shardings(self, opt_state_shapes, params_shardings):
    """Shardings of an optimizers.adafactor state: the step count is replicated; each
    parameter's statistics follow its sharding, v_row without the column dims and v_col
    without the row dims of the Factoring the optimizer recorded, v and momentum whole.
    """
    def param_state(param_sharding, state):
      spec = tuple(param_sharding.spec)

      def without(array, dims):
        if array is None:
          return None
        return self.sharding(P(*(s for i, s in enumerate(spec) if i not in dims)))

      return state.replace(v_row=without(state.v_row, state.factoring.cols),
                           v_col=without(state.v_col, state.factoring.rows),
                           v=without(state.v, ()), m=without(state.m, ()))

    return opt_state_shapes._replace(
        count=self.sharding(P()),
        param_states=jax.tree_util.tree_map(param_state, params_shardings,
                                            opt_state_shapes.param_states))


def host_local_batch_to_global(batch, partitioner: Partitioner):
  """Assembles per-process numpy batches into global jax.Arrays sharded over data axes.

  Each process passes its own shard (rows [process_index * local_batch, ...)); on one
  process this is a plain device_put with the batch sharding.
  """
  sharding = partitioner.batch_sharding()
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


