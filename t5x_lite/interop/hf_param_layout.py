"""HF transformers T5 parameter names and layouts <-> the t5x_lite parameter tree.

A HF T5 state dict (key -> array) maps to t5x_lite params and back, with every key and shape
checked against a T5Config; the config.json dict maps to that T5Config and back. Reading and
writing directories is hf_checkpoint.py's.

`params` is the t5x_lite parameter tree without the outer "params" collection key
(`model.apply({"params": params}, ...)`): token_embedder / encoder / decoder, per-layer
(`layers_{i}`) or stacked (`layers`, scan_layers=True) as `config.scan_layers` says.

Layout correspondence (torch Linear weights are [out, in]; t5x_lite kernels are [in, out]):
  shared.weight [vocab, d_model]                  token_embedder/embedding
  {enc,dec}.block.0...relative_attention_bias     {enc,dec}/relpos_bias/rel_embedding (transposed)
  *.SelfAttention.q/k/v.weight [H*D, d_model]     .../query|key|value/kernel [d_model, H, D]
  *.SelfAttention.o.weight [d_model, H*D]         .../out/kernel [H, D, d_model]
  *.DenseReluDense.wi|wi_0|wi_1|wo.weight         .../mlp/wi|wi_0|wi_1|wo/kernel (transposed)
  lm_head.weight [vocab, d_model] (untied only)   decoder/logits_dense/kernel [d_model, vocab]
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
from flax import traverse_util
import numpy as np

from t5x_lite.model import network

# Keys HF itself ignores on load: old checkpoints carry a never-used relative bias table in
# the first decoder block's cross-attention.
_IGNORED_HF_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
# Aliases of shared.weight that HF checkpoints may contain; accepted when equal to it.
_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

_ATTENTION = {"q": "query", "k": "key", "v": "value", "o": "out"}


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> network.T5Config:
  """T5Config from an HF T5 config.json dict (extra keyword arguments override fields).

  Untied (v1.1 / Flan-T5) is recognised from `tie_word_embeddings: false` or, for configs
  re-saved by transformers 5.x (which forces tie_word_embeddings to True), from
  `scale_decoder_outputs: false`.
  """
  if hf_config.get("model_type", "t5") != "t5":
    raise ValueError(f"config.json has model_type {hf_config.get('model_type')!r}; only 't5' "
                     "checkpoints convert.")
  proj = hf_config.get("feed_forward_proj", "relu")
  if proj not in network.FEED_FORWARDS:
    raise ValueError(f"config.json feed_forward_proj={proj!r} is not supported; t5x_lite has "
                     f"{network.FEED_FORWARDS}.")
  tied = (hf_config.get("tie_word_embeddings", True) is not False
          and hf_config.get("scale_decoder_outputs", True) is not False)
  num_layers = hf_config.get("num_layers", 6)
  num_decoder_layers = hf_config.get("num_decoder_layers")
  fields = dict(
      vocab_size=hf_config.get("vocab_size", 32128),
      d_model=hf_config.get("d_model", 512),
      d_ff=hf_config.get("d_ff", 2048),
      d_kv=hf_config.get("d_kv", 64),
      num_heads=hf_config.get("num_heads", 8),
      num_encoder_layers=num_layers,
      num_decoder_layers=num_layers if num_decoder_layers is None else num_decoder_layers,
      feed_forward=proj,
      tie_word_embeddings=tied,
      dropout_rate=hf_config.get("dropout_rate", 0.1),
      relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf_config.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-6),
  )
  fields.update(overrides)
  return network.T5Config(**fields)


def hf_config_dict(config: network.T5Config) -> dict:
  """The config.json dict that transformers (4.x and 5.x) reads back as the same T5."""
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "d_ff": config.d_ff,
      "d_kv": config.d_kv,
      "num_heads": config.num_heads,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "feed_forward_proj": config.feed_forward,
      # What transformers derives from feed_forward_proj, written out for readers.
      "dense_act_fn": "gelu_new" if config.feed_forward == "gated-gelu" else "relu",
      "is_gated_act": config.feed_forward == "gated-gelu",
      "tie_word_embeddings": config.tie_word_embeddings,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_factor": 1.0,
      "is_encoder_decoder": True,
      "use_cache": True,
      # transformers 5.x needs these explicitly (T5: decoding starts with the pad id 0).
      "decoder_start_token_id": 0,
      "pad_token_id": 0,
      "eos_token_id": 1,
  }


def _layer_keys(stack: str, i: int, feed_forward: str):
  """(hf key, t5x_lite path within the layer, kind) for layer i of 'encoder' or 'decoder'."""
  prefix = f"{stack}.block.{i}.layer"
  if stack == "encoder":
    sublayers = [("0", "SelfAttention", "attention", "pre_attention_layer_norm")]
    mlp_index = "1"
  else:
    sublayers = [("0", "SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                 ("1", "EncDecAttention", "encoder_decoder_attention",
                  "pre_cross_attention_layer_norm")]
    mlp_index = "2"
  keys = []
  for idx, hf_name, name, norm in sublayers:
    keys.append((f"{prefix}.{idx}.layer_norm.weight", (norm, "scale"), "norm"))
    for hf_proj, proj in _ATTENTION.items():
      kind = "out" if hf_proj == "o" else "qkv"
      keys.append((f"{prefix}.{idx}.{hf_name}.{hf_proj}.weight", (name, proj, "kernel"), kind))
  keys.append((f"{prefix}.{mlp_index}.layer_norm.weight", ("pre_mlp_layer_norm", "scale"), "norm"))
  wis = ("wi",) if feed_forward == "relu" else ("wi_0", "wi_1")
  for w in wis + ("wo",):
    keys.append((f"{prefix}.{mlp_index}.DenseReluDense.{w}.weight", ("mlp", w, "kernel"),
                 "linear"))
  return keys


def _stacks(config: network.T5Config, encoder_only: bool = False):
  """(name, depth, final norm) of the stacks a model has: T5EncoderModel has no decoder."""
  stacks = [("encoder", config.num_encoder_layers, "encoder_norm")]
  if not encoder_only:
    stacks.append(("decoder", config.num_decoder_layers, "decoder_norm"))
  return stacks


def _key_table(config: network.T5Config, encoder_only: bool = False):
  """Every HF key of `config` -> (t5x_lite path in the per-layer layout, kind)."""
  table = {"shared.weight": (("token_embedder", "embedding"), "embed")}
  for stack, depth, norm in _stacks(config, encoder_only):
    # One table per stack, stored in the first block's self-attention (as HF does).
    table[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        (stack, "relpos_bias", "rel_embedding"), "relpos")
    for i in range(depth):
      for hf_key, path, kind in _layer_keys(stack, i, config.feed_forward):
        table[hf_key] = ((stack, f"layers_{i}") + path, kind)
    table[f"{stack}.final_layer_norm.weight"] = ((stack, norm, "scale"), "norm")
  if not config.tie_word_embeddings and not encoder_only:
    table["lm_head.weight"] = (("decoder", "logits_dense", "kernel"), "linear")
  return table


def _hf_shape(kind, config, t5x_shape):
  """The HF tensor shape corresponding to a t5x_lite kernel shape."""
  if kind in ("norm", "embed"):
    return t5x_shape
  if kind == "qkv":  # [d_model, H, D] -> [H*D, d_model]
    return (t5x_shape[1] * t5x_shape[2], t5x_shape[0])
  if kind == "out":  # [H, D, d_model] -> [d_model, H*D]
    return (t5x_shape[2], t5x_shape[0] * t5x_shape[1])
  return tuple(reversed(t5x_shape))  # linear / relpos: transposed


def _expected_t5x_shapes(config):
  """Per-layer t5x_lite parameter shapes of `config` (no scan), from jax.eval_shape."""
  shapes = nn.unbox(network._param_shapes(  # pylint: disable=protected-access
      dataclasses.replace(config, scan_layers=False)))
  return {path: tuple(leaf.shape) for path, leaf in _flatten(shapes).items()}


_flatten = traverse_util.flatten_dict  # nested dict -> {path tuple: leaf}
_unflatten = traverse_util.unflatten_dict


def _to_t5x(kind, w, t5x_shape):
  if kind in ("norm", "embed"):
    return w
  return np.ascontiguousarray(w.T).reshape(t5x_shape)  # qkv / out / linear / relpos


def _to_hf(kind, w):
  if kind in ("norm", "embed"):
    return w
  if kind == "qkv":  # [d_model, H, D] -> [H*D, d_model]
    w = w.reshape(w.shape[0], -1)
  elif kind == "out":  # [H, D, d_model] -> [d_model, H*D]
    w = w.reshape(-1, w.shape[-1])
  return np.ascontiguousarray(w.T)


def stack_layers(params: Mapping[str, Any], config: network.T5Config) -> dict:
  """Per-layer params (`layers_{i}`) -> the scan_layers layout (`layers`, leading layer axis)."""
  params = {k: dict(v) if isinstance(v, Mapping) else v for k, v in params.items()}
  for stack, depth, _ in _stacks(config, encoder_only="decoder" not in params):
    per_layer = [_flatten(params[stack].pop(f"layers_{i}")) for i in range(depth)]
    params[stack]["layers"] = _unflatten(
        {path: np.stack([np.asarray(layer[path]) for layer in per_layer])
         for path in per_layer[0]})
  return params


def unstack_layers(params: Mapping[str, Any], config: network.T5Config) -> dict:
  """The scan_layers layout (`layers`, leading layer axis) -> per-layer params (`layers_{i}`)."""
  params = {k: dict(v) if isinstance(v, Mapping) else v for k, v in params.items()}
  for stack, depth, _ in _stacks(config, encoder_only="decoder" not in params):
    stacked = _flatten(params[stack].pop("layers"))
    for i in range(depth):
      params[stack][f"layers_{i}"] = _unflatten(
          {path: np.asarray(value)[i] for path, value in stacked.items()})
  return params


def params_from_hf_state_dict(state_dict: Mapping[str, Any], config: network.T5Config,
                              encoder_only: bool = False) -> dict:
  """t5x_lite params (layout per config.scan_layers, dtype config.param_dtype, numpy) from HF.

  Args:
    state_dict: HF key -> array (numpy, or torch tensors: converted via .float().numpy()).
    config: the T5Config the checkpoint must match.
    encoder_only: a T5EncoderModel's keys (shared + encoder): params without a decoder.

  Raises:
    ValueError: on a missing or unknown key, a tensor whose shape differs from what `config`
      implies (the message names the key, the expected and the found shape), or an embedding
      alias (encoder/decoder.embed_tokens, a tied lm_head) that differs from shared.weight.
  """
  arrays = {key: as_numpy(value) for key, value in state_dict.items()}
  table = _key_table(config, encoder_only)
  t5x_shapes = _expected_t5x_shapes(config)
  tied_head = config.tie_word_embeddings and not encoder_only
  aliases = list(_EMBEDDING_ALIASES) + (["lm_head.weight"] if tied_head else [])
  unknown = sorted(k for k in arrays if k not in table and k not in aliases
                   and k not in _IGNORED_HF_KEYS)
  if unknown:
    raise ValueError(f"Unknown key(s) in the HF state dict for this T5Config: {unknown[:10]}"
                     f"{' ...' if len(unknown) > 10 else ''} (check num_layers / "
                     "feed_forward_proj / tie_word_embeddings in config.json).")
  missing = sorted(k for k in table if k not in arrays)
  if missing:
    path, kind = table[missing[0]]
    raise ValueError(f"Missing key(s) in the HF state dict: {missing[:10]}"
                     f"{' ...' if len(missing) > 10 else ''}; expected shape of {missing[0]} "
                     f"from the config: {_hf_shape(kind, config, t5x_shapes[path])}.")
  dtype = config.parameter_dtype
  flat = {}
  for key, (path, kind) in table.items():
    expected = _hf_shape(kind, config, t5x_shapes[path])
    found = tuple(arrays[key].shape)
    if found != expected:
      raise ValueError(f"HF key {key!r} -> t5x_lite {'/'.join(path)}: expected shape {expected} "
                       f"from the config, found {found} in the checkpoint.")
    flat[path] = _to_t5x(kind, arrays[key], t5x_shapes[path]).astype(dtype)
  shared = arrays["shared.weight"]
  for alias in aliases:
    if alias in arrays:
      if tuple(arrays[alias].shape) != tuple(shared.shape):
        raise ValueError(f"HF key {alias!r}: expected shape {tuple(shared.shape)} (an alias of "
                         f"shared.weight), found {tuple(arrays[alias].shape)}.")
      if not np.array_equal(arrays[alias], shared):
        hint = (" The config says tied embeddings (tie_word_embeddings true) but lm_head "
                "differs: set tie_word_embeddings false in config.json."
                if alias == "lm_head.weight" else "")
        raise ValueError(f"HF key {alias!r} differs from shared.weight; t5x_lite has one token "
                         f"embedding.{hint}")
  params = _unflatten(flat)
  return stack_layers(params, config) if config.scan_layers else params


def hf_state_dict_from_params(params: Mapping[str, Any], config: network.T5Config,
                              encoder_only: bool = False) -> dict:
  """HF T5ForConditionalGeneration state dict (numpy float32, contiguous) from t5x_lite params.

  Accepts boxed (nn.LogicallyPartitioned) or plain params, per-layer or stacked, with or
  without the outer "params" key. Writes shared.weight once (no embed_tokens aliases:
  transformers ties them on load) and lm_head.weight only for untied configs.
  encoder_only: T5EncoderModel's keys from params holding token_embedder and encoder only.
  """
  params = nn.meta.unbox(params)
  if "params" in params and "token_embedder" not in params:
    params = params["params"]
  if "layers" in params["encoder"]:
    params = unstack_layers(params, config)
  flat = _flatten(params)
  t5x_shapes = _expected_t5x_shapes(config)
  table = _key_table(config, encoder_only)
  known = {path for path, _ in table.values()}
  unknown = sorted("/".join(p) for p in flat if p not in known)
  if unknown:
    raise ValueError(f"Unknown t5x_lite parameter(s) for this T5Config: {unknown[:10]}.")
  state = {}
  for key, (path, kind) in table.items():
    if path not in flat:
      raise ValueError(f"Missing t5x_lite parameter {'/'.join(path)} (HF {key!r}); expected "
                       f"shape {t5x_shapes[path]}.")
    value = np.asarray(flat[path], dtype=np.float32)
    if tuple(value.shape) != t5x_shapes[path]:
      raise ValueError(f"t5x_lite parameter {'/'.join(path)} (HF {key!r}): expected shape "
                       f"{t5x_shapes[path]} from the config, found {tuple(value.shape)}.")
    state[key] = _to_hf(kind, value)
  return state


def as_numpy(value):
  """numpy from a numpy array or a torch tensor (any float dtype: bfloat16 read as float32)."""
  if hasattr(value, "detach"):  # torch.Tensor (bf16/fp16 included)
    return value.detach().float().cpu().numpy()
  return np.asarray(value)
