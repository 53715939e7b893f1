"""The encoder heads through the run modes: each learns a small task (tests/head_tasks.py),
saves and restores through orbax, starts from an encoder-decoder checkpoint (orbax or HF
directory) with the decoder dropped, and its predictions reach eval / infer / export."""

import dataclasses

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import head_tasks
import runmode_utils as u
from t5x_lite import settings
from t5x_lite.checkpointing import restore
from t5x_lite.interop import hf_checkpoint
from t5x_lite.interop import initial_params
from t5x_lite.model import heads, network
from t5x_lite.modes import evaluate, export, infer, train
from t5x_lite.parallel import partitioning
from t5x_lite.training import optimizers, trainer
from tree_utils import tree_max_abs_diff

# runmode_utils' encoder-decoder shape: its checkpoints fit the heads' encoder.
CONFIG = u.tiny_model().config


@pytest.fixture(scope="module")
def encoder_decoder(tmp_path_factory):
  """(final TrainState, checkpoint path) of runmode_utils' encoder-decoder after one step."""
  model_dir = tmp_path_factory.mktemp("ed")
  state, _ = u.train_tiny(model_dir, 1)
  return state, str(model_dir / "checkpoints" / "1")


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def spy_initial_params(monkeypatch):
  """Records the parameters training starts from (before any step)."""
  started = {}
  original = train.restore_or_init

  def spy(*args, **kwargs):
    state = original(*args, **kwargs)
    started["params"] = jax.device_get(state.params)
    return state

  monkeypatch.setattr(train, "restore_or_init", spy)
  return started


def run_head(model_dir, model, task, lengths, steps, pack=False, **kwargs):
  return train.train(
      model_dir=str(model_dir), train_steps=steps, model=model,
      train_dataset=settings.DatasetConfig(task, lengths, batch_size=16, pack=pack),
      optimizer=optimizers.adafactor(optimizers.constant_schedule(1e-2)),
      checkpoint=settings.CheckpointConfig(period=1000, keep=None),
      evaluation=settings.EvalConfig(steps=1, infer_eval_mixture_or_task_name=task),
      log_period=steps, progress_bar=False, **kwargs)


def fresh_head(model, name):
  boxed = model.init(jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 8)})  # trainer's seed 0
  return jax.device_get(nn.unbox(boxed)[name])


def test_sequence_head_from_encoder_decoder_checkpoint_learns_and_restores(
    tmp_path, monkeypatch, encoder_decoder):
  ed_state, ed_checkpoint = encoder_decoder
  started = spy_initial_params(monkeypatch)
  model = heads.SequenceClassificationModel(CONFIG)
  lengths = {"inputs": 16, "targets": 1}
  _, metrics = run_head(tmp_path / "cls", model, head_tasks.YES_NO, lengths, 40,
                        initial_checkpoint=settings.RestoreConfig(ed_checkpoint))
  # Encoder and embedding by value from the checkpoint, decoder dropped, head fresh.
  expected = jax.device_get(ed_state.params)
  assert sorted(started["params"]) == ["classifier", "encoder", "token_embedder"]
  for name in ("token_embedder", "encoder"):
    assert tree_max_abs_diff(started["params"][name], expected[name]) == 0.0
  assert tree_max_abs_diff(started["params"]["classifier"],
                           fresh_head(model, "classifier")) == 0.0
  # Chance is 50%; 40 steps on "say yes 17" / "say no 9" get every validation example.
  assert metrics[f"{head_tasks.YES_NO}/accuracy"] >= 90.0
  assert metrics["loss"] < 0.1
  # The orbax checkpoint restores to the same predictions through the eval run mode.
  results = evaluate.evaluate(mixture_or_task_name=head_tasks.YES_NO, task_feature_lengths=lengths,
                              batch_size=8, model=model, model_dir=str(tmp_path / "cls"),
                              output_dir=str(tmp_path / "eval"))
  assert results[40][f"{head_tasks.YES_NO}/accuracy"] == metrics[f"{head_tasks.YES_NO}/accuracy"]
  rows = u.read_jsonl(tmp_path / "eval" / "eval_validation_predictions" / "40.jsonl")
  assert len(rows) == 32 and {r["prediction"] for r in rows} <= {"yes", "no"}
  right = np.mean([r["prediction"] == r["targets"] for r in rows])
  assert 100.0 * right == pytest.approx(metrics[f"{head_tasks.YES_NO}/accuracy"])


def test_token_head_from_hf_directory_learns_infers_and_exports(tmp_path, monkeypatch):
  ed_params = nn.unbox(jax.jit(lambda r: network.Transformer(CONFIG).init(
      r, np.ones((1, 4), np.int32), np.ones((1, 4), np.int32)))(jax.random.PRNGKey(3))["params"])
  hf_checkpoint.save_hf_checkpoint(ed_params, CONFIG, str(tmp_path / "hf"))
  started = spy_initial_params(monkeypatch)
  model = heads.TokenClassificationModel(CONFIG, num_labels=9)
  lengths = {"inputs": 32, "targets": 32}
  _, metrics = run_head(tmp_path / "tok", model, head_tasks.NAMES, lengths, 40, pack=True,
                        initial_checkpoint=settings.RestoreConfig(str(tmp_path / "hf")))
  for name in ("token_embedder", "encoder"):
    assert tree_max_abs_diff(started["params"][name], ed_params[name]) == 0.0
  # Entity F1 of "Alice"/"Bob"... as B-PER among other words; chance is far below.
  assert metrics[f"{head_tasks.NAMES}/f1"] >= 80.0
  checkpoint = str(tmp_path / "tok" / "checkpoints" / "40")
  path = infer.infer(checkpoint_path=checkpoint, output_dir=str(tmp_path / "infer"),
                     mixture_or_task_name=head_tasks.NAMES, task_feature_lengths=lengths,
                     batch_size=8, model=model)
  rows = u.read_jsonl(path)
  assert len(rows) == 32
  for row in rows:  # one predicted tag per word (no sentence here is truncated)
    assert len(row["prediction"].split()) == len(row["targets"].split()) == len(
        row["inputs"].split())
  export.export(checkpoint_path=checkpoint, output_dir=str(tmp_path / "export"), model=model)
  hf = transformers.T5ForTokenClassification.from_pretrained(str(tmp_path / "export"))
  assert hf.config.num_labels == 9


def test_qa_head_learns_spans_from_scratch_and_restores(tmp_path):
  model = heads.QuestionAnsweringModel(CONFIG, max_answer_length=4)
  state, metrics = run_head(tmp_path / "qa", model, head_tasks.NUMBERS,
                            {"inputs": 32, "targets": 4}, 80)
  restored = restore.restore_model_params(model, partitioning.Partitioner(),
                                          str(tmp_path / "qa" / "checkpoints"))
  assert tree_max_abs_diff(jax.device_get(restored), jax.device_get(state.params)) == 0.0
  # The number among 5-9 words: a random span of the context is right well under 10% of
  # the time, so half right is learning (80 steps: 59.4% with the default vocabulary of the
  # stdlib-file corpus; how that vocabulary splits numbers moves it by a few points, chance
  # stays far below).
  assert metrics[f"{head_tasks.NUMBERS}/em"] >= 50.0
  predictions = u.read_jsonl(tmp_path / "qa" / "infer_eval_predictions" / "80.jsonl")
  right = [p for p in predictions if p["prediction"] == p["targets"]]
  assert 100.0 * len(right) / len(predictions) == pytest.approx(
      metrics[f"{head_tasks.NUMBERS}/em"])
  assert all(p["prediction"].isdigit() for p in right)


def test_encoder_that_does_not_fit_and_optimizer_state_are_refused(tmp_path, encoder_decoder):
  _, ed_checkpoint = encoder_decoder
  with pytest.raises(ValueError, match="restore_optimizer_state=True: "
                                       "SequenceClassificationModel starts from the "
                                       "token_embedder/encoder parameters"):
    run_head(tmp_path / "cls", heads.SequenceClassificationModel(CONFIG), head_tasks.YES_NO,
             {"inputs": 16, "targets": 1}, 1, initial_checkpoint=settings.RestoreConfig(
                 ed_checkpoint, restore_optimizer_state=True))
  narrow = heads.SequenceClassificationModel(dataclasses.replace(CONFIG, d_ff=96))
  params = nn.unbox(jax.jit(lambda r: narrow.init(r, {"encoder_input_tokens": (1, 4)}))(
      jax.random.PRNGKey(0)))
  with pytest.raises(ValueError, match=r"encoder/layers_0/mlp/wi/kernel: checkpoint \(64, 128\) "
                                       r"vs model \(64, 96\)"):
    initial_params.load(narrow, ed_checkpoint, params)


# ---------------------------------------------------------------- microbatching with dropout


def test_microbatched_head_step_with_dropout_equals_the_full_batch_step():
  """num_microbatches=2 draws each row's dropout masks as the full batch does.

  A sequence classifier with a pre-classifier layer: dropout in the encoder and twice in the
  head (the three head kinds share that network). The two steps differ only in the order of
  float32 sums over rows; the tolerance is 4x the spread that reordering alone gives: the
  full batch with its rows reversed, each row keeping its global id (hence its masks).
  Masks repeated per microbatch move parameters by ~1e-2.
  """
  config = network.T5Config(vocab_size=96, d_model=16, d_ff=24, d_kv=8, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.3)
  model = heads.SequenceClassificationModel(config, num_labels=3, pre_classifier=True)
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, 96, (8, 10)).astype(np.int32)
  tokens[::2, 7:] = 0
  batch = {"encoder_input_tokens": tokens, "labels": rng.integers(0, 3, 8).astype(np.int32),
           "row_ids": np.arange(8, dtype=np.int32)}  # the ids the model defaults to
  reversed_rows = {k: v[::-1].copy() for k, v in batch.items()}
  one, two = (trainer.Trainer(model, optimizers.adafactor(), partitioning.Partitioner(),
                              num_microbatches=n) for n in (1, 2))
  start = one.init_state({k: v.shape for k, v in batch.items()})

  def step(t, batch):
    state, metrics = t.train_step(jax.tree_util.tree_map(jnp.copy, start), batch)  # donated
    return jax.device_get(state.params), float(metrics["loss"])

  (full, full_loss), (reordered, _) = step(one, batch), step(one, reversed_rows)
  micro, micro_loss = step(two, batch)
  rounding = tree_max_abs_diff(full, reordered)
  assert rounding < 1e-5  # float32 rounding of updates of ~4e-3
  assert tree_max_abs_diff(micro, full) <= 4 * max(rounding, 6e-8)
  assert micro_loss == pytest.approx(full_loss, rel=1e-6)
