"""Where a training step's time goes: t5x_lite (JAX/XLA) vs HF transformers (PyTorch), side by side.

Phases of one step on the same weights and batch (as bench/train_step.py):
  forward             the loss alone
  forward + backward  the loss and every gradient
  full step           forward, backward and the Adafactor update
backward = (forward + backward) - forward; optimizer = full step - (forward + backward).

Then the big parts alone, forward + backward, with the step's shapes, as plain array code in
each framework (jnp under jax.jit vs torch ops), so that each row compares XLA:CPU's and
PyTorch's kernels on the same math:
  embedding           gather of B x L ids from the [vocab, d] table, and its gradient
  output + xent       [B*Lt, d] x [d, vocab] logits and the cross-entropy, both gradients
  attention + bias    one layer's q/k/v/o projections, scores + relative bias, softmax
  mlp                 one layer's d -> d_ff -> d (relu)
  adafactor update    the optimizer alone on the model's gradients (t5x_lite: its own
                      factored Adafactor; HF: transformers.optimization.Adafactor)
Each figure is the median of interleaved repeats (ours, HF, ours, HF, ...) in ms.

  python bench/profile_train_step.py --size tiny --batch 8 --inputs 512 --targets 114
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import peers  # pylint: disable=g-import-not-at-top,wrong-import-position


def _ours_phases(config, params, batch):
  """{phase: fn() that runs it once and blocks} for t5x_lite."""
  import jax  # pylint: disable=g-import-not-at-top
  from t5x_lite.model import encoder_decoder  # pylint: disable=g-import-not-at-top
  from t5x_lite.parallel import partitioning
  from t5x_lite.training import optimizers, trainer
  model = encoder_decoder.EncoderDecoderModel(config, z_loss=0.0)
  t = trainer.Trainer(model, optimizers.adafactor(optimizers.constant_schedule(1e-3)),
                      partitioning.Partitioner())
  fresh = lambda: t.init_state({k: v.shape for k, v in batch.items()}).replace(
      params=jax.device_put(params))
  state = fresh()  # train_step donates its state: the other phases read their own copy
  device_batch = jax.device_put(batch)
  loss = jax.jit(lambda p, b: model.loss_fn(p, b)[0])
  grads = jax.jit(jax.grad(lambda p, b: model.loss_fn(p, b)[0]))
  g = grads(state.params, device_batch)
  update = jax.jit(t.tx.update)
  holder = {"state": fresh()}

  def step():
    holder["state"], metrics = t.train_step(holder["state"], device_batch)
    jax.block_until_ready(metrics)
  return {"forward": lambda: jax.block_until_ready(loss(state.params, device_batch)),
          "forward + backward": lambda: jax.block_until_ready(grads(state.params, device_batch)),
          "full step": step,
          "adafactor update": lambda: jax.block_until_ready(
              update(g, state.opt_state, state.params))}


def _hf_phases(hf_model, batch):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
  optimizer = Adafactor(hf_model.parameters(), lr=1e-3, scale_parameter=True,
                        relative_step=False, warmup_init=False, decay_rate=-0.8,
                        clip_threshold=1.0)
  input_ids = torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long)
  labels = torch.as_tensor(batch["decoder_target_tokens"], dtype=torch.long)
  loss_of = lambda: hf_model(input_ids=input_ids, labels=labels).loss

  def forward():
    with torch.no_grad():
      loss_of()

  def forward_backward():
    optimizer.zero_grad(set_to_none=True)
    loss_of().backward()

  def step():
    forward_backward()
    optimizer.step()
  forward_backward()  # gradients for the optimizer-only timing
  return {"forward": forward, "forward + backward": forward_backward, "full step": step,
          "adafactor update": optimizer.step}


def _parts(config, batch_size, inputs, targets):
  """{part: (ours fn, HF fn)}: the same math in jnp (jitted) and torch, forward + backward."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  d, f, h, k, v = (config.d_model, config.d_ff, config.num_heads, config.d_kv, config.vocab_size)
  arrays = {
      "table": rng.randn(v, d).astype(np.float32) * 0.05,
      "ids": rng.randint(0, v, (batch_size, inputs)),
      "x_out": rng.randn(batch_size * targets, d).astype(np.float32),
      "labels": rng.randint(0, v, (batch_size * targets,)),
      "x": rng.randn(batch_size, inputs, d).astype(np.float32),
      "wqkv": rng.randn(3, d, h * k).astype(np.float32) * 0.05,
      "wo": rng.randn(h * k, d).astype(np.float32) * 0.05,
      "bias": rng.randn(1, h, inputs, inputs).astype(np.float32),
      "wi": rng.randn(d, f).astype(np.float32) * 0.05,
      "wf": rng.randn(f, d).astype(np.float32) * 0.05,
  }

  def embedding(table, ids):
    return jnp.sum(table[ids] ** 2)

  def output_xent(table, x, labels):
    logits = x @ table.T
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, labels[:, None], -1)[:, 0])

  def attention(x, wqkv, wo, bias):
    q, kk, vv = (jnp.einsum("bld,dn->bln", x, w).reshape(batch_size, inputs, h, k)
                 for w in wqkv)
    scores = jnp.einsum("bqhk,bthk->bhqt", q, kk) + bias
    out = jnp.einsum("bhqt,bthk->bqhk", jax.nn.softmax(scores, -1), vv)
    return jnp.sum(out.reshape(batch_size, inputs, h * k) @ wo)

  def mlp(x, wi, wf):
    return jnp.sum(jax.nn.relu(x @ wi) @ wf)

  def jitted(fn, names, argnums):
    g = jax.jit(jax.grad(fn, argnums=argnums))
    args = [jnp.asarray(arrays[n]) for n in names]
    return lambda: jax.block_until_ready(g(*args))

  def torch_fn(fn, names, grad_names):
    tensors = {n: torch.tensor(arrays[n], requires_grad=n in grad_names) for n in names}

    def run():
      for t in tensors.values():
        t.grad = None
      fn(*(tensors[n] for n in names)).backward()
    return run

  def t_attention(x, wqkv, wo, bias):
    q, kk, vv = ((x @ w).reshape(batch_size, inputs, h, k).transpose(1, 2) for w in wqkv)
    scores = q @ kk.transpose(-1, -2) + bias
    out = (torch.softmax(scores, -1) @ vv).transpose(1, 2).reshape(batch_size, inputs, h * k)
    return (out @ wo).sum()

  return {
      "embedding": (jitted(embedding, ["table", "ids"], 0),
                    torch_fn(lambda t, i: (t[i] ** 2).sum(), ["table", "ids"], {"table"})),
      "output + xent": (
          jitted(output_xent, ["table", "x_out", "labels"], (0, 1)),
          torch_fn(lambda t, x, y: torch.nn.functional.cross_entropy(x @ t.T, y),
                   ["table", "x_out", "labels"], {"table", "x_out"})),
      "attention + bias (1 layer)": (
          jitted(attention, ["x", "wqkv", "wo", "bias"], (0, 1, 2)),
          torch_fn(t_attention, ["x", "wqkv", "wo", "bias"], {"x", "wqkv", "wo"})),
      "mlp (1 layer)": (
          jitted(mlp, ["x", "wi", "wf"], (0, 1, 2)),
          torch_fn(lambda x, a, b: (torch.relu(x @ a) @ b).sum(), ["x", "wi", "wf"],
                   {"x", "wi", "wf"})),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="tiny", choices=sorted(peers.SHAPES))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  hf_model, config, params = peers.build_hf_and_ours(args.size)
  hf_model = hf_model.train()
  batch = peers.random_batch(args.batch, args.inputs, args.targets)
  ours, theirs = _ours_phases(config, params, batch), _hf_phases(hf_model, batch)
  pairs = {name: (ours[name], theirs[name]) for name in ours}
  pairs.update(_parts(config, args.batch, args.inputs, args.targets))
  fns = {}
  for name, (a, b) in pairs.items():
    a(), a(), b(), b()  # compile and warm up
    fns[(name, "ours")], fns[(name, "hf")] = a, b
  times = peers.interleaved(fns, args.repeats)
  ms = lambda key: 1000 * statistics.median(times[key])

  print(f"\n{args.size}, batch {args.batch}, lengths {args.inputs}/{args.targets}, vocab "
        f"{peers.VOCAB}; medians of {args.repeats} interleaved repeats, ms\n")
  print("| part | t5x_lite | HF | HF / t5x_lite |")
  print("|---|---:|---:|---:|")
  for name in pairs:
    print(f"| {name} | {ms((name, 'ours')):.1f} | {ms((name, 'hf')):.1f} | "
          f"{ms((name, 'hf')) / ms((name, 'ours')):.2f} |")
  for system in ("ours", "hf"):
    fwd, fb, step = (ms((n, system)) for n in ("forward", "forward + backward", "full step"))
    print(f"\n{'t5x_lite' if system == 'ours' else 'HF'}: backward = {fb - fwd:.1f} ms, "
          f"optimizer in the step = {step - fb:.1f} ms")


if __name__ == "__main__":
  main()
