"""Decoding speed: t5x_lite.decoding vs HF transformers' generate, same weights, same batch.

One random-weight HF T5 (T5-efficient shapes) is converted with t5x_lite.convert; both
decode the same random batch (greedy, and beam search with length_penalty="hf", HF's
algorithm, so both run the same one), repeated and interleaved (ours, HF, ours, HF, ...)
because this machine's speed drifts between runs. Tokens/s counts generated output tokens
(batch * steps; beams not multiplied). Compilation and HF's first call are warm-up, not timed.

Token agreement needs outputs that vary: at HF's random initialisation the T5-efficient
shapes emit token 0 at every position, so equal tokens would prove nothing. The attention
and feed-forward weights are therefore multiplied by --weight_scale (as tests/test_decoding.py
does) before conversion, and every agreement figure is printed with the number of distinct
token ids in the reference's output.

With --t5x_python (a scratch environment with google-research/t5x, see bench/t5x_peer.py), t5x
decodes the same batch with the same weights in a worker process, timed in the same rounds;
its tokens are compared with t5x_lite's decoded with t5x's settings (beams:
length_penalty="t5x", t5x's algorithm, alpha 0.6).

  python bench/decode.py --size tiny --batch 8 --input_len 64 --max_new_tokens 64
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import peers
from t5x_lite import convert, decoding, network


def save_flat_params(params, path):
  """params (t5x_lite's tree, unstacked) as an .npz keyed by '/'-joined paths."""
  flat = {"/".join(str(k.key) for k in keys): np.asarray(leaf, np.float32)
          for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(path, **flat)


def agreement(ours, reference):
  """'equal% (N distinct)': share of equal tokens, distinct ids in the reference's tokens."""
  return f"{np.mean(ours == reference):.1%} ({len(np.unique(reference))} distinct)"


def build_scaled(name, weight_scale, **config_overrides):
  """(HF model, t5x_lite config, params): random weights, attention and feed-forward
  kernels (not the relative position biases) multiplied by weight_scale."""
  hf, config = peers.build_hf(name, **config_overrides)
  with torch.no_grad():
    for key, w in hf.named_parameters():
      if any(s in key for s in ("SelfAttention", "EncDecAttention", "DenseReluDense")):
        if "relative_attention_bias" not in key:
          w.mul_(weight_scale)
  params = convert.params_from_hf_state_dict(
      {k: v.detach().numpy() for k, v in hf.state_dict().items()}, config)
  return hf, config, params


def start_t5x(args, method, inputs_path, workdir):
  """A t5x decode worker (bench/t5x_peer.py) on the inputs saved at inputs_path;
  returns (worker, the file its first run's tokens are saved to)."""
  tokens_path = os.path.join(workdir, f"t5x_tokens_{method}.npy")
  worker = peers.WorkerProcess(
      [os.path.join(os.path.dirname(os.path.abspath(__file__)), "t5x_peer.py"),
       "--size", args.model, "--params", os.path.join(workdir, "params.npz"),
       "--inputs", inputs_path, "--method", method, "--tokens_out", tokens_path,
       "--max_new_tokens", str(args.max_new_tokens), "--num_beams", str(args.num_beams)],
      python=args.t5x_python)
  return worker, tokens_path


def measure(args, hf, model, params, batch_size, device, workdir):
  """Table rows (one per method) for one batch size."""
  rng = np.random.RandomState(0)
  x = rng.randint(2, peers.VOCAB, size=(batch_size, args.input_len)).astype(np.int32)
  for r in range(1, batch_size, 2):  # every other row padded to half length
    x[r, args.input_len // 2:] = 0
  x_torch = torch.from_numpy(x).long().to(device)
  mask_torch = torch.from_numpy((x > 0).astype(np.int64)).to(device)
  x_jax = jnp.asarray(x)
  inputs_path = os.path.join(workdir, "inputs.npy")
  if args.t5x_python:
    np.save(inputs_path, x)
  settings = {
      "greedy": (dict(method="greedy"), dict(num_beams=1)),
      "beam": (dict(method="beam", num_beams=args.num_beams, alpha=0.6, length_penalty="hf",
                    early_stopping=False),
               dict(num_beams=args.num_beams, length_penalty=0.6, early_stopping=False)),
  }
  as_t5x = {"greedy": dict(method="greedy"),
            "beam": dict(method="beam", num_beams=args.num_beams, alpha=0.6,
                         length_penalty="t5x", early_stopping="never")}
  rows = []
  for method in args.methods.split(","):
    ours_kwargs, hf_kwargs = settings[method]

    def run_ours(kwargs=ours_kwargs):
      tokens, _ = decoding.decode(model, params, x_jax, max_decode_length=args.max_new_tokens,
                                  **kwargs)
      return np.asarray(jax.block_until_ready(tokens))[:, 0]

    def run_hf():
      with torch.no_grad():
        out = hf.generate(input_ids=x_torch, attention_mask=mask_torch, do_sample=False,
                          max_new_tokens=args.max_new_tokens, **hf_kwargs)
      return out[:, 1:].cpu().numpy()  # .cpu() waits for the GPU

    start = time.perf_counter()
    ours_tokens = run_ours()  # compiles
    compile_s = time.perf_counter() - start
    hf_tokens = run_hf()
    # Tokens/s is only comparable if both ran every step: random weights rarely emit EOS.
    steps = hf_tokens.shape[1]
    agree = agreement(ours_tokens[:, :steps], hf_tokens)
    fns = {"ours": run_ours, "hf": run_hf}
    t5x_cells = ""
    if args.t5x_python:
      worker, tokens_path = start_t5x(args, method, inputs_path, workdir)
      worker.wait_ready()  # built and compiled; its first run's tokens are saved
      t5x_agree = agreement(run_ours(as_t5x[method]), np.load(tokens_path))
      t5x_times = []
      fns["t5x"] = lambda: t5x_times.append(worker.step()[0])  # the worker's own timing
    times = peers.interleaved(fns, args.repeats)
    n = batch_size * steps
    if args.t5x_python:
      worker.close()
      t5x_cells = (f" {n / statistics.median(t5x_times):.0f} | "
                   f"{peers.ratio_summary(times['ours'], t5x_times)} | {t5x_agree} |")
    rows.append(f"| {method} | {batch_size} | {steps} | {n / statistics.median(times['ours']):.0f} "
                f"| {n / statistics.median(times['hf']):.0f} | "
                f"{peers.ratio_summary(times['ours'], times['hf'])} | {compile_s:.1f} | "
                f"{agree} |{t5x_cells}")
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", "--size", choices=sorted(peers.SHAPES), default="tiny")
  parser.add_argument("--batch", default="8", help="batch size(s), comma-separated")
  parser.add_argument("--input_len", type=int, default=64)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--num_beams", type=int, default=4)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                      help="bfloat16: weights and activations in bf16 on both sides")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--weight_scale", type=float, default=4.0,
                      help="multiplies the attention and feed-forward weights so that the "
                      "random model decodes varied tokens (1: HF's initialisation)")
  parser.add_argument("--methods", default="greedy,beam")
  parser.add_argument("--threads", type=int, choices=[0, 1], default=1,
                      help="CPU only. 1: one CPU thread for torch and XLA (default: on a "
                      "shared 2-core machine torch's spinning thread pool makes multi-thread "
                      "timings of small ops erratic); 0: each library's default thread pool.")
  parser.add_argument("--t5x_python", default="",
                      help="python of a scratch environment with t5x (see bench/t5x_peer.py): "
                      "adds t5x as a peer, same weights (CPU)")
  args = parser.parse_args()
  on_gpu = jax.default_backend() == "gpu"
  if args.threads == 1 and not on_gpu:
    # Read when the XLA backend starts (the first computation below), so set before it.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false")
    torch.set_num_threads(1)
  device = torch.device("cuda" if on_gpu else "cpu")

  hf, config, params = build_scaled(args.model, args.weight_scale, dtype=args.dtype)
  hf = hf.to(device, getattr(torch, args.dtype)).eval()
  params = jax.device_put(jax.tree_util.tree_map(lambda p: p.astype(args.dtype), params))
  model = network.Transformer(config)
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    if args.t5x_python:
      save_flat_params(params, os.path.join(workdir, "params.npz"))
    for batch_size in (int(b) for b in args.batch.split(",")):
      rows += measure(args, hf, model, params, batch_size, device, workdir)

  print(f"\nmodel={args.model} dtype={args.dtype} input_len={args.input_len} "
        f"max_new_tokens={args.max_new_tokens} num_beams={args.num_beams} "
        f"repeats={args.repeats} weight_scale={args.weight_scale} "
        f"jax={jax.__version__} ({jax.devices()[0].device_kind}) "
        f"torch={torch.__version__} threads={args.threads or 'default'} "
        f"transformers={transformers.__version__}\n")
  t5x_header = (" t5x tok/s | vs t5x (median, min-max) | tokens equal to t5x (distinct ids) |"
                if args.t5x_python else "")
  print("| method | batch | steps | t5x_lite tok/s | HF generate tok/s | speedup (median, "
        f"min-max) | t5x_lite compile s | tokens equal to HF (distinct ids) |{t5x_header}")
  print("|---|---:|---:|---:|---:|---|---:|---:|" + ("---:|---|---:|" if args.t5x_python else ""))
  print("\n".join(rows))


if __name__ == "__main__":
  main()
