"""model_interface.Model is the whole contract: a model kind defined here, in the test file
alone, trains, evaluates, infers and scores through the run-mode functions; no library module
asks which kind of model it holds; a head recipe's MODEL is the model of every run mode."""

import dataclasses
import pathlib
import re

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

import runmode_utils as u
from t5x_lite import settings
from t5x_lite.checkpointing import restore
from t5x_lite.config import configurables, gin_utils
from t5x_lite.model import heads
from t5x_lite.model import model_interface, encoder_decoder
from t5x_lite.modes import evaluate, infer
from t5x_lite.modes import train
from t5x_lite.parallel import partitioning
from t5x_lite.training import optimizers


@dataclasses.dataclass(frozen=True)
class BagConfig:
  vocab_size: int
  d_model: int
  targets_length: int
  scan_layers: bool = False


class BagOfWordsNet(nn.Module):
  """Mean of the input tokens' embeddings -> logits of each target position [B, Lt, V]."""
  config: BagConfig

  @nn.compact
  def __call__(self, tokens):
    cfg = self.config
    embedding = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("vocab", "embed")), (cfg.vocab_size, cfg.d_model))
    kernel = self.param("output", nn.with_logical_partitioning(
        nn.initializers.normal(cfg.d_model ** -0.5), ("embed", "vocab")),
                        (cfg.d_model, cfg.vocab_size))
    # One vector per target position (a few rows: the replicated `labels` axis).
    positions = self.param("positions", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("labels", "embed")), (cfg.targets_length, cfg.d_model))
    mask = (tokens > 0)[..., None]
    pooled = jnp.sum(jnp.where(mask, embedding[tokens], 0), 1) / jnp.maximum(mask.sum(1), 1)
    return (pooled[:, None, :] + positions[None]) @ kernel


class BagOfWordsModel:
  """A model kind of this test only: every target position from a bag of the input words.

  Batches are EncDecFeatureConverter's (unpacked); a prediction is the most likely token of
  each target position; the score is the summed log p of the target tokens.
  """
  token_features = ("inputs", "targets")
  decoding = None
  uses_dropout = False
  can_pack = False
  initial_checkpoint_params = None
  hf_export_format = None
  examples_heading = "Bag-of-words predictions:"

  def __init__(self, config: BagConfig):
    self.config = config
    self.module = BagOfWordsNet(config)

  def feature_converter(self, pack):
    assert not pack  # can_pack is False: the run modes never ask for packing.
    return seqio.EncDecFeatureConverter(pack=False)

  def dummy_input_shapes(self):
    return {"encoder_input_tokens": (1, 1)}

  def init(self, rng, input_shapes):
    return self.module.init(rng, jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32))[
        "params"]

  def log_probs(self, params, batch):
    return jax.nn.log_softmax(self.module.apply({"params": params},
                                                batch["encoder_input_tokens"]))

  def loss_weights(self, batch):
    return (batch["decoder_target_tokens"] > 0).astype(jnp.float32)

  def normalizer(self, num_labelled):
    return jnp.maximum(num_labelled, 1.0)

  def _token_log_probs(self, params, batch):
    targets = batch["decoder_target_tokens"]
    log_probs = self.log_probs(params, batch)
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0], log_probs

  def score_batch(self, params, batch):
    return jnp.sum(self._token_log_probs(params, batch)[0] * self.loss_weights(batch), axis=1)

  def loss_fn(self, params, batch, dropout_rng=None, normalizer=None):
    del dropout_rng
    weights = self.loss_weights(batch)
    normalizer = self.normalizer(weights.sum()) if normalizer is None else normalizer
    token_log_probs, log_probs = self._token_log_probs(params, batch)
    correct = jnp.argmax(log_probs, -1) == batch["decoder_target_tokens"]
    metrics = {"loss_sum": -jnp.sum(token_log_probs * weights), "z_loss_sum": jnp.zeros(()),
               "correct": jnp.sum(correct * weights), "num_tokens": weights.sum()}
    return metrics["loss_sum"] / normalizer, metrics

  def predict_batch_with_aux(self, params, batch, rng=None):
    del rng
    log_probs = self.log_probs(params, batch)
    return (jnp.argmax(log_probs, -1).astype(jnp.int32),
            {"scores": jnp.sum(jnp.max(log_probs, -1), -1)})

  def predict_batch(self, params, batch, rng=None):
    return self.predict_batch_with_aux(params, batch, rng)[0]


def test_every_model_kind_implements_the_contract():
  config = u.tiny_model().config
  kinds = [u.tiny_model(), heads.SequenceClassificationModel(config),
           heads.TokenClassificationModel(config), heads.QuestionAnsweringModel(config),
           BagOfWordsModel(BagConfig(8, 4, 2))]
  assert [model_interface.missing_members(m) for m in kinds] == [[]] * 5
  assert [isinstance(m, model_interface.Model) for m in kinds] == [True] * 5
  assert {"loss_fn", "can_pack", "initial_checkpoint_params"} <= set(
      model_interface.missing_members(object()))


def test_a_model_kind_defined_here_runs_in_train_eval_infer_and_score(tmp_path, caplog):
  model = BagOfWordsModel(BagConfig(vocab_size=4224, d_model=16,
                                   targets_length=u.LENGTHS["targets"]))
  caplog.set_level("INFO")
  state, _ = train.train(
      model_dir=str(tmp_path / "run"), train_steps=40, model=model,
      # pack=True is turned off by the run mode: the model cannot pack.
      train_dataset=settings.DatasetConfig(u.TASK, u.LENGTHS, batch_size=16, pack=True),
      optimizer=optimizers.adafactor(optimizers.constant_schedule(0.1)),
      checkpoint=settings.CheckpointConfig(period=1000, keep=None),
      evaluation=settings.EvalConfig(steps=0), log_period=1000, progress_bar=False)
  assert int(state.step) == 40 and set(state.params) == {"embedding", "output", "positions"}
  assert "BagOfWordsModel keeps one example per row: training unpacked" in caplog.text

  results = evaluate.evaluate(**u.common(), batch_size=8, model=model,
                              model_dir=str(tmp_path / "run"))
  metrics = results[40]
  predictions = u.read_jsonl(tmp_path / "run" / "eval_validation_predictions" / "40.jsonl")
  assert len(predictions) == u.NUM_VALIDATION
  # The reported metrics are those of the written predictions; the word is in the input.
  right = [p["prediction"] == p["targets"] for p in predictions]
  assert metrics[f"{u.TASK}/exact_match"] == pytest.approx(100.0 * np.mean(right))
  assert metrics[f"{u.TASK}/exact_match"] == 100.0

  checkpoint = str(tmp_path / "run" / "checkpoints" / "40")
  params = jax.device_get(restore.restore_model_params(model, partitioning.Partitioner(),
                                                       checkpoint))
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: np.array_equal(a, b), params, jax.device_get(state.params)))
  args = dict(u.common(), checkpoint_path=checkpoint, batch_size=8, model=model)
  inferred = u.read_jsonl(infer.infer(**args, output_dir=str(tmp_path / "infer")))
  scored = u.read_jsonl(infer.score(**args, output_dir=str(tmp_path / "score")))
  assert [r["prediction"] for r in inferred] == [p["prediction"] for p in predictions]

  # Scores against numpy in float64 from the restored parameters: the targets' summed log p.
  vocabulary = seqio.get_mixture_or_task(u.TASK).output_features["inputs"].vocabulary
  emb, out, pos = (np.asarray(params[k], np.float64) for k in ("embedding", "output",
                                                               "positions"))
  want = []
  for row in scored:
    logits = (emb[vocabulary.encode(row["inputs"]) + [1]].mean(0) + pos) @ out
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
        -1, keepdims=True)) - logits.max(-1, keepdims=True)
    targets = vocabulary.encode(row["targets"]) + [1]
    want.append(sum(log_probs[i, t] for i, t in enumerate(targets)))
  # float32 log-softmax over 4224 logits of magnitude ~10: errors of a few 1e-6 per token.
  np.testing.assert_allclose([r["score"] for r in scored], want, atol=1e-4)
  assert metrics[f"{u.TASK}/mean_log_likelihood"] == pytest.approx(np.mean(want), abs=1e-4)


# What may appear as isinstance's second argument in library code: no model class or module.
_MODEL_KIND = re.compile(r"isinstance\([^)]*,\s*\(?[^)]*(Model\b|heads\.|encoder_decoder\.|models_lib)")


def test_no_library_module_asks_which_kind_of_model_it_holds():
  package = pathlib.Path(encoder_decoder.__file__).parents[1]
  found = [f"{path.relative_to(package)}:{n}: {line.strip()}"
           for path in sorted(package.rglob("*.py"))
           for n, line in enumerate(path.read_text().splitlines(), 1)
           if _MODEL_KIND.search(line)]
  assert found == []
  assert _MODEL_KIND.search("if isinstance(model, heads.EncoderHeadModel):")
  assert _MODEL_KIND.search("isinstance(m, (encoder_decoder.EncoderDecoderModel, int))")
  assert not _MODEL_KIND.search("isinstance(value, (int, float))")


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("recipe,kind", [
    ("glue_sst2_encoder.gin", heads.SequenceClassificationModel),
    ("conll_token_cls.gin", heads.TokenClassificationModel),
    ("squad_qa.gin", heads.QuestionAnsweringModel),
    ("quickstart.gin", encoder_decoder.EncoderDecoderModel)])
def test_a_recipe_model_is_the_model_of_every_run_mode(clean_gin, tmp_path, recipe, kind):
  for mode, name in configurables.RUN_MODE_NAMES.items():
    gin.clear_config()
    gin_utils.parse([f"recipes/{recipe}"] + ([] if mode == "train" else [f"runs/{mode}.gin"]),
                    [], finalize=False, register_builtin_tasks=False)
    bound = gin.query_parameter(f"{name}.model")  # %MODEL
    assert (bound.configurable.wrapped, bound.scopes[-1]) == (gin.config.macro, "MODEL")
    assert gin.query_parameter("MODEL/gin.macro.value").configurable.wrapped is kind, mode
  # An older recipe's own `train.model = @X()` still wins for training (the later binding).
  gin.clear_config()
  gin_utils.parse([f"recipes/{recipe}"], ["train.model = @TokenClassificationModel()"],
                  finalize=False, register_builtin_tasks=False)
  assert gin.query_parameter("train.model").configurable.wrapped is heads.TokenClassificationModel
  # The run mode itself: exporting the sequence head fails naming it, before any checkpoint.
  gin.clear_config()
  gin_utils.parse(["recipes/glue_sst2_encoder.gin", "runs/export.gin"],
                  [f"CHECKPOINT_PATH={tmp_path}", f"OUTPUT_DIR={tmp_path / 'hf'}"],
                  register_builtin_tasks=False, run_mode="export")
  with pytest.raises(ValueError, match="no counterpart for a SequenceClassificationModel"):
    configurables.RUN_MODES["export"]()
