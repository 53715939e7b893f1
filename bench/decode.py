"""Decoding speed: t5x_lite.decoding vs HF transformers' generate, same weights, same batch.

One random-weight HF T5 (T5-efficient shapes) is converted with t5x_lite.convert; both
decode the same random batch (greedy, and beam search with HF's length penalty so both
run the same algorithm), repeated and interleaved (ours, HF, ours, HF, ...) because this
machine's speed drifts between runs. Tokens/s counts generated output tokens
(batch * steps; beams not multiplied). Compilation and HF's first call are warm-up, not timed.

  python bench/decode.py --size tiny --batch 8 --input_len 64 --max_new_tokens 64
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from t5x_lite import convert, decoding, network

# T5-efficient (Scale Efficiently, arXiv 2109.10686) shapes.
SIZES = {
    "tiny": dict(d_model=256, d_ff=1024, d_kv=64, num_heads=4, num_layers=4),
    "mini": dict(d_model=384, d_ff=1536, d_kv=64, num_heads=8, num_layers=4),
    "small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6),
}


def build(size, family, seed=0):
  """(HF model, t5x_lite Transformer, params) sharing random weights."""
  torch.manual_seed(seed)
  hf_cfg = transformers.T5Config(
      vocab_size=32128, feed_forward_proj=family, dropout_rate=0.0,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **SIZES[size])
  tied = family == "relu"
  hf_cfg.tie_word_embeddings = tied  # transformers 5.x: the constructor argument is ignored
  hf = transformers.T5ForConditionalGeneration(hf_cfg)
  if not tied:  # untied v1.1 layout: embed_tokens must still be the shared embedding
    hf.encoder.embed_tokens = hf.shared
    hf.decoder.embed_tokens = hf.shared
  hf.eval()
  config = convert.config_from_hf(hf_cfg.to_dict(), dropout_rate=0.0,
                                  tie_word_embeddings=tied)
  params = convert.params_from_hf_state_dict(hf.state_dict(), config)
  return hf, network.Transformer(config), jax.device_put(params)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
  parser.add_argument("--family", choices=["relu", "gated-gelu"], default="relu")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--input_len", type=int, default=64)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--num_beams", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--methods", default="greedy,beam")
  parser.add_argument("--threads", type=int, choices=[0, 1], default=1,
                      help="1: one CPU thread for torch and XLA (default: on a shared 2-core "
                      "machine torch's spinning thread pool makes multi-thread timings of small "
                      "ops erratic); 0: each library's default thread pool.")
  args = parser.parse_args()
  if args.threads == 1:
    # Read when the XLA backend starts (the first computation below), so set before it.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false")
    torch.set_num_threads(1)

  hf, model, params = build(args.size, args.family)
  rng = np.random.RandomState(0)
  x = rng.randint(2, 32128, size=(args.batch, args.input_len)).astype(np.int32)
  for r in range(1, args.batch, 2):  # every other row padded to half length
    x[r, args.input_len // 2:] = 0
  x_torch, mask_torch = torch.from_numpy(x).long(), torch.from_numpy((x > 0).astype(np.int64))
  x_jax = jnp.asarray(x)

  settings = {
      "greedy": (dict(method="greedy"), dict(num_beams=1)),
      "beam": (dict(method="beam", num_beams=args.num_beams, alpha=0.6, length_penalty="hf",
                    early_stopping=False),
               dict(num_beams=args.num_beams, length_penalty=0.6, early_stopping=False)),
  }
  rows = []
  for method in args.methods.split(","):
    ours_kwargs, hf_kwargs = settings[method]

    def run_ours():
      tokens, _ = decoding.decode(model, params, x_jax, max_decode_length=args.max_new_tokens,
                                  **ours_kwargs)
      return np.asarray(jax.block_until_ready(tokens))[:, 0]

    def run_hf():
      with torch.no_grad():
        out = hf.generate(input_ids=x_torch, attention_mask=mask_torch, do_sample=False,
                          max_new_tokens=args.max_new_tokens, **hf_kwargs)
      return out[:, 1:].numpy()

    start = time.perf_counter()
    ours_tokens = run_ours()  # compiles
    compile_s = time.perf_counter() - start
    hf_tokens = run_hf()
    # Tokens/s is only comparable if both ran every step: random weights rarely emit EOS.
    steps = hf_tokens.shape[1]
    agree = float(np.mean(ours_tokens[:, :steps] == hf_tokens))
    ours_t, hf_t = [], []
    for _ in range(args.repeats):
      start = time.perf_counter()
      run_ours()
      ours_t.append(time.perf_counter() - start)
      start = time.perf_counter()
      run_hf()
      hf_t.append(time.perf_counter() - start)
    n = args.batch * steps
    ratios = [h / o for o, h in zip(ours_t, hf_t)]
    rows.append((method, steps, n / statistics.median(ours_t), n / statistics.median(hf_t),
                 statistics.median(ratios), min(ratios), max(ratios), compile_s, agree))

  print(f"\nsize={args.size} family={args.family} batch={args.batch} input_len={args.input_len} "
        f"max_new_tokens={args.max_new_tokens} num_beams={args.num_beams} "
        f"repeats={args.repeats} jax={jax.__version__} ({jax.default_backend()}) "
        f"torch={torch.__version__} threads={args.threads or 'default'} "
        f"transformers={transformers.__version__}\n")
  print("| method | steps | t5x_lite tok/s | HF generate tok/s | speedup (median, min-max) "
        "| t5x_lite compile s | tokens equal to HF |")
  print("|---|---|---|---|---|---|---|")
  for method, steps, ours, theirs, ratio, lo, hi, compile_s, agree in rows:
    print(f"| {method} | {steps} | {ours:.0f} | {theirs:.0f} | {ratio:.2f}x ({lo:.2f}-{hi:.2f}) "
          f"| {compile_s:.1f} | {agree:.1%} |")


if __name__ == "__main__":
  main()
