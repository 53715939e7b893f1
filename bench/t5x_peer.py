"""google-research/t5x itself as a benchmark peer: its example T5 network, Trainer and decoding.

Not a project dependency: t5x is not on PyPI and two of its dependencies must come from source
too, so it lives in a scratch environment (`bench/scaling.py --t5x_python ENV/bin/python` and
`bench/decode.py --t5x_python ENV/bin/python` then run their t5x worker there). The
environment the bench tables were measured with (Python 3.11; the commits are the
repositories' heads of 2026-12-04):

  python3.11 -m venv t5x_env && . t5x_env/bin/activate
  pip install "jax[cpu]==0.10.2"          # the same XLA as t5x_lite's measurements
  git clone https://github.com/google-research/t5x && git -C t5x checkout cc342d419ec3
  git clone https://github.com/google/flaxformer && git -C flaxformer checkout 399ea3a85e98
  git clone https://github.com/google/airio && git -C airio checkout 69897df7     # not on PyPI
  git clone https://github.com/google-research/jestimator && git -C jestimator checkout 326824a4
  #   (jestimator 0.3.3 on PyPI imports PartitionSpec from jax.experimental.pjit: gone)
  pip install --no-deps -e t5x -e flaxformer -e airio -e jestimator
  pip install flax optax orbax-checkpoint seqio clu tensorflow-cpu tensorstore aqtp fiddle \
      chex grain==0.2.12 tensorboard gin-config "jax[cpu]==0.10.2"

Training (bench/scaling.py --t5x_python). What is timed: the trainer's partitioned train step
(`Trainer._partitioned_train_step`, the jitted function `Trainer.train` calls once per batch),
without the host-side metrics `Trainer.train` adds around it. Settings as t5x's T5.1.1 gin
files: Adafactor(decay_rate=0.8, step_offset=0) with t5x's factoring rules, z-loss 1e-4,
constant learning rate 1e-3, dropout 0; the weights are t5x's own random initialisation
(throughput does not depend on them).

Decoding (bench/decode.py --t5x_python; this file is then the worker's script). What is timed:
jitted `EncoderDecoderModel.predict_batch_with_aux` (encoder, cache set-up and t5x's decoding
loop), greedy as `decoding.temperature_sample` at temperature 0, beams as `decoding.beam_search`
(its brevity penalty, alpha 0.6). The weights are the ones the parent gives t5x_lite and HF
(an .npz of t5x_lite's parameter tree, which names parameters as t5x's example network does;
kernels are reshaped to t5x's 2-D ones), so the tokens can be compared too.
"""

import argparse
import os
import sys

import numpy as np


def _network_config(shape):
  """t5x.examples.t5.network.T5Config of a bench/peers.py SHAPES entry, float32, no dropout."""
  from t5x.examples.t5 import network  # pylint: disable=g-import-not-at-top
  import peers  # pylint: disable=g-import-not-at-top
  gated = shape["feed_forward_proj"] == "gated-gelu"
  return network.T5Config(
      vocab_size=peers.VOCAB, dtype="float32", emb_dim=shape["d_model"],
      num_heads=shape["num_heads"], num_encoder_layers=shape["num_layers"],
      num_decoder_layers=shape["num_layers"], head_dim=shape["d_kv"], mlp_dim=shape["d_ff"],
      mlp_activations=("gelu", "linear") if gated else ("relu",), dropout_rate=0.0,
      logits_via_embedding=not gated)


def build_step(shape, batch):
  """(step, wait) for one t5x train step on `batch` (a t5x_lite/peers.random_batch dict).

  shape: a bench/peers.py SHAPES entry (relu = tied T5-efficient, gated-gelu = untied v1.1).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from t5x import adafactor, models, partitioning, utils  # pylint: disable=g-import-not-at-top
  from t5x import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from t5x.examples.t5 import network  # pylint: disable=g-import-not-at-top
  import peers  # pylint: disable=g-import-not-at-top
  vocab = seqio.PassThroughVocabulary(size=peers.VOCAB)
  model = models.EncoderDecoderModel(
      module=network.Transformer(config=_network_config(shape)), input_vocabulary=vocab,
      output_vocabulary=vocab, z_loss=1e-4,
      optimizer_def=adafactor.Adafactor(
          decay_rate=0.8, step_offset=0,
          logical_factor_rules=adafactor.standard_logical_factor_rules()))
  shapes = {k: v.shape for k, v in batch.items()}
  partitioner = partitioning.PjitPartitioner(num_partitions=1)
  initializer = utils.TrainStateInitializer(
      optimizer_def=model.optimizer_def, init_fn=model.get_initial_variables,
      input_shapes=shapes, input_types={k: np.int32 for k in shapes}, partitioner=partitioner)
  trainer = trainer_lib.Trainer(
      model=model, train_state=initializer.from_scratch(jax.random.PRNGKey(0)),
      partitioner=partitioner, eval_names=[], summary_dir=None,
      train_state_axes=initializer.train_state_axes, rng=jax.random.PRNGKey(1),
      learning_rate_fn=utils.create_learning_rate_scheduler(
          factors="constant", base_learning_rate=1e-3),
      num_microbatches=None)
  train_step = trainer._partitioned_train_step  # pylint: disable=protected-access
  device_batch = jax.device_put(batch)
  holder = {"state": trainer.train_state, "metrics": None}

  def step():
    holder["state"], holder["metrics"] = train_step(holder["state"], device_batch)

  def wait():
    jax.block_until_ready(holder["state"])
    return float(holder["metrics"]["loss"].compute())
  return step, wait


def load_params(model, path, input_len, decode_len):
  """t5x parameters from an .npz of '/'-joined t5x_lite parameter paths (checked name by name)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  shapes = {"encoder_input_tokens": (1, input_len), "decoder_input_tokens": (1, decode_len)}
  abstract = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), shapes, {k: jnp.int32 for k in shapes}))["params"]
  wanted = {"/".join(k.key for k in keys): leaf
            for keys, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  given = dict(np.load(path))
  if set(given) != set(wanted):
    raise ValueError(f"parameter names differ: only in t5x {sorted(set(wanted) - set(given))}, "
                     f"only in the file {sorted(set(given) - set(wanted))}")
  flat = [given[name].reshape(wanted[name].shape) for name in wanted]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), flat)


def build_decode(shape, params_path, inputs, method, max_new_tokens, num_beams):
  """(run, tokens): run() decodes `inputs` ([batch, length] int32) once and waits; tokens()
  is the last run's [batch, max_new_tokens] output (zeros after EOS)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from t5x import decoding, models  # pylint: disable=g-import-not-at-top
  from t5x.examples.t5 import network  # pylint: disable=g-import-not-at-top
  import peers  # pylint: disable=g-import-not-at-top
  vocab = seqio.PassThroughVocabulary(size=peers.VOCAB)
  greedy = method == "greedy"
  model = models.EncoderDecoderModel(
      module=network.Transformer(config=_network_config(shape)), input_vocabulary=vocab,
      output_vocabulary=vocab, optimizer_def=None,
      decode_fn=decoding.temperature_sample if greedy else decoding.beam_search)
  params = jax.device_put(load_params(model, params_path, inputs.shape[1], max_new_tokens))
  batch = {"encoder_input_tokens": jnp.asarray(inputs),
           "decoder_input_tokens": jnp.zeros((inputs.shape[0], max_new_tokens), jnp.int32)}

  @jax.jit
  def predict(params, batch):
    decoder_params = {"temperature": 0.0} if greedy else {"alpha": 0.6}
    return model.predict_batch_with_aux(params, batch, decoder_params=decoder_params,
                                        num_decodes=1 if greedy else num_beams)[0]
  holder = {}

  def run():
    holder["tokens"] = jax.block_until_ready(predict(params, batch))
  return run, lambda: np.asarray(holder["tokens"])


def decode_worker():
  """bench/decode.py's t5x worker: builds, saves the first run's tokens, serves timed runs."""
  parser = argparse.ArgumentParser()
  for flag in ("--size", "--params", "--inputs", "--method", "--tokens_out"):
    parser.add_argument(flag, required=True)
  parser.add_argument("--max_new_tokens", type=int, required=True)
  parser.add_argument("--num_beams", type=int, default=4)
  args = parser.parse_args()
  import peers  # pylint: disable=g-import-not-at-top
  run, tokens = build_decode(peers.SHAPES[args.size], args.params, np.load(args.inputs),
                             args.method, args.max_new_tokens, args.num_beams)
  run()  # compiles
  np.save(args.tokens_out, tokens())
  peers.serve(run, lambda: 0.0)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/: peers
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # t5x_lite
  decode_worker()
