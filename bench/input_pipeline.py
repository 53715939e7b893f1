"""Does the input pipeline starve the training step? Step time with real seqio batches vs
one batch held on the device (synthetic), interleaved, for a recipe's model and data.

Real: `pipeline.get_dataset` on the recipe's training mixture (read, preprocessed, tokenized,
packed and prefetched on the fly) through `pipeline.DatasetIterator`, fed to the step the way
`train` feeds it; each timed repeat pulls its batches from the running iterator. Synthetic:
the first real batch, already on the device, every step. Model, optimizer, lengths and batch
size are the recipe's (gin). Target (issue "the input pipeline never starves the step"): real
within 5% of synthetic.

  python bench/input_pipeline.py --gin_file=recipes/quickstart.gin --steps 40 --repeats 5
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import peers  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", default="recipes/quickstart.gin")
  parser.add_argument("--gin", action="append", default=[], help="extra NAME=VALUE bindings")
  parser.add_argument("--steps", type=int, default=40, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from t5x_lite.config import configurables, gin_utils  # pylint: disable=g-import-not-at-top
  from t5x_lite.data import pipeline
  from t5x_lite.parallel import partitioning
  from t5x_lite.training import trainer as trainer_lib
  # MODEL_DIR is required by the run files; nothing is written there.
  gin_utils.parse([args.gin_file], ["MODEL_DIR='/nonexistent'"] + args.gin)
  configurables.configure_builtin_tasks()
  build = lambda name: gin.query_parameter(name).scoped_configurable_fn()
  model, config, optimizer = build("train.model"), build("train.train_dataset"), build(
      "train.optimizer")
  trainer = trainer_lib.Trainer(model, optimizer, partitioning.Partitioner())
  iterator = pipeline.DatasetIterator(pipeline.get_dataset(
      config.mixture_or_task_name, config.task_feature_lengths, batch_size=config.batch_size,
      shuffle=config.shuffle, seed=config.seed, pack=config.pack,
      feature_converter=model.feature_converter(config.pack)))
  next_batch = lambda: partitioning.host_local_batch_to_global(next(iterator), trainer.partitioner)
  first = next_batch()
  holder = {"state": trainer.init_state({k: v.shape for k, v in first.items()}), "metrics": None}

  def steps(get_batch):
    def fn():
      for _ in range(args.steps):
        holder["state"], holder["metrics"] = trainer.train_step(holder["state"], get_batch())
      jax.block_until_ready(holder["metrics"])
    return fn

  real, synthetic = steps(next_batch), steps(lambda: first)
  real()  # compiles and fills the prefetch buffers
  synthetic()
  times = peers.interleaved({"real seqio batches": real, "synthetic (one device batch)":
                             synthetic}, args.repeats)
  print(f"\n{args.gin_file}: {config.mixture_or_task_name}, batch {config.batch_size}, lengths "
        f"{dict(config.task_feature_lengths)}, pack={config.pack}; {args.repeats} interleaved "
        f"repeats of {args.steps} steps, {jax.devices()[0].device_kind}\n")
  print("| input | ms/step (median) | min-max | speed vs synthetic (median, min-max) |")
  print("|---|---:|---:|---|")
  base = times["synthetic (one device batch)"]
  for name, secs in times.items():
    ms = [1e3 * s / args.steps for s in secs]
    print(f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f}-{max(ms):.1f} | "
          f"{peers.ratio_summary(secs, base)} |")


if __name__ == "__main__":
  main()
