"""Shared helpers for the HF transformers parity tests: tiny random HF T5 models and batches.

transformers 5.x facts these helpers encode:
  - T5Config needs decoder_start_token_id / pad_token_id / eos_token_id set explicitly.
  - T5Config(tie_word_embeddings=False) turns off the d_model**-0.5 output scaling but still
    forces tie_word_embeddings=True; setting the attribute to False after construction gives
    the untied v1.1 layout, where encoder/decoder.embed_tokens are then *separate* modules
    too, so we point them back at `shared` (as in every real v1.1 / Flan-T5 checkpoint).
"""

import numpy as np
import torch
import transformers


def hf_config(config):
  """A transformers T5Config with the shapes and family of a t5x_lite T5Config."""
  tied = config.tie_word_embeddings
  cfg = transformers.T5Config(
      vocab_size=config.vocab_size, d_model=config.d_model, d_ff=config.d_ff, d_kv=config.d_kv,
      num_heads=config.num_heads, num_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers, feed_forward_proj=config.feed_forward,
      tie_word_embeddings=tied, dropout_rate=config.dropout_rate,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  cfg.tie_word_embeddings = tied
  return cfg


def hf_model(config, seed=0):
  """Random-weight float32 T5ForConditionalGeneration in eval mode (all weights perturbed).

  Layer norm weights (1.0 at init) get noise too, so a mixed-up norm mapping shows.
  """
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(hf_config(config))
  if not config.tie_word_embeddings:
    model.encoder.embed_tokens = model.shared
    model.decoder.embed_tokens = model.shared
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.add_(0.2 * torch.randn_like(p))
      elif "relative_attention_bias" in name:
        p.normal_(0.0, 1.0)
  return model.eval()


def hf_param_count(config):
  """HF's parameter count for config, built on the meta device (no memory even for XXL)."""
  with torch.device("meta"):
    model = transformers.T5ForConditionalGeneration(hf_config(config))
  if not config.tie_word_embeddings:
    model.encoder.embed_tokens = model.shared
    model.decoder.embed_tokens = model.shared
  return sum(p.numel() for p in model.parameters())  # parameters() skips tied duplicates


def random_batch(config, batch=3, enc_len=11, dec_len=7, seed=0):
  """Tokens with trailing padding of varied lengths (row 0 unpadded); ids 2.. avoid pad/eos.

  Returns encoder_input_tokens, decoder_input_tokens (targets shifted right, start id 0),
  decoder_target_tokens; int32 numpy [batch, length].
  """
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, config.vocab_size, (batch, enc_len)).astype(np.int32)
  tgt = rng.integers(2, config.vocab_size, (batch, dec_len)).astype(np.int32)
  for row in range(1, batch):
    enc[row, enc_len - 2 * row:] = 0
    tgt[row, dec_len - row - 1:] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec_in, tgt


def hf_logits(model, enc, dec_in, tgt):
  """HF logits [batch, dec_len, vocab] with encoder and decoder padding masks.

  In the model's dtype (float32, float64), a half-precision model's as float32 (numpy has
  no bfloat16)."""
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(enc).long(),
                attention_mask=torch.from_numpy((enc > 0).astype(np.int64)),
                decoder_input_ids=torch.from_numpy(dec_in).long(),
                decoder_attention_mask=torch.from_numpy((tgt > 0).astype(np.int64)))
  logits = out.logits
  if logits.dtype in (torch.bfloat16, torch.float16):
    logits = logits.float()
  return logits.numpy()
