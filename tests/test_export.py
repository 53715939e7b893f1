"""export run mode: a checkpoint becomes a HF directory with the same logits as t5x_lite."""

import os
import stat

from etils import epath
import gin
import jax
import numpy as np
import torch
import transformers

import fake_bucket
import runmode_utils as u
from t5x_lite import main
from t5x_lite.checkpointing import checkpoints
from t5x_lite.interop import hf_checkpoint
from t5x_lite.modes import export
from t5x_lite.parallel import partitioning


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
  params = checkpoints.restore_model_params(model, partitioning.Partitioner(),
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


def test_export_to_a_bucket_equals_a_local_export(tmp_path, monkeypatch):
  u.train_tiny(tmp_path / "run", 2)
  checkpoint = str(tmp_path / "run" / "checkpoints" / "2")
  model = u.tiny_model()
  export.export(checkpoint_path=checkpoint, output_dir=str(tmp_path / "hf"), model=model)
  bucket = fake_bucket.register_scheme(monkeypatch)
  export.export(checkpoint_path=checkpoint, output_dir=f"{bucket}/hf", model=model)
  assert (epath.Path(f"{bucket}/hf/config.json").read_text()
          == (tmp_path / "hf" / "config.json").read_text())
  local, remote = hf_checkpoint.load_hf_state_dict(str(tmp_path / "hf")), hf_checkpoint.load_hf_state_dict(
      f"{bucket}/hf")
  assert sorted(local) == sorted(remote)
  for key, value in local.items():
    np.testing.assert_array_equal(remote[key], value)
