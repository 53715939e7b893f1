"""Training on a real variable-length mixture: t5x_lite (packed) vs HF transformers (padded).

The per-step ratio of bench/train_step.py is not what a user waits for; the time to train on
a mixture of examples of varied lengths is. This script trains the same model shape on the
same token-id examples with each library the way its users do, and reports wall time and
non-padding tokens per second (and model FLOPs per pass, peers.forward_flops x 3 over every
slot a step computes, padding included):

- t5x_lite: the model's feature converter packs the examples (seqio.EncDecFeatureConverter,
  pack=True) into --batch rows of --inputs / --targets tokens, on tf.data; the Trainer's
  jitted step trains on them (t5x's Adafactor, constant learning rate 1e-3, no z-loss). The
  last partial batch is filled with all-padding rows, so every example is seen once.
- HF: T5ForConditionalGeneration fed by a torch DataLoader of --hf_batch examples with
  transformers.DataCollatorForSeq2Seq (padding to the longest example of the batch, labels
  padded with -100, decoder inputs made by the model), as HF's seq2seq examples train;
  transformers.optimization.Adafactor with T5's settings (lr 1e-3, parameter scaling, decay
  -0.8, clip 1.0), torch.set_num_threads = the CPUs XLA uses.

Both start from the same random weights (converted with t5x_lite.interop.hf_checkpoint),
float32, dropout 0. One pass over the examples by each library is one timed unit; passes are
interleaved (t5x_lite, HF, t5x_lite, HF, ...) for --rounds rounds, the input pipeline inside
the timed pass for both (iterating the tf.data packing pipeline, built once; the
DataLoader's collation), compilation and warm-up steps outside it.

Examples (--data):
- quickstart: the first N examples of `quickstart_mixture` (tasks/quickstart.py) after seqio
  preprocessing (tokenized with the default vocabulary, EOS appended, shuffled with seed 0),
  cut to --inputs / --targets tokens as the recipe's TASK_FEATURE_LENGTHS cut them.
- superni_like: random ids with SuperNI-like lengths: inputs log-normal (median 250, sigma
  0.6, clipped to 8..--inputs), targets log-normal (median 10, sigma 0.9, clipped to
  1..--targets), each ending with EOS.

  python bench/train_mixture.py --data quickstart --examples 2048 --inputs 64 --targets 32 \
      --batch 32 --hf_batch 32 --rounds 2
  python bench/train_mixture.py --data superni_like --examples 512 --inputs 1024 \
      --targets 128 --batch 8 --hf_batch 8 --rounds 2
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import peers  # pylint: disable=g-import-not-at-top,wrong-import-position

EOS = 1


def quickstart_examples(n, inputs_len, targets_len):
  """The first n quickstart_mixture training examples as (inputs, targets) int32 arrays."""
  import seqio  # pylint: disable=g-import-not-at-top
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  tasks.register_builtin_tasks()
  mixture = seqio.get_mixture_or_task("quickstart_mixture")
  ds = mixture.get_dataset({"inputs": inputs_len, "targets": targets_len}, split="train",
                           shuffle=True, seed=0, num_epochs=None, trim_output_features=True)
  return [(ex["inputs"].astype(np.int32), ex["targets"].astype(np.int32))
          for ex in ds.take(n).as_numpy_iterator()]


def superni_like_examples(n, inputs_len, targets_len, vocab=peers.VOCAB, seed=0):
  """n examples of random ids (3..vocab-1, then EOS) with SuperNI-like lengths (module doc)."""
  rng = np.random.RandomState(seed)
  li = np.clip(np.round(np.exp(rng.normal(np.log(250), 0.6, n))), 8, inputs_len).astype(int)
  lt = np.clip(np.round(np.exp(rng.normal(np.log(10), 0.9, n))), 1, targets_len).astype(int)
  make = lambda length: np.append(rng.randint(3, vocab, length - 1), EOS).astype(np.int32)
  return [(make(a), make(b)) for a, b in zip(li, lt)]


class T5xLite:
  """One pass of t5x_lite training over the examples: tf.data packing + the jitted step."""

  def __init__(self, config, params, examples, args):
    import jax  # pylint: disable=g-import-not-at-top
    from t5x_lite.model import encoder_decoder  # pylint: disable=g-import-not-at-top
    from t5x_lite.parallel import partitioning
    from t5x_lite.training import optimizers, trainer
    self.examples, self.args = examples, args
    self.model = encoder_decoder.EncoderDecoderModel(config, z_loss=0.0)
    self.trainer = trainer.Trainer(
        self.model, optimizers.adafactor(optimizers.constant_schedule(1e-3)),
        partitioning.Partitioner())
    self.dataset = self._dataset()
    start = time.perf_counter()
    batches = list(self._batches())  # the input pipeline alone, once, for the report
    self.pipeline_s = time.perf_counter() - start
    first = batches[0]
    self.state = self.trainer.state_from_params(
        jax.device_put(params), {k: v.shape for k, v in first.items()})
    self._to_device = lambda b: partitioning.host_local_batch_to_global(
        b, self.trainer.partitioner)
    # Compiles; twice, as the first state's layout may differ from the ones steps return.
    for _ in range(2):
      self.state, metrics = self.trainer.train_step(self.state, self._to_device(first))
      jax.block_until_ready(metrics)

  def _dataset(self):
    """The packed, batched tf.data pipeline of one pass (built once, iterated each pass)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    spec = tf.TensorSpec([None], tf.int32)
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": a, "targets": b} for a, b in self.examples),
        output_signature={"inputs": spec, "targets": spec})
    ds = self.model.feature_converter(pack=True)(
        ds, {"inputs": self.args.inputs, "targets": self.args.targets})
    return ds.batch(self.args.batch).prefetch(tf.data.AUTOTUNE)

  def _batches(self):
    """Packed numpy batches of one pass; the last one filled to --batch rows with padding."""
    for batch in self.dataset.as_numpy_iterator():
      rows = next(iter(batch.values())).shape[0]
      if rows < self.args.batch:
        batch = {k: np.pad(v, [(0, self.args.batch - rows), (0, 0)]) for k, v in batch.items()}
      yield batch

  def run_pass(self):
    """Trains on every example once; returns (stats, mean loss of the pass)."""
    import jax  # pylint: disable=g-import-not-at-top
    stats = PassStats(self.args.size)
    losses = []
    for batch in self._batches():
      self.state, metrics = self.trainer.train_step(self.state, self._to_device(batch))
      losses.append(metrics["loss"])
      stats.add_batch(np.sum(batch["encoder_segment_ids"] > 0),
                      np.sum(batch["decoder_loss_weights"] > 0),
                      batch["encoder_input_tokens"].shape, batch["decoder_target_tokens"].shape,
                      int(np.sum(np.max(batch["decoder_segment_ids"], axis=1))))
    jax.block_until_ready(losses)
    return stats, float(np.mean([float(x) for x in losses]))


class HF:
  """One pass of HF training: DataLoader + DataCollatorForSeq2Seq + Adafactor."""

  def __init__(self, hf_model, examples, args):
    import tokenizers  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
    self.torch, self.args = torch, args
    self.model = hf_model.train()
    # The collator pads input_ids with the tokenizer's pad id; ids are given, so a word-level
    # tokenizer with T5's special ids (pad 0, eos 1, unk 2) serves.
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel(
            {"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>")),
        pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    collator = transformers.DataCollatorForSeq2Seq(tokenizer, model=self.model,
                                                   label_pad_token_id=-100)
    features = [{"input_ids": a.tolist(), "labels": b.tolist()} for a, b in examples]
    self.loader = torch.utils.data.DataLoader(features, batch_size=args.hf_batch, shuffle=False,
                                              collate_fn=collator)
    self.optimizer = Adafactor(self.model.parameters(), lr=1e-3, scale_parameter=True,
                               relative_step=False, warmup_init=False, decay_rate=-0.8,
                               clip_threshold=1.0)
    self._step(next(iter(self.loader)))  # warm-up

  def _step(self, batch):
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.model(**batch).loss
    loss.backward()
    self.optimizer.step()
    return loss.detach()

  def run_pass(self):
    stats = PassStats(self.args.size)
    losses = []
    for batch in self.loader:
      losses.append(self._step(batch))
      stats.add_batch(int(batch["attention_mask"].sum()), int((batch["labels"] >= 0).sum()),
                      tuple(batch["input_ids"].shape), tuple(batch["labels"].shape),
                      batch["input_ids"].shape[0])
    return stats, float(self.torch.stack(losses).mean())


class PassStats:
  """Counts of one pass: real and total (padded) input and target slots, model FLOPs."""

  def __init__(self, size):
    self.size = size
    self.steps = self.examples = self.flops = 0
    self.inputs = self.targets = self.input_slots = self.target_slots = 0

  def add_batch(self, inputs, targets, input_shape, target_shape, examples):
    """Real token counts and the [rows, length] shapes of one batch's inputs and targets."""
    self.steps += 1
    self.examples += int(examples)
    self.inputs += int(inputs)
    self.targets += int(targets)
    self.input_slots += input_shape[0] * input_shape[1]
    self.target_slots += target_shape[0] * target_shape[1]
    # What the step computes: every slot, padding included (attention over whole rows).
    self.flops += 3 * input_shape[0] * peers.forward_flops(self.size, input_shape[1],
                                                           target_shape[1])

  def padding(self):
    return 1 - self.inputs / self.input_slots, 1 - self.targets / self.target_slots


def spread(values, fmt="{:.2f}"):
  """'median (min-max)' of values."""
  return (f"{fmt.format(statistics.median(values))} "
          f"({fmt.format(min(values))}-{fmt.format(max(values))})")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="superni_like", choices=["quickstart", "superni_like"])
  parser.add_argument("--examples", type=int, default=512)
  parser.add_argument("--size", default="tiny", choices=sorted(peers.SHAPES))
  parser.add_argument("--inputs", type=int, default=1024, help="packed row length (inputs)")
  parser.add_argument("--targets", type=int, default=128, help="packed row length (targets)")
  parser.add_argument("--batch", type=int, default=8, help="t5x_lite: packed rows per step")
  parser.add_argument("--hf_batch", type=int, default=8, help="HF: examples per step")
  parser.add_argument("--rounds", type=int, default=2, help="interleaved passes per library")
  parser.add_argument("--threads", type=int, choices=[0, 1], default=0,
                      help="0: XLA's default pool (one thread per usable CPU) and as many torch "
                      "threads; 1: one thread each (steadier on a machine shared with other "
                      "jobs, where torch's spinning pool slows down most)")
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  if args.threads == 1:
    # Read when the XLA backend starts (the first computation below), so set before it.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false")
  threads = args.threads or len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  t0 = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr,
                          flush=True)
  if args.data == "quickstart":
    examples = quickstart_examples(args.examples, args.inputs, args.targets)
  else:
    examples = superni_like_examples(args.examples, args.inputs, args.targets)
  if len(examples) != args.examples:
    raise ValueError(f"--data {args.data} gave {len(examples)} examples, not --examples "
                     f"{args.examples}")
  li = [len(a) for a, _ in examples]
  lt = [len(b) for _, b in examples]
  log(f"{len(examples)} examples; input lengths median {np.median(li):.0f}, p90 "
      f"{np.percentile(li, 90):.0f}, max {max(li)}; target lengths median {np.median(lt):.0f}, "
      f"p90 {np.percentile(lt, 90):.0f}, max {max(lt)}")
  hf_model, config, params = peers.build_hf_and_ours(args.size)
  systems = {"t5x_lite": T5xLite(config, params, examples, args)}
  log("t5x_lite compiled")
  systems["HF"] = HF(hf_model, examples, args)
  log("HF warmed up")

  times = {name: [] for name in systems}
  results = {}
  for r in range(args.rounds):
    for name, system in systems.items():
      start = time.perf_counter()
      stats, loss = system.run_pass()
      times[name].append(time.perf_counter() - start)
      results[name] = (stats, loss)
      log(f"round {r + 1}: {name} {times[name][-1]:.1f} s, {stats.steps} steps, "
          f"mean loss {loss:.3f}")
  for name, (stats, _) in results.items():
    if stats.examples != len(examples) or stats.targets != sum(lt) or stats.inputs != sum(li):
      raise AssertionError(f"{name} saw {stats.examples} examples, {stats.inputs} / "
                           f"{stats.targets} tokens, not {len(examples)}, {sum(li)} / {sum(lt)}")

  print(f"\n{args.data}: {len(examples)} examples ({sum(li)} input / {sum(lt)} target tokens), "
        f"{args.size}, vocab {peers.VOCAB}, float32; t5x_lite {args.batch} packed rows of "
        f"{args.inputs} / {args.targets}, HF {args.hf_batch} examples padded per batch; "
        f"threads per library: {threads} (torch.set_num_threads, XLA's pool), "
        f"{jax.devices()[0].device_kind}; {args.rounds} interleaved passes per library, "
        f"median (min-max) over passes\n")
  print("| system | steps per pass | wall s per pass | examples/s | target tok/s (non-pad) | "
        "input tok/s (non-pad) | padding: inputs / targets | model TFLOP per pass | "
        "mean loss, last pass |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for name, secs in times.items():
    stats, loss = results[name]
    pad_in, pad_tgt = stats.padding()
    print(f"| {name} | {stats.steps} | {spread(secs, '{:.1f}')} | "
          f"{spread([len(examples) / s for s in secs], '{:.1f}')} | "
          f"{spread([sum(lt) / s for s in secs], '{:.0f}')} | "
          f"{spread([sum(li) / s for s in secs], '{:.0f}')} | "
          f"{100 * pad_in:.1f}% / {100 * pad_tgt:.1f}% | {stats.flops / 1e12:.2f} | "
          f"{loss:.3f} |")
  print(f"\nt5x_lite's input pipeline alone (one pass of the tf.data packing, no training): "
        f"{systems['t5x_lite'].pipeline_s:.1f} s")
  print(f"t5x_lite / HF non-padding tokens per second (HF time / t5x_lite time, per round): "
        f"{peers.ratio_summary(times['t5x_lite'], times['HF'])}")


if __name__ == "__main__":
  main()
