"""The machine's matmul ceiling: GFLOP/s of one matmul in XLA (jax.jit) and in PyTorch,
float32 and bfloat16, at a T5 feed-forward shape and at a large square shape.

The ceiling a training step is measured against is the faster of the two libraries at the
step's dtype; bfloat16 rows tell whether bf16 matmuls pay off on this CPU (AVX512-BF16 /
AMX), which would matter for `T5Config.dtype = 'bfloat16'` on CPU. Repeats are interleaved
(each library and dtype in turn) so machine noise hits all alike; each figure is the median
of the repeats with its min-max.

  python bench/matmul_ceiling.py --repeats 7
"""

import argparse
import statistics
import time

# [m, k] x [k, n]: the T5-efficient-tiny MLP at batch 8 x 512 tokens, and a large square.
SHAPES = ((4096, 256, 1024), (4096, 4096, 4096))
DTYPES = ("float32", "bfloat16")


def jax_matmul(m, k, n, dtype):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.PRNGKey(0), (m, k), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (k, n), dtype)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()  # compile
  return lambda: f(a, b).block_until_ready()


def torch_matmul(m, k, n, dtype):
  import torch  # pylint: disable=g-import-not-at-top
  a = torch.randn(m, k, dtype=getattr(torch, dtype))
  b = torch.randn(k, n, dtype=getattr(torch, dtype))
  torch.matmul(a, b)  # warm up
  return lambda: torch.matmul(a, b)


def seconds(fn, min_seconds=0.5):
  """Mean seconds per call over enough calls to last min_seconds."""
  calls, start = 0, time.perf_counter()
  while time.perf_counter() - start < min_seconds:
    fn()
    calls += 1
  return (time.perf_counter() - start) / calls


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  runners = {}
  for shape in SHAPES:
    for dtype in DTYPES:
      runners[("xla", shape, dtype)] = jax_matmul(*shape, dtype)
      runners[("torch", shape, dtype)] = torch_matmul(*shape, dtype)
  gflops = {key: [] for key in runners}
  for _ in range(args.repeats):
    for key, fn in runners.items():
      m, k, n = key[1]
      gflops[key].append(2 * m * k * n / seconds(fn) / 1e9)
  print(f"matmul GFLOP/s, median (min-max) of {args.repeats} interleaved repeats")
  print("| shape | dtype | XLA (jax.jit) | PyTorch | XLA / PyTorch |")
  print("|---|---|---:|---:|---:|")
  for shape in SHAPES:
    for dtype in DTYPES:
      x, t = gflops[("xla", shape, dtype)], gflops[("torch", shape, dtype)]
      ratios = [a / b for a, b in zip(x, t)]
      fmt = lambda v: f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"
      print(f"| {'x'.join(map(str, shape))} | {dtype} | {fmt(x)} | {fmt(t)} | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
  main()
