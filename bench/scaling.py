"""Scaling table: the training step of t5x_lite vs HF transformers across model sizes and input
lengths, with each side's peak memory and the matmul ceiling measured in the same run; and the
train step's compile time with and without scan_layers.

Each system runs in its own worker process (this script with --worker), so each has its own
peak RSS; the parent drives the workers in lockstep (one timed step in HF's, one in
t5x_lite's, one in t5x's with --t5x_python, and again) so machine noise hits all alike, and
around each row times one matmul in XLA and in PyTorch (the faster is the ceiling the
achieved GFLOP/s is a share of). A worker imports everything its peers import too (both
libraries, for HF and t5x_lite), reads its RSS (the baseline), builds its model the way its
users would (random initialisation: throughput does not depend on the weights;
bench/train_step.py runs both on the same weights and checks the loss), resets the
kernel's peak-RSS mark (/proc/self/clear_refs), and only then compiles and steps: "peak
RSS" is the high-water mark of compiling and training above the baseline (weights,
gradients, optimizer state, activations, compiler memory).

Batches hold --tokens input tokens (batch = tokens / input length) and --targets target
tokens per example, no padding; the step is forward + backward + Adafactor (t5x's in
t5x_lite, transformers.optimization.Adafactor in HF; see bench/train_step.py).

  python bench/scaling.py --sizes tiny,small,t5_1_1_small --inputs 512,1024,2048 --repeats 3
  python bench/scaling.py --sizes base,t5_1_1_base --tokens 2048 --repeats 2
  python bench/scaling.py --compile --tokens 1024 --sizes tiny,small,t5_1_1_small,base,t5_1_1_base
"""

import argparse
import gc
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import peers  # pylint: disable=g-import-not-at-top,wrong-import-position

CEILING_SHAPE = (2048, 2048, 2048)


def rss_mib(field="VmHWM"):
  """/proc/self/status's VmHWM (resident high-water mark) or VmRSS (resident now), in MiB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss():
  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def _build(args):
  """(step, wait, baseline MiB) of this worker's system."""
  if args.worker == "t5x":  # in t5x's own environment: no torch, no t5x_lite
    import jax  # pylint: disable=g-import-not-at-top,unused-import
    import t5x_peer  # pylint: disable=g-import-not-at-top
    from t5x import models, trainer  # pylint: disable=g-import-not-at-top,unused-import
    baseline = rss_mib("VmRSS")
    batch = peers.random_batch(args.batch, args.inputs, args.targets)
    return (*t5x_peer.build_step(peers.SHAPES[args.size], batch), baseline)
  # HF and t5x_lite workers both import both libraries before the baseline: equal baselines.
  import torch  # pylint: disable=g-import-not-at-top
  import transformers.optimization  # pylint: disable=g-import-not-at-top,unused-import
  import train_step  # pylint: disable=g-import-not-at-top
  from t5x_lite.interop import hf_checkpoint  # pylint: disable=g-import-not-at-top,unused-import
  from t5x_lite.model import encoder_decoder
  from t5x_lite.parallel import partitioning
  from t5x_lite.training import optimizers, trainer
  baseline = rss_mib("VmRSS")
  batch = peers.random_batch(args.batch, args.inputs, args.targets)
  if args.worker == "hf":
    hf_model, _ = peers.build_hf(args.size)
    return (*train_step.hf_step(hf_model.train(), batch, torch.device("cpu"), "float32"),
            baseline)
  _, config = peers.configs(args.size, scan_layers=args.scan_layers)
  return (*train_step.t5x_lite_step(config, None, batch), baseline)


def worker(args):
  """Builds one system's step, then serves the parent's 'step' / 'exit' lines (peers.serve)."""
  step, wait, baseline = _build(args)
  gc.collect()
  reset_peak_rss()
  peers.serve(step, wait, exit_value=lambda: rss_mib() - baseline, exit_word="peak_rss_mib")


def start_worker(system, size, batch, inputs, targets, scan_layers=False, python=sys.executable):
  """A worker process of this script for one system; close() returns its peak RSS in MiB."""
  return peers.WorkerProcess(
      [os.path.abspath(__file__), "--worker", system, "--size", size, "--batch", str(batch),
       "--inputs", str(inputs), "--targets", str(targets)]
      + (["--scan_layers"] if scan_layers else []), python=python, exit_word="peak_rss_mib")


def matmul_ceiling(repeats=3):
  """GFLOP/s of the faster of XLA's and PyTorch's float32 matmul at CEILING_SHAPE."""
  import matmul_ceiling as mc  # pylint: disable=g-import-not-at-top
  m, k, n = CEILING_SHAPE
  fns = {"xla": mc.jax_matmul(m, k, n, "float32"), "torch": mc.torch_matmul(m, k, n, "float32")}
  rates = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      rates[name].append(2 * m * k * n / mc.seconds(fn) / 1e9)
  return max(statistics.median(v) for v in rates.values())


def train_row(args, size, inputs):
  """One table row. A peer whose worker dies (the kernel's OOM killer: three workers at once
  may not fit in memory at long inputs) is left out of the row; HF or t5x_lite dying fails it."""
  batch = max(1, args.tokens // inputs)
  ceiling_before = matmul_ceiling()
  workers = {name: start_worker(name, size, batch, inputs, args.targets)
             for name in ("hf", "ours")}
  if args.t5x_python:
    workers["t5x"] = start_worker("t5x", size, batch, inputs, args.targets,
                                  python=args.t5x_python)
  first, times, rss = {}, {name: [] for name in workers}, {}

  def each(action):
    for name, w in list(workers.items()):
      try:
        action(name, w)
      except RuntimeError:
        if name != "t5x":
          raise
        print(f"  {size} {inputs}: the t5x worker died; row without t5x", file=sys.stderr)
        del workers[name], times[name]
  each(lambda name, w: w.wait_ready())
  for _ in range(2):  # compiles, then warms up (not timed), one system at a time
    each(lambda name, w: first.setdefault(name, w.step()))
  for _ in range(args.repeats):
    each(lambda name, w: times[name].append(w.step()[0]))
  each(lambda name, w: rss.setdefault(name, w.close()))
  ceiling = (ceiling_before + matmul_ceiling()) / 2
  flops = 3 * peers.forward_flops(size, inputs, args.targets) * batch
  ours, hf = statistics.median(times["ours"]), statistics.median(times["hf"])
  gflops = lambda s: flops / s / 1e9
  print(f"  {size} {inputs}: first step (s, loss) " + ", ".join(
      f"{name} {secs:.1f} {loss:.4f}" for name, (secs, loss) in first.items()),
        file=sys.stderr, flush=True)
  tok_s = lambda name: f"{batch * args.targets / statistics.median(times[name]):.0f}"
  t5x = (f"{tok_s('t5x')} | {peers.ratio_summary(times['ours'], times['t5x'])} | "
         f"{rss['t5x']:.0f}" if "t5x" in times else "n/a | n/a | n/a")
  return (f"| {size} | {inputs} | {batch} | {tok_s('ours')} | {tok_s('hf')} | "
          f"{peers.ratio_summary(times['ours'], times['hf'])} | {t5x} | "
          f"{gflops(ours):.0f} ({100 * gflops(ours) / ceiling:.0f}%) | "
          f"{gflops(hf):.0f} ({100 * gflops(hf) / ceiling:.0f}%) | {ceiling:.0f} | "
          f"{rss['ours']:.0f} | {rss['hf']:.0f} | {rss['ours'] / rss['hf']:.2f} |")


def compile_row(args, size):
  """Seconds to the first step's result (trace + compile + one step) minus a later step."""
  cells = []
  for scan in (False, True):
    w = start_worker("ours", size, args.tokens // 512, 512, args.targets, scan_layers=scan)
    w.wait_ready()
    first, _ = w.step()
    later = statistics.median(w.step()[0] for _ in range(2))
    w.close()
    cells.append(first - later)
  return f"| {size} | {cells[0]:.1f} | {cells[1]:.1f} | {cells[0] / cells[1]:.1f}x |"


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="tiny,small,t5_1_1_small")
  parser.add_argument("--inputs", default="512,1024,2048", help="input lengths, comma-separated")
  parser.add_argument("--tokens", type=int, default=4096, help="input tokens per batch")
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--t5x_python", default="",
                      help="python of a scratch environment with t5x (see bench/t5x_peer.py): "
                      "adds t5x as a peer")
  parser.add_argument("--compile", action="store_true",
                      help="time compiling the train step with and without scan_layers instead")
  # Worker mode (started by the parent).
  parser.add_argument("--worker", choices=["hf", "ours", "t5x"])
  parser.add_argument("--size", "--model", choices=sorted(peers.SHAPES))
  parser.add_argument("--batch", type=int)
  parser.add_argument("--scan_layers", action="store_true")
  args = parser.parse_args()
  if args.worker:
    args.inputs = int(args.inputs)
    return worker(args)

  sizes = args.sizes.split(",")
  if args.compile:
    print(f"\nt5x_lite train-step compile seconds, batch {args.tokens // 512} x 512/"
          f"{args.targets}\n")
    print("| model | scan_layers=False | scan_layers=True | ratio |")
    print("|---|---:|---:|---:|")
    for size in sizes:
      print(compile_row(args, size), flush=True)
    return
  print(f"\n{args.tokens} input tokens per batch, {args.targets} targets per example, float32, "
        f"{args.repeats} lockstep repeats; tok/s = target tokens/s; vs HF / vs t5x = their step time / "
        f"ours (median, min-max); GFLOP/s = model FLOPs (3x forward) per second and its share "
        f"of the ceiling: the faster float32 {'x'.join(map(str, CEILING_SHAPE))} matmul of XLA "
        f"and PyTorch, timed before and after the row\n")
  print("| model | input length | batch | t5x_lite tok/s | HF tok/s | vs HF | t5x tok/s | "
        "vs t5x | t5x peak RSS MiB | t5x_lite GFLOP/s | HF GFLOP/s | ceiling GFLOP/s | "
        "t5x_lite peak RSS MiB | HF peak RSS MiB | RSS t5x_lite / HF |")
  print("|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
  for size in sizes:
    for inputs in (int(x) for x in args.inputs.split(",")):
      print(train_row(args, size, inputs), flush=True)


if __name__ == "__main__":
  main()
