"""Attention benchmark: pallas (flash, T5 bias in-kernel) vs xla (reference) vs cudnn.

For each sequence length and implementation it measures forward and forward+backward time,
achieved TFLOP/s (and the fraction of --peak_tflops), and memory: the device's
`peak_bytes_in_use` where the backend reports it (GPU/TPU; each measurement then runs in a
fresh subprocess so peaks do not carry over) and XLA's compiled temp-buffer size everywhere.
Prints a markdown table.

  python bench/attention.py                                # GPU: L = 512..8192, bf16
  python bench/attention.py --batch 4 --heads 12 --head_dim 64 --causal --peak_tflops 989
  python bench/attention.py --smoke                        # CPU: tiny shapes, interpret mode

FLOPs are model FLOPs: 4*B*H*Lq*Lk*D forward (halved when causal), 3.5x that for
forward+backward (the usual flash-attention convention; recomputation is not counted).
On CPU Pallas runs in interpret mode, so CPU timings say nothing about kernel speed.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t5x_lite.runtime import xla_flags  # pylint: disable=g-import-not-at-top
xla_flags.apply_defaults()  # before JAX starts, as the entry point does
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from t5x_lite.model import kernels

IMPLS = ("pallas", "xla", "cudnn")


def _flops(args, batch, length, backward):
  fwd = 4.0 * batch * args.heads * length * length * args.head_dim
  fwd = fwd / 2 if args.causal else fwd
  return fwd * 3.5 if backward else fwd


def _time(fn, *xs, warmup, iters):
  """Median seconds per call (after warmup), blocking on the result."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*xs))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*xs))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _batch(args, length):
  """--batch, or --tokens // length (the same number of tokens at every length)."""
  return max(1, args.tokens // length) if args.tokens else args.batch


def measure(args, impl, length, backward, block_q=None, block_k=None):
  """One measurement in this process: dict with seconds, TFLOP/s and memory numbers."""
  dtype = jnp.dtype(args.dtype)
  block_q, block_k = block_q or args.block_q, block_k or args.block_k
  ks = jax.random.split(jax.random.PRNGKey(0), 5)
  batch = _batch(args, length)
  shape = (batch, length, args.heads, args.head_dim)
  q, k, v, cot = (jax.random.normal(kk, shape, jnp.float32).astype(dtype) for kk in
                  (ks[0], ks[1], ks[2], ks[4]))
  table = jax.random.normal(ks[3], (args.heads, 32), jnp.float32)

  def attn(q, k, v, table):
    return kernels.attention(q, k, v, bias_table=table, bidirectional=not args.causal,
                             causal=args.causal, impl=impl, block_q=block_q,
                             block_k=block_k)

  if backward:
    fn = jax.jit(jax.grad(lambda *a: jnp.sum(attn(*a).astype(jnp.float32) *
                                             cot.astype(jnp.float32)), argnums=(0, 1, 2, 3)))
  else:
    fn = jax.jit(attn)
  result = {"impl": impl, "length": length, "backward": backward, "batch": batch}
  if impl == "pallas":
    result["blocks"] = f"{block_q}x{block_k}"
  try:
    compiled = fn.lower(q, k, v, table).compile()
    analysis = compiled.memory_analysis()
    result["temp_bytes"] = getattr(analysis, "temp_size_in_bytes", None) if analysis else None
    seconds = _time(compiled, q, k, v, table, warmup=args.warmup, iters=args.iters)
  except Exception as e:  # pylint: disable=broad-except
    # OOM for xla at long lengths, or cuDNN refusing a shape: report it, keep going.
    result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    return result
  if args.child:  # a fresh process: the device's peak is this measurement's alone
    result["peak_bytes"] = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  result["seconds"] = seconds
  result["tflops"] = _flops(args, batch, length, backward) / seconds / 1e12
  return result


def _run_isolated(args, impl, length, backward):
  """Runs `measure` in a fresh process so the device's peak-memory counter starts at zero."""
  child = dict(vars(args), child=json.dumps([impl, length, backward]))
  cmd = [sys.executable, os.path.abspath(__file__)]
  for name, value in child.items():
    if isinstance(value, bool):
      cmd += [f"--{name}"] if value else []
    elif value is not None:
      cmd += [f"--{name}", str(value)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines()[::-1]:
    if line.startswith("{"):
      return json.loads(line)
  return {"impl": impl, "length": length, "backward": backward,
          "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:80]}


def _fmt_bytes(n):
  return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def table_rows(args, results):
  lines = ["| impl | L | B | pass | ms | TFLOP/s | % of peak | peak mem | XLA temp |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    kind = "fwd+bwd" if r["backward"] else "fwd"
    if "error" in r:
      lines.append(f"| {r['impl']} | {r['length']} | {r['batch']} | {kind} | {r['error']} "
                   "| | | | |")
      continue
    pct = f"{100 * r['tflops'] / args.peak_tflops:.1f}%" if args.peak_tflops else "n/a"
    impl = f"{r['impl']} {r['blocks']}" if "blocks" in r else r["impl"]
    lines.append(f"| {impl} | {r['length']} | {r['batch']} | {kind} | {1e3 * r['seconds']:.3f} | "
                 f"{r['tflops']:.3f} | {pct} | {_fmt_bytes(r.get('peak_bytes'))} | "
                 f"{_fmt_bytes(r.get('temp_bytes'))} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="512,1024,2048,4096,8192")
  parser.add_argument("--impls", default=",".join(IMPLS))
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--tokens", type=int, default=0,
                      help="if set, batch = tokens // L at each length (e.g. 16384)")
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--block_q", type=int, default=128)
  parser.add_argument("--block_k", type=int, default=128)
  parser.add_argument("--tune", default="",
                      help="pallas block sizes to sweep, e.g. 64x64,128x64,64x128,128x128: "
                      "prints every one, then the fastest forward+backward per length")
  parser.add_argument("--causal", action="store_true", help="decoder self-attention")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="device's dense bf16 peak, e.g. 989 for H100 SXM, 312 for A100")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--isolate", action="store_true",
                      help="each measurement in a fresh process, to report the device's peak "
                      "memory (GPU/TPU); otherwise memory is XLA's compiled temp size only")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny CPU configuration (interpret mode): checks the script runs")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.smoke:
    args.lengths, args.batch, args.heads, args.head_dim = "64,128", 1, 2, 32
    args.dtype, args.block_q, args.block_k, args.warmup, args.iters = "float32", 32, 32, 1, 2
  if args.child:
    impl, length, backward = json.loads(args.child)
    print(json.dumps(measure(args, impl, length, backward)))
    return

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{'tokens=' + str(args.tokens) if args.tokens else 'B=' + str(args.batch)} "
        f"H={args.heads} D={args.head_dim} {args.dtype} causal={args.causal}\n", flush=True)
  lengths = [int(x) for x in args.lengths.split(",")]
  results = []
  if args.tune:
    blocks = [tuple(int(b) for b in c.split("x")) for c in args.tune.split(",")]
    best = {}
    for length in lengths:
      for bq, bk in blocks:
        for backward in (False, True):
          results.append(measure(args, "pallas", length, backward, bq, bk))
          print(json.dumps(results[-1]), file=sys.stderr, flush=True)
          r = results[-1]
          if backward and "seconds" in r and r["seconds"] < best.get(length, (1e9,))[0]:
            best[length] = (r["seconds"], f"{bq}x{bk}")
    print(table_rows(args, results))
    print("\nfastest forward+backward blocks per length: " +
          ", ".join(f"L={n}: {b} ({1e3 * t:.3f} ms)" for n, (t, b) in best.items()))
    return
  run = _run_isolated if args.isolate else measure
  for length in lengths:
    for backward in (False, True):
      for impl in args.impls.split(","):
        results.append(run(args, impl, length, backward))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  print(table_rows(args, results))


if __name__ == "__main__":
  main()
