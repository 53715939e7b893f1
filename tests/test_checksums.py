"""t5x_lite.checksums: array checksums equal a numpy reference, on any mesh and layout."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np

from t5x_lite import checksums

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fmix32(h):
  h = h ^ (h >> np.uint32(16))
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> np.uint32(13))
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> np.uint32(16))


def reference(x) -> str:
  """The checksum in numpy, from the module docstring's definition (uint32 wraps)."""
  raw = np.ascontiguousarray(x).view(np.uint8).reshape(-1)
  size = np.dtype(x.dtype).itemsize
  words = (raw.view(np.uint32) if size >= 4 else raw.view({1: np.uint8, 2: np.uint16}[size])
           ).astype(np.uint32)
  index = np.arange(words.size, dtype=np.uint32)
  with np.errstate(over="ignore"):
    lane1 = np.sum(words * (_fmix32(index ^ np.uint32(0x9E3779B9)) | np.uint32(1)),
                   dtype=np.uint32)
    lane2 = np.sum(_fmix32(words ^ _fmix32(index + np.uint32(0x7F4A7C15))), dtype=np.uint32)
  return f"{int(lane1):08x}{int(lane2):08x}"


def _arrays():
  rng = np.random.RandomState(0)
  x = rng.randn(64, 48).astype(np.float32)
  return {"f32": x, "bf16": x.astype(jnp.bfloat16), "i32": np.arange(-5, 7, dtype=np.int32),
          "scalar": np.int32(7), "u8": rng.randint(0, 255, (8, 16)).astype(np.uint8)}


def test_checksums_equal_a_numpy_reference_and_see_one_ulp():
  arrays = _arrays()
  got = checksums.array_checksums(arrays)
  assert got == {name: reference(np.asarray(x)) for name, x in arrays.items()}
  changed = arrays["f32"].copy()
  changed[63, 47] = np.nextafter(changed[63, 47], np.float32(1))  # the last element, one ulp
  assert checksums.array_checksums({"f32": changed})["f32"] != got["f32"]
  swapped = arrays["f32"].copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # the same values in other places
  assert checksums.array_checksums({"f32": swapped})["f32"] != got["f32"]


_ON_MESHES = """
import json, sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, sys.argv[1])
import test_checksums as t
from t5x_lite import checksums
arrays, out = t._arrays(), []
for shape, spec in [((8, 1), P("d", None)), ((4, 2), P("d", "m")), ((2, 4), P("m", "d")),
                    ((1, 8), P(None, "m"))]:
  mesh = jax.make_mesh(shape, ("d", "m"))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, spec if np.ndim(x) == 2 else P()))
  out.append(checksums.array_checksums({k: put(v) for k, v in arrays.items()}))
print(json.dumps(out))
"""


def test_checksums_do_not_depend_on_the_mesh_or_the_sharding():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  result = subprocess.run([sys.executable, "-c", _ON_MESHES, os.path.dirname(__file__)],
                          capture_output=True, text=True, env=env, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  expected = {name: reference(np.asarray(x)) for name, x in _arrays().items()}
  assert json.loads(result.stdout.strip().splitlines()[-1]) == [expected] * 4
