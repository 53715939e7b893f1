"""Training-step throughput: t5x_lite vs HF transformers (PyTorch) on the same weights and batch.

One optimizer step = forward, backward and an Adafactor update (optax's in t5x_lite,
transformers.optimization.Adafactor with T5's settings in PyTorch), on a random batch of
real-token inputs. Repeats are interleaved (ours, HF, ours, HF, ...) so machine noise hits
both alike; compilation and warm-up steps are not timed. Prints a markdown table with target
tokens per second and the per-repeat ratio (median, min-max).

  python bench/train_step.py --size tiny --batch 8 --inputs 512 --targets 114 --repeats 5
"""

import argparse
import statistics
import time

import numpy as np

SIZES = {  # T5-efficient shapes (v1.0: relu, tied embeddings)
    "tiny": dict(d_model=256, d_ff=1024, d_kv=64, num_heads=4, num_layers=4),
    "mini": dict(d_model=384, d_ff=1536, d_kv=64, num_heads=8, num_layers=4),
    "small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6),
}


def build_models(size, vocab):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from t5x_lite import convert  # pylint: disable=g-import-not-at-top
  shape = SIZES[size]
  hf_config = transformers.T5Config(
      vocab_size=vocab, d_model=shape["d_model"], d_ff=shape["d_ff"], d_kv=shape["d_kv"],
      num_heads=shape["num_heads"], num_layers=shape["num_layers"],
      num_decoder_layers=shape["num_layers"], dropout_rate=0.0, feed_forward_proj="relu",
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  torch.manual_seed(0)
  hf_model = transformers.T5ForConditionalGeneration(hf_config).train()
  state_dict = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  config = convert.config_from_hf(hf_config.to_dict())
  params = convert.params_from_hf_state_dict(state_dict, config)
  return hf_model, config, params


def make_batch(batch, inputs, targets, vocab):
  rng = np.random.RandomState(0)
  enc = rng.randint(2, vocab, (batch, inputs)).astype(np.int32)
  tgt = rng.randint(2, vocab, (batch, targets)).astype(np.int32)
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return dict(encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=tgt,
              decoder_loss_weights=np.ones_like(tgt))


def t5x_lite_step(config, params, batch):
  """A jitted train step (no z-loss, mean loss: the same objective as HF's)."""
  import jax  # pylint: disable=g-import-not-at-top
  from t5x_lite import models, optimizers, partitioning, trainer  # pylint: disable=g-import-not-at-top
  model = models.EncoderDecoderModel(config, z_loss=0.0)
  t = trainer.Trainer(model, optimizers.adafactor(optimizers.constant_schedule(1e-3)),
                      partitioning.Partitioner())
  shapes = {k: v.shape for k, v in batch.items()}
  state = t.init_state(shapes).replace(params=jax.device_put(params))
  state = state.replace(opt_state=t.tx.init(state.params))
  device_batch = jax.device_put(batch)
  holder = {"state": state}

  def step():
    holder["state"], metrics = t.train_step(holder["state"], device_batch)
    return float(metrics["loss"])
  return step


def hf_step(hf_model, batch):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
  optimizer = Adafactor(hf_model.parameters(), lr=1e-3, scale_parameter=True,
                        relative_step=False, warmup_init=False, decay_rate=-0.8,
                        clip_threshold=1.0)
  input_ids = torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long)
  labels = torch.as_tensor(batch["decoder_target_tokens"], dtype=torch.long)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = hf_model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    return float(loss.detach())
  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
  parser.add_argument("--vocab", type=int, default=32128)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  hf_model, config, params = build_models(args.size, args.vocab)
  batch = make_batch(args.batch, args.inputs, args.targets, args.vocab)
  ours, theirs = t5x_lite_step(config, params, batch), hf_step(hf_model, batch)
  first = ours(), theirs()  # compile / warm up; same weights and batch: same first loss
  print(f"first-step loss: t5x_lite {first[0]:.4f}, HF {first[1]:.4f}")
  tokens = args.batch * args.targets * args.steps
  rates = {"t5x_lite": [], "HF": []}
  for _ in range(args.repeats):
    for name, fn in (("t5x_lite", ours), ("HF", theirs)):
      start = time.perf_counter()
      for _ in range(args.steps):
        fn()
      rates[name].append(tokens / (time.perf_counter() - start))
  ratios = [a / b for a, b in zip(rates["t5x_lite"], rates["HF"])]
  print(f"\n{args.size}, batch {args.batch}, lengths {args.inputs}/{args.targets}, vocab "
        f"{args.vocab}, {args.repeats} interleaved repeats of {args.steps} steps\n")
  print("| t5x_lite target tok/s | HF target tok/s | ratio (median, min-max) |")
  print("|---:|---:|---|")
  print(f"| {statistics.median(rates['t5x_lite']):.0f} | {statistics.median(rates['HF']):.0f} | "
        f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
  main()
