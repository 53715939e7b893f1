"""What the per-array checksums of a checkpoint cost on save and on restore.

For each size, saves and restores one TrainState (parameters + Adafactor state) with
t5x_lite.checkpointing.checkpoints as training does (CheckpointManager.save + wait,
restore_state), in three variants:
  without      no record: the state item alone through the same orbax manager, so the restore
               checks nothing;
  on thread    the record's checksums computed and awaited in save(), before orbax starts
               (how every save did it before the record item; how multi-process saves still
               do it), then written by the record item;
  background   the checksums dispatched in save() and awaited by the record item's background
               future (what single-process saves do).
The variants rotate within each round (each goes first in turn); the table gives the median
over the rounds and the min-max. "save()" is the time training waits for in save() (with an
async save, the rest is written while it trains); "save + wait" includes the background
write. It also times checksums.array_checksums alone on the state, the dispatch of the pass
alone (dispatch_checksums, not awaited), and its first call in the process (which compiles
it; the rounds after reuse the compiled computations).

python bench/checkpoint_checksums.py                    # tiny and small4, 7 rounds
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
import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top,wrong-import-position

from t5x_lite import settings
from t5x_lite.checkpointing import checkpoints, checksums, restore
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


VARIANTS = ("without", "on thread", "background")


def _save(manager, state, variant):
  if variant == "without":
    manager.manager.save(int(state.step), args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state)), force=True)
  else:
    manager._record_in_background = variant == "background"  # pylint: disable=protected-access
    manager.save(state, force=True)


def measure(name, config, rounds):
  state, abstract = _state(config)
  nbytes = checkpoints.state_bytes(abstract)
  times = {(op, v): [] for op in ("save()", "save + wait", "restore") for v in VARIANTS}
  hashing, dispatch = [], []
  # The first call compiles (once per process and array shape): what a run's first save and
  # a restore pay on top of the pass.
  first = _time(lambda: checksums.array_checksums(state))
  root = tempfile.mkdtemp()
  try:
    for r in range(rounds):
      # Each variant goes first in turn: the first of a round ran slower here.
      for variant in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
        run = RunDir(f"{root}/{variant.replace(' ', '_')}{r}")
        manager = checkpoints.CheckpointManager(run, settings.CheckpointConfig(period=1))
        start = time.perf_counter()
        _save(manager, state, variant)
        times[("save()", variant)].append(time.perf_counter() - start)
        manager.wait()
        times[("save + wait", variant)].append(time.perf_counter() - start)
        manager.close()
        path = restore.state_path(run.checkpoint(int(state.step)))
        times[("restore", variant)].append(_time(
            lambda: jax.block_until_ready(restore.restore_state(path, abstract))))
        shutil.rmtree(run.root)
      hashing.append(_time(lambda: checksums.array_checksums(state)))
      pending = []
      dispatch.append(_time(lambda: pending.append(checksums.dispatch_checksums(state))))
      pending[0].result()
  finally:
    shutil.rmtree(root, ignore_errors=True)
  fmt = lambda xs: f"{statistics.median(xs) * 1e3:.0f} ({min(xs) * 1e3:.0f}-{max(xs) * 1e3:.0f})"
  ratio = lambda xs, ys: statistics.median([a / b for a, b in zip(xs, ys)])
  for op in ("save()", "save + wait", "restore"):
    without, before, after = (times[(op, v)] for v in VARIANTS)
    print(f"| {name} | {nbytes / 2**20:.1f} MiB | {op} | {fmt(without)} | {fmt(before)} | "
          f"{fmt(after)} | {ratio(before, without):.2f} / {ratio(after, without):.2f} |")
  print(f"| {name} | {nbytes / 2**20:.1f} MiB | array_checksums alone | | {fmt(hashing)} | | |")
  print(f"| {name} | {nbytes / 2**20:.1f} MiB | dispatch_checksums alone (not awaited) | | | "
        f"{fmt(dispatch)} | |")
  print(f"| {name} | {nbytes / 2**20:.1f} MiB | array_checksums first call (compiles) | | "
        f"{first * 1e3:.0f} | | |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="tiny,small4")
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.rounds} rounds")
  print("| size | state | op | without ms | on thread ms | background ms | ratios to without |")
  print("|---|---|---|---|---|---|---|")
  for name in args.sizes.split(","):
    measure(name, SIZES[name], args.rounds)


if __name__ == "__main__":
  main()
