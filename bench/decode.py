"""Decoding speed: t5x_lite.model.decoding vs HF transformers' generate, same weights, same batch.

One random-weight HF T5 (T5-efficient shapes) is converted with t5x_lite.interop.hf_param_layout;
both decode the same random batch (greedy, and beam search with length_penalty="hf", HF's
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

CTranslate2 (`pip install ctranslate2`, or this project's `bench` extra; not a dependency of
t5x_lite) is the CPU inference engine to beat: the same HF model goes through its own T5
converter (an in-memory model and an id-named vocabulary instead of a model directory and
tokenizer), and each --ct2_compute_types entry (float32, weight-and-activation int8) is a
peer timed in the same rounds (its `translate_batch`, beam_size 4, length_penalty 0.6; one
thread with --threads 1). Its tokens are compared with HF's. Speeds are also printed as a
multiple of HF generate's speed.

  python bench/decode.py --size tiny --batch 8 --input_len 64 --max_new_tokens 64
"""

import argparse
import functools
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
from t5x_lite.interop import hf_param_layout
from t5x_lite.model import decoding, network

try:
  import ctranslate2  # pylint: disable=g-import-not-at-top
except ImportError:  # an optional peer
  ctranslate2 = None


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
  params = hf_param_layout.params_from_hf_state_dict(
      {k: v.detach().numpy() for k, v in hf.state_dict().items()}, config)
  return hf, config, params


class _IdTokenizer:
  """What CTranslate2's T5 loader reads from a tokenizer: token i is named 't<i>'."""
  pad_token, eos_token, unk_token = "t0", "t1", "t2"

  def __init__(self, vocab_size):
    self.vocab_size = vocab_size

  def get_vocab(self):
    return {f"t{i}": i for i in range(self.vocab_size)}

  def convert_ids_to_tokens(self, token_id):
    return f"t{token_id}"


def convert_ctranslate2(hf, model_dir):
  """Converts the (float32) HF model with CTranslate2's own T5 converter into model_dir."""

  class InMemoryConverter(ctranslate2.converters.TransformersConverter):
    def load_model(self, model_class, model_name_or_path, **kwargs):
      return hf

    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
      return _IdTokenizer(hf.config.vocab_size)

  config_dir = model_dir + "_config"
  hf.config.save_pretrained(config_dir)  # the converter reads the config from a directory
  InMemoryConverter(config_dir).convert(model_dir, quantization="float32", force=True)
  return model_dir


def ctranslate2_decoder(model_dir, compute_type, threads, max_new_tokens, num_beams, method):
  """A callable decoding an int [batch, len] batch (0 = padding) with CTranslate2:
  -> int [batch, max_new_tokens] generated ids (EOS included, 0 after)."""
  translator = ctranslate2.Translator(model_dir, device="cpu", compute_type=compute_type,
                                      inter_threads=1, intra_threads=threads)
  beam = dict(beam_size=num_beams, length_penalty=0.6) if method == "beam" else dict(beam_size=1)

  def run(x):
    source = [[f"t{t}" for t in row if t != 0] for row in x]
    results = translator.translate_batch(
        source, max_decoding_length=max_new_tokens, min_decoding_length=0,
        return_end_token=True, max_input_length=0, **beam)
    out = np.zeros((len(x), max_new_tokens), np.int64)
    for i, result in enumerate(results):
      ids = [int(t[1:]) for t in result.hypotheses[0]]
      out[i, :len(ids)] = ids
    return out
  return run


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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved(fns, repeats, clock):
  """peers.interleaved with a choice of clock: {name: [seconds]} of `repeats` rounds.

  "cpu" is the process's CPU time (all its threads): with one thread per library it counts
  the work each one does and not the time other jobs on a shared machine take from it.
  """
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = CLOCKS[clock]()
      fn()
      times[name].append(CLOCKS[clock]() - start)
  return times


def times_hf(times, name):
  """'1.23x (1.10-1.30)': speed of `name` as a multiple of HF generate's, per round."""
  return peers.ratio_summary(times[name], times["hf"])


def measure(args, hf, model, params, batch_size, device, workdir, ct2_dir):
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
  compute_types = [c for c in args.ct2_compute_types.split(",") if c]
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
    agree = {"t5x_lite": agreement(ours_tokens[:, :steps], hf_tokens)}
    fns = {"ours": run_ours, "hf": run_hf}
    for compute_type in compute_types:
      run_ct2 = functools.partial(ctranslate2_decoder(
          ct2_dir, compute_type, args.threads, args.max_new_tokens, args.num_beams, method), x)
      agree[f"CT2 {compute_type}"] = agreement(run_ct2()[:, :steps], hf_tokens)  # warm-up
      fns[f"ct2_{compute_type}"] = run_ct2
    t5x_cells = ""
    if args.t5x_python:
      worker, tokens_path = start_t5x(args, method, inputs_path, workdir)
      worker.wait_ready()  # built and compiled; its first run's tokens are saved
      t5x_agree = agreement(run_ours(as_t5x[method]), np.load(tokens_path))
      t5x_times = []
      fns["t5x"] = lambda: t5x_times.append(worker.step()[0])  # the worker's own timing
    times = interleaved(fns, args.repeats, args.clock)
    n = batch_size * steps
    if args.t5x_python:
      worker.close()
      t5x_cells = (f" {n / statistics.median(t5x_times):.0f} | "
                   f"{peers.ratio_summary(times['ours'], t5x_times)} | {t5x_agree} |")
    ct2_cells = "".join(f" {times_hf(times, f'ct2_{c}')} | "
                        f"{peers.ratio_summary(times['ours'], times[f'ct2_{c}'])} |"
                        for c in compute_types)
    rows.append(f"| {method} | {batch_size} | {steps} | {n / statistics.median(times['ours']):.0f} "
                f"| {n / statistics.median(times['hf']):.0f} | {times_hf(times, 'ours')} |"
                f"{ct2_cells} {compile_s:.1f} | "
                f"{'; '.join(f'{k} {v}' for k, v in agree.items())} |{t5x_cells}")
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
  parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                      help="wall: elapsed time; cpu: the process's CPU time, steadier on a "
                      "shared machine with --threads 1 (t5x's worker reports wall time)")
  parser.add_argument("--ct2_compute_types", default="float32,int8",
                      help="CTranslate2 peers, comma-separated compute types (float32, int8, "
                      "int8_float32, ...); empty: no CTranslate2 peer")
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
  compute_types = [c for c in args.ct2_compute_types.split(",") if c]
  if compute_types and ctranslate2 is None:
    print("CTranslate2 is not installed (pip install ctranslate2, or the bench extra: "
          "pip install -e .[bench]): its columns are left out.")
    compute_types = []
  if compute_types and (on_gpu or args.dtype != "float32"):
    print("The CTranslate2 peer runs on the CPU from the float32 model: left out here.")
    compute_types = []
  args.ct2_compute_types = ",".join(compute_types)
  hf = hf.to(device, getattr(torch, args.dtype)).eval()
  params = jax.device_put(jax.tree_util.tree_map(lambda p: p.astype(args.dtype), params))
  model = network.Transformer(config)
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    if args.t5x_python:
      save_flat_params(params, os.path.join(workdir, "params.npz"))
    ct2_dir = (convert_ctranslate2(hf, os.path.join(workdir, "ct2")) if compute_types
               else None)
    for batch_size in (int(b) for b in args.batch.split(",")):
      rows += measure(args, hf, model, params, batch_size, device, workdir, ct2_dir)

  ct2_version = f" ctranslate2={ctranslate2.__version__}" if compute_types else ""
  print(f"\nmodel={args.model} dtype={args.dtype} input_len={args.input_len} "
        f"max_new_tokens={args.max_new_tokens} num_beams={args.num_beams} "
        f"repeats={args.repeats} clock={args.clock} weight_scale={args.weight_scale} "
        f"jax={jax.__version__} ({jax.devices()[0].device_kind}) "
        f"torch={torch.__version__} threads={args.threads or 'default'} "
        f"transformers={transformers.__version__}{ct2_version}\n")
  t5x_header = (" t5x tok/s | vs t5x (median, min-max) | tokens equal to t5x (distinct ids) |"
                if args.t5x_python else "")
  ct2_header = "".join(f" CT2 {c} x HF | t5x_lite vs CT2 {c} |" for c in compute_types)
  print("| method | batch | steps | t5x_lite tok/s | HF generate tok/s | t5x_lite x HF (median, "
        f"min-max) |{ct2_header} t5x_lite compile s | tokens equal to HF (distinct ids) |"
        f"{t5x_header}")
  print("|---|---:|---:|---:|---:|---|" + "---|---|" * len(compute_types) + "---:|---|"
        + ("---:|---|---:|" if args.t5x_python else ""))
  print("\n".join(rows))


if __name__ == "__main__":
  main()
