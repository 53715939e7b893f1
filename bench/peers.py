"""What the benchmarks share: model shapes, the HF transformers peer with the same weights,
model FLOPs, and timing that works alike on CPU and GPU.

Imported by the scripts in bench/ (run them from the repository root or anywhere: each puts
the repository root on sys.path so an uninstalled checkout works too).
"""

import statistics
import subprocess
import sys
import time

import numpy as np

# Before any script here starts JAX: t5x_lite's XLA flags (t5x_lite/runtime/xla_flags.py), as its entry
# point sets them; XLA reads them only when its first backend starts.
from t5x_lite.runtime import xla_flags  # pylint: disable=g-import-not-at-top
xla_flags.apply_defaults()

# name -> T5 shape. T5-efficient (Scale Efficiently, arXiv 2109.10686): v1.0 style, relu,
# tied embeddings. T5 v1.1 (google/t5-v1_1-*): gated-GELU, untied output layer.
SHAPES = {
    "tiny": dict(d_model=256, d_ff=1024, d_kv=64, num_heads=4, num_layers=4,
                 feed_forward_proj="relu"),
    "mini": dict(d_model=384, d_ff=1536, d_kv=64, num_heads=8, num_layers=4,
                 feed_forward_proj="relu"),
    "small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6,
                  feed_forward_proj="relu"),
    "base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12,
                 feed_forward_proj="relu"),
    "t5_1_1_small": dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8,
                         feed_forward_proj="gated-gelu"),
    "t5_1_1_base": dict(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12,
                        feed_forward_proj="gated-gelu"),
}
VOCAB = 32128


def build_hf_and_ours(name, *, vocab=VOCAB, seed=0, **config_overrides):
  """(HF T5ForConditionalGeneration on CPU in float32, t5x_lite T5Config, params) sharing
  the same random weights (converted with t5x_lite.interop.hf_param_layout)."""
  from t5x_lite.interop import hf_param_layout  # pylint: disable=g-import-not-at-top
  hf, config = build_hf(name, vocab=vocab, seed=seed, **config_overrides)
  params = hf_param_layout.params_from_hf_state_dict(
      {k: v.detach().numpy() for k, v in hf.state_dict().items()}, config)
  return hf, config, params


def build_hf(name, *, vocab=VOCAB, seed=0, **config_overrides):
  """(HF T5ForConditionalGeneration with random weights, the matching t5x_lite T5Config)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  hf_cfg, config = configs(name, vocab=vocab, **config_overrides)
  hf = transformers.T5ForConditionalGeneration(hf_cfg)
  if not hf_cfg.tie_word_embeddings:  # untied v1.1: embed_tokens must still be the shared one
    hf.encoder.embed_tokens = hf.shared
    hf.decoder.embed_tokens = hf.shared
  return hf, config


def configs(name, *, vocab=VOCAB, **config_overrides):
  """(transformers.T5Config, t5x_lite T5Config) of a SHAPES entry, dropout 0."""
  import transformers  # pylint: disable=g-import-not-at-top
  from t5x_lite.interop import hf_param_layout  # pylint: disable=g-import-not-at-top
  shape = dict(SHAPES[name])
  tied = shape["feed_forward_proj"] == "relu"
  # transformers 5.x reads the constructor's tie_word_embeddings=False as "v1.1: do not scale
  # the decoder output by d_model**-0.5" (scale_decoder_outputs) and then forces the attribute
  # to True; setting it again afterwards gives the separate lm_head.
  hf_cfg = transformers.T5Config(
      vocab_size=vocab, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
      eos_token_id=1, num_decoder_layers=shape["num_layers"], tie_word_embeddings=tied, **shape)
  hf_cfg.tie_word_embeddings = tied
  config = hf_param_layout.config_from_hf(hf_cfg.to_dict(), dropout_rate=0.0,
                                          tie_word_embeddings=tied, **config_overrides)
  return hf_cfg, config


def forward_flops(name, inputs, targets, vocab=VOCAB):
  """Model FLOPs of one example's forward pass (matmuls only, 2 per multiply-add).

  Attention scores and values count the full Lq x Lk product, causal or not (the usual MFU
  convention); embedding lookups, norms and softmax are not counted. A training step is
  3x this (forward + backward), with no recomputation counted.
  """
  s = SHAPES[name]
  d, f, hk, n = s["d_model"], s["d_ff"], s["num_heads"] * s["d_kv"], s["num_layers"]
  mlp = (3 if s["feed_forward_proj"] == "gated-gelu" else 2) * d * f
  encoder = 2 * inputs * (4 * d * hk + mlp) + 4 * inputs * inputs * hk
  decoder = (2 * targets * (4 * d * hk + mlp) + 4 * targets * targets * hk  # self + mlp
             + 2 * targets * 2 * d * hk + 2 * inputs * 2 * d * hk        # cross q,o / k,v
             + 4 * targets * inputs * hk)                                 # cross scores
  return n * (encoder + decoder) + 2 * targets * d * vocab


def interleaved(fns, repeats):
  """Times each callable `repeats` times, interleaved (a, b, a, b, ...).

  Each callable runs its work and blocks until it is done. Returns {name: [seconds]}.
  """
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def ratio_summary(ours, theirs):
  """'1.23x (1.10-1.30)': median and min-max of per-repeat ratios theirs/ours of times."""
  ratios = [b / a for a, b in zip(ours, theirs)]
  return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def random_batch(batch, inputs, targets, vocab=VOCAB, seed=0):
  """Real-token (no padding) encoder inputs and targets, as a t5x_lite batch dict."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, (batch, inputs)).astype(np.int32)
  tgt = rng.randint(2, vocab, (batch, targets)).astype(np.int32)
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return dict(encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=tgt,
              decoder_loss_weights=np.ones_like(tgt))


class WorkerProcess:
  """A benchmark worker in its own process (maybe another environment's python), driven by lines.

  The worker prints "ready" once built, answers each "step" line with "step <seconds> <value>"
  after one timed unit of work, and answers "exit" with "<exit_word> <value>" before it
  exits. Other lines it prints pass on to stderr.
  """

  def __init__(self, argv, python=sys.executable, exit_word="done"):
    self.exit_word = exit_word
    self.proc = subprocess.Popen([python] + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)

  def wait_ready(self):
    """Waits until the worker has built its system (workers build concurrently)."""
    self._expect("ready")

  def _expect(self, word):
    """The words after `word` on the worker's next protocol line (other output passes on)."""
    for line in self.proc.stdout:
      if line.startswith(word + " ") or line.strip() == word:
        return line.split()[1:]
      print(line, end="", file=sys.stderr)
    self.proc.kill()
    raise RuntimeError(f"the worker exited before saying {word!r} (see its stderr above)")

  def _send(self, line):
    self.proc.stdin.write(line + "\n")
    self.proc.stdin.flush()

  def start_step(self):
    self._send("step")

  def step_result(self):
    """(seconds, value) of the step started last, as the worker measured them."""
    seconds, value = self._expect("step")
    return float(seconds), float(value)

  def step(self):
    self.start_step()
    return self.step_result()

  def close(self):
    """The value the worker reports on exit."""
    self._send("exit")
    (value,) = self._expect(self.exit_word)
    self.proc.wait()
    return float(value)


def serve(step, wait, exit_value=lambda: 0.0, exit_word="done"):
  """The worker side of WorkerProcess: times step() + wait() (wait returns the step's value)
  for each "step" line read from stdin, until "exit"."""
  print("ready", flush=True)
  for command in sys.stdin:
    if command.strip() == "exit":
      print(f"{exit_word} {exit_value():.6f}", flush=True)
      return
    start = time.perf_counter()
    step()
    value = wait()
    print(f"step {time.perf_counter() - start:.6f} {value:.6f}", flush=True)
