"""Ahead-of-time compilation for a TPU topology, on any host: no TPU needed.

The `compile` run mode (t5x_lite.modes.compile) with flags: builds the sharded train step (and
the decode step) of a gin-configured model for the named topology, compiles them on this
host's CPU through libtpu, and prints per chip XLA's bytes against the chip's HBM, XLA's FLOPs,
the roofline step time and the MFU a run could at most reach.

  python -m t5x_lite.tools.aot_compile --topology=v5e:16x16 --gin_file=models/t5_1_1/xxl.gin \
      --batch=256 --inputs=512 --targets=114 --gin.T5Config.vocab_size=32128 \
      --gin.T5Config.dtype=bfloat16 --gin.T5Config.scan_layers=True \
      --gin.T5Config.remat_policy=full --gin.Partitioner.num_partitions=8

is `python -m t5x_lite.main --run_mode=compile --gin_file=models/t5_1_1/xxl.gin
--gin_file=runs/compile.gin --gin.TOPOLOGY=v5e:16x16 --gin.BATCH_SIZE=256 ...`.

Topology names are libtpu's: `v4:4x4x8` (v4-256: 128 chips), `v5e:16x16` (v5e-256),
`v5p:4x4x8` (v5p-256: 128 chips), `v5p:4x8x8` (v5p-512: 256 chips), `v6e:16x16`. v4 is
compiled in megacore mode (one device per chip, as v4 pods run).
"""

import argparse
import os
import sys

from t5x_lite.modes.compile import ConfigError

COMPILE_GIN = "runs/compile.gin"


def gin_bindings(args) -> list:
  """The gin bindings (`NAME=VALUE`) that the flags stand for, in runs/compile.gin's names."""
  bindings = [f"TOPOLOGY={args.topology!r}", f"compile.num_slices={args.num_slices}",
              f"compile.steps={tuple(args.steps.split(','))!r}"]
  if args.batch is not None:
    bindings.append(f"BATCH_SIZE={args.batch}")
  if args.inputs is not None or args.targets is not None:
    # runs/compile.gin's lengths where one of the two is not given.
    lengths = {"inputs": args.inputs or 512, "targets": args.targets or 114}
    bindings.append(f"TASK_FEATURE_LENGTHS={lengths!r}")
  if args.no_pack:
    bindings.append("compile.pack=False")
  return bindings


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--topology", required=True,
                      help="e.g. v5e:16x16, v4:4x4x8, v5p:4x8x8 (gin TOPOLOGY)")
  parser.add_argument("--num_slices", type=int, default=1)
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--batch", type=int, default=None,
                      help="gin BATCH_SIZE; default: runs/compile.gin's (128)")
  parser.add_argument("--inputs", type=int, default=None,
                      help="TASK_FEATURE_LENGTHS['inputs']; default 512")
  parser.add_argument("--targets", type=int, default=None,
                      help="TASK_FEATURE_LENGTHS['targets']; default 114")
  parser.add_argument("--steps", default="train,decode",
                      help="comma-separated: train, decode (the whole decoding loop), "
                      "decode_token (one decoded token on the KV cache)")
  parser.add_argument("--no_pack", action="store_true", help="batches without segment ids")
  args, rest = parser.parse_known_args(argv)
  unknown = [r for r in rest if not r.startswith("--gin.")]
  if unknown:
    parser.error(f"unknown arguments {unknown}")
  # The compile runs on this host's CPU; a local accelerator is not needed.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from t5x_lite.config import configurables  # pylint: disable=g-import-not-at-top
  from t5x_lite.config import gin_utils  # pylint: disable=g-import-not-at-top
  try:
    # The command line's bindings last: they win over the flags' (as over the gin files').
    gin_utils.parse(args.gin_file + [COMPILE_GIN],
                    gin_bindings(args) + [r[len("--gin."):] for r in rest], run_mode="compile")
    configurables.call_run_mode("compile")
  except ConfigError as e:
    print(f"t5x_lite.tools.aot_compile: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
