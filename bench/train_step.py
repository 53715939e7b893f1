"""Training-step throughput: t5x_lite vs HF transformers (PyTorch) on the same weights and batch.

One optimizer step = forward, backward and an Adafactor update (t5x's in t5x_lite,
transformers.optimization.Adafactor with T5's settings in PyTorch), on a random batch of
real-token inputs. Repeats are interleaved (HF, ours with each attention impl, HF, ...) so
machine noise hits all alike; compilation and warm-up steps are not timed. Each timed repeat
runs --steps steps and then waits for the device.

On GPU, --dtype bfloat16 runs t5x_lite with bfloat16 activations and float32 parameters and
HF under torch.autocast(bfloat16) with float32 parameters (mixed precision on both sides).
MFU = model FLOPs (peers.forward_flops x 3) per second / --peak_tflops.

  python bench/train_step.py --model tiny --batch 8 --inputs 512 --targets 114 --repeats 5
  python bench/train_step.py --model t5_1_1_base --batch 128 --dtype bfloat16 \
      --impls xla,cudnn,pallas --peak_tflops 989        # H100 SXM
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import peers  # pylint: disable=g-import-not-at-top,wrong-import-position


def t5x_lite_step(config, params, batch):
  """(step, wait): step() runs one jitted train step (no z-loss, mean loss: HF's objective);
  wait() blocks until the last one is done and returns its loss. params None: t5x_lite's
  own random initialisation."""
  import jax  # pylint: disable=g-import-not-at-top
  from t5x_lite.model import encoder_decoder  # pylint: disable=g-import-not-at-top
  from t5x_lite.parallel import partitioning
  from t5x_lite.training import optimizers, trainer
  model = encoder_decoder.EncoderDecoderModel(config, z_loss=0.0)
  t = trainer.Trainer(model, optimizers.adafactor(optimizers.constant_schedule(1e-3)),
                      partitioning.Partitioner())
  shapes = {k: v.shape for k, v in batch.items()}
  # Adafactor's initial state is zeros whatever the params: init_state's serves the HF weights.
  state = t.init_state(shapes)
  if params is not None:
    state = state.replace(params=jax.device_put(params))
  device_batch = jax.device_put(batch)
  holder = {"state": state, "metrics": None}

  def step():
    holder["state"], holder["metrics"] = t.train_step(holder["state"], device_batch)

  def wait():
    return float(jax.block_until_ready(holder["metrics"])["loss"])
  return step, wait


def hf_step(hf_model, batch, device, dtype):
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
  optimizer = Adafactor(hf_model.parameters(), lr=1e-3, scale_parameter=True,
                        relative_step=False, warmup_init=False, decay_rate=-0.8,
                        clip_threshold=1.0)
  input_ids = torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long, device=device)
  labels = torch.as_tensor(batch["decoder_target_tokens"], dtype=torch.long, device=device)
  autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
              else contextlib.nullcontext())
  holder = {}

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = hf_model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    holder["loss"] = loss

  def wait():
    if device.type == "cuda":
      torch.cuda.synchronize()
    return float(holder["loss"].detach())
  return step, wait


def run(args, batch_size):
  """Benchmarks one batch size; returns markdown table rows."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  device = torch.device("cuda" if jax.default_backend() == "gpu" else "cpu")
  import time  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr,
                          flush=True)
  hf_model, config, params = peers.build_hf_and_ours(args.model, dtype=args.dtype)
  log("built HF model and converted weights")
  if args.hf_attn:
    hf_model.set_attn_implementation(args.hf_attn)
  hf_model = hf_model.to(device).train()
  batch = peers.random_batch(batch_size, args.inputs, args.targets)
  steps = {"HF": hf_step(hf_model, batch, device, args.dtype)}
  for impl in args.impls.split(","):
    cfg = dataclasses.replace(config, attention_impl=impl, attention_block_q=args.block_q,
                              attention_block_k=args.block_k)
    steps[impl] = t5x_lite_step(cfg, params, batch)
    log(f"t5x_lite {impl} state initialised")
  first, failed = {}, []
  for name, (step, wait) in list(steps.items()):
    try:
      step()  # compiles / warms up (twice: the first state's layout may differ from later ones)
      first[name] = wait()
      step()
      wait()
      log(f"{name} compiled and warmed up")
    except Exception as e:  # pylint: disable=broad-except
      # Out of memory at a large batch, say: report it and time the others.
      failed.append(f"| {name} | {batch_size} | {type(e).__name__}: "
                    f"{str(e).splitlines()[0][:100]} | | | | |")
      del steps[name]
  print(f"first-step loss ({args.model}, batch {batch_size}): " +
        ", ".join(f"{k} {v:.4f}" for k, v in first.items()), flush=True)

  def timed(step, wait):
    def fn():
      for _ in range(args.steps):
        step()
      wait()
    return fn
  times = peers.interleaved({k: timed(*v) for k, v in steps.items()}, args.repeats)
  log("timed")
  flops = 3 * peers.forward_flops(args.model, args.inputs, args.targets) * batch_size
  rows = []
  for name, secs in times.items():
    per_step = statistics.median(secs) / args.steps
    mfu = (f"{100 * flops / per_step / 1e12 / args.peak_tflops:.1f}%" if args.peak_tflops
           else "n/a")
    vs_hf = ("1.00x" if name == "HF" else
             peers.ratio_summary(secs, times["HF"]) if "HF" in times else "n/a")
    label = f"HF ({args.hf_attn or 'default'} attention)" if name == "HF" else f"t5x_lite {name}"
    rows.append(f"| {label} | {batch_size} | {batch_size / per_step:.1f} | "
                f"{batch_size * args.targets / per_step:.0f} | "
                f"{flops / per_step / 1e12:.1f} | {mfu} | {vs_hf} |")
  return rows + failed


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", "--size", default="tiny", choices=sorted(peers.SHAPES))
  parser.add_argument("--batch", default="8", help="batch size(s), comma-separated")
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--impls", default="xla", help="t5x_lite attention impls to time")
  parser.add_argument("--block_q", type=int, default=128)
  parser.add_argument("--block_k", type=int, default=128)
  parser.add_argument("--hf_attn", default="", help="HF attn_implementation (eager, sdpa)")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="dense peak of the device for --dtype, e.g. 989 (H100 SXM bf16)")
  parser.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  rows = []
  for batch_size in (int(b) for b in args.batch.split(",")):
    rows += run(args, batch_size)
  print(f"\n{args.model}, lengths {args.inputs}/{args.targets}, vocab {peers.VOCAB}, "
        f"{args.dtype}, {jax.devices()[0].device_kind}, {args.repeats} interleaved repeats of "
        f"{args.steps} steps; medians, ratio = HF time / ours (median, min-max)\n")
  print("| system | batch | seq/s | target tok/s | model TFLOP/s | MFU | vs HF |")
  print("|---|---:|---:|---:|---:|---:|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
