"""Entry point: `python -m t5x_lite.main --gin_file=... --gin.NAME=VALUE --run_mode=train`.

Also installed as the `t5x-lite` console script. Flags:
  --gin_file FILE        repeatable; searched here and in the project's gin/ directory.
  --gin.NAME=VALUE       repeatable gin binding; bare strings need no quotes
                         (--gin.MODEL_DIR=experiments/x).
  --run_mode MODE        train | eval | infer | score | export (default: train).
  --coordinator_address, --num_processes, --process_id
                         multi-process runs (jax.distributed); automatic on TPU pods.
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence


from t5x_lite import gin_utils

RUN_MODES = ("train", "eval", "infer", "score", "export")


def parse_flags(argv: Sequence[str]):
  parser = argparse.ArgumentParser(prog="t5x-lite", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--run_mode", default="train", choices=RUN_MODES)
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--multiprocess", action="store_true",
                      help="call jax.distributed.initialize() with auto-detection (TPU pods, "
                           "SLURM/Open MPI GPU clusters)")
  args, rest = parser.parse_known_args(argv)
  bindings, unknown = [], []
  for item in rest:
    if item.startswith("--gin."):
      bindings.append(item[len("--gin."):])
    else:
      unknown.append(item)
  if unknown:
    parser.error(f"unrecognised arguments: {' '.join(unknown)} (gin bindings are --gin.NAME=VALUE)")
  return args, bindings


def initialize_distributed(args):
  """jax.distributed.initialize from flags (or auto-detected) before any other JAX call."""
  if args.coordinator_address or args.multiprocess:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)


def main(argv: Optional[Sequence[str]] = None):
  args, bindings = parse_flags(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds data here.
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  # seqio warns once per task that rates come from uncached example counts: expected here.
  # (A logger's filter sees only its own records, so it goes on absl's logger.)
  logging.getLogger("absl").addFilter(
      lambda record: "not cached so using" not in record.getMessage())
  initialize_distributed(args)
  gin_utils.parse(args.gin_file, bindings)
  from t5x_lite import configurables  # pylint: disable=g-import-not-at-top
  try:
    configurables.configure_builtin_tasks()
    return configurables.RUN_MODES[args.run_mode]()
  except (RuntimeError, TypeError, ValueError) as e:
    if "Required bindings" in str(e) or "gin" in type(e).__module__:
      raise ValueError(gin_utils.explain_call_error(e)) from e
    raise


def run():
  """Console-script entry point."""
  main()
  return 0


if __name__ == "__main__":
  main()
