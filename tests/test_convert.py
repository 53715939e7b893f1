"""t5x_lite.interop.hf_checkpoint: export to HF transformers, exact round trips, and checkpoint errors."""

import dataclasses
import json
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from etils import epath
from safetensors.numpy import load_file

import hf_utils
from t5x_lite.interop import hf_checkpoint
from t5x_lite.interop import hf_param_layout
from t5x_lite.model import network

RELU = network.T5Config(vocab_size=96, d_model=32, d_ff=48, d_kv=12, num_heads=3,
                        num_encoder_layers=3, num_decoder_layers=2, dropout_rate=0.0)
GATED = network.T5Config(vocab_size=80, d_model=24, d_ff=40, d_kv=8, num_heads=4,
                         num_encoder_layers=2, num_decoder_layers=3, feed_forward="gated-gelu",
                         tie_word_embeddings=False, dropout_rate=0.0)


def _init_params(config, seed=0):
  """Boxed random params from model.init, with the norm scales perturbed away from 1."""
  ids = np.ones((1, 4), np.int32)
  # jit: un-jitted init dispatches op by op and takes seconds even at this size.
  params = jax.jit(network.Transformer(config).init)(jax.random.PRNGKey(seed), ids, ids)["params"]
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(
      treedef, [x + 0.2 * rng.standard_normal(x.shape).astype(np.float32) for x in leaves])


@pytest.mark.parametrize("config", [RELU, dataclasses.replace(GATED, scan_layers=True)],
                         ids=["relu_tied", "gated_untied_scan"])
def test_export_loads_in_transformers_with_same_logits(config, tmp_path):
  params = _init_params(config)
  hf_checkpoint.save_hf_checkpoint(params, config, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert (saved["decoder_start_token_id"], saved["pad_token_id"], saved["eos_token_id"]) == (0, 0, 1)
  assert saved["feed_forward_proj"] == config.feed_forward
  assert saved["tie_word_embeddings"] == config.tie_word_embeddings

  model, info = transformers.T5ForConditionalGeneration.from_pretrained(
      str(tmp_path), output_loading_info=True)
  model.eval()
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  assert sum(p.numel() for p in model.parameters()) == network.count_params(config)
  tied = model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
  assert tied == config.tie_word_embeddings

  enc, dec_in, tgt = hf_utils.random_batch(config)
  expected = hf_utils.hf_logits(model, enc, dec_in, tgt)
  logits = np.asarray(network.Transformer(config).apply({"params": params}, enc, dec_in, tgt))
  real = tgt > 0  # padded positions differ by design, see tests/test_network.py
  assert np.abs(logits - expected)[real].max() <= 1e-4


@pytest.mark.parametrize("config", [RELU, GATED], ids=["relu_tied", "gated_untied"])
@pytest.mark.parametrize("scan", [False, True])
def test_import_export_round_trip_is_exact(config, scan, tmp_path):
  hf_utils.hf_model(config).save_pretrained(str(tmp_path))
  original = load_file(str(tmp_path / "model.safetensors"))
  loaded_config, params = hf_checkpoint.load_hf_checkpoint(str(tmp_path), scan_layers=scan)
  exported = hf_param_layout.hf_state_dict_from_params(params, loaded_config)
  # Export writes shared.weight once; HF's file may also hold its embed_tokens aliases.
  expected = {k: v for k, v in original.items() if k not in hf_param_layout._EMBEDDING_ALIASES}  # pylint: disable=protected-access
  assert sorted(exported) == sorted(expected)
  for key, value in expected.items():
    assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
    assert np.array_equal(exported[key], value), key  # bitwise: pure transposes / reshapes
  # And the per-layer <-> stacked helpers are inverses.
  if scan:
    again = hf_param_layout.stack_layers(hf_param_layout.unstack_layers(params, loaded_config),
                                         loaded_config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_config_from_hf_reads_both_families():
  relu = hf_param_layout.config_from_hf(hf_utils.hf_config(RELU).to_dict(), dropout_rate=0.0)
  assert relu == RELU
  gated = hf_param_layout.config_from_hf(hf_utils.hf_config(GATED).to_dict(), dropout_rate=0.0)
  assert gated == GATED
  # transformers 5.x re-saves a v1.1 config with tie_word_embeddings forced to true; its
  # scale_decoder_outputs=false still says "untied".
  resaved = dict(hf_param_layout.hf_config_dict(GATED), tie_word_embeddings=True,
                 scale_decoder_outputs=False)
  assert not hf_param_layout.config_from_hf(resaved).tie_word_embeddings
  with pytest.raises(ValueError, match="gated-silu"):
    hf_param_layout.config_from_hf({"feed_forward_proj": "gated-silu"})


def _state_dict(config):
  return {k: v.detach().numpy().copy() for k, v in hf_utils.hf_model(config).state_dict().items()}


def test_missing_key_names_key_and_shape():
  state = _state_dict(GATED)
  key = "decoder.block.2.layer.1.EncDecAttention.o.weight"
  del state[key]
  with pytest.raises(ValueError, match=r"Missing key.*") as error:
    hf_param_layout.params_from_hf_state_dict(state, GATED)
  assert key in str(error.value) and "(24, 32)" in str(error.value)


def test_unknown_key_is_named():
  state = _state_dict(RELU)
  state["encoder.block.7.layer.0.layer_norm.weight"] = np.ones(32, np.float32)
  with pytest.raises(ValueError, match=r"Unknown key.*encoder\.block\.7\.layer\.0\.layer_norm"):
    hf_param_layout.params_from_hf_state_dict(state, RELU)
  # A v1.1 checkpoint read with a relu config: the gated weights are unknown keys.
  with pytest.raises(ValueError, match=r"Unknown key.*wi_0"):
    hf_param_layout.params_from_hf_state_dict(_state_dict(GATED), dataclasses.replace(
        GATED, feed_forward="relu"))


def test_wrong_shape_names_key_and_both_shapes():
  state = _state_dict(RELU)
  key = "encoder.block.1.layer.0.SelfAttention.q.weight"
  state[key] = np.zeros((32, 32), np.float32)  # as if num_heads * d_kv were 32, not 36
  with pytest.raises(ValueError) as error:
    hf_param_layout.params_from_hf_state_dict(state, RELU)
  message = str(error.value)
  assert key in message and "expected shape (36, 32)" in message and "found (32, 32)" in message


def test_embedding_alias_must_equal_shared():
  state = _state_dict(RELU)
  state["decoder.embed_tokens.weight"] = state["shared.weight"] + 1.0
  with pytest.raises(ValueError, match="decoder.embed_tokens.weight.*differs"):
    hf_param_layout.params_from_hf_state_dict(state, RELU)


def test_export_rejects_wrong_shape():
  # No jit compile: fast.
  params = hf_param_layout.params_from_hf_state_dict(_state_dict(RELU), RELU)
  params["decoder"]["layers_1"]["mlp"]["wo"]["kernel"] = np.zeros((40, 32), np.float32)
  with pytest.raises(ValueError, match=r"decoder/layers_1/mlp/wo/kernel.*\(48, 32\).*\(40, 32\)"):
    hf_param_layout.hf_state_dict_from_params(params, RELU)


def test_bin_is_read_with_weights_only(tmp_path):
  """A pytorch_model.bin holding anything but tensors is refused (no arbitrary unpickling)."""
  hf_utils.hf_config(RELU).save_pretrained(str(tmp_path))
  torch.save({"shared.weight": torch.zeros(96, 32), "evil": dataclasses.replace},
             str(tmp_path / "pytorch_model.bin"))
  with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
    hf_checkpoint.load_hf_checkpoint(str(tmp_path))


def _files(directory):
  """{name: bytes} of a directory's visible files (temporary ones start with a dot)."""
  return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.startswith(".")}


def test_a_failed_or_killed_re_export_never_mixes_two_exports(tmp_path, monkeypatch):
  out, reference = tmp_path / "hf", tmp_path / "reference"
  hf_checkpoint.save_hf_checkpoint(
      hf_param_layout.params_from_hf_state_dict(_state_dict(RELU), RELU), RELU, str(out))
  old = _files(out)
  new_params = hf_param_layout.params_from_hf_state_dict(_state_dict(GATED), GATED)
  hf_checkpoint.save_hf_checkpoint(new_params, GATED, str(reference))
  new = _files(reference)
  assert sorted(old) == sorted(new) == ["config.json", "model.safetensors"] and old != new

  # The second of the two writes fails (a full disk): the older export is left whole.
  path_type = type(epath.Path(str(out)))
  writes = []

  def failing(write):
    def wrapper(self, data, *args, **kwargs):
      writes.append(self.name)
      if len(writes) == 2:
        raise OSError(28, "No space left on device")
      return write(self, data, *args, **kwargs)
    return wrapper

  with monkeypatch.context() as patch:
    patch.setattr(path_type, "write_text", failing(path_type.write_text))
    patch.setattr(path_type, "write_bytes", failing(path_type.write_bytes))
    with pytest.raises(OSError, match="No space left"):
      hf_checkpoint.save_hf_checkpoint(new_params, GATED, str(out))
  assert _files(out) == old and sorted(p.name for p in out.iterdir()) == sorted(old)

  # SIGKILL once the weights are written, before config.json: still the older export.
  script = ("import os, signal, sys\nfrom etils import epath\nfrom t5x_lite.interop import hf_checkpoint\n"
            "config, params = hf_checkpoint.load_hf_checkpoint(sys.argv[1])\n"
            "kind = type(epath.Path(sys.argv[2]))\n"
            "kind.write_text = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
            "hf_checkpoint.save_hf_checkpoint(params, config, sys.argv[2])\n")
  killed = subprocess.run([sys.executable, "-c", script, str(reference), str(out)],
                          capture_output=True, text=True, check=False)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert _files(out) == old
  staged = lambda: sorted(p.name.split("-")[0] for p in out.iterdir() if p.name.startswith("."))
  assert staged() == [".model.safetensors.tmp"]  # the killed export's weights, not in place

  # Stopped between its renames: no config.json, so nothing loads a mix of the two.
  replaced = []

  def replace_once(self, target):
    if replaced:
      raise OSError("killed")
    replaced.append(target)
    return real_replace(self, target)

  real_replace = path_type.replace
  with monkeypatch.context() as patch:
    patch.setattr(path_type, "replace", replace_once)
    with pytest.raises(OSError, match="killed"):
      hf_checkpoint.save_hf_checkpoint(new_params, GATED, str(out))
  assert _files(out) == {"model.safetensors": new["model.safetensors"]}
  with pytest.raises(FileNotFoundError):
    hf_checkpoint.load_hf_checkpoint(str(out))

  # The next export completes and removes what the killed process staged (this process's
  # own staged config.json, of the export stopped above, is left: it still runs).
  hf_checkpoint.save_hf_checkpoint(new_params, GATED, str(out))
  assert _files(out) == new and staged() == [".config.json.tmp"]
