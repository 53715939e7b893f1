"""Weight-only int8 for XLA:CPU decoding: is it faster than float32 at the decode step's matmuls?

One decode step of T5 v1.1 small (d_model 512, 6 heads of 64, gated-GELU d_ff 1024, vocab
32128) multiplies [rows, K] activations (rows = batch x beams) by each layer's [K, N] weights.
For each such shape this times, jitted, interleaved over --repeats:

- float32: jnp.dot(x, w) with w float32;
- dequantized: jnp.dot(x, w_int8.astype(float32)) * scale: weights stored int8 with one
  float32 scale per output channel, activations float32 (weight-only int8);
- int8 dot: activations quantized per row on the fly (symmetric, scale max|x| / 127), then
  lax.dot(x_int8, w_int8, preferred_element_type=int32) * x_scale * w_scale.

It also says whether XLA fused the int8 -> float32 conversion into the dot (no float32 copy of
the weight among the compiled program's buffers) or materialises the float32 weight each call.

  python bench/int8_matmul.py --rows 8,32 --repeats 5            # one XLA thread
  python bench/int8_matmul.py --rows 8,32 --repeats 5 --threads 0
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import peers  # pylint: disable=g-import-not-at-top,wrong-import-position,unused-import  # XLA flags

# (name, K, N, calls per decode step) for T5 v1.1 small's decoder (8 layers).
SHAPES = (
    ("attention q/k/v (self), q (cross)", 512, 384, 8 * 4),
    ("attention output (self, cross)", 384, 512, 8 * 2),
    ("mlp wi_0 / wi_1", 512, 1024, 8 * 2),
    ("mlp wo", 1024, 512, 8),
    ("output layer (logits)", 512, 32128, 1),
)


def quantize(w):
  """int8 weights and per-output-channel float32 scales of a [K, N] float32 matrix."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  scale = jnp.max(jnp.abs(w), axis=0) / 127.0
  return jnp.round(w / scale).astype(jnp.int8), scale


def variants(rows, k, n):
  """{name: (jitted fn, args)} for one shape."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (rows, k), jnp.float32)
  w = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32) * k ** -0.5
  wq, scale = quantize(w)

  def dequantized(x, wq, scale):
    return jnp.dot(x, wq.astype(jnp.float32)) * scale

  def int8_dot(x, wq, scale):
    x_scale = jnp.maximum(jnp.max(jnp.abs(x), axis=-1, keepdims=True), 1e-30) / 127.0
    xq = jnp.round(x / x_scale).astype(jnp.int8)
    acc = jax.lax.dot(xq, wq, preferred_element_type=jnp.int32)
    return acc.astype(jnp.float32) * x_scale * scale

  return {"float32": (jax.jit(jnp.dot), (x, w)),
          "dequantized": (jax.jit(dequantized), (x, wq, scale)),
          "int8 dot": (jax.jit(int8_dot), (x, wq, scale))}


def materialises_f32_weight(fn, args, k, n):
  """Whether the compiled program's temporaries hold a float32 [K, N] (the converted weight)."""
  temp = fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
  return temp >= 4 * k * n


def seconds(fn, args, min_seconds=0.2):
  """The fastest call's seconds among the calls made in min_seconds: on a machine shared with
  other jobs the fastest call is the one least slowed by them."""
  best, start = float("inf"), time.perf_counter()
  while time.perf_counter() - start < min_seconds:
    call = time.perf_counter()
    fn(*args).block_until_ready()
    best = min(best, time.perf_counter() - call)
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", default="8,32", help="batch x beams, comma-separated")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, choices=[0, 1], default=1,
                      help="1: one XLA thread, as bench/decode.py times decoding; 0: XLA's "
                      "default thread pool")
  args = parser.parse_args()
  if args.threads == 1:
    # Read when the XLA backend starts (the first computation below), so set before it.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  runners = {}
  for rows in (int(r) for r in args.rows.split(",")):
    for name, k, n, calls in SHAPES:
      for variant, (fn, fargs) in variants(rows, k, n).items():
        fn(*fargs).block_until_ready()  # compile
        runners[(rows, name, variant)] = (fn, fargs, k, n, calls)
  micros = {key: [] for key in runners}
  for _ in range(args.repeats):
    for key, (fn, fargs, *_) in runners.items():
      micros[key].append(1e6 * seconds(fn, fargs))
  print(f"\nmicroseconds per call (the fastest call of each repeat), median (min-max) of "
        f"{args.repeats} interleaved repeats; "
        f"{jax.devices()[0].device_kind}, threads={args.threads or 'default'}; speed-up = "
        "float32 time / variant's; 'f32 copy' = the compiled program holds a float32 [K, N] "
        "temporary (the weight converted each call, not fused into the dot)\n")
  print("| rows | matmul | K x N | float32 us | dequantized us | speed-up | f32 copy | "
        "int8 dot us | speed-up | max rel. error dequantized / int8 dot |")
  print("|---:|---|---|---:|---:|---:|---|---:|---:|---|")
  step = {}
  for (rows, name, variant), (fn, fargs, k, n, calls) in runners.items():
    if variant != "float32":
      continue
    fmt = lambda v: f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"
    base = micros[(rows, name, "float32")]
    cells, errors = [], []
    reference = np.asarray(fn(*fargs), np.float64)
    for other in ("dequantized", "int8 dot"):
      t = micros[(rows, name, other)]
      ratios = [a / b for a, b in zip(base, t)]
      cells.append(f"{fmt(t)} | {statistics.median(ratios):.2f}x")
      ofn, oargs = runners[(rows, name, other)][:2]
      if other == "dequantized":
        cells[-1] += " | " + ("yes" if materialises_f32_weight(ofn, oargs, k, n) else "no")
      out = np.asarray(ofn(*oargs), np.float64)
      errors.append(np.max(np.abs(out - reference)) / np.max(np.abs(reference)))
    print(f"| {rows} | {name} | {k} x {n} | {fmt(base)} | {' | '.join(cells)} | "
          f"{errors[0]:.4f} / {errors[1]:.4f} |")
    for v in ("float32", "dequantized", "int8 dot"):
      step[(rows, v)] = step.get((rows, v), 0.0) + calls * statistics.median(
          micros[(rows, name, v)])
  print("\nmatmul time of one decode step (calls per step x median), microseconds:")
  for rows in sorted({r for r, _ in step}):
    f32 = step[(rows, "float32")]
    print(f"- rows {rows}: float32 {f32:.0f}, dequantized {step[(rows, 'dequantized')]:.0f} "
          f"({f32 / step[(rows, 'dequantized')]:.2f}x), int8 dot {step[(rows, 'int8 dot')]:.0f} "
          f"({f32 / step[(rows, 'int8 dot')]:.2f}x)")


if __name__ == "__main__":
  main()
