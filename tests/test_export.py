"""export run mode: a checkpoint becomes a HF directory with the same logits as t5x_lite."""

import os
import stat

from etils import epath
import gin
import jax
import numpy as np
import pytest
import seqio
import torch
import transformers

import fake_bucket
import hf_utils
import runmode_utils as u
from t5x_lite import main
from t5x_lite.checkpointing import restore
from t5x_lite.interop import hf_checkpoint
from t5x_lite.interop import hf_param_layout
from t5x_lite.interop import hf_tokenizer
from t5x_lite.model import encoder_decoder, network
from t5x_lite.modes import export
from t5x_lite.parallel import partitioning
from t5x_lite.tasks import vocab


def test_export_gives_hf_model_with_the_same_logits(tmp_path):
  u.train_tiny(tmp_path / "run", 2)
  gin.clear_config()
  try:
    out = main.main(["--run_mode=export", "--gin_file=models/t5_1_0.gin",
                     "--gin_file=runs/export.gin",
                     f"--gin.CHECKPOINT_PATH={tmp_path / 'run' / 'checkpoints'}",
                     f"--gin.OUTPUT_DIR={tmp_path / 'hf'}"] + u.TINY_GIN)
  finally:
    gin.clear_config()
  assert out == str(tmp_path / "hf")
  mode = lambda name: stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode)
  assert mode("model.safetensors") == mode("config.json")  # readable like the rest
  hf = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  model = u.tiny_model()
  params = restore.restore_model_params(model, partitioning.Partitioner(),
                                         str(tmp_path / "run" / "checkpoints" / "2"))
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 4224, (2, 10)).astype(np.int32)
  enc[1, 7:] = 0
  tgt = rng.randint(2, 4224, (2, 6)).astype(np.int32)
  dec = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], 1)
  ours = np.asarray(model.module.apply({"params": params}, enc, dec, tgt))
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  assert sum(p.numel() for p in hf.parameters()) == sum(
      x.size for x in jax.tree_util.tree_leaves(params))
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
  # The run's vocabulary (gin's get_vocabulary: the default one) is the export's tokenizer.
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  text = "say yes 5012, <extra_id_0> def main():"
  assert tokenizer(text)["input_ids"] == list(vocab.default_vocabulary().encode(text)) + [1]


def test_export_to_a_bucket_equals_a_local_export(tmp_path, monkeypatch):
  u.train_tiny(tmp_path / "run", 2)
  checkpoint = str(tmp_path / "run" / "checkpoints" / "2")
  model = u.tiny_model()
  export.export(checkpoint_path=checkpoint, output_dir=str(tmp_path / "hf"), model=model)
  bucket = fake_bucket.register_scheme(monkeypatch)
  export.export(checkpoint_path=checkpoint, output_dir=f"{bucket}/hf", model=model)
  assert (epath.Path(f"{bucket}/hf/config.json").read_text()
          == (tmp_path / "hf" / "config.json").read_text())
  local = hf_checkpoint.load_hf_state_dict(str(tmp_path / "hf"))
  remote = hf_checkpoint.load_hf_state_dict(f"{bucket}/hf")
  assert sorted(local) == sorted(remote)
  for key, value in local.items():
    np.testing.assert_array_equal(remote[key], value)


SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data/sentencepiece/sentencepiece.model")
# A T5 v1.1 shape (gated-GELU, untied): random v1.0 weights greedy-decode one token everywhere.
V11 = network.T5Config(vocab_size=128, d_model=32, d_ff=64, d_kv=8, num_heads=4,
                       num_encoder_layers=2, num_decoder_layers=2, feed_forward="gated-gelu",
                       tie_word_embeddings=False, dropout_rate=0.0)
V11_GIN = ["--gin.T5Config.d_model=32", "--gin.T5Config.d_ff=64", "--gin.T5Config.d_kv=8",
           "--gin.T5Config.num_heads=4", "--gin.T5Config.num_encoder_layers=2",
           "--gin.T5Config.num_decoder_layers=2", "--gin.T5Config.dropout_rate=0.0",
           f"--gin.get_vocabulary.sentencepiece_model_path={SPM}"]


def test_finetune_from_hf_then_export_loads_whole_in_transformers(tmp_path):
  """HF directory -> finetune (the entry point) -> export -> AutoTokenizer + AutoModel: the
  tokenizer's ids are the seqio vocabulary's, HF greedy generate is t5x_lite's greedy decode."""
  hf_utils.hf_model(V11, seed=3).save_pretrained(str(tmp_path / "hf_in"))
  gin.clear_config()
  try:
    main.main(["--gin_file=models/t5_1_1.gin", "--gin_file=runs/finetune.gin",
               "--gin.MIXTURE_OR_TASK_NAME=embedded_addition_zeroshot",
               f"--gin.MODEL_DIR={tmp_path / 'run'}",
               f"--gin.INITIAL_CHECKPOINT_PATH={tmp_path / 'hf_in'}", "--gin.TRAIN_STEPS=2",
               "--gin.BATCH_SIZE=2", "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 8}",
               "--gin.EvalConfig.steps=0", "--gin.train.progress_bar=False"] + V11_GIN)
    gin.clear_config()
    out = main.main(["--run_mode=export", "--gin_file=models/t5_1_1.gin",
                     "--gin_file=runs/export.gin",
                     f"--gin.CHECKPOINT_PATH={tmp_path / 'run' / 'checkpoints'}",
                     f"--gin.OUTPUT_DIR={tmp_path / 'hf_out'}"] + V11_GIN)
  finally:
    gin.clear_config()
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                     "spiece.model", "tokenizer_config.json"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
  vocabulary = seqio.SentencePieceVocabulary(SPM, extra_ids=100)
  assert len(tokenizer) == vocabulary.vocab_size == 126
  texts = ["What is 12 plus 7?", "the  cat\tsat, on <extra_id_0> a mat", "Ünïcode 3"]
  for text in texts:  # T5's tokenizer appends EOS (1); seqio's Feature(add_eos=True) does too
    assert tokenizer(text)["input_ids"] == list(vocabulary.encode(text)) + [1], text
  assert tokenizer.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [125, 26]

  inputs = texts[:2]
  batch = tokenizer(inputs, padding=True, return_tensors="pt")
  with torch.no_grad():
    theirs = hf.generate(**batch, max_new_tokens=8, do_sample=False, num_beams=1).numpy()[:, 1:]
  model = encoder_decoder.EncoderDecoderModel(V11, decoding=encoder_decoder.DecodingSettings(
      method="greedy", max_decode_length=8))
  params = restore.restore_model_params(model, partitioning.Partitioner(),
                                         str(tmp_path / "run" / "checkpoints" / "2"))
  encoder_tokens = batch["input_ids"].numpy().astype(np.int32)  # the seqio ids (checked above)
  ours = np.asarray(model.predict_batch(params, {"encoder_input_tokens": encoder_tokens}))
  until_eos = lambda row: list(row[:list(row).index(1) + 1] if 1 in row else row)
  assert [until_eos(r) for r in theirs] == [until_eos(r) for r in ours]
  assert len(set(ours.ravel()) - {0, 1}) >= 3, ours  # not one token everywhere


def test_tokenizer_files_replace_an_older_exports_and_go_with_the_heads(tmp_path):
  """A stale tokenizer.json (HF reads it before spiece.model) goes; a re-export without a
  vocabulary leaves no tokenizer of the older one; the token classifier's directory loads
  with AutoTokenizer too."""
  config = network.T5Config(vocab_size=128, d_model=16, d_ff=32, d_kv=4, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  params = hf_param_layout.params_from_hf_state_dict(
      hf_utils.hf_model(config).state_dict(), config)
  vocabulary = seqio.SentencePieceVocabulary(SPM, extra_ids=5)
  out = tmp_path / "hf"
  out.mkdir()
  (out / "tokenizer.json").write_text("{}")  # another tokenizer, e.g. from save_pretrained
  hf_checkpoint.save_hf_checkpoint(params, config, str(out), vocabulary=vocabulary)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors",
                                     "special_tokens_map.json", "spiece.model",
                                     "tokenizer_config.json"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  assert tokenizer("hello world")["input_ids"] == list(vocabulary.encode("hello world")) + [1]
  assert tokenizer.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_4>"]) == [30, 26]
  hf_checkpoint.save_hf_checkpoint(params, config, str(out))
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]

  classifier = {"token_embedder": params["token_embedder"], "encoder": params["encoder"],
                "classifier": {"kernel": np.ones((16, 3), np.float32),
                               "bias": np.zeros(3, np.float32)}}
  hf_checkpoint.save_hf_token_classifier(classifier, config, str(tmp_path / "tc"),
                                         vocabulary=vocabulary)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tc"))
  assert tokenizer("a test")["input_ids"] == list(vocabulary.encode("a test")) + [1]


def test_sentinels_numbered_upwards_are_refused():
  vocabulary = seqio.SentencePieceVocabulary(SPM, extra_ids=3, reverse_extra_ids=False)
  with pytest.raises(ValueError, match="reverse_extra_ids=True"):
    hf_tokenizer.hf_tokenizer_files(vocabulary)
