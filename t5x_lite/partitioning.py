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

  def opt_state_shardings(self, opt_state_shapes, params_shapes, params_shardings):
    """Optimizer state follows its parameter: a slot shaped like the param takes its
    sharding; Adafactor's factored row/column statistics take the param's sharding minus
    the factored-out dimension; scalars and placeholders are replicated.
    """
    param_by_path = {}
    for (path, shape), sharding in zip(
        jax.tree_util.tree_flatten_with_path(params_shapes)[0],
        jax.tree_util.tree_leaves(params_shardings)):
      param_by_path[_path_key(path)] = (shape.shape, sharding)

    def shard_leaf(path, leaf):
      replicated = self.sharding(P())
      key = _path_key(path)
      match = next((param_by_path[k] for k in _suffixes(key) if k in param_by_path), None)
      if match is None or leaf.ndim == 0:
        return replicated
      param_shape, param_sharding = match
      spec = tuple(param_sharding.spec) + (None,) * (len(param_shape) - len(param_sharding.spec))
      if tuple(leaf.shape) == tuple(param_shape):
        return param_sharding
      field = _factored_field(path)
      dims = factored_dims(param_shape)
      if field is None or dims is None or leaf.ndim != len(param_shape) - 1:
        return replicated
      row_dim, col_dim = dims  # v_row drops col_dim; v_col drops row_dim (as optax does).
      dropped = col_dim if field == "v_row" else row_dim
      return self.sharding(P(*(s for i, s in enumerate(spec) if i != dropped)))

    return jax.tree_util.tree_map_with_path(shard_leaf, opt_state_shapes)


def _path_key(path):
  return tuple(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def _suffixes(key):
  for i in range(len(key)):
    yield key[i:]


def _factored_field(path):
  for p in path:
    name = getattr(p, "name", None)
    if name in ("v_row", "v_col"):
      return name
  return None


def factored_dims(shape, min_dim_size_to_factor=128):
  """The two dimensions optax.adafactor factors, (row, col), or None: the rule of optax's
  private `_factored_dims`, restated because shardings and memory plans need it before any
  optimizer state exists. Matches optimizers.adafactor's default min_dim_size_to_factor."""
  if len(shape) < 2:
    return None
  order = np.argsort(shape)
  if shape[order[-2]] < min_dim_size_to_factor:
    return None
  return int(order[-2]), int(order[-1])


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


