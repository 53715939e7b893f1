"""t5x checkpoints: read what google-research/t5x wrote, write what t5x restores.

The fixtures (tests/fixtures/t5x_checkpoints, made by make_fixtures.py there with t5x itself):
t5x's Checkpointer output after two t5x train steps of tiny models of t5x's examples/t5
network (v1.0 relu tied, v1.1 gated untied) and flaxformer's T5 architecture (v1.1), t5x's
logits and the parameters after t5x's third train step; what t5x's Checkpointer restored
from `lite_written/`, a checkpoint t5x_lite's save_t5x_checkpoint wrote
(write_lite_checkpoint.py); and `orbax_examples_v1_0/`, the examples_v1_0 model saved in t5x's
orbax layout by t5x's OrbaxCheckpointManagerInterface, with what that interface restored from
it (make_orbax_fixture.py).
"""

import functools
import importlib.util
import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import serialization

from t5x_lite import settings
from t5x_lite.interop import hf_param_layout, t5x_checkpoint, t5x_format, t5x_param_layout
from t5x_lite.interop import initial_params
from t5x_lite.model import heads, encoder_decoder, network
from t5x_lite.modes import train
from t5x_lite.parallel import partitioning
from t5x_lite.training import optimizers, trainer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "t5x_checkpoints")
NAMES = ("examples_v1_0", "examples_v1_1", "flaxformer_v1_1")
ORBAX = "orbax_examples_v1_0"  # t5x's orbax layout; its model is examples_v1_0's
BATCH_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
              "decoder_loss_weights")


def fixture_config(name, **overrides):
  with open(os.path.join(FIXTURES, "fixtures.json")) as f:
    fields = dict(json.load(f)[name])
  fields.pop("code")
  return network.T5Config(**{"dropout_rate": 0.0, **fields, **overrides})


def checkpoint(name):
  return os.path.join(FIXTURES, name, "checkpoint_2")


def reference(name):
  return dict(np.load(os.path.join(FIXTURES, f"{name}.npz")))


def flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = value
  return out


@functools.lru_cache()
def jitted_apply(config):
  """The model's jitted apply, one per T5Config: the tests of one model share its compilation."""
  return jax.jit(network.Transformer(config).apply)


def t5x_layout(path, array):
  """t5x's 2-D attention kernels from t5x_lite's 3-D ones (independent of the module)."""
  if path.endswith("/out/kernel"):
    return array.reshape(-1, array.shape[-1])
  if any(path.endswith(f"/{n}/kernel") for n in ("query", "key", "value")):
    return array.reshape(array.shape[0], -1)
  return array


@pytest.mark.parametrize("name", NAMES)
def test_t5x_checkpoints_load_and_give_t5x_logits(name):
  config = fixture_config(name)
  assert t5x_param_layout.config_from_t5x_checkpoint(checkpoint(name), dropout_rate=0.0) == config
  params = t5x_checkpoint.load_t5x_checkpoint(checkpoint(name), config)
  ref = reference(name)
  logits = np.asarray(jitted_apply(config)({"params": params},
                                           *(ref[k] for k in BATCH_KEYS[:3])))
  real = ref["decoder_target_tokens"] > 0  # padded positions are masked differently
  assert real.sum() < real.size
  # t5x's float32 logits are up to 9.1e-7 from a float64 run of the same parameters (|logits|
  # < 4); seen: 1.0e-6 apart. 1e-5 is ~10x the reference's own float32 error.
  np.testing.assert_allclose(logits[real], ref["logits"][real], rtol=0, atol=1e-5)
  assert np.abs(ref["logits"][real]).mean() > 0.5


def one_train_step(config, batch):
  """step(params, opt_state, step) -> (per-layer params after one t5x_lite train step, metrics).

  t5x's settings: Adafactor decay_rate 0.8 at constant learning rate 0.01, z-loss 1e-4,
  the loss summed over target tokens (t5x's loss_normalizing_factor None).
  """
  t = trainer.Trainer(encoder_decoder.EncoderDecoderModel(config, z_loss=1e-4,
                                                 loss_normalizing_factor="NONE"),
                      optimizers.adafactor(optimizers.constant_schedule(0.01), decay_rate=0.8),
                      partitioning.Partitioner())
  _, shardings = t.state_shardings({k: v.shape for k, v in batch.items()})

  def step(params, opt_state, step):
    state = jax.device_put(trainer.TrainState(step=np.int32(step), params=params,
                                              opt_state=opt_state), shardings)
    new, metrics = t.train_step(state, batch)
    params = jax.device_get(new.params)
    unstacked = hf_param_layout.unstack_layers(params, config) if config.scan_layers else params
    return unstacked, metrics
  return step


def test_t5x_orbax_checkpoint_loads_what_t5x_restored():
  path = checkpoint(ORBAX)
  config = fixture_config("examples_v1_0")
  assert t5x_format.is_t5x_checkpoint(path)
  assert t5x_format.is_t5x_checkpoint(os.path.join(path, "state"))
  assert t5x_param_layout.config_from_t5x_checkpoint(path, dropout_rate=0.0) == config
  restored = reference(f"{ORBAX}_restored")  # what t5x's orbax manager restored
  # The raw tree, in t5x's names: exactly t5x's values.
  target, t5x_states, step = t5x_format.read_t5x_checkpoint(path)
  assert step == int(restored["state/step"]) == 2
  assert {f"target/{'/'.join(p)}" for p in target} == {k for k in restored
                                                       if k.startswith("target/")}
  for p, value in target.items():
    np.testing.assert_array_equal(value, restored[f"target/{'/'.join(p)}"])
  for p, value in t5x_states.items():
    key = f"state/param_states/{'/'.join(p)}"
    if key in restored:
      np.testing.assert_array_equal(value, restored[key], key)
    else:  # t5x's stand-in for a statistic it does not keep (left out of the .npz)
      assert value.shape == (1,) and not value.any(), key
  # 17 factored parameters' v_row and v_col, 9 unfactored ones' v (norm scales, bias tables).
  assert sum(f"state/param_states/{'/'.join(p)}" in restored for p in t5x_states) == len(
      [k for k in restored if k.startswith("state/param_states/")]) == 17 * 2 + 9
  # Converted: the parameters exactly, t5x's logits, and its Adafactor statistics.
  params, opt_state, step = t5x_checkpoint.load_t5x_checkpoint(path, config,
                                                               with_optimizer_state=True)
  assert step == 2 and int(opt_state.count) == 2
  for p, value in flat(params).items():
    np.testing.assert_array_equal(t5x_layout(p, value), restored[f"target/{p}"], p)
  ref = reference("examples_v1_0")  # make_orbax_fixture.py's batch is this one
  logits = np.asarray(jitted_apply(config)({"params": params},
                                           *(ref[k] for k in BATCH_KEYS[:3])))
  real = ref["decoder_target_tokens"] > 0
  # As test_t5x_checkpoints_load_and_give_t5x_logits: ~10x t5x's own float32 error.
  np.testing.assert_allclose(logits[real], restored["logits"][real], rtol=0, atol=1e-5)
  is_state = lambda x: isinstance(x, optimizers.ParamState)
  seen = 0
  for keys, state in jax.tree_util.tree_flatten_with_path(opt_state.param_states,
                                                          is_leaf=is_state)[0]:
    p = "/".join(k.key for k in keys)
    t5x_shape = restored[f"target/{p}"].shape
    if state.v is not None:
      np.testing.assert_array_equal(state.v.reshape(t5x_shape),
                                    restored[f"state/param_states/{p}/v"], p)
      seen += 1
      continue
    # t5x's second-moment estimate (v_row along its smaller dim) equals t5x_lite's (v_row
    # along embed), in float64. Exact statistics have mean(v_row) == mean(v_col); t5x's
    # float32 ones differ by up to 6e-8 relative here: rtol 1e-6.
    v_row, v_col = (restored[f"state/param_states/{p}/{k}"].astype(np.float64)
                    for k in ("v_row", "v_col"))
    smaller_first = np.argsort(t5x_shape, kind="stable")[-2] == 0
    embed_first = p.endswith(("query/kernel", "key/kernel", "value/kernel", "wi/kernel"))
    np.testing.assert_allclose(
        estimate(np.asarray(state.v_row, np.float64).ravel(),
                 np.asarray(state.v_col, np.float64).ravel(), t5x_shape, embed_first),
        estimate(v_row, v_col, t5x_shape, smaller_first), rtol=1e-6, err_msg=p)
    seen += 1
  assert seen == len(target) == 26


# One case, for test time: square attention kernels, where t5x's v_row runs along embed for
# query/key/value and along joined_kv for out (t5x_lite's v_col: the swap both ways), loaded
# into t5x_lite's scanned layout (statistics stacked per layer).
@pytest.mark.parametrize("name,scan", [("examples_v1_1", True)])
def test_one_train_step_from_t5x_adafactor_state_equals_t5xs(name, scan):
  config = fixture_config(name, scan_layers=scan)
  params, opt_state, step = t5x_checkpoint.load_t5x_checkpoint(
      checkpoint(name), config, with_optimizer_state=True)
  assert step == 2 and int(opt_state.count) == 2
  ref = reference(name)
  batch = {k: ref[k] for k in BATCH_KEYS}
  train_step = one_train_step(config, batch)
  after, metrics = train_step(params, opt_state, step)
  assert float(metrics["loss"]) * batch["decoder_loss_weights"].sum() == pytest.approx(
      float(ref["loss"]), rel=1e-5)
  before = flat(hf_param_layout.unstack_layers(params, config) if scan else params)
  moved = 0.0
  for path, value in flat(after).items():
    expected = ref[f"after/{path}"]
    # Seen: 1.2e-7 (one float32 ulp of the parameters); 1e-6 absolute as asked.
    np.testing.assert_allclose(t5x_layout(path, value), expected, rtol=0, atol=1e-6,
                               err_msg=path)
    moved = max(moved, float(np.abs(t5x_layout(path, before[path]) - expected).max()))
  assert moved > 1e-3  # the step did move the parameters
  # Control: the same step from fresh statistics lands > 1e-5 away from t5x's.
  other, _ = train_step(params, jax.tree_util.tree_map(np.zeros_like, opt_state), step)
  assert max(float(np.abs(t5x_layout(p, v) - ref[f"after/{p}"]).max())
             for p, v in flat(other).items()) > 1e-5


def lite_writer():
  spec = importlib.util.spec_from_file_location(
      "write_lite_checkpoint", os.path.join(FIXTURES, "write_lite_checkpoint.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def estimate(v_row, v_col, shape, rows_first):
  """Adafactor's second-moment estimate v_row x v_col / mean(v_row) in `shape`."""
  outer = np.outer(v_row, v_col) / v_row.mean()
  return (outer if rows_first else outer.T).reshape(shape)


def test_t5x_restores_a_checkpoint_t5x_lite_wrote(tmp_path):
  config, lite_params, opt_state, step = lite_writer().lite_state()
  restored = dict(np.load(os.path.join(FIXTURES, "lite_written_restored.npz")))
  assert int(restored["state/step"]) == step == 7
  params = flat(hf_param_layout.unstack_layers(lite_params, config))
  stats = {}
  is_state = lambda x: isinstance(x, optimizers.ParamState)
  for keys, state in jax.tree_util.tree_flatten_with_path(opt_state.param_states,
                                                          is_leaf=is_state)[0]:
    path = "/".join(k.key for k in keys)
    for stat in ("v_row", "v_col", "v"):
      value = getattr(state, stat)
      if value is None:
        continue
      if path.split("/")[1] == "layers":  # scanned: one entry per layer
        for i, layer in enumerate(np.asarray(value)):
          stats[path.replace("/layers/", f"/layers_{i}/", 1) + f"/{stat}"] = layer
      else:
        stats[f"{path}/{stat}"] = np.asarray(value)
  assert {k for k in restored if k.startswith("target/")} == {f"target/{p}" for p in params}
  for path, value in params.items():
    np.testing.assert_array_equal(restored[f"target/{path}"], t5x_layout(path, value), path)
    t5x_shape = restored[f"target/{path}"].shape
    if f"{path}/v" in stats:
      np.testing.assert_array_equal(restored[f"state/param_states/{path}/v"],
                                    stats[f"{path}/v"], path)
      continue
    v_row, v_col = (restored[f"state/param_states/{path}/{k}"] for k in ("v_row", "v_col"))
    assert v_row.size == min(t5x_shape) and restored[f"state/param_states/{path}/v"].size == 1
    # t5x's estimate (v_row along its smaller dim) equals t5x_lite's (v_row along embed).
    smaller_first = np.argsort(t5x_shape, kind="stable")[-2] == 0
    lite_row, lite_col = stats[f"{path}/v_row"].ravel(), stats[f"{path}/v_col"].ravel()
    embed_first = path.endswith(("query/kernel", "key/kernel", "value/kernel", "wi/kernel",
                                 "wi_0/kernel", "wi_1/kernel", "logits_dense/kernel"))
    np.testing.assert_allclose(estimate(v_row, v_col, t5x_shape, smaller_first),
                               estimate(lite_row, lite_col, t5x_shape, embed_first),
                               rtol=1e-6, err_msg=path)
  # Today's writer still writes what t5x was shown to restore, and reads it back exactly.
  written = t5x_checkpoint.save_t5x_checkpoint(str(tmp_path), lite_params, step, opt_state,
                                               config=config)
  assert written == str(tmp_path / "checkpoint_7") and not list(tmp_path.glob("*.tmp-*"))
  mine = t5x_format.read_t5x_checkpoint(written)
  committed = t5x_format.read_t5x_checkpoint(os.path.join(FIXTURES, "lite_written",
                                                              "checkpoint_7"))
  for a, b in zip(mine[:2], committed[:2]):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], "/".join(key))
  loaded, loaded_state, loaded_step = t5x_checkpoint.load_t5x_checkpoint(
      written, config, with_optimizer_state=True)
  assert loaded_step == 7
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, lite_params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded_state,
                         jax.tree_util.tree_map(np.asarray, opt_state))


def copy_fixture(tmp_path, name="examples_v1_0"):
  target = tmp_path / "checkpoint_2"
  shutil.copytree(checkpoint(name), target)
  return target


def edit_msgpack(directory, edit):
  path = directory / "checkpoint"
  contents = serialization.msgpack_restore(path.read_bytes())
  edit(contents["optimizer"])
  path.write_bytes(serialization.msgpack_serialize(contents))


def test_bad_checkpoints_name_the_array_and_the_path(tmp_path):
  v1_0 = fixture_config("examples_v1_0")
  load = t5x_checkpoint.load_t5x_checkpoint
  Error = t5x_format.T5xCheckpointError  # pylint: disable=invalid-name
  # Another family: the missing and the unknown arrays, and what the checkpoint is.
  with pytest.raises(Error, match=r"examples_v1_0/checkpoint_2 does not fit this T5Config: "
                     r"arrays it lacks: \['decoder/layers_0/mlp/wi_0/kernel'.*arrays the config "
                     r"has no place for: \['decoder/layers_0/mlp/wi/kernel'.*"
                     r"feed_forward='relu', tie_word_embeddings=True"):
    load(checkpoint("examples_v1_0"), fixture_config("examples_v1_1"))
  # Another size: the array and both shapes.
  with pytest.raises(Error, match=r"array decoder/layers_0/mlp/wi/kernel has shape \(8, 16\); "
                     r"the T5Config expects \(8, 48\)"):
    load(checkpoint("examples_v1_0"), fixture_config("examples_v1_0", d_ff=48))
  with pytest.raises(Error, match=r"array \S+/(query|key|value)/kernel has shape \(8, 16\); "
                     r"the T5Config expects \(8, 12\) \(t5x_lite's \(8, 2, 6\)\)"):
    load(checkpoint("examples_v1_0"), fixture_config("examples_v1_0", d_kv=6))
  # A missing array.
  directory = copy_fixture(tmp_path / "missing")
  edit_msgpack(directory, lambda o: o["target"]["encoder"]["layers_0"]["mlp"].pop("wo"))
  with pytest.raises(Error, match=r"arrays it lacks: \['encoder/layers_0/mlp/wo/kernel'\]"):
    load(str(directory), v1_0)
  # A truncated array file, and a missing one.
  directory = copy_fixture(tmp_path / "truncated")
  chunk = directory / "target.encoder.layers_0.mlp.wi.kernel" / "0.0"
  chunk.write_bytes(chunk.read_bytes()[:40])
  with pytest.raises(Error, match=r"cannot read array encoder/layers_0/mlp/wi/kernel from "
                     r".*target.encoder.layers_0.mlp.wi.kernel.*damaged"):
    load(str(directory), v1_0)
  chunk.unlink()
  with pytest.raises(Error, match=r"encoder/layers_0/mlp/wi/kernel .*1 of its 1 chunk files "
                     "are missing"):
    load(str(directory), v1_0)
  # Directories that are no t5x checkpoint.
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(Error, match=rf"{empty} is not a t5x checkpoint: .*checkpoint_<step>/"):
    load(str(empty), v1_0)
  model_dir = tmp_path / "missing"
  with pytest.raises(Error, match=rf"{model_dir} is a t5x model directory.*"
                     rf"{model_dir / 'checkpoint_2'} \(steps \[2\]\)"):
    load(str(model_dir), v1_0)
  orbax = tmp_path / "orbax"
  orbax.mkdir()
  (orbax / "checkpoint").write_bytes(b"")
  (orbax / "_CHECKPOINT_METADATA").write_text("{}")
  with pytest.raises(Error, match=rf"{orbax} is an orbax checkpoint"):
    load(str(orbax), v1_0)
  (empty / "checkpoint").write_bytes(b"\xc1 not msgpack")
  with pytest.raises(Error, match=rf"{empty / 'checkpoint'} is not a t5x checkpoint file"):
    load(str(empty), v1_0)
  assert t5x_format.is_t5x_checkpoint(checkpoint("examples_v1_0"))
  assert not t5x_format.is_t5x_checkpoint(str(model_dir))
  assert not t5x_format.is_t5x_checkpoint(str(orbax))


def test_save_and_load_on_a_bucket():
  """gs:// through TensorStore's gcs driver (a local GCS emulator); the specs are t5x's.
  The orbax layout too (orbax's OCDBT through the same driver)."""
  import fake_bucket  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  config = fixture_config("examples_v1_0")
  params, opt_state, step = t5x_checkpoint.load_t5x_checkpoint(
      checkpoint("examples_v1_0"), config, with_optimizer_state=True)
  with fake_bucket.gcs_emulator() as bucket:
    written = t5x_checkpoint.save_t5x_checkpoint(f"{bucket}/run", params, step, opt_state,
                                                 config=config)
    assert written == f"{bucket}/run/checkpoint_2"
    contents = serialization.msgpack_restore((epath.Path(written) / "checkpoint").read_bytes())
    # t5x's portable gcs spec: a dummy bucket, the array's name beside the kvstore.
    spec = contents["optimizer"]["target"]["token_embedder"]["embedding"]
    assert spec["kvstore"] == {"driver": "gcs", "bucket": "t5x-dummy-bucket"}
    assert spec["path"] == "target.token_embedder.embedding"
    loaded, loaded_state, loaded_step = t5x_checkpoint.load_t5x_checkpoint(
        written, config, with_optimizer_state=True)
    # t5x's orbax layout on the bucket: the same state (its model and steps are this one's).
    orbax = epath.Path(f"{bucket}/orbax/checkpoint_2")
    for local in pathlib.Path(checkpoint(ORBAX)).rglob("*"):
      if local.is_file():
        remote = orbax / str(local.relative_to(checkpoint(ORBAX)))
        remote.parent.mkdir(parents=True, exist_ok=True)
        remote.write_bytes(local.read_bytes())
    assert t5x_param_layout.config_from_t5x_checkpoint(str(orbax), dropout_rate=0.0) == config
    from_orbax = t5x_checkpoint.load_t5x_checkpoint(str(orbax), config,
                                                    with_optimizer_state=True)
  assert loaded_step == 2
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded_state, opt_state)
  assert from_orbax[2] == 2
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_orbax[:2], (params, opt_state))


def test_a_full_second_moment_becomes_t5x_lites_factored_one(tmp_path):
  """t5x keeps a full v where a dim is under min_dim_size_to_factor (128 by default): its row
  and column means are the factored statistics t5x_lite would have (means of the average)."""
  directory = copy_fixture(tmp_path)
  rng = np.random.RandomState(0)
  full = rng.uniform(0.1, 2.0, (16, 8)).astype(np.float32)  # t5x's out kernel [H*D, d_model]

  def to_full(optimizer):
    stats = optimizer["state"]["param_states"]["encoder"]["layers_0"]["attention"]["out"]
    stats["kernel"] = {"v": full, "v_row": np.zeros(1, np.float32),
                       "v_col": np.zeros(1, np.float32), "m": np.zeros(1, np.float32)}
  edit_msgpack(directory, to_full)
  _, opt_state, _ = t5x_checkpoint.load_t5x_checkpoint(
      str(directory), fixture_config("examples_v1_0"), with_optimizer_state=True)
  state = opt_state.param_states["encoder"]["layers_0"]["attention"]["out"]["kernel"]
  assert state.v is None
  np.testing.assert_allclose(state.v_row, full.mean(axis=0), rtol=1e-6)  # [d_model]
  np.testing.assert_allclose(state.v_col, full.mean(axis=1).reshape(2, 8), rtol=1e-6)  # [H, D]


class _NoCheckpointsYet:
  """The run's CheckpointManager as train.restore_or_init sees it in a new MODEL_DIR."""
  vocabulary = None

  def latest_step(self):
    return None


def _started_state(model, optimizer, initial):
  """The TrainState train.train starts from with INITIAL_CHECKPOINT_PATH = `initial`."""
  t = trainer.Trainer(model, optimizer, partitioning.Partitioner())
  shapes = model.dummy_input_shapes()
  abstract, shardings = t.state_shardings(shapes)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return jax.device_get(train.restore_or_init(t, abstract, shapes, _NoCheckpointsYet(), None,
                                              initial))


def test_initial_checkpoint_path_takes_a_t5x_checkpoint_for_every_model_kind():
  name = "examples_v1_1"
  config = fixture_config(name)
  params, opt_state, step = t5x_checkpoint.load_t5x_checkpoint(
      checkpoint(name), config, with_optimizer_state=True)
  adafactor = optimizers.adafactor(optimizers.constant_schedule(0.01), decay_rate=0.8)
  model = encoder_decoder.EncoderDecoderModel(config)
  initial_params.check_path(checkpoint(name))  # accepted, before any work
  # restore_optimizer_state: t5x's parameters, Adafactor statistics and step (the state that
  # test_one_train_step_from_t5x_adafactor_state_equals_t5xs steps exactly as t5x does).
  continued = _started_state(model, adafactor, settings.RestoreConfig(
      checkpoint(name), restore_optimizer_state=True))
  assert int(continued.step) == step == 2
  for got, expected in ((continued.params, params), (continued.opt_state, opt_state)):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
      np.testing.assert_array_equal(a, b)
  # Without it: the parameters, a fresh optimizer at step 0.
  fresh = _started_state(model, adafactor, settings.RestoreConfig(checkpoint(name)))
  assert int(fresh.step) == 0
  for a, b in zip(jax.tree_util.tree_leaves(fresh.params), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)
  # A head takes the encoder and the embedding; its own head stays freshly initialised.
  head = heads.SequenceClassificationModel(config, num_labels=3)
  started = _started_state(head, adafactor, settings.RestoreConfig(checkpoint(name)))
  for entry in ("token_embedder", "encoder"):
    for a, b in zip(jax.tree_util.tree_leaves(started.params[entry]),
                    jax.tree_util.tree_leaves(params[entry])):
      np.testing.assert_array_equal(a, b)
  # An optimizer state of another structure (here with momentum, which the checkpoint's run
  # did not have) cannot take t5x's statistics: one clear error.
  with_momentum = optimizers.adafactor(optimizers.constant_schedule(0.01), momentum=0.9)
  with pytest.raises(ValueError, match="its Adafactor state maps onto t5x_lite's adafactor"):
    _started_state(model, with_momentum, settings.RestoreConfig(
        checkpoint(name), restore_optimizer_state=True))


def test_initial_checkpoint_path_takes_t5x_orbax_layout():
  """The orbax layout through INITIAL_CHECKPOINT_PATH: parameters, Adafactor state, step."""
  path = checkpoint(ORBAX)
  config = fixture_config("examples_v1_0")
  initial_params.check_path(path)  # accepted, before any work
  params, opt_state, step = t5x_checkpoint.load_t5x_checkpoint(path, config,
                                                               with_optimizer_state=True)
  adafactor = optimizers.adafactor(optimizers.constant_schedule(0.01), decay_rate=0.8)
  continued = _started_state(encoder_decoder.EncoderDecoderModel(config), adafactor,
                             settings.RestoreConfig(path, restore_optimizer_state=True))
  assert int(continued.step) == step == 2
  for got, expected in ((continued.params, params), (continued.opt_state, opt_state)):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
      np.testing.assert_array_equal(a, b)


# orbax's metadata read of the damaged checkpoint fails inside its own event loop, and
# TensorStore's late callbacks then find it closed ("Event loop is closed", printed by asyncio).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_bad_orbax_layout_checkpoints_name_the_array_and_the_path(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  v1_0 = fixture_config("examples_v1_0")
  load = t5x_checkpoint.load_t5x_checkpoint
  Error = t5x_format.T5xCheckpointError  # pylint: disable=invalid-name
  with pytest.raises(Error, match=r"array decoder/layers_0/mlp/wi/kernel has shape \(8, 16\); "
                     r"the T5Config expects \(8, 48\)"):
    load(checkpoint(ORBAX), fixture_config("examples_v1_0", d_ff=48))
  # A damaged OCDBT file: orbax's error, which names the first array it could not read.
  model_dir = tmp_path / "run"
  directory = model_dir / "checkpoint_2"
  shutil.copytree(checkpoint(ORBAX), directory)
  (node,) = (directory / "state" / "d").iterdir()
  node.write_bytes(node.read_bytes()[:100])
  with pytest.raises(Error, match=rf"t5x checkpoint {directory / 'state'}: cannot read its "
                     r"orbax metadata .*state\.param_states\..* damaged or incomplete"):
    load(str(directory), v1_0)
  with pytest.raises(Error, match=rf"{model_dir} is a t5x model directory.*"
                     rf"{directory} \(steps \[2\]\)"):
    load(str(model_dir), v1_0)
  # t5x_lite's own orbax steps (…/checkpoints/<step>/state) are not t5x checkpoints.
  lite_step = tmp_path / "checkpoints" / "7"
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(lite_step / "state", {"params": {"w": np.ones(2, np.float32)},
                                            "step": np.int32(7)})
  for path in (lite_step, lite_step / "state"):
    assert not t5x_format.is_t5x_checkpoint(str(path))
    with pytest.raises(Error, match=r"an orbax checkpoint whose tree holds \['params', "
                       r"'step'\], not t5x's train state"):
      load(str(path), v1_0)
  # An orbax layout without orbax's tree metadata.
  legacy = tmp_path / "legacy"
  (legacy / "state").mkdir(parents=True)
  (legacy / "state" / "checkpoint").write_bytes(b"")
  with pytest.raises(Error, match=r"an orbax layout this reader does not know"):
    load(str(legacy), v1_0)
