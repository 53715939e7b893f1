"""The benchmarks' HF peer (bench/peers.py) is the same model as t5x_lite's, in both families.

The speed tables compare t5x_lite with HF transformers on weights converted from the HF model;
that comparison only means something if both compute the same function. Checked here against
HF's own forward pass (a small vocabulary keeps it quick; the shapes are the benchmarks').
"""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import peers  # pylint: disable=g-import-not-at-top,wrong-import-position
from t5x_lite.model import network  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("name", ["tiny", "t5_1_1_small"])
def test_hf_peer_computes_t5x_lite_logits(name):
  vocab = 256
  hf, config, params = peers.build_hf_and_ours(name, vocab=vocab)
  assert config.tie_word_embeddings == (name == "tiny")
  batch = peers.random_batch(2, 48, 12, vocab=vocab)
  with torch.no_grad():
    hf_logits = hf(input_ids=torch.from_numpy(batch["encoder_input_tokens"]).long(),
                   decoder_input_ids=torch.from_numpy(batch["decoder_input_tokens"]).long()
                   ).logits.numpy()
  logits = network.Transformer(config).apply(
      {"params": params}, jnp.asarray(batch["encoder_input_tokens"]),
      jnp.asarray(batch["decoder_input_tokens"]), jnp.asarray(batch["decoder_target_tokens"]))
  # v1.1 (untied) logits are not scaled by d_model**-0.5: a peer that scaled them (HF's
  # default when the config is built without tie_word_embeddings=False) is off by ~22x here.
  scale = np.abs(hf_logits).max()
  np.testing.assert_allclose(np.asarray(logits), hf_logits, atol=2e-5 * max(scale, 1.0))
