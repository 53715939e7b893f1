"""Comparing parameter trees in tests."""

import jax
import numpy as np


def tree_max_abs_diff(a, b) -> float:
  """Largest absolute difference between two trees of arrays of the same structure."""
  diffs = jax.tree_util.tree_map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
      a, b)
  return max(jax.tree_util.tree_leaves(diffs), default=0.0)
