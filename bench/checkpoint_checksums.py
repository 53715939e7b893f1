"""What the per-array checksums of a checkpoint cost on save and on restore.

For each size, saves and restores one TrainState (parameters + Adafactor state) with
t5x_lite.checkpointing.checkpoints as training does (CheckpointManager.save + wait, restore_state), with
the step's record (checksums of every array) and without it (checkpoints.make_record
replaced by a stub that records nothing, so the restore checks nothing). The two variants
alternate within each round, each going first in every other round; the table gives the
median over the rounds and the min-max.
It also times checksums.array_checksums alone on the state, and its first call in the process
(which compiles it; the rounds after reuse the compiled computations).

python bench/checkpoint_checksums.py                     # tiny and small-ish, 7 rounds
python bench/checkpoint_checksums.py --sizes tiny --rounds 3
"""

import argparse
import shutil
import statistics
import tempfile
import time

from t5x_lite.runtime import xla_flags

xla_flags.apply_defaults()  # before JAX starts, as the entry point does

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from t5x_lite import settings
from t5x_lite.checkpointing import checkpoints, checksums
from t5x_lite.checkpointing.run_dir import RunDir
from t5x_lite.model import encoder_decoder, network
from t5x_lite.parallel import partitioning
from t5x_lite.training import optimizers
from t5x_lite.training import trainer as trainer_lib

SIZES = {
    # The reliability tests' model.
    "tiny": network.T5Config(vocab_size=4224, d_model=32, d_ff=64, d_kv=8, num_heads=2,
                             num_encoder_layers=1, num_decoder_layers=1),
    # T5-small's width and vocabulary, 4+4 layers.
    "small4": network.T5Config(vocab_size=32128, d_model=512, d_ff=2048, d_kv=64, num_heads=8,
                               num_encoder_layers=4, num_decoder_layers=4),
}
SHAPES = {"encoder_input_tokens": (4, 16), "decoder_input_tokens": (4, 16),
          "decoder_target_tokens": (4, 16), "decoder_loss_weights": (4, 16)}


def _state(config):
  trainer = trainer_lib.Trainer(encoder_decoder.EncoderDecoderModel(config), optimizers.adafactor(),
                                partitioning.Partitioner())
  state = trainer.init_state(SHAPES)
  abstract, shardings = trainer.state_shardings(SHAPES)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return state, abstract


def _time(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def measure(name, config, rounds):
  state, abstract = _state(config)
  nbytes = checkpoints.state_bytes(abstract)
  real_record = checkpoints.make_record
  times = {(op, v): [] for op in ("save", "restore") for v in ("with", "without")}
  hashing = []
  # The first call compiles (once per process and array shape): what a run's first save and
  # a restore pay on top of the pass.
  first = _time(lambda: checksums.array_checksums(state))
  root = tempfile.mkdtemp()
  try:
    for r in range(rounds):
      # Each variant goes first in every other round: the first of a pair ran slower here.
      for variant in ("with", "without")[::1 if r % 2 == 0 else -1]:
        checkpoints.make_record = real_record if variant == "with" else (
            lambda *args, **kwargs: None)
        run = RunDir(f"{root}/{variant}{r}")
        manager = checkpoints.CheckpointManager(run, settings.CheckpointConfig(period=1))

        def save():
          manager.save(state, force=True)
          manager.wait()

        times[("save", variant)].append(_time(save))
        manager.close()
        path = checkpoints.state_path(run.checkpoint(int(state.step)))
        times[("restore", variant)].append(_time(
            lambda: jax.block_until_ready(checkpoints.restore_state(path, abstract))))
        shutil.rmtree(run.root)
      hashing.append(_time(lambda: checksums.array_checksums(state)))
  finally:
    checkpoints.make_record = real_record
    shutil.rmtree(root, ignore_errors=True)
  fmt = lambda xs: f"{statistics.median(xs) * 1e3:.0f} ({min(xs) * 1e3:.0f}-{max(xs) * 1e3:.0f})"
  for op in ("save", "restore"):
    with_, without = times[(op, "with")], times[(op, "without")]
    ratio = [a / b for a, b in zip(with_, without)]
    print(f"| {name} | {nbytes / 2**20:.1f} MiB | {op} | {fmt(without)} | {fmt(with_)} | "
          f"{statistics.median(ratio):.3f} ({min(ratio):.3f}-{max(ratio):.3f}) |")
  print(f"| {name} | {nbytes / 2**20:.1f} MiB | array_checksums alone | | {fmt(hashing)} | |")
  print(f"| {name} | {nbytes / 2**20:.1f} MiB | array_checksums first call (compiles) | | "
        f"{first * 1e3:.0f} | |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="tiny,small4")
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.rounds} rounds")
  print("| size | state | op | without checksums ms | with ms | with / without |")
  print("|---|---|---|---|---|---|")
  for name in args.sizes.split(","):
    measure(name, SIZES[name], args.rounds)


if __name__ == "__main__":
  main()
