"""gin/models/*.gin and t5x_lite.model.model_sizes: every model file builds, with HF's parameter count.

Counts come from shapes only: t5x_lite via jax.eval_shape, HF transformers via a model built
on the `meta` device, so XXL costs no memory.
"""

import dataclasses
import glob
import os

import gin
import pytest

import hf_utils
from t5x_lite.config import configurables, gin_utils
from t5x_lite.model import model_sizes, network

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
MODEL_FILES = sorted(os.path.relpath(p, GIN_DIR)
                     for p in glob.glob(os.path.join(GIN_DIR, "models", "**", "*.gin"),
                                        recursive=True))

# Shapes written out independently of model_sizes.py (from the google/t5-efficient-*,
# t5-*, google/t5-v1_1-* and google/flan-t5-* config.json files):
# d_model, d_ff, d_kv, num_heads, encoder layers, decoder layers.
EFFICIENT = {"tiny": (256, 1024, 64, 4, 4, 4), "mini": (384, 1536, 64, 8, 4, 4),
             "small": (512, 2048, 64, 8, 6, 6), "base": (768, 3072, 64, 12, 12, 12),
             "large": (1024, 4096, 64, 16, 24, 24), "xl": (1024, 16384, 128, 32, 24, 24),
             "xxl": (1024, 65536, 128, 128, 24, 24)}
T5_1_0 = {"small": EFFICIENT["small"], "base": EFFICIENT["base"], "large": EFFICIENT["large"],
          "3b": EFFICIENT["xl"], "11b": EFFICIENT["xxl"]}
T5_1_1 = {"tiny": EFFICIENT["tiny"], "small": (512, 1024, 64, 6, 8, 8),
          "base": (768, 2048, 64, 12, 12, 12), "large": (1024, 2816, 64, 16, 24, 24),
          "xl": (2048, 5120, 64, 32, 24, 24), "xxl": (4096, 10240, 64, 64, 24, 24)}
DEEP_NARROW = {"small_nl16": (512, 2048, 64, 8, 16, 16), "base_nl36": (768, 3072, 64, 12, 36, 36),
               "large_nl36": (1024, 4096, 64, 16, 36, 36), "xl_nl28": (1024, 16384, 128, 32, 28, 28)}
# (shape, feed_forward, tied, dropout) per file.
EXPECTED = {}
EXPECTED.update({f"models/{k}.gin": (v, "relu", True, 0.1) for k, v in EFFICIENT.items()})
EXPECTED.update({f"models/t5_1_0/{k}.gin": (v, "relu", True, 0.1) for k, v in T5_1_0.items()})
EXPECTED.update({f"models/t5_1_1/{k}.gin": (v, "gated-gelu", False, 0.0)
                 for k, v in T5_1_1.items()})
EXPECTED.update({f"models/flan_t5/{k}.gin": (v, "gated-gelu", False, 0.1)
                 for k, v in T5_1_1.items() if k != "tiny"})
EXPECTED.update({f"models/deep_narrow/{k}.gin": (v, "relu", True, 0.1)
                 for k, v in DEEP_NARROW.items()})
# Family files and the by-name variant file are included by the others, not used alone.
INCLUDED_ONLY = {"models/common.gin", "models/t5_1_0.gin", "models/t5_1_1.gin",
                 "models/deep_narrow/variant.gin"}

VARIANTS = {  # google/t5-efficient-* names -> the shape they must give
    "small-dl16": (512, 2048, 64, 8, 6, 16), "base-nl36": (768, 3072, 64, 12, 36, 36),
    "tiny-nl32": (256, 1024, 64, 4, 32, 32), "xl-nl8": (1024, 16384, 128, 32, 8, 8),
    "large-dm256": (256, 4096, 64, 16, 24, 24), "base-kv256": (768, 3072, 256, 12, 12, 12),
    "mini-nl24": (384, 1536, 64, 8, 24, 24), "small-el16-dl8": (512, 2048, 64, 8, 16, 8),
    "base-ff9000": (768, 9000, 64, 12, 12, 12), "large-nh2": (1024, 4096, 64, 2, 24, 24),
    "t5-efficient-small-el2": (512, 2048, 64, 8, 2, 6),
}


def _shape(config):
  return (config.d_model, config.d_ff, config.d_kv, config.num_heads, config.num_encoder_layers,
          config.num_decoder_layers)


def _config_from_gin(files, bindings=()):
  """The T5Config the files give with T5's 32k vocabulary (the size of the released models)."""
  gin.clear_config()
  try:
    gin_utils.parse(files, ["T5Config.vocab_size=32128"] + list(bindings))
    return configurables.T5Config()
  finally:
    gin.clear_config()


def _assert_counts_match_hf(config):
  # scan_layers gives the same tree sizes and traces one layer per stack: fast eval_shape.
  count = network.count_params(dataclasses.replace(config, scan_layers=True))
  assert count == hf_utils.hf_param_count(config)
  return count


def test_every_model_file_is_covered():
  assert set(MODEL_FILES) == set(EXPECTED) | INCLUDED_ONLY


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_model_file_builds_with_hf_param_count(path):
  config = _config_from_gin([os.path.join(GIN_DIR, path)])
  shape, feed_forward, tied, dropout = EXPECTED[path]
  assert (_shape(config), config.feed_forward, config.tie_word_embeddings,
          config.dropout_rate, config.vocab_size) == (shape, feed_forward, tied, dropout, 32128)
  count = _assert_counts_match_hf(config)
  # The header comment of each file states its parameter count.
  with open(os.path.join(GIN_DIR, path), encoding="utf-8") as f:
    assert f"{count:,} parameters" in f.read()


def test_t5_efficient_tiny_count():
  # google/t5-efficient-tiny's model card says "15.58 million parameters" (62.32 MB fp32).
  # The exact count of its shapes is 15,570,688 (15.57M) in both t5x_lite and transformers;
  # the card's figure is ~9K higher, which no part of the architecture accounts for.
  config = _config_from_gin([os.path.join(GIN_DIR, "models/tiny.gin")])
  assert network.count_params(config) == 15_570_688 == hf_utils.hf_param_count(config)
  assert network.count_params(dataclasses.replace(config, scan_layers=True)) == 15_570_688


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_by_name(variant):
  config = _config_from_gin([os.path.join(GIN_DIR, "models/deep_narrow/variant.gin")],
                            [f"T5_EFFICIENT_VARIANT = '{variant}'"])
  assert _shape(config) == VARIANTS[variant]
  assert (config.feed_forward, config.tie_word_embeddings) == ("relu", True)
  assert config == model_sizes.efficient_config(variant)
  _assert_counts_match_hf(config)


def test_later_bindings_override_a_variant():
  config = _config_from_gin(
      [os.path.join(GIN_DIR, "models/deep_narrow/variant.gin")],
      ["T5_EFFICIENT_VARIANT = 'small-dl16'", "T5Config.num_heads = 4",
       "T5Config.dtype = 'bfloat16'"])
  assert _shape(config) == (512, 2048, 64, 4, 6, 16) and config.dtype == "bfloat16"


def test_gpu_hardware_file_keeps_the_model_and_sets_the_tuned_kernel():
  config = _config_from_gin([os.path.join(GIN_DIR, "models/t5_1_1/base.gin"),
                             os.path.join(GIN_DIR, "hardware/gpu.gin")])
  assert _shape(config) == T5_1_1["base"]
  assert (config.attention_impl, config.attention_block_q, config.attention_block_k,
          config.attention_dropout, config.dtype) == ("pallas", 64, 64, 0.0, "bfloat16")


@pytest.mark.parametrize("bad,message", [
    ("huge-nl4", "base size 'huge'"), ("small-xx4", "suffix 'xx4'"), ("small-nl", "suffix 'nl'"),
    ("small-nl4-el2", "twice"), ("base-dm0", "suffix 'dm0'")])
def test_unknown_variant_lists_valid_names(bad, message):
  with pytest.raises(ValueError, match=message) as error:
    model_sizes.efficient_shape(bad)
  assert "valid suffixes: nl<N>, el<N>, dl<N>, dm<N>, ff<N>, kv<N>, nh<N>" in str(error.value)
  with pytest.raises(ValueError, match=message):  # the same error through gin
    _config_from_gin([os.path.join(GIN_DIR, "models/deep_narrow/variant.gin")],
                     [f"T5_EFFICIENT_VARIANT = '{bad}'"])
