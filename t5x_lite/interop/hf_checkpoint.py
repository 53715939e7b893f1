"""HF transformers T5 checkpoints <-> t5x_lite parameters.

Import: `load_hf_checkpoint(directory)` reads an HF T5 directory, local or remote (etils.epath):
config.json plus model.safetensors, pytorch_model.bin, or their sharded `*.index.json` forms;
it returns `(T5Config, params)`. Export: `save_hf_checkpoint(params, config, directory)` writes a
config.json and model.safetensors that `T5ForConditionalGeneration.from_pretrained` loads.
Encoder-only models (t5x_lite/model/heads.py): `load_hf_encoder` takes the encoder of any of
T5ForConditionalGeneration, T5EncoderModel and T5ForTokenClassification directories;
`save_hf_encoder` writes a T5EncoderModel, and `save_hf_token_classifier` /
`load_hf_token_classifier` a T5ForTokenClassification (keys under `transformer.`, plus
`classifier.weight` [num_labels, d_model] and `classifier.bias`).
Each writer takes the run's seqio SentencePiece vocabulary too (`vocabulary=`): the directory
then holds the tokenizer as HF T5 repositories do (`spiece.model`, `tokenizer_config.json`,
`special_tokens_map.json`; hf_tokenizer.py), so `AutoTokenizer.from_pretrained` loads it.
Nothing here touches the network (no hub access).

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

The only pickle format read is HF's own pytorch_model.bin, with torch.load(weights_only=True).
"""

import dataclasses
import io
import json
import os
import uuid
from typing import Any, Mapping, Optional

from etils import epath
import flax.linen as nn
from flax import traverse_util
import numpy as np

from t5x_lite.checkpointing import storage
from t5x_lite.interop import hf_tokenizer
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
  arrays = {key: _as_numpy(value) for key, value in state_dict.items()}
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


def save_hf_checkpoint(params: Mapping[str, Any], config: network.T5Config,
                       directory: str, vocabulary=None) -> None:
  """Writes config.json + model.safetensors that transformers' T5 loads (from_pretrained).

  `directory` may be local or remote (gs://...): files are written through etils.epath.
  vocabulary: the seqio.SentencePieceVocabulary the model was trained with: its tokenizer
  files are written too (hf_tokenizer.py). None: no tokenizer (an older export's is removed).
  """
  _write_hf(directory, hf_config_dict(config), hf_state_dict_from_params(params, config),
            _tokenizer_files(vocabulary))


def _tokenizer_files(vocabulary) -> dict:
  return {} if vocabulary is None else hf_tokenizer.hf_tokenizer_files(vocabulary)


_STAGED = ".tmp-"  # .<name>.tmp-<pid>-<id>: a file of an export not yet in place


def _write_hf(directory: str, hf_config: Mapping[str, Any], state: Mapping[str, Any],
              files: Optional[Mapping[str, bytes]] = None) -> None:
  """config.json + model.safetensors (+ `files`: the tokenizer's), local or remote
  (etils.epath), never a mix of two exports.

  Every file is written under a temporary name beside its final one first (the long part:
  a process killed there leaves an older export in `directory` whole). Then the old
  config.json is removed, and the older export's tokenizer files this one does not write;
  the weights and tokenizer files are renamed into place, and config.json last: transformers
  and t5x_lite open config.json first, so in the instant between those renames the directory
  does not load at all rather than pairing one export's config with another's weights or
  tokenizer. Temporary files a killed export left are removed by the next one.
  """
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  files = dict(files or {})
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  names = ("model.safetensors", *files, "config.json")
  _remove_stale_staged(directory, ("model.safetensors", *hf_tokenizer.TOKENIZER_FILES,
                                   "config.json"))
  suffix = f"{_STAGED}{os.getpid()}-{uuid.uuid4().hex[:8]}"
  staged = {name: directory / f".{name}{suffix}" for name in names}
  try:
    # format=pt: transformers refuses safetensors files without it.
    staged["model.safetensors"].write_bytes(save(dict(state), metadata={"format": "pt"}))
    for name, data in files.items():
      staged[name].write_bytes(data)
    staged["config.json"].write_text(json.dumps(hf_config, indent=2, sort_keys=True))
  except BaseException:
    for path in staged.values():
      path.unlink(missing_ok=True)
    raise
  (directory / "config.json").unlink(missing_ok=True)
  for name in hf_tokenizer.TOKENIZER_FILES + hf_tokenizer.OTHER_TOKENIZER_FILES:
    if name not in files:
      (directory / name).unlink(missing_ok=True)
  for name in names:  # config.json last
    staged[name].replace(directory / name)


def _remove_stale_staged(directory: epath.Path, names) -> None:
  """Removes the temporary files of exports killed before they renamed them into place."""
  for name in names:
    for path in directory.glob(f".{name}{_STAGED}*"):
      pid = path.name[len(f".{name}{_STAGED}"):].split("-")[0]
      # A local export still running (another process) keeps its files.
      if not storage.is_local(directory) or not pid.isdigit() or not storage.pid_alive(
          int(pid)):
        path.unlink(missing_ok=True)


def load_hf_state_dict(directory: str) -> dict:
  """HF key -> numpy array from a directory: safetensors preferred, else pytorch_model.bin.

  Sharded checkpoints (`*.index.json` with a weight_map) are read shard by shard. The
  directory may be local or remote (gs://...).
  """
  directory = epath.Path(directory)
  for index_name, single_name in (("model.safetensors.index.json", "model.safetensors"),
                                  ("pytorch_model.bin.index.json", "pytorch_model.bin")):
    if (directory / index_name).exists():
      files = sorted(set(json.loads((directory / index_name).read_text())["weight_map"].values()))
    elif (directory / single_name).exists():
      files = [single_name]
    else:
      continue
    state = {}
    for name in files:
      state.update(_read_weights_file(directory / name))
    return state
  raise FileNotFoundError(f"No model.safetensors or pytorch_model.bin (or their .index.json) in "
                          f"{str(directory)!r}.")


def _read_weights_file(path: epath.Path):
  data = path.read_bytes()
  if path.name.endswith(".safetensors"):
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    try:
      return safetensors_numpy.load(data)
    except (TypeError, ValueError):  # bfloat16 has no numpy reader: go through torch.
      from safetensors import torch as safetensors_torch  # pylint: disable=g-import-not-at-top
      return {key: _as_numpy(value) for key, value in safetensors_torch.load(data).items()}
  import torch  # pylint: disable=g-import-not-at-top
  # weights_only: the .bin is a pickle; this refuses anything but tensors and containers.
  state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  return {key: _as_numpy(value) for key, value in state.items()}


def _as_numpy(value):
  if hasattr(value, "detach"):  # torch.Tensor (bf16/fp16 included)
    return value.detach().float().cpu().numpy()
  return np.asarray(value)


def load_hf_checkpoint(directory: str, **config_overrides):
  """(T5Config, params) from a local HF T5 directory (config.json + weights).

  Args:
    directory: holds config.json and model.safetensors / pytorch_model.bin (or sharded).
    **config_overrides: T5Config fields to set, e.g. scan_layers=True, dtype="bfloat16",
      dropout_rate=0.0; the params come in the layout config.scan_layers asks for.
  """
  hf_config = json.loads((epath.Path(directory) / "config.json").read_text())
  config = config_from_hf(hf_config, **config_overrides)
  return config, params_from_hf_state_dict(load_hf_state_dict(directory), config)


# ---------------------------------------------------------------- encoder-only models

_TOKEN_CLASSIFIER_PREFIX = "transformer."
_CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")


def _read_hf_config(directory: str, **config_overrides) -> network.T5Config:
  config = json.loads((epath.Path(directory) / "config.json").read_text())
  return config_from_hf(config, **config_overrides)


def _encoder_params(state: Mapping[str, Any], config: network.T5Config) -> dict:
  """{token_embedder, encoder} from any HF T5 state dict (decoder, lm_head, classifier dropped)."""
  prefix = _TOKEN_CLASSIFIER_PREFIX if any(
      k.startswith(_TOKEN_CLASSIFIER_PREFIX) for k in state) else ""
  encoder_state = {}
  for key, value in state.items():
    name = key[len(prefix):] if key.startswith(prefix) else key
    if name == "shared.weight" or name.startswith("encoder."):
      encoder_state[name] = value
  return params_from_hf_state_dict(encoder_state, config, encoder_only=True)


def load_hf_encoder(directory: str, **config_overrides):
  """(T5Config, {"token_embedder", "encoder"} params) from a local HF T5 directory.

  Reads T5ForConditionalGeneration (its decoder and lm_head are dropped), T5EncoderModel
  and T5ForTokenClassification (its classifier is dropped) directories alike.
  """
  config = _read_hf_config(directory, **config_overrides)
  return config, _encoder_params(load_hf_state_dict(directory), config)


def load_hf_token_classifier(directory: str, **config_overrides):
  """(T5Config, params with "classifier" {kernel [d_model, labels], bias}) of a
  T5ForTokenClassification directory; num_labels is the classifier's width."""
  config = _read_hf_config(directory, **config_overrides)
  state = load_hf_state_dict(directory)
  missing = [k for k in _CLASSIFIER_KEYS if k not in state]
  if missing:
    raise ValueError(f"{directory} has no {missing}: not a T5ForTokenClassification "
                     "checkpoint (load_hf_encoder reads its encoder alone).")
  params = _encoder_params(state, config)
  params["classifier"] = {
      "kernel": np.ascontiguousarray(state["classifier.weight"].T).astype(config.parameter_dtype),
      "bias": np.asarray(state["classifier.bias"]).astype(config.parameter_dtype)}
  return config, params


def _plain(params: Mapping[str, Any]) -> Mapping[str, Any]:
  params = nn.meta.unbox(params)
  return params["params"] if "params" in params and "token_embedder" not in params else params


def _encoder_only_config(config: network.T5Config, architecture: str) -> dict:
  return dict(hf_config_dict(config), architectures=[architecture], is_encoder_decoder=False,
              use_cache=False)


def save_hf_encoder(params: Mapping[str, Any], config: network.T5Config, directory: str,
                    vocabulary=None) -> None:
  """Writes the encoder of params (any head is left out) as a HF T5EncoderModel directory.

  vocabulary: the model's seqio.SentencePieceVocabulary: its tokenizer is written beside
  (hf_tokenizer.py); None: none.
  """
  params = _plain(params)
  state = hf_state_dict_from_params({k: params[k] for k in ("token_embedder", "encoder")},
                                    config, encoder_only=True)
  _write_hf(directory, _encoder_only_config(config, "T5EncoderModel"), state,
            _tokenizer_files(vocabulary))


def save_hf_token_classifier(params: Mapping[str, Any], config: network.T5Config,
                             directory: str, label_names=None, vocabulary=None) -> None:
  """Writes a TokenClassificationModel's params as a HF T5ForTokenClassification directory.

  Args:
    label_names: the classes' names for config.json's id2label (default LABEL_i).
    vocabulary: the model's (inputs') seqio.SentencePieceVocabulary: its tokenizer is written
      beside (hf_tokenizer.py); None: none.
  """
  params = _plain(params)
  encoder = {k: params[k] for k in ("token_embedder", "encoder")}
  state = {_TOKEN_CLASSIFIER_PREFIX + k: v for k, v in hf_state_dict_from_params(
      encoder, config, encoder_only=True).items()}
  kernel = np.asarray(params["classifier"]["kernel"], np.float32)  # [d_model, num_labels]
  state["classifier.weight"] = np.ascontiguousarray(kernel.T)
  state["classifier.bias"] = np.asarray(params["classifier"]["bias"], np.float32)
  names = list(label_names or [f"LABEL_{i}" for i in range(kernel.shape[1])])
  if len(names) != kernel.shape[1]:
    raise ValueError(f"{len(names)} label names for a classifier with {kernel.shape[1]} "
                     "outputs.")
  hf_config = dict(_encoder_only_config(config, "T5ForTokenClassification"),
                   classifier_dropout=0.0, id2label={str(i): n for i, n in enumerate(names)},
                   label2id={name: i for i, name in enumerate(names)})
  _write_hf(directory, hf_config, state, _tokenizer_files(vocabulary))
