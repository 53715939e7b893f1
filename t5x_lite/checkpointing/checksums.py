"""Checksums of what a checkpoint saves: every array (computed where it lives) and every file.

`array_checksums(tree)` gives each array of a pytree a 64-bit checksum of its bits (its
dtype's bit pattern, so -0.0 and NaN payloads count). It is computed by one jitted pass on the
devices that hold the array, never gathered to one host: each process sums over the shards
it holds and XLA adds the partial sums, so every process of a multi-host run gets the same
value, and a checkpoint restored on another mesh or process count checks against the same
number. Two 32-bit lanes, summed modulo 2**32 over the elements (the order of a sum does not
change it, hence the independence from the layout):
  lane 1: bits[i] * odd_weight(i)        any change confined to one element changes it
  lane 2: fmix32(bits[i] ^ weight2(i))   non-linear, so changes that cancel in lane 1 show here
i is the element's flat index in the global array; the weights are murmur3's finaliser of
i. It is a check against damage (flipped, truncated or misplaced bytes), not a signature.

`file_sha256` is sha256 over a file's bytes, read back through etils.epath (local or gs://).
"""

import hashlib
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

_READ_BYTES = 1 << 22


def path_name(path) -> str:
  """"params/encoder/layers_0/..." for a jax.tree_util key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _fmix32(h):
  """murmur3's 32-bit finaliser: every input bit flips about half the output bits."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x) -> jax.Array:
  """x's bits as uint32 words: [*x.shape] (or [*x.shape, 2] for 64-bit dtypes)."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = np.dtype(x.dtype).itemsize
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _array_lanes(x) -> jax.Array:
  """[2] uint32: the two lanes of x's checksum."""
  words = _words(x)
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(words.ndim)):
    # The flat index, built from iotas so that XLA computes it shard by shard.
    index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, dim) * jnp.uint32(
        stride % 2**32)
    stride *= words.shape[dim]
  lane1 = jnp.sum(words * (_fmix32(index ^ jnp.uint32(0x9E3779B9)) | jnp.uint32(1)),
                  dtype=jnp.uint32)
  lane2 = jnp.sum(_fmix32(words ^ _fmix32(index + jnp.uint32(0x7F4A7C15))), dtype=jnp.uint32)
  return jnp.stack([lane1, lane2])


# One computation per array, compiled once per shape, dtype and sharding: a T5 TrainState has
# a few dozen distinct ones among its hundreds of arrays. One jit over the whole tree compiled
# for 10-15 s (small4's 245 arrays, 2 loaded cores) on every first save and every restore of
# a new tree (bench/README.md, "Checkpoint checksums").
_jitted_lanes = jax.jit(_array_lanes)


class PendingChecksums:
  """Checksums whose computations are dispatched to the devices; result() fetches them.

  result() may be called from another thread than the one that dispatched them (orbax's
  background save): the arrays may meanwhile be donated to the next training step, as the
  runtime keeps a buffer until the computations already dispatched on it have read it.
  """

  def __init__(self, names: List[str], lanes: List[Any]):
    self._names, self._lanes = names, lanes

  def result(self) -> Dict[str, str]:
    """{path name: 16 hex digits}, in the tree's order (waits for the computations)."""
    # One transfer brings all the lanes back.
    lanes = jax.device_get(self._lanes)
    return {name: f"{int(v[0]):08x}{int(v[1]):08x}" for name, v in zip(self._names, lanes)}


def dispatch_checksums(tree: Any) -> PendingChecksums:
  """Starts the checksums of every array of `tree` (jax or numpy arrays) without waiting.

  In a multi-process run they are computed before it returns (see below); every process
  must call it with the same global arrays, and each gets the same result.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  names = [path_name(path) for path, _ in leaves]
  if jax.process_count() > 1:
    # One at a time, each awaited: computations dispatched without waiting may run
    # concurrently, and their cross-process reductions could then pair up differently in
    # each process (seen: two CPU processes deadlocked in a restore).
    return PendingChecksums(names, [jax.device_get(_jitted_lanes(x)) for _, x in leaves])
  # Smallest arrays first: XLA:CPU runs a small computation on the calling thread once the
  # ones queued before it are done, so a small array dispatched after the large ones made
  # this loop wait for nearly the whole pass (200-400 ms of 250-350 ms for small4's 175 MiB
  # state, bench/checkpoint_checksums.py); in this order the loop takes ~10% of the pass.
  lanes: List[Any] = [None] * len(leaves)
  for i in sorted(range(len(leaves)), key=lambda i: np.size(leaves[i][1])):
    lanes[i] = _jitted_lanes(leaves[i][1])
  return PendingChecksums(names, lanes)


def array_checksums(tree: Any) -> Dict[str, str]:
  """{path name: 16 hex digits} for every array of `tree` (jax or numpy arrays).

  Every process of a multi-host run must call it with the same global arrays (one jitted
  computation per array, in the tree's order); each gets the same result.
  """
  return dispatch_checksums(tree).result()


def file_sha256(path) -> str:
  """sha256 hex digest of a file's bytes (local or remote), read in 4 MiB blocks."""
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    while block := f.read(_READ_BYTES):
      digest.update(block)
  return digest.hexdigest()
