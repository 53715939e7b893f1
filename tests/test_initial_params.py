"""initial_params: a model's INITIAL_CHECKPOINT_PATH parameters from a HF transformers directory
(the encoder-decoder: all of them; a head: the encoder) and the optimizer-state rule."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from t5x_lite.interop import hf_checkpoint
from t5x_lite.interop import initial_params
from t5x_lite.model import heads, encoder_decoder, network
from t5x_lite.parallel import partitioning


CONFIG = network.T5Config(vocab_size=128, d_model=16, d_ff=32, d_kv=4, num_heads=2,
                          num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)


def _params(model, seed):
  """Seeded random params of the model's shapes, in the partitioner's shardings (no compile)."""
  boxed = jax.eval_shape(lambda r: model.init(r, model.dummy_input_shapes()),
                         jax.random.PRNGKey(0))
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda a, sharding: jax.device_put(rng.randn(*a.shape).astype(a.dtype), sharding),
      nn.unbox(boxed), partitioning.Partitioner().param_shardings(boxed))


def test_encoder_decoder_and_head_start_from_a_hf_directory(tmp_path):
  model = encoder_decoder.EncoderDecoderModel(CONFIG)
  saved = jax.device_get(_params(model, seed=1))
  hf_checkpoint.save_hf_checkpoint(saved, model.config, str(tmp_path / "hf"))
  fresh = _params(model, seed=2)
  loaded = initial_params.load(model, str(tmp_path / "hf"), fresh)
  # float32 through safetensors and back: every parameter exactly.
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: np.array_equal(np.asarray(a), b), loaded, saved))
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: a.sharding == b.sharding, loaded, fresh))

  head = heads.SequenceClassificationModel(model.config)
  head_fresh = _params(head, seed=2)
  head_loaded = initial_params.load(head, str(tmp_path / "hf"), head_fresh)
  assert sorted(head_loaded) == ["classifier", "encoder", "token_embedder"]
  for name in ("token_embedder", "encoder"):
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: np.array_equal(np.asarray(a), b), head_loaded[name], saved[name]))
  np.testing.assert_array_equal(head_loaded["classifier"]["kernel"],
                                head_fresh["classifier"]["kernel"])


def test_shape_mismatch_and_optimizer_state_are_refused(tmp_path):
  model = encoder_decoder.EncoderDecoderModel(CONFIG)
  hf_checkpoint.save_hf_checkpoint(jax.device_get(_params(model, seed=1)), model.config,
                             str(tmp_path / "hf"))
  wider = encoder_decoder.EncoderDecoderModel(dataclasses.replace(CONFIG, d_ff=24))
  with pytest.raises(ValueError, match=r"encoder/layers_0/mlp/wi/kernel: checkpoint "
                                       r"\(16, 32\) vs model \(16, 24\)"):
    initial_params.load(wider, str(tmp_path / "hf"), _params(wider, seed=0))
  assert initial_params.restores_optimizer_state(model, str(tmp_path / "hf")) == (
      f"{tmp_path / 'hf'} is a HF transformers directory, which holds no optimizer state")
  assert initial_params.restores_optimizer_state(model, str(tmp_path / "run")) is None
  assert initial_params.restores_optimizer_state(
      heads.QuestionAnsweringModel(model.config), str(tmp_path / "run")) == (
          "QuestionAnsweringModel starts from the token_embedder/encoder parameters of "
          "INITIAL_CHECKPOINT_PATH with a fresh optimizer")
