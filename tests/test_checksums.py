"""t5x_lite.checkpointing.checksums: array checksums equal a numpy reference, on any mesh and layout."""

import json
import os
import shutil
import subprocess
import sys
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from t5x_lite import settings
from t5x_lite.checkpointing import checkpoints, checksums, restore, step_record, storage
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
  with pytest.raises(step_record.CheckpointError) as refusal:
    initial_params.load(model, str(step), head_params)
  assert str(refusal.value) == (
      f"The checkpoint {step / 'state'} is damaged: 1 array(s) differ from the checksums saved "
      "with them: params/token_embedder/embedding. It cannot be used; the run has no other "
      "complete step.")


# ---- the record of a step: written by orbax's background save, before the step is committed ----


def _small_state(step):
  rng = np.random.RandomState(step)
  return trainer.TrainState(
      step=jnp.int32(step),
      params={"a": jnp.asarray(rng.randn(64, 32).astype(np.float32)),
              "b": jnp.asarray(rng.randn(8).astype(np.float32))},
      opt_state={"v": jnp.asarray(rng.randn(64).astype(np.float32))})


def _abstract(state):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _assert_equal_trees(got, expected):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                          jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_save_returns_before_the_record_and_a_step_never_exists_without_it(tmp_path,
                                                                          monkeypatch):
  """The record's checksums are awaited in orbax's background save, not by save(); a save
  that dies before the record is written (here: the wait for the checksums fails) leaves no
  step, and the next start resumes from the step before it."""
  run = RunDir(str(tmp_path))
  manager = checkpoints.CheckpointManager(run, settings.CheckpointConfig(period=1))
  first = _small_state(1)
  manager.save(first)
  manager.wait()
  entered, release = threading.Event(), threading.Event()

  def held(self):
    del self
    entered.set()
    assert release.wait(60)
    raise RuntimeError("the process died before the record was written")

  real = checksums.PendingChecksums.result
  monkeypatch.setattr(checksums.PendingChecksums, "result", held)
  manager.save(_small_state(2))  # returns while the background save waits for the record
  assert entered.wait(60)
  assert run.checkpoint_steps() == [1] and not os.path.exists(run.checkpoint(2))
  assert [p for p in os.listdir(run.checkpoints) if p.startswith("2.orbax-checkpoint-tmp")]
  release.set()
  with pytest.raises(storage.StorageError):
    manager.wait()
  manager.close()
  monkeypatch.setattr(checksums.PendingChecksums, "result", real)
  manager = checkpoints.CheckpointManager(run, settings.CheckpointConfig(period=1))
  assert manager.all_steps() == [1] and run.checkpoint_steps() == [1]
  restored = manager.restore(_abstract(first))
  manager.close()
  _assert_equal_trees(restored, first)


def test_the_record_holds_the_checksums_of_the_state_donated_right_after_save(tmp_path):
  """The next training step donates the saved state's buffers while the checksums may still
  be running: the record must hold the saved values' checksums."""
  state = _small_state(3)
  expected = checksums.array_checksums(state)
  run = RunDir(str(tmp_path))
  manager = checkpoints.CheckpointManager(run, settings.CheckpointConfig(period=1))
  manager.save(state)
  # (XLA may decline the donation while the save still reads the buffers, and copy them.)
  jax.jit(lambda s: jax.tree_util.tree_map(lambda x: x + 1, s), donate_argnums=0)(state)
  manager.wait()
  manager.close()
  record = step_record.read_record(run.checkpoint(3))
  assert {name: entry["checksum"] for name, entry in record["arrays"].items()} == expected


def test_a_step_with_its_record_in_the_step_metadata_restores_and_is_checked(tmp_path):
  """Steps saved by earlier versions hold the record in orbax's step metadata
  (custom_metadata "t5x_lite") and no record item: they restore, and are checked."""
  state = _small_state(4)
  run = RunDir(str(tmp_path))
  with ocp.CheckpointManager(epath.Path(run.checkpoints), item_names=("state", "dataset"),
                             options=ocp.CheckpointManagerOptions(create=True)) as earlier:
    earlier.save(4, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)),
                 custom_metadata={"t5x_lite": step_record.make_record(state)})
    earlier.wait_until_finished()
  assert not os.path.exists(os.path.join(run.checkpoint(4), "record"))
  manager = checkpoints.CheckpointManager(run, settings.CheckpointConfig(restore_fallback=False))
  _assert_equal_trees(manager.restore(_abstract(state)), state)
  manager.close()
  path = restore.state_path(run.checkpoint(4))
  with ocp.PyTreeCheckpointer() as checkpointer:
    saved = jax.tree_util.tree_map(np.array, checkpointer.restore(path))
    saved["params"]["a"][5, 7] += 0.5
    shutil.rmtree(path)
    checkpointer.save(path, saved)  # the step metadata (its record) is kept
  with pytest.raises(step_record.CheckpointError) as refusal:
    restore.restore_state(path, _abstract(state))
  assert str(refusal.value) == (
      f"The checkpoint {path} is damaged: 1 array(s) differ from the checksums saved with "
      "them: params/a. It cannot be used; the run has no other complete step.")
