"""Training: loss goes down, microbatching is exact, resume is exact, finetuning starts from a
checkpoint, and the gin entry point (quickstart recipe, errors) works."""

import logging
import os
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5x_lite import main
from t5x_lite import settings
from t5x_lite.checkpointing import restore
from t5x_lite.checkpointing import step_record
from t5x_lite.checkpointing import summaries
from t5x_lite.config import gin_scan
from t5x_lite.data import pipeline
from t5x_lite.model import encoder_decoder, network
from t5x_lite.modes import train
from t5x_lite.parallel import partitioning
from t5x_lite.training import optimizers
from t5x_lite.training import trainer
from tree_utils import tree_max_abs_diff

TASK = "embedded_copy_zeroshot"
LENGTHS = {"inputs": 32, "targets": 16}
NO_EVAL = settings.EvalConfig(steps=0)


def tiny_model(**overrides):
  # One layer per stack keeps compiles short; the loss test still learns the copy task.
  cfg = dict(vocab_size=4224, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_encoder_layers=1,
             num_decoder_layers=1, dropout_rate=0.0)
  cfg.update(overrides)
  return encoder_decoder.EncoderDecoderModel(network.T5Config(**cfg))


def run(model_dir, steps, **kwargs):
  args = dict(model_dir=str(model_dir), train_steps=steps, model=tiny_model(),
              train_dataset=settings.DatasetConfig(TASK, LENGTHS, batch_size=8),
              optimizer=optimizers.adafactor(optimizers.constant_schedule(1e-2)),
              checkpoint=settings.CheckpointConfig(period=1000), evaluation=NO_EVAL,
              log_period=1, progress_bar=False)
  args.update(kwargs)
  return train.train(**args)


def history(model_dir):
  return summaries.read_history(os.path.join(model_dir, "train_metrics.jsonl"))


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_loss_goes_down_and_outputs_are_written(tmp_path):
  run(tmp_path, 40, evaluation=settings.EvalConfig(steps=2), run_config=lambda: "A = 1\n")
  losses = [row["loss"] for row in history(tmp_path)]
  assert len(losses) == 40
  assert np.mean(losses[-5:]) < losses[0] - 2.0, losses
  for name in ("config.gin", "loss.png", "eval_metrics.jsonl", "checkpoints/40/state"):
    assert os.path.exists(tmp_path / name), name
  assert (tmp_path / "config.gin").read_text() == "A = 1\n"  # what run_config returned
  assert os.listdir(tmp_path / "train")  # TensorBoard event file
  row = history(tmp_path)[-1]
  assert set(row) >= {"loss", "accuracy", "z_loss", "learning_rate", "tokens_per_second",
                      "nonpadding_fraction"}
  assert row["learning_rate"] == pytest.approx(1e-2)


def test_a_starved_input_pipeline_shows_in_the_train_summaries(tmp_path, monkeypatch):
  """Each batch held back 0.3 s on the host: the summaries report that wait per step."""
  next_batch = pipeline.DatasetIterator.__next__

  def slow_next(self):
    time.sleep(0.3)
    return next_batch(self)

  monkeypatch.setattr(pipeline.DatasetIterator, "__next__", slow_next)
  run(tmp_path, 4, log_period=2)
  rows = history(tmp_path)
  assert [r["step"] for r in rows] == [2, 4]
  for row in rows:
    assert 0.3 <= row["input_seconds_per_step"] < 1.0, row
  # The first window also holds the compile; the second is mostly waiting.
  assert 0.5 < rows[-1]["input_wait_fraction"] <= 1.0, rows[-1]


def synthetic_batch(seed=0):
  rng = np.random.RandomState(seed)
  tgt = rng.randint(2, 300, (8, 12)).astype(np.int32)
  tgt[:, 9:] = 0
  enc = rng.randint(2, 300, (8, 16)).astype(np.int32)
  enc[::2, 12:] = 0
  dec = np.concatenate([np.zeros((8, 1), np.int32), tgt[:, :-1]], 1)
  return dict(encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=tgt,
              decoder_loss_weights=(tgt > 0).astype(np.int32))


@pytest.mark.parametrize("dropout_rate", [0.0, 0.1])
def test_microbatched_update_equals_full_batch_update(dropout_rate):
  batch = synthetic_batch()
  shapes = {k: v.shape for k, v in batch.items()}
  results = []
  for num_microbatches in (1, 4):
    t = trainer.Trainer(tiny_model(dropout_rate=dropout_rate), optimizers.adafactor(),
                        partitioning.Partitioner(), num_microbatches=num_microbatches)
    state = t.init_state(shapes)
    losses = []
    for _ in range(2):
      state, metrics = t.train_step(state, batch)
      losses.append(float(metrics["loss"]))
    results.append((state.params, losses))
  np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
  assert tree_max_abs_diff(results[0][0], results[1][0]) < 1e-5


def test_constant_loss_normalizing_factor_with_microbatches():
  """A constant factor C (t5x pretraining): as in t5x, each microbatch's loss is its sum / C
  and the gradients add up, so the gradient of a step in 2 microbatches is that of the full
  batch's summed loss / C: the full-batch token-mean gradient times (real target tokens / C).

  The gradient fixes the update (Adafactor is blind to its scale, so it is compared here).
  Tolerance: float32 sums of 8 rows x 12 tokens in other orders, 1e-5 of the largest entry.
  """
  batch = synthetic_batch()
  tokens = int(np.sum(batch["decoder_loss_weights"]))
  factor = 233472.0
  config = tiny_model(dropout_rate=0.1).config
  params = trainer.Trainer(encoder_decoder.EncoderDecoderModel(config), optimizers.adafactor(),
                           partitioning.Partitioner()).init_state(
                               {k: v.shape for k, v in batch.items()}).params

  def grads(num_microbatches, **model_args):
    t = trainer.Trainer(encoder_decoder.EncoderDecoderModel(config, **model_args), optimizers.adafactor(),
                        partitioning.Partitioner(), num_microbatches=num_microbatches)
    step = jax.jit(t._grads_and_metrics)  # pylint: disable=protected-access
    return jax.device_get(step(params, batch, jnp.zeros((), jnp.int32))[0])

  mean = grads(1)  # loss_normalizing_factor "NUM_REAL_TARGET_TOKENS"
  expected = jax.tree_util.tree_map(lambda g: g * (tokens / factor), mean)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(expected))
  got = grads(2, loss_normalizing_factor=factor)
  assert tree_max_abs_diff(got, expected) <= 1e-5 * scale


def test_activation_partitioning_off_trains_like_on():
  """standard_logical_axis_rules.activation_partitioning = False, two steps on one device.

  Only the activations' sharding constraints change (to replicated), and on one device
  they place nothing: the same float32 program, so parameters agree to float32 rounding.
  The (4,2) mesh with this setting is not part of the 8-device layouts of test_partitioning.
  """
  batch = synthetic_batch()
  results = []
  start = None
  for activation_partitioning in (True, False):
    rules = partitioning.standard_logical_axis_rules(
        activation_partitioning=activation_partitioning)
    assert dict(rules)["activation_mlp"] == ("model" if activation_partitioning else None)
    t = trainer.Trainer(tiny_model(dropout_rate=0.1), optimizers.adafactor(),
                        partitioning.Partitioner(logical_axis_rules=rules))
    if start is None:
      start = t.init_state({k: v.shape for k, v in batch.items()})
    state, losses = jax.tree_util.tree_map(jnp.copy, start), []  # train_step donates it
    for _ in range(2):
      state, metrics = t.train_step(state, batch)
      losses.append(float(metrics["loss"]))
    results.append((jax.device_get(state.params), losses))
  np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-6)
  assert tree_max_abs_diff(results[1][0], results[0][0]) < 1e-6


def test_dropout_is_active_in_training_and_reproducible():
  batch = synthetic_batch()
  shapes = {k: v.shape for k, v in batch.items()}

  def first_step_losses():
    t = trainer.Trainer(tiny_model(dropout_rate=0.3), optimizers.adafactor(),
                        partitioning.Partitioner())
    state = t.init_state(shapes)
    metrics = t.eval_step(state.params, batch)  # deterministic (before donation to train_step)
    eval_loss = float(metrics["loss_sum"] / metrics["num_tokens"])
    _, train_metrics = t.train_step(state, batch)
    return float(train_metrics["loss"]), eval_loss

  first, second = first_step_losses(), first_step_losses()
  assert first == second
  assert abs(first[0] - first[1]) > 1e-3


def saved_params(model_dir, step):
  with ocp.PyTreeCheckpointer() as checkpointer:
    path = restore.state_path(os.path.join(model_dir, "checkpoints", str(step)))
    return checkpointer.restore(path)["params"]


def test_learning_rate_after_a_skipped_step_follows_the_step_and_is_logged(tmp_path,
                                                                            monkeypatch):
  """A decaying schedule, step 2 non-finite (skipped), a resume after step 3.

  With decay_rate 0 (beta2 = 0) and no parameter scale, Adafactor moves every element of an
  unfactored parameter with a non-zero gradient by exactly the learning rate (g / |g|): the
  largest change of the relative-position table between two checkpoints is the learning
  rate the step applied.
  """
  grads_and_metrics = trainer.Trainer._grads_and_metrics  # pylint: disable=protected-access

  def poisoned(self, params, batch, step):  # NaN loss and gradients at step 2 (1-based)
    grads, metrics = grads_and_metrics(self, params, batch, step)
    factor = jnp.where(step + 1 == 2, jnp.nan, 1.0)
    return (jax.tree_util.tree_map(lambda g: g * factor, grads),
            dict(metrics, loss_sum=metrics["loss_sum"] * factor))

  monkeypatch.setattr(trainer.Trainer, "_grads_and_metrics", poisoned)
  schedule = optimizers.linear_decay_schedule(1e-2, warmup_steps=0, decay_steps=8)
  args = dict(optimizer=optimizers.adafactor(schedule, decay_rate=0.0,
                                             multiply_by_parameter_scale=False),
              checkpoint=settings.CheckpointConfig(period=1, keep=None))
  run(tmp_path, 3, **args)
  run(tmp_path, 5, **args)
  logged = {r["step"]: r["learning_rate"] for r in history(tmp_path)}
  table = lambda step: np.asarray(saved_params(tmp_path, step)["encoder"]["relpos_bias"][
      "rel_embedding"], np.float64)
  assert np.max(np.abs(table(2) - table(1))) == 0.0  # the skipped update
  for step in (3, 4, 5):  # the update of row `step` is made at TrainState.step = step - 1
    applied = np.max(np.abs(table(step) - table(step - 1)))
    # Float32 rounding of parameters ~0.1-1 moved by ~1e-2: below 1e-5 relative.
    assert applied == pytest.approx(float(schedule(step - 1)), rel=1e-5), step
    assert logged[step] == pytest.approx(float(schedule(step - 1)), rel=1e-6), step


def test_resume_is_exact_including_data_order(tmp_path):
  """With dropout on, so the dropout random stream must resume too (a run without dropout
  resumes by the same path, with one stream fewer to get right)."""
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  every_3 = settings.CheckpointConfig(period=3)
  model = tiny_model(dropout_rate=0.1)
  final_straight, _ = run(straight, 6, checkpoint=every_3, model=model)
  run(resumed, 3, checkpoint=every_3, model=model)
  final_resumed, _ = run(resumed, 6, checkpoint=every_3, model=model)
  assert tree_max_abs_diff(final_straight.params, final_resumed.params) < 1e-5
  losses_straight = [r["loss"] for r in history(straight)]
  losses_resumed = [r["loss"] for r in history(resumed)]
  np.testing.assert_allclose(losses_resumed, losses_straight, rtol=1e-5)


def test_finetune_starts_from_checkpoint_and_resume_wins(tmp_path, caplog, monkeypatch):
  base, _ = run(tmp_path / "base", 3)
  started = {}
  original = train.restore_or_init

  def spy(*args, **kwargs):  # the state finetuning starts from, before any step
    state = original(*args, **kwargs)
    started["step"], started["params"] = jax.device_get((state.step, state.params))
    return state

  monkeypatch.setattr(train, "restore_or_init", spy)
  initial = settings.RestoreConfig(str(tmp_path / "base" / "checkpoints" / "3"))
  run(tmp_path / "ft", 1, initial_checkpoint=initial)
  assert tree_max_abs_diff(jax.device_get(base.params), started["params"]) == 0.0
  assert started["step"] == 0  # a fresh optimizer and step count
  latest = settings.RestoreConfig(str(tmp_path / "base" / "checkpoints"))
  run(tmp_path / "ft", 2, initial_checkpoint=latest)
  with caplog.at_level(logging.INFO):
    state, _ = run(tmp_path / "ft", 3, initial_checkpoint=latest)
  assert int(state.step) == 3
  assert "resuming from it" in caplog.text and "is ignored" in caplog.text


def test_bfloat16_activations_train_and_restore_casts(tmp_path):
  """bf16 activations: the loss falls, parameters and optimizer state stay float32, and a
  restore into a bf16-parameter model casts them."""
  model = tiny_model(dtype="bfloat16")
  state, _ = run(tmp_path, 30, model=model)
  losses = [row["loss"] for row in history(tmp_path)]
  assert np.mean(losses[-5:]) < losses[0] - 1.0, losses
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves((state.params, state.opt_state))
            if hasattr(x, "dtype") and x.ndim}
  assert dtypes == {np.dtype("float32")}
  bf16_model = tiny_model(dtype="bfloat16", param_dtype="bfloat16")
  restored = restore.restore_model_params(bf16_model, partitioning.Partitioner(),
                                          str(tmp_path / "checkpoints"))
  for got, saved in zip(jax.tree_util.tree_leaves(restored),
                        jax.tree_util.tree_leaves(jax.device_get(state.params))):
    assert got.dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32),
                                  np.asarray(saved.astype(jax.numpy.bfloat16), np.float32))


def test_restore_optimizer_state_from_an_initial_checkpoint(tmp_path, monkeypatch):
  """RestoreConfig.restore_optimizer_state: a new run starts from the checkpoint's parameters,
  optimizer state and step (without it: the parameters, a fresh optimizer, step 0)."""
  at_step_2 = jax.device_get(run(tmp_path / "base", 2)[0])
  started = {}
  original = train.restore_or_init

  def spy(*args, **kwargs):
    state = original(*args, **kwargs)
    started["state"] = jax.device_get(state)
    return state

  monkeypatch.setattr(train, "restore_or_init", spy)
  checkpoint = str(tmp_path / "base" / "checkpoints" / "2")
  run(tmp_path / "with_opt", 3,
      initial_checkpoint=settings.RestoreConfig(checkpoint, restore_optimizer_state=True))
  assert int(started["state"].step) == 2
  assert tree_max_abs_diff(started["state"].params, at_step_2.params) == 0.0
  assert tree_max_abs_diff(started["state"].opt_state, at_step_2.opt_state) == 0.0
  run(tmp_path / "fresh_opt", 1, initial_checkpoint=settings.RestoreConfig(checkpoint))
  assert int(started["state"].step) == 0
  assert tree_max_abs_diff(started["state"].params, at_step_2.params) == 0.0
  assert tree_max_abs_diff(started["state"].opt_state, at_step_2.opt_state) > 0.0


def test_keep_best_checkpoint_by_eval_metric(tmp_path):
  run(tmp_path, 6, checkpoint=settings.CheckpointConfig(
          period=2, keep=1, keep_best_metric="loss", keep_best_mode="max"),  # keep the worst
      evaluation=settings.EvalConfig(period=2, steps=1))
  evals = {row["step"]: row["loss"]
           for row in summaries.read_history(tmp_path / "eval_metrics.jsonl")}
  assert sorted(evals) == [2, 4, 6]
  worst = max(evals, key=evals.get)
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept == [worst]


def test_initial_checkpoint_with_wrong_shapes_names_each_parameter(tmp_path):
  run(tmp_path / "base", 1)
  with pytest.raises(ValueError) as error:
    run(tmp_path / "ft", 1, model=tiny_model(d_ff=96),
        initial_checkpoint=settings.RestoreConfig(str(tmp_path / "base" / "checkpoints" / "1")))
  message = str(error.value)
  assert "encoder/layers_0/mlp/wi/kernel: checkpoint (64, 128) vs model (64, 96)" in message
  assert "decoder/layers_0/mlp/wo/kernel: checkpoint (128, 64) vs model (96, 64)" in message


def test_checkpoint_of_another_vocabulary_names_both_sizes():
  shape = lambda *dims: jax.ShapeDtypeStruct(dims, np.float32)
  with pytest.raises(ValueError) as error:
    step_record.check_shapes({"token_embedder": {"embedding": shape(32128, 8)}},
                             {"token_embedder": {"embedding": shape(4224, 8)}}, "/ckpt/7")
  message = str(error.value)
  assert "token_embedder/embedding: checkpoint (32128, 8) vs model (4224, 8)" in message
  assert "embedding has 32128 rows, the model's T5Config.vocab_size is 4224" in message


def test_quickstart_recipe_parses_and_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a relative MODEL_DIR, as `make demo` passes
  model_dir = tmp_path / "quick"
  main.main(["--gin_file=recipes/quickstart.gin", "--gin.MODEL_DIR=quick",
             "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2", "--gin.EvalConfig.steps=1",
             "--gin.EvalConfig.infer_eval_num_examples=2",
             "--gin.train.log_period=1", "--gin.train.progress_bar=False"])
  assert os.path.isdir(model_dir / "checkpoints" / "2")
  operative = (model_dir / "config.gin").read_text()
  assert "MODEL_DIR = 'quick'" in operative
  assert "T5Config.d_model = 128" in operative
  assert len(history(model_dir)) == 2


def test_bare_string_bindings():
  assert gin_scan.normalize_binding("MODEL_DIR=experiments/x") == (
      "MODEL_DIR = 'experiments/x'")
  assert gin_scan.normalize_binding("TRAIN_STEPS=10") == "TRAIN_STEPS = 10"
  assert gin_scan.normalize_binding("X=gs://b/run") == "X = 'gs://b/run'"
  assert gin_scan.normalize_binding("F={'inputs': 8}") == "F = {'inputs': 8}"
  assert gin_scan.normalize_binding("M=@adafactor()") == "M = @adafactor()"


def test_gin_typos_name_the_closest_valid_name(tmp_path):
  with pytest.raises(ValueError, match="Did you mean: adafactor"):
    main.main(["--gin_file=recipes/quickstart.gin", "--gin.adafactr.decay_rate=0.5"])
  gin.clear_config()
  with pytest.raises(ValueError, match="Did you mean: decay_rate"):
    main.main(["--gin_file=recipes/quickstart.gin", "--gin.adafactor.decay_rat=0.5"])


def test_missing_required_macro_is_named(tmp_path):
  with pytest.raises(ValueError, match="macro MODEL_DIR is required: set it with --gin.MODEL_DIR"):
    main.main(["--gin_file=recipes/quickstart.gin", "--gin.train.progress_bar=False"])


def _validation_emptied_task(name):
  """A task whose train split has examples and whose validation split a filter empties."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from t5x_lite.tasks import vocab  # pylint: disable=g-import-not-at-top
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  examples = lambda split, shuffle_files=False, seed=None: tf.data.Dataset.from_tensor_slices(
      {"inputs": [f"copy {split} {i}" for i in range(16)],
       "targets": [f"{split} {i}" for i in range(16)]})
  keep_train = lambda ds: ds.filter(lambda ex: tf.strings.regex_full_match(
      ex["targets"], "train.*"))
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(examples, splits=("train", "validation")),
      preprocessors=[keep_train, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features={k: seqio.Feature(vocab.default_vocabulary()) for k in ("inputs",
                                                                               "targets")})


def test_an_empty_eval_split_stops_the_run_before_the_first_step(tmp_path, monkeypatch):
  # Before: the empty split was found only at the first evaluation, after training steps.
  name = "test_train_empty_validation"
  _validation_emptied_task(name)
  def no_step(self, state, batch):
    raise AssertionError("a training step ran")
  monkeypatch.setattr(trainer.Trainer, "train_step", no_step)
  with pytest.raises(pipeline.EmptyDatasetError) as error:
    run(tmp_path, 2, evaluation=settings.EvalConfig(period=1, steps=1,
                                                      mixture_or_task_name=name))
  assert str(error.value) == (
      f"task '{name}' split 'validation' yielded no examples (its source has 16 examples but "
      "none after its preprocessors: preprocessor 1 of 3 (<lambda>) removes every one).")
  assert not os.path.exists(tmp_path / "checkpoints")
