"""t5x_lite.checkpointing.checksums: array checksums equal a numpy reference, on any mesh and layout."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import settings
from t5x_lite.checkpointing import checkpoints, checksums
from t5x_lite.checkpointing.run_dir import RunDir
from t5x_lite.interop import initial_params
from t5x_lite.model import heads, network
from t5x_lite.training import trainer

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
from t5x_lite.checkpointing import checksums
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


def test_a_head_refuses_an_initial_checkpoint_with_a_flipped_byte_naming_the_array(tmp_path):
  """A head starts from an orbax encoder-decoder checkpoint (what train does with
  INITIAL_CHECKPOINT_PATH); one byte flipped in the token embedding's stored bytes (zstd
  keeps incompressible float32 literally, so the file still parses) must stop it, naming the
  array, instead of training from damaged values."""
  config = network.T5Config(vocab_size=4224, d_model=16, d_ff=32, d_kv=4, num_heads=4,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  rng = np.random.RandomState(0)
  # Shapes only (no compiled init): seeded values fill them.
  params = jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.randn(*a.shape).astype(a.dtype)),
      nn.unbox(jax.eval_shape(lambda r: network.Transformer(config).init(
          r, np.ones((1, 4), np.int32), np.ones((1, 4), np.int32)), jax.random.PRNGKey(0)))[
              "params"])
  manager = checkpoints.CheckpointManager(RunDir(str(tmp_path / "ed")), settings.CheckpointConfig(
      period=1, keep=None, async_save=False))
  manager.save(trainer.TrainState(step=jnp.int32(1), params=params, opt_state={}), force=True)
  manager.close()
  step = tmp_path / "ed" / "checkpoints" / "1"
  model = heads.SequenceClassificationModel(config)
  head_params = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), nn.unbox(
      jax.eval_shape(lambda r: model.init(r, {"encoder_input_tokens": (1, 4)}),
                     jax.random.PRNGKey(0))))
  loaded = initial_params.load(model, str(step), head_params)  # intact: the saved values
  np.testing.assert_array_equal(loaded["token_embedder"]["embedding"],
                                params["token_embedder"]["embedding"])
  largest = max((step / "state" / "ocdbt.process_0" / "d").iterdir(), key=os.path.getsize)
  # The embedding (4224 x 16 float32) fills most of the largest file; the middle is in it.
  with open(largest, "r+b") as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)[0]
    f.seek(os.path.getsize(largest) // 2)
    f.write(bytes([byte ^ 1]))
  with pytest.raises(checkpoints.CheckpointError) as refusal:
    initial_params.load(model, str(step), head_params)
  assert str(refusal.value) == (
      f"The checkpoint {step / 'state'} is damaged: 1 array(s) differ from the checksums saved "
      "with them: params/token_embedder/embedding. It cannot be used; the run has no other "
      "complete step.")
