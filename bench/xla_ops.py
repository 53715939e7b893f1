"""Where XLA:CPU spends a t5x_lite training step, op by op, from a jax.profiler trace.

Traces --steps train steps (the same step as bench/train_step.py), reads the trace's XSpace
(TensorFlow's xplane proto: TensorFlow is installed with seqio) and sums, per step, the time
of each XLA thunk on the runtime's worker threads. Thunks are grouped by the fusion XLA made
(the name says what it fused): matmuls (YNNPACK/XNNPACK fusions and plain dots), layout
copies and transposes, reductions, and the rest (elementwise fusions, gathers, scatters).
Also printed: how long one, both or no worker thread ran a thunk (XLA's intra-op parallelism
is visible only partly: a matmul split across both threads may show on one).

  python bench/xla_ops.py --size tiny --batch 8 --inputs 512 --targets 114
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import peers  # pylint: disable=g-import-not-at-top,wrong-import-position

# Profiler bookkeeping events, not thunks.
_NOT_OPS = ("ThunkExecutor", "Slinky", "ThreadpoolListener", "end:", "$")


def kind(op_name):
  """The group of a thunk, from the name XLA gave its fusion."""
  if op_name.startswith(("ynn_fusion", "xnn_fusion", "dot", "onednn")):
    return "matmul"
  if "transpose" in op_name or "copy" in op_name:
    return "copy / transpose"
  if "reduce" in op_name:
    return "reduction"
  return "elementwise and other"


def trace_events(step, wait, steps, trace_dir):
  """[(thread, start_ps, end_ps, op name)] of the XLA worker threads over `steps` steps."""
  import jax  # pylint: disable=g-import-not-at-top
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  jax.profiler.start_trace(trace_dir)
  for _ in range(steps):
    step()
  wait()
  jax.profiler.stop_trace()
  (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  events = []
  for plane in space.planes:
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):  # XLA's intra-op worker threads
        continue
      for ev in line.events:
        name = names.get(ev.metadata_id, "")
        if not name.startswith(_NOT_OPS):
          start = line.timestamp_ns * 1000 + ev.offset_ps
          events.append((line.name, start, start + ev.duration_ps, name))
  return events


def busy_threads(events):
  """{0, 1, 2+: picoseconds during which that many worker threads ran a thunk}."""
  edges = sorted([(s, 1) for _, s, _, _ in events] + [(e, -1) for _, _, e, _ in events])
  busy, depth, last = collections.Counter(), 0, edges[0][0]
  for t, d in edges:
    busy[min(depth, 2)] += t - last
    depth, last = depth + d, t
  return busy


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="tiny", choices=sorted(peers.SHAPES))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=12, help="fusion names to list")
  args = parser.parse_args()
  import train_step  # pylint: disable=g-import-not-at-top
  _, config, params = peers.build_hf_and_ours(args.size)
  step, wait = train_step.t5x_lite_step(
      config, params, peers.random_batch(args.batch, args.inputs, args.targets))
  for _ in range(2):  # compile, warm up
    step()
    wait()
  with tempfile.TemporaryDirectory() as trace_dir:
    events = trace_events(step, wait, args.steps, trace_dir)
  per_step_ms = lambda ps: ps / 1e9 / args.steps
  wall = max(e for _, _, e, _ in events) - min(s for _, s, _, _ in events)
  by_kind, by_fusion, count = collections.Counter(), collections.Counter(), collections.Counter()
  for _, start, end, name in events:
    fusion = re.sub(r"\.\d+$", "", name)
    by_kind[kind(name)] += end - start
    by_fusion[fusion] += end - start
    count[fusion] += 1
  total = sum(by_kind.values())
  print(f"\n{args.size}, batch {args.batch}, lengths {args.inputs}/{args.targets}: "
        f"{per_step_ms(wall):.0f} ms per step (traced), {len(events) // args.steps} thunks per "
        f"step; thread time summed over XLA's worker threads\n")
  print("| ops | thread ms per step | share |")
  print("|---|---:|---:|")
  for name, ps in by_kind.most_common():
    print(f"| {name} | {per_step_ms(ps):.0f} | {100 * ps / total:.0f}% |")
  busy = busy_threads(events)
  print("\n| worker threads running a thunk | ms per step |")
  print("|---|---:|")
  for n in (0, 1, 2):
    print(f"| {n}{'+' if n == 2 else ''} | {per_step_ms(busy[n]):.0f} |")
  print(f"\n| fusion (top {args.top}) | thunks per step | thread ms per step |")
  print("|---|---:|---:|")
  for name, ps in by_fusion.most_common(args.top):
    print(f"| {name} | {count[name] // args.steps} | {per_step_ms(ps):.1f} |")


if __name__ == "__main__":
  main()
