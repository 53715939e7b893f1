"""Why layers.DenseGeneral contracts one row dimension: a T5 MLP's forward + backward with
[batch, length, d] activations contracted as they are (3-D dot_general) vs flattened to
[batch * length, d] rows, under XLA:CPU, and the same math in PyTorch, interleaved.

The kernel gradient contracts batch and length together; XLA:CPU copies a multi-dimensional
contraction into a transposed buffer before its matmul, while one row dimension maps onto
the matmul kernel's transpose flags directly.

  python bench/dense_layout.py --batch 8 --length 512 --d_model 256 --d_ff 1024 --repeats 7
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch


def _contract_last(x, w):
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def mlp_3d(wi, wo, x):
  """x [B, L, d]: the activations contracted as they are."""
  return jnp.sum(_contract_last(jax.nn.relu(_contract_last(x, wi)), wo) ** 2)


def mlp_rows(wi, wo, x):
  """The same with [B * L, d] rows, as layers.DenseGeneral computes it."""
  rows = x.reshape(-1, x.shape[-1])
  return jnp.sum(_contract_last(jax.nn.relu(_contract_last(rows, wi)), wo) ** 2)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--d_ff", type=int, default=1024)
  parser.add_argument("--calls", type=int, default=5, help="calls per timed repeat")
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((args.batch, args.length, args.d_model), np.float32)
  wi = rng.standard_normal((args.d_model, args.d_ff), np.float32) * 0.05
  wo = rng.standard_normal((args.d_ff, args.d_model), np.float32) * 0.05
  grads = {name: jax.jit(jax.grad(fn, argnums=(0, 1, 2)))
           for name, fn in (("XLA, 3-D contraction", mlp_3d), ("XLA, rows", mlp_rows))}
  jx, jwi, jwo = jnp.asarray(x), jnp.asarray(wi), jnp.asarray(wo)
  tx, twi, two = (torch.tensor(a, requires_grad=True) for a in (x, wi, wo))

  def torch_grads():
    loss = ((torch.relu(tx @ twi) @ two) ** 2).sum()
    return torch.autograd.grad(loss, (twi, two, tx))

  fns = {name: (lambda g=g: jax.block_until_ready(g(jwi, jwo, jx))) for name, g in grads.items()}
  fns["PyTorch"] = torch_grads
  for fn in fns.values():  # compile / warm up
    fn()
    fn()
  times = {name: [] for name in fns}
  for _ in range(args.repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(args.calls):
        fn()
      times[name].append((time.perf_counter() - start) / args.calls)
  flops = 3 * 2 * 2 * args.batch * args.length * args.d_model * args.d_ff
  print(f"MLP forward + backward, [{args.batch}, {args.length}, {args.d_model}] -> {args.d_ff}, "
        f"float32, median (min-max) of {args.repeats} interleaved repeats")
  print("| variant | ms | GFLOP/s |")
  print("|---|---:|---:|")
  for name, secs in times.items():
    m = statistics.median(secs)
    print(f"| {name} | {1e3 * m:.1f} ({1e3 * min(secs):.1f}-{1e3 * max(secs):.1f}) | "
          f"{flops / m / 1e9:.0f} |")


if __name__ == "__main__":
  main()
