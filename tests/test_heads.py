"""Encoder heads (t5x_lite/model/heads.py, head_features.py): HF parity, parameter counts, losses
against NumPy / torch references, span decoding, converters and their errors, Adafactor and
partitioning rules for the label axis."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers

import hf_utils
from t5x_lite.data import head_features
from t5x_lite.interop import hf_checkpoint
from t5x_lite.model import heads, network
from t5x_lite.parallel import partitioning
from t5x_lite.training import optimizers, trainer

RELU = network.T5Config(vocab_size=96, d_model=32, d_ff=48, d_kv=12, num_heads=3,
                        num_encoder_layers=3, num_decoder_layers=2, dropout_rate=0.0)
GATED = network.T5Config(vocab_size=80, d_model=24, d_ff=40, d_kv=8, num_heads=4,
                         num_encoder_layers=2, num_decoder_layers=3, feed_forward="gated-gelu",
                         tie_word_embeddings=False, dropout_rate=0.0)
# One layer: the loss and prediction tests run the model op by op (no jit).
SMALL = network.T5Config(vocab_size=96, d_model=16, d_ff=16, d_kv=8, num_heads=2,
                         num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
# T5-Efficient-TINY (gin/models/tiny.gin).
TINY = network.T5Config(vocab_size=32128, d_model=256, d_ff=1024, d_kv=64, num_heads=4,
                        num_encoder_layers=4, num_decoder_layers=4)


def init_params(model, length=4, seed=0):
  """Unboxed random params with every leaf perturbed (norm scales away from 1, biases from 0)."""
  boxed = jax.jit(lambda r: model.init(r, {"encoder_input_tokens": (1, length)}))(
      jax.random.PRNGKey(seed))
  leaves, treedef = jax.tree_util.tree_flatten(nn.unbox(boxed))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(
      treedef, [x + 0.2 * rng.standard_normal(x.shape).astype(np.float32) for x in leaves])


def count(model):
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             {"encoder_input_tokens": (1, 8)}))
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(nn.unbox(shapes)))


def hf_encoder_output(model, enc):
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(enc).long(),
                 attention_mask=torch.from_numpy((enc > 0).astype(np.int64))).last_hidden_state.numpy()


# ------------------------------------------------------------------------ HF parity ---


@pytest.mark.parametrize("config", [RELU, dataclasses.replace(GATED, scan_layers=True)],
                         ids=["relu_tied", "gated_untied_scan"])
def test_encoder_output_equals_hf_t5_encoder_model(config, tmp_path):
  """Import (a HF encoder-decoder's encoder) and export (T5EncoderModel) on the same weights."""
  hf_utils.hf_model(config).save_pretrained(str(tmp_path / "ed"))
  hf_encoder = transformers.T5EncoderModel.from_pretrained(str(tmp_path / "ed")).eval()
  loaded_config, encoder_params = hf_checkpoint.load_hf_encoder(str(tmp_path / "ed"),
                                                          dropout_rate=0.0,
                                                          scan_layers=config.scan_layers)
  assert "decoder" not in encoder_params
  model = heads.SequenceClassificationModel(loaded_config)
  params = dict(init_params(model), **encoder_params)
  enc, _, _ = hf_utils.random_batch(config, enc_len=13)
  ours = np.asarray(model.module.apply({"params": params}, enc,
                                       method=heads.EncoderHeadNetwork.encode))
  expected = hf_encoder_output(hf_encoder, enc)
  real = enc > 0  # padded positions differ by design (tests/test_network.py)
  assert real.sum() < real.size
  assert np.abs(ours - expected)[real].max() <= 1e-4
  assert np.abs(expected[real]).mean() > 0.1

  hf_checkpoint.save_hf_encoder(params, loaded_config, str(tmp_path / "enc"))
  exported, info = transformers.T5EncoderModel.from_pretrained(str(tmp_path / "enc"),
                                                               output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert np.abs(hf_encoder_output(exported.eval(), enc) - expected)[real].max() == 0.0


@pytest.mark.parametrize("config", [RELU, GATED], ids=["relu_tied", "gated_untied"])
def test_token_classification_logits_equal_hf_after_export(config, tmp_path):
  model = heads.TokenClassificationModel(config, num_labels=5)
  params = init_params(model)
  hf_checkpoint.save_hf_token_classifier(params, config, str(tmp_path), label_names="ABCDE")
  hf, info = transformers.T5ForTokenClassification.from_pretrained(str(tmp_path),
                                                                   output_loading_info=True)
  hf.eval()
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert hf.config.num_labels == 5 and hf.config.id2label[4] == "E"
  assert sum(p.numel() for p in hf.parameters()) == count(model)
  enc, _, _ = hf_utils.random_batch(config, enc_len=13)
  labels = np.random.default_rng(1).integers(0, 5, enc.shape)
  labels[enc == 0] = -100  # torch's ignore index on padding
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(enc).long(),
             attention_mask=torch.from_numpy((enc > 0).astype(np.int64)),
             labels=torch.from_numpy(labels).long())
  batch = {"encoder_input_tokens": enc,
           "encoder_target_tokens": np.where(enc > 0, labels + 1, 0).astype(np.int32),
           "encoder_loss_weights": (enc > 0).astype(np.int32)}
  logits = np.asarray(model.outputs(params, batch))
  real = enc > 0
  assert np.abs(logits - out.logits.numpy())[real].max() <= 1e-4
  # Mean cross-entropy over labelled tokens: torch's CrossEntropyLoss with ignore_index.
  loss, metrics = model.loss_fn(params, batch)
  assert float(loss) == pytest.approx(float(out.loss), abs=1e-5)
  assert float(metrics["num_tokens"]) == real.sum()
  # Import gives back the same parameters, bit for bit.
  loaded_config, loaded = hf_checkpoint.load_hf_token_classifier(str(tmp_path), dropout_rate=0.0)
  assert loaded_config == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)


def test_parameter_counts_on_t5_efficient_tiny():
  """A head model is the encoder (with the shared embedding) plus its head, no decoder."""
  encoder_decoder = network.count_params(TINY)
  assert encoder_decoder == 15_570_688
  embedding = 32128 * 256
  layer = 4 * 256 * 256 + 2 * 256 * 1024 + 2 * 256  # attention, relu MLP, two norm scales
  encoder = embedding + 4 * layer + 4 * 32 + 256  # + relative bias table, final norm
  assert encoder == 11_372_928
  with torch.device("meta"):
    hf_tiny = hf_utils.hf_config(TINY)
    assert sum(p.numel() for p in transformers.T5EncoderModel(hf_tiny).parameters()) == encoder
    hf_tiny.num_labels = 9
    hf_token = transformers.T5ForTokenClassification(hf_tiny)
  assert count(heads.SequenceClassificationModel(TINY, num_labels=2)) == encoder + 256 * 2 + 2
  assert count(heads.SequenceClassificationModel(TINY, pre_classifier=True)) == (
      encoder + 256 * 256 + 256 + 256 * 2 + 2)
  assert count(heads.QuestionAnsweringModel(TINY)) == encoder + 256 * 2 + 2
  assert count(heads.TokenClassificationModel(TINY, num_labels=9)) == encoder + 256 * 9 + 9 == (
      sum(p.numel() for p in hf_token.parameters()))
  # 73% of the encoder-decoder with the 8.2M shared embedding; of the two stacks' layers
  # the encoder's are 43% (decoder layers also cross-attend).
  assert encoder / encoder_decoder == pytest.approx(0.7304, abs=1e-4)
  assert (encoder - embedding) / (encoder_decoder - embedding) == pytest.approx(0.4286, abs=1e-4)


# ---------------------------------------------------------------- losses and decoding ---


def test_pooling_against_numpy():
  rng = np.random.default_rng(0)
  encoded = rng.standard_normal((3, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(heads.pool(encoded, mask, "first"), encoded[:, 0])
  mean = [encoded[i][mask[i]].mean(0) if mask[i].any() else np.zeros(4) for i in range(3)]
  np.testing.assert_allclose(heads.pool(encoded, mask, "mean"), mean, rtol=1e-6)
  top = [encoded[i][mask[i]].max(0) if mask[i].any() else np.zeros(4) for i in range(3)]
  np.testing.assert_array_equal(heads.pool(encoded, mask, "max"), top)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(
      -1, keepdims=True)


def test_sequence_classification_loss_scores_and_predictions():
  model = heads.SequenceClassificationModel(SMALL, num_labels=3, pooling="mean")
  params = init_params(model)
  enc, _, _ = hf_utils.random_batch(SMALL, batch=4, enc_len=9)
  enc[3] = 0  # a padding row (as run_batches adds)
  batch = {"encoder_input_tokens": enc, "labels": np.array([2, -1, 0, 1], np.int32)}
  log_probs = _log_softmax(model.outputs(params, batch))
  loss, metrics = model.loss_fn(params, batch)
  # Rows 0 and 2 carry labels; row 1 is unlabelled (-1), row 3 padding.
  assert float(metrics["num_tokens"]) == 2
  assert float(loss) == pytest.approx(-(log_probs[0, 2] + log_probs[2, 0]) / 2, rel=1e-5)
  expected_correct = int(log_probs[0].argmax() == 2) + int(log_probs[2].argmax() == 0)
  assert float(metrics["correct"]) == expected_correct
  np.testing.assert_allclose(model.score_batch(params, batch)[:3],
                             [log_probs[0, 2], log_probs[1, 0], log_probs[2, 0]], rtol=1e-5)
  ids, aux = model.predict_batch_with_aux(params, batch)
  np.testing.assert_array_equal(ids[:, 0], log_probs.argmax(-1) + 1)  # LabelVocabulary ids
  np.testing.assert_allclose(aux["scores"], log_probs.max(-1), rtol=1e-5, atol=1e-7)


def test_prediction_score_keeps_precision_near_certainty():
  """log p of a near-certain class stays distinct from 0 (the pair metric ranks by it)."""
  model = heads.SequenceClassificationModel(SMALL, num_labels=2)
  params = init_params(model)
  params["classifier"]["bias"] = np.array([0.0, 30.0], np.float32)
  enc, _, _ = hf_utils.random_batch(SMALL, batch=2)
  _, aux = model.predict_batch_with_aux(params, {"encoder_input_tokens": enc})
  logits = np.asarray(model.outputs(params, {"encoder_input_tokens": enc}), np.float64)
  margin = logits[:, 1] - logits[:, 0]
  np.testing.assert_allclose(aux["scores"], -np.log1p(np.exp(-margin)), rtol=1e-4)
  assert np.all(aux["scores"] < 0)


def test_regression_loss_is_squared_error():
  model = heads.SequenceClassificationModel(SMALL, regression=True)
  params = init_params(model)
  enc, _, _ = hf_utils.random_batch(SMALL)
  batch = {"encoder_input_tokens": enc, "labels": np.array([0.5, 3.0, 4.8], np.float32)}
  predicted = np.asarray(model.outputs(params, batch))[:, 0]
  loss, metrics = model.loss_fn(params, batch)
  assert float(loss) == pytest.approx(np.mean((predicted - batch["labels"]) ** 2), rel=1e-5)
  assert float(metrics["correct"]) == 0.0
  values, _ = model.predict_batch_with_aux(params, batch)
  np.testing.assert_allclose(values[:, 0], predicted, rtol=1e-5)  # jitted: same to rounding


def test_best_spans_against_brute_force():
  rng = np.random.default_rng(0)
  start, end = rng.standard_normal((2, 3, 9)).astype(np.float32)
  valid = rng.random((3, 9)) > 0.3
  valid[2] = False  # no span at all
  got = heads.best_spans(start, end, valid, max_answer_length=3)
  for b in range(3):
    spans = [(start[b, i] + end[b, j], i, j) for i in range(9) for j in range(i, min(i + 3, 9))
             if valid[b, i] and valid[b, j]]
    if not spans:
      assert got[2][b] == -np.inf
      continue
    score, i, j = max(spans)
    assert (int(got[0][b]), int(got[1][b])) == (i, j)
    assert float(got[2][b]) == pytest.approx(score, rel=1e-6)


def test_question_answering_loss_and_predicted_answer_tokens():
  model = heads.QuestionAnsweringModel(SMALL, max_answer_length=2)
  params = init_params(model)
  tokens = np.array([[7, 8, 9, 10, 11, 12, 1, 0], [7, 8, 20, 21, 22, 1, 0, 0]], np.int32)
  batch = {"encoder_input_tokens": tokens, "context_start": np.array([2, 2], np.int32),
           "start_positions": np.array([3, -1], np.int32),  # row 1: answer truncated away
           "end_positions": np.array([4, -1], np.int32)}
  logits = np.asarray(model.outputs(params, batch), np.float64)
  context = (np.arange(8)[None] >= 2) & (tokens > 1)
  start_lp = _log_softmax(np.where(context, logits[..., 0], -1e9))
  end_lp = _log_softmax(np.where(context, logits[..., 1], -1e9))
  loss, metrics = model.loss_fn(params, batch)
  assert float(metrics["num_tokens"]) == 1
  assert float(loss) == pytest.approx(-(start_lp[0, 3] + end_lp[0, 4]) / 2, rel=1e-5)
  answer, aux = model.predict_batch_with_aux(params, batch)
  for b in range(2):
    spans = [(start_lp[b, i] + end_lp[b, j], i, j) for i in range(8) for j in range(i, i + 2)
             if j < 8 and context[b, i] and context[b, j]]
    score, i, j = max(spans)
    expected = list(tokens[b, i:j + 1]) + [0] * (2 - (j + 1 - i))
    assert answer[b].tolist() == expected
    assert float(aux["scores"][b]) == pytest.approx(score, rel=1e-5)


# ---------------------------------------------------------------------- converters ---


def _convert(converter, examples, lengths):
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature={
      k: tf.TensorSpec(np.asarray(v).shape if np.ndim(v) == 0 else [None],
                       tf.string if isinstance(v, str) else tf.as_dtype(np.asarray(v).dtype))
      for k, v in examples[0].items()})
  return list(converter(ds, lengths).as_numpy_iterator())


def test_sequence_converter_features_and_label_outside_num_labels():
  converter = heads.SequenceClassificationModel(RELU, num_labels=2).feature_converter(False)
  ok = [{"inputs": np.array([5, 6, 1], np.int32), "targets": np.array([2], np.int32)},
        {"inputs": np.array([5, 1], np.int32), "targets": np.array([0], np.int32)}]
  out = _convert(converter, ok, {"inputs": 4, "targets": 1})
  assert [o["encoder_input_tokens"].tolist() for o in out] == [[5, 6, 1, 0], [5, 1, 0, 0]]
  assert [int(o["labels"]) for o in out] == [1, -1]  # id 2 is class 1; id 0 is no label
  bad = ok + [{"inputs": np.array([7, 1], np.int32), "targets": np.array([4], np.int32),
               "inputs_pretokenized": "mnli hypothesis: x premise: y"}]
  bad[0]["inputs_pretokenized"] = bad[1]["inputs_pretokenized"] = "fine"
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"label 3 is outside the classes 0\.\.1 of the model: set "
                           r"SequenceClassificationModel\.num_labels to the number of classes "
                           r"of the task \(gin\)\. Example: mnli hypothesis: x premise: y"):
    _convert(converter, bad, {"inputs": 4, "targets": 1})
  with pytest.raises(ValueError, match="pack = False"):
    heads.SequenceClassificationModel(RELU).feature_converter(True)


def test_token_converter_packs_and_refuses_bad_tags():
  converter = heads.TokenClassificationModel(RELU, num_labels=3).feature_converter(True)
  # Sub-word continuations and EOS carry no label (0), inside and at the end of sequences.
  examples = [{"inputs": np.array([5, 6, 8, 1], np.int32),
               "targets": np.array([2, 0, 3, 0], np.int32)},
              {"inputs": np.array([7, 9, 1], np.int32), "targets": np.array([3, 0, 0], np.int32)}]
  (row,) = _convert(converter, examples, {"inputs": 8, "targets": 8})
  assert row["encoder_input_tokens"].tolist() == [5, 6, 8, 1, 7, 9, 1, 0]
  assert row["encoder_target_tokens"].tolist() == [2, 0, 3, 0, 3, 0, 0, 0]
  assert row["encoder_loss_weights"].tolist() == [1, 0, 1, 0, 1, 0, 0, 0]
  assert row["encoder_segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 0]
  unpacked = heads.TokenClassificationModel(RELU, num_labels=3).feature_converter(False)
  rows = _convert(unpacked, examples, {"inputs": 5, "targets": 5})
  assert [r["encoder_target_tokens"].tolist() for r in rows] == [[2, 0, 3, 0, 0], [3, 0, 0, 0, 0]]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"label id 4 is outside the tag ids 1\.\.3 of the model: set "
                           r"TokenClassificationModel\.num_labels"):
    _convert(converter, [dict(examples[0], targets=np.array([4, 0, 0, 0], np.int32))],
             {"inputs": 8, "targets": 8})
  with pytest.raises(tf.errors.InvalidArgumentError, match="not aligned"):
    _convert(converter, [dict(examples[0], targets=np.array([2, 0], np.int32))],
             {"inputs": 8, "targets": 8})
  with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS\['targets'\] equal"):
    converter.get_model_feature_lengths({"inputs": 6, "targets": 4})


def test_qa_converter_drops_truncated_answers():
  converter = heads.QuestionAnsweringModel(RELU).feature_converter(False)
  # Inputs already cut to 6 tokens (data.get_dataset keeps EOS last), positions as before.
  examples = [{"inputs": np.array([2, 3, 4, 5, 6, 1], np.int32), "targets": np.array([5], np.int32),
               "start_position": np.int32(s), "end_position": np.int32(e),
               "context_start": np.int32(2)} for s, e in ((3, 4), (4, 5), (5, 6))]
  out = _convert(converter, examples, {"inputs": 6, "targets": 4})
  # Position 5 (inputs length - 1) may hold the EOS truncation keeps: answers must end before.
  assert [(int(o["start_positions"]), int(o["end_positions"])) for o in out] == [
      (3, 4), (-1, -1), (-1, -1)]
  assert out[0]["encoder_input_tokens"].tolist() == [2, 3, 4, 5, 6, 1]


# ------------------------------------------------------- optimizer and partitioning ---


def test_label_axis_has_factor_and_partition_rules():
  assert optimizers.factoring((64, 3), ("embed", "labels")) == optimizers.Factoring(
      rows=(0,), cols=(1,))
  assert not optimizers.factoring((3,), ("labels",)).factored
  model = heads.SequenceClassificationModel(SMALL, pre_classifier=True)
  t = trainer.Trainer(model, optimizers.adafactor(), partitioning.Partitioner())
  state = t.init_state({"encoder_input_tokens": (2, 8), "labels": (2,)})
  states = state.opt_state.param_states
  assert states["classifier"]["kernel"].v_row.shape == (16,)  # [embed]
  assert states["classifier"]["kernel"].v_col.shape == (2,)   # [labels]
  assert states["classifier"]["bias"].v.shape == (2,)
  assert states["pre_classifier_dense"]["kernel"].v_col.shape == (16,)  # [mlp]
  assert "decoder" not in state.params
