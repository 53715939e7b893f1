"""The memory planner from the command line: a gin model on a mesh, bytes per device.

  python -m t5x_lite.tools.plan_memory --gin_file=models/t5_1_1/xxl.gin --mesh=32x8 \
      --batch=256 --inputs=512 --targets=114 --gin.T5Config.dtype=bfloat16 \
      --gin.T5Config.vocab_size=32128   # T5's vocabulary (the default one gives 4224)

The estimate itself is t5x_lite/training/memory_planner.py.
"""

import argparse

from t5x_lite.config import configurables, gin_utils
from t5x_lite.training.memory_planner import plan


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--mesh", default="1x1", help="DATAxMODEL, e.g. 32x8")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--fsdp", action="store_true")
  parser.add_argument("--microbatches", type=int, default=1)
  args, rest = parser.parse_known_args(argv)
  gin_utils.parse(args.gin_file, [r[len("--gin."):] for r in rest if r.startswith("--gin.")])
  data, model = (int(x) for x in args.mesh.split("x"))
  result = plan(configurables.T5Config(), {"data": data, "model": model}, args.batch, args.inputs,
                args.targets, fsdp=args.fsdp, num_microbatches=args.microbatches)
  print(f"{result.num_params / 1e9:.2f}B parameters on a {data}x{model} mesh, batch "
        f"{args.batch}, lengths {args.inputs}/{args.targets}:")
  print(result.table())


if __name__ == "__main__":
  main()
