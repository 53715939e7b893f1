"""HF transformers T5 checkpoint directories <-> t5x_lite parameters.

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
Nothing here touches the network (no hub access). Key names and tensor layouts are
hf_param_layout.py's (its public functions are importable from here too).

The only pickle format read is HF's own pytorch_model.bin, with torch.load(weights_only=True).
"""

import io
import json
import os
import uuid
from typing import Any, Mapping, Optional

from etils import epath
import flax.linen as nn
import numpy as np

from t5x_lite.checkpointing import storage
from t5x_lite.interop import hf_param_layout
from t5x_lite.interop import hf_tokenizer
from t5x_lite.model import network

# The parameter mapping, importable from here as before.
config_from_hf = hf_param_layout.config_from_hf
hf_config_dict = hf_param_layout.hf_config_dict
params_from_hf_state_dict = hf_param_layout.params_from_hf_state_dict
hf_state_dict_from_params = hf_param_layout.hf_state_dict_from_params
stack_layers = hf_param_layout.stack_layers
unstack_layers = hf_param_layout.unstack_layers


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
      return {key: hf_param_layout.as_numpy(value)
              for key, value in safetensors_torch.load(data).items()}
  import torch  # pylint: disable=g-import-not-at-top
  # weights_only: the .bin is a pickle; this refuses anything but tensors and containers.
  state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  return {key: hf_param_layout.as_numpy(value) for key, value in state.items()}


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
