"""T5-efficient model shapes (Scale Efficiently, arXiv 2109.10686) and their deep-narrow variants.

A variant name is a base size followed by dash-separated changes, exactly as the
google/t5-efficient-* checkpoints are named: `small-dl16`, `base-nl36`, `small-el16-dl8`,
`large-dm256`, `base-kv256`, ... (an optional `t5-efficient-` prefix is accepted).

How gin uses this (the one mechanism: model gin files bind `T5Config.*`):
gin/models/deep_narrow/variant.gin binds every shape field of T5Config to
`@efficient_field()` evaluated for the macro T5_EFFICIENT_VARIANT, so

  include 'models/deep_narrow/variant.gin'
  T5_EFFICIENT_VARIANT = 'small-dl16'

selects a variant, and any later `T5Config.x = ...` binding still overrides a field.
"""

import re

from t5x_lite.model import network

# name -> (d_model, d_ff, d_kv, num_heads, num_layers per stack); vocab 32128, relu, tied
# (v1.0-style), as in the google/t5-efficient-* config.json files.
EFFICIENT_SIZES = {
  "tiny": (256, 1024, 64, 4, 4),
  "mini": (384, 1536, 64, 8, 4),
  "small": (512, 2048, 64, 8, 6),
  "base": (768, 3072, 64, 12, 12),
  "large": (1024, 4096, 64, 16, 24),
  "xl": (1024, 16384, 128, 32, 24),
  "xxl": (1024, 65536, 128, 128, 24),
}

# Variant suffix -> the T5Config field(s) it sets.
SUFFIXES = {
  "nl": ("num_encoder_layers", "num_decoder_layers"),
  "el": ("num_encoder_layers",),
  "dl": ("num_decoder_layers",),
  "dm": ("d_model",),
  "ff": ("d_ff",),
  "kv": ("d_kv",),
  "nh": ("num_heads",),
}


def efficient_shape(variant: str) -> dict:
  """The T5Config shape fields of a T5-efficient variant name, e.g. 'small-el16-dl8'.

  Raises:
      ValueError: unknown base size, malformed or unknown suffix, or a field set twice; the
    message lists the valid sizes and suffixes.
  """
  name = variant.strip().lower()
  name = name[len("t5-efficient-"):] if name.startswith("t5-efficient-") else name
  size, *changes = name.split("-")
  help_text = (f"valid sizes: {sorted(EFFICIENT_SIZES)}; valid suffixes: "
               f"{', '.join(f'{s}<N>' for s in SUFFIXES)} (e.g. 'small-dl16', 'base-nl36', "
               "'small-el16-dl8'); gin: T5_EFFICIENT_VARIANT")
  if size not in EFFICIENT_SIZES:
    raise ValueError(f"Unknown T5-efficient variant {variant!r}: base size {size!r}; "
                     f"{help_text}.")
  d_model, d_ff, d_kv, num_heads, num_layers = EFFICIENT_SIZES[size]
  shape = dict(vocab_size=32128, d_model=d_model, d_ff=d_ff, d_kv=d_kv, num_heads=num_heads,
               num_encoder_layers=num_layers, num_decoder_layers=num_layers,
               feed_forward="relu", tie_word_embeddings=True)
  seen = set()
  for change in changes:
    match = re.fullmatch(r"([a-z]+)(\d+)", change)
    if not match or match.group(1) not in SUFFIXES or int(match.group(2)) <= 0:
      raise ValueError(f"Unknown T5-efficient variant {variant!r}: suffix {change!r}; "
                       f"{help_text}.")
    fields = SUFFIXES[match.group(1)]
    if seen & set(fields):
      raise ValueError(f"T5-efficient variant {variant!r} sets {sorted(seen & set(fields))} "
                       f"twice; {help_text}.")
    seen.update(fields)
    for field in fields:
      shape[field] = int(match.group(2))
  return shape


def efficient_field(name: str, variant: str):
  """One T5Config field (`name`) of T5-efficient `variant`; what variant.gin binds to.

  Args:
      name: a T5Config shape field (see SHAPE_FIELDS).
      variant: variant name, e.g. 'small-dl16' (gin macro T5_EFFICIENT_VARIANT).
  """
  return efficient_shape(variant)[name]


def efficient_config(variant: str, **overrides) -> network.T5Config:
  """T5Config of a T5-efficient variant (v1.0 family: relu, tied embeddings, dropout 0.1).

  Args:
      variant: e.g. 'tiny', 'small-dl16', 'base-nl36', 'small-el16-dl8'.
      **overrides: other T5Config fields (dtype, scan_layers, dropout_rate, ...).
  """
  fields = dict(dropout_rate=0.1)
  fields.update(efficient_shape(variant))
  fields.update(overrides)
  return network.T5Config(**fields)
