"""Sharded training on fake CPU devices, for tests/test_partitioning.py (run as a script).

Usage:
  python tests/sharded_worker.py OUT_DIR MESH[,MESH...]          one process, 8 devices
  python tests/sharded_worker.py OUT_DIR MESH PROCESS_ID NUM_PROCESSES PORT
                                                                 one of several processes
MESH is DATAxMODEL ("4x2") or REPLICAxDATAxMODEL ("2x2x2"), optionally with "+fsdp"; "1x1"
uses one device. For each mesh it trains 3 steps (with "+pallas", through the Pallas kernel
under shard_map) and writes OUT_DIR/MESH.npz: losses, gathered params, and the sharding
spec of every param and optimizer-state leaf. With "ckpt" in MESH it also saves the state
to OUT_DIR/ckpt (after training) and, with "restore", restores that checkpoint instead.
With "runmodes" in MESH it trains nothing: it runs the eval, infer and export run modes on
the latest checkpoint of OUT_DIR/run (a run of tests/runmode_utils.py's tiny model) and
writes their outputs under OUT_DIR/MESH/ (see run_modes).
XLA_FLAGS must be set before jax is imported, hence a separate process.
"""

import dataclasses
import math
import os
import sys


def _key(path):
  return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def config():
  from t5x_lite.model import network  # pylint: disable=g-import-not-at-top
  # Adafactor factors every kernel by its axis names: the [128, 8, 16] attention kernels too.
  # One layer per stack: every layer is sharded by the same rules, and each one more adds
  # compile time to each of the meshes.
  return network.T5Config(vocab_size=128, d_model=128, d_ff=256, d_kv=16, num_heads=8,
                          num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0,
                          feed_forward="gated-gelu", tie_word_embeddings=False)


def batches():
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  out = []
  for _ in range(3):
    tgt = rng.randint(2, 128, (8, 12)).astype(np.int32)
    tgt[:, 10:] = 0
    enc = rng.randint(2, 128, (8, 16)).astype(np.int32)
    enc[:, 13:] = 0
    dec = np.concatenate([np.zeros((8, 1), np.int32), tgt[:, :-1]], 1)
    out.append(dict(encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=tgt,
                    decoder_loss_weights=(tgt > 0).astype(np.int32)))
  return out


def part_input(array, part):
  """This process's rows of a global [8, ...] batch, as a global array sharded over data."""
  import jax  # pylint: disable=g-import-not-at-top
  from t5x_lite.parallel import partitioning  # pylint: disable=g-import-not-at-top
  per_process = array.shape[0] // jax.process_count()
  local = array[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
  return partitioning.host_local_batch_to_global(local, part)


def run_mesh(out_dir, mesh):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from t5x_lite import settings
  from t5x_lite.checkpointing import checkpoints  # pylint: disable=g-import-not-at-top
  from t5x_lite.checkpointing.run_dir import RunDir  # pylint: disable=g-import-not-at-top
  from t5x_lite.model import encoder_decoder
  from t5x_lite.parallel import partitioning
  from t5x_lite.training import optimizers, trainer
  checkpoint_manager = lambda: checkpoints.CheckpointManager(RunDir(out_dir),
                                                             settings.CheckpointConfig())

  shape = tuple(int(x) for x in mesh.split("+")[0].split("x"))
  devices = jax.devices()[:1] if shape == (1, 1) else jax.devices()
  part = partitioning.Partitioner(
      mesh_shape=shape, devices=devices,
      logical_axis_rules=partitioning.standard_logical_axis_rules(fsdp="fsdp" in mesh))
  cfg = config()
  if "pallas" in mesh:  # small tiles: interpret mode runs every tile as XLA ops
    cfg = dataclasses.replace(cfg, attention_impl="pallas", attention_block_q=16,
                              attention_block_k=16)
  t = trainer.Trainer(encoder_decoder.EncoderDecoderModel(cfg), optimizers.adafactor(), part)
  data = batches()
  shapes = {k: v.shape for k, v in data[0].items()}
  losses = []
  if "restore" in mesh:
    abstract, shardings = t.state_shardings(shapes)
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    state = checkpoint_manager().restore(abstract)
  else:
    state = t.init_state(shapes)
    for batch in data:
      state, metrics = t.train_step(state, {k: part_input(v, part) for k, v in batch.items()})
      losses.append(float(metrics["loss"]))
  from t5x_lite.model import decoding  # pylint: disable=g-import-not-at-top
  with part.context():
    tokens, _ = decoding.decode(t.model.module, state.params,
                                part_input(data[0]["encoder_input_tokens"], part),
                                max_decode_length=6, method="beam", num_decodes=2)
  if "ckpt" in mesh:
    manager = checkpoint_manager()
    manager.save(state, force=True)
    manager.wait()
  flat = {"losses": np.array(losses), "batch_spec": np.array(str(part.batch_sharding().spec)),
          "decoded": np.asarray(multihost_utils.process_allgather(tokens, tiled=True))}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    flat["param:" + _key(path)] = np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    flat["spec:" + _key(path)] = np.array(str(tuple(leaf.sharding.spec)))
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
    flat["optshape:" + _key(path)] = np.array(leaf.shape)
    flat["optspec:" + _key(path)] = np.array(str(tuple(leaf.sharding.spec)))
  def device_bytes(tree):  # bytes on one device, ignoring Adafactor's step count
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree_util.tree_leaves(tree)
               if leaf.ndim)
  flat["param_bytes"] = np.array(device_bytes(state.params))
  flat["opt_bytes"] = np.array(device_bytes(state.opt_state))
  if jax.process_index() == 0:
    np.savez(os.path.join(out_dir, mesh + ".npz"), **flat)


def save_initial_checkpoint(out_dir):
  """Saves the initial train state of tests/runmode_utils.py's tiny model to OUT_DIR/run
  (checkpoints/0): random weights decode varied tokens, all that layout tests need."""
  import runmode_utils as u  # pylint: disable=g-import-not-at-top  (tests/ is sys.path[0])
  # pylint: disable=g-import-not-at-top
  from t5x_lite import settings
  from t5x_lite.checkpointing import checkpoints
  from t5x_lite.checkpointing.run_dir import RunDir
  from t5x_lite.parallel import partitioning
  from t5x_lite.training import optimizers, trainer
  # pylint: enable=g-import-not-at-top
  t = trainer.Trainer(u.tiny_model(), optimizers.adafactor(), partitioning.Partitioner())
  state = t.init_state({"encoder_input_tokens": (8, u.LENGTHS["inputs"]),
                        "decoder_input_tokens": (8, u.LENGTHS["targets"])})
  manager = checkpoints.CheckpointManager(RunDir(os.path.join(out_dir, "run")),
                                          settings.CheckpointConfig())
  manager.save(state, force=True)
  manager.wait()


def run_modes(out_dir, mesh):
  """eval, infer and export of OUT_DIR/run's latest checkpoint on MESH (batch 8).

  Writes OUT_DIR/MESH/eval/ (metrics and predictions JSONL), OUT_DIR/MESH/infer/ (the
  predictions JSONL) and OUT_DIR/MESH/export/ (the HF directory).
  """
  import runmode_utils as u  # pylint: disable=g-import-not-at-top  (tests/ is sys.path[0])
  from t5x_lite.modes import evaluate, export, infer  # pylint: disable=g-import-not-at-top
  from t5x_lite.parallel import partitioning
  shape = tuple(int(x) for x in mesh.split("+")[0].split("x"))
  part = partitioning.Partitioner(mesh_shape=shape)
  checkpoints = os.path.join(out_dir, "run", "checkpoints")
  out = os.path.join(out_dir, mesh)
  evaluate.evaluate(**u.common(), batch_size=8, checkpoint_path=checkpoints,
                    model=u.tiny_model(), partitioner=part, output_dir=os.path.join(out, "eval"))
  infer.infer(**u.common(), batch_size=8, checkpoint_path=checkpoints, model=u.tiny_model(),
              partitioner=part, output_dir=os.path.join(out, "infer"))
  export.export(checkpoint_path=checkpoints, output_dir=os.path.join(out, "export"),
                model=u.tiny_model(), partitioner=part)


def main():
  out_dir, meshes = sys.argv[1], sys.argv[2].split(",")
  multiprocess = len(sys.argv) == 6
  # Several processes share the devices of the first mesh.
  devices = math.prod(int(x) for x in meshes[0].split("+")[0].split("x"))
  os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count="
                             f"{devices // int(sys.argv[4]) if multiprocess else 8}"
                             # Compiling dominates these runs of a few tiny steps: LLVM's
                             # optimizations cost about a third of the compile time and
                             # change no result (no fast-math: no float op is reordered).
                             " --xla_backend_optimization_level=0"
                             " --xla_llvm_disable_expensive_passes=true")
  import jax  # pylint: disable=g-import-not-at-top
  if multiprocess:
    process_id, num_processes, port = (int(x) for x in sys.argv[3:])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=num_processes, process_id=process_id)
  for mesh in meshes:
    (run_modes if "runmodes" in mesh else run_mesh)(out_dir, mesh)


if __name__ == "__main__":
  main()
