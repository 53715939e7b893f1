"""Shared helpers for the run-mode tests (eval, infer, score, export): a tiny model and a
tiny learnable task with a prediction metric and a score (rank-classification) metric, and
the tokens each run mode feeds the model."""

import functools

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite import settings
from t5x_lite import tasks  # noqa: F401
from t5x_lite.data import pipeline
from t5x_lite.model import encoder_decoder, network
from t5x_lite.modes import prediction, infer
from t5x_lite.modes import train
from t5x_lite.parallel import partitioning
from t5x_lite.tasks import metrics as task_metrics
from t5x_lite.tasks import vocab
from t5x_lite.training import optimizers

TASK = "runmode_test_yes_no"
LENGTHS = {"inputs": 16, "targets": 4}
NUM_VALIDATION = 24


def mean_target_log_likelihood(targets, scores):
  """A score metric (seqio passes the model's log-likelihood of each target)."""
  del targets
  return {"mean_log_likelihood": float(np.mean(scores))}


def _examples(split, shuffle_files=False, seed=None):
  del shuffle_files, seed
  start, n = {"train": (0, 512), "validation": (5000, NUM_VALIDATION)}[split]
  rng = np.random.RandomState(start)
  answers = ["yes" if rng.rand() < 0.5 else "no" for _ in range(n)]
  inputs = [f"say {a} {start + i}" for i, a in enumerate(answers)]
  return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": answers})


def register():
  features = {k: seqio.Feature(vocab.default_vocabulary(), add_eos=True)
              for k in ("inputs", "targets")}
  seqio.TaskRegistry.remove(TASK)
  seqio.TaskRegistry.add(
      TASK, source=seqio.FunctionDataSource(_examples, splits=("train", "validation")),
      output_features=features,
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      metric_fns=[task_metrics.exact_match, mean_target_log_likelihood])


register()


def tiny_model(**decoding):
  cfg = network.T5Config(vocab_size=4224, d_model=64, d_ff=128, d_kv=16, num_heads=4,
                         num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
  return encoder_decoder.EncoderDecoderModel(cfg, decoding=encoder_decoder.DecodingSettings(**decoding))


TINY_GIN = ["--gin.T5Config.vocab_size=4224", "--gin.T5Config.d_model=64",
            "--gin.T5Config.d_ff=128", "--gin.T5Config.d_kv=16", "--gin.T5Config.num_heads=4",
            "--gin.T5Config.num_encoder_layers=2", "--gin.T5Config.num_decoder_layers=2",
            "--gin.T5Config.dropout_rate=0.0"]


def train_tiny(model_dir, steps, checkpoint_period=1000, evaluation=settings.EvalConfig(steps=0),
               **kwargs):
  args = dict(model_dir=str(model_dir), train_steps=steps, model=tiny_model(),
              train_dataset=settings.DatasetConfig(TASK, LENGTHS, batch_size=8, pack=False),
              optimizer=optimizers.adafactor(optimizers.constant_schedule(1e-2)),
              checkpoint=settings.CheckpointConfig(period=checkpoint_period, keep=None),
              evaluation=evaluation, log_period=1000, progress_bar=False)
  args.update(kwargs)
  return train.train(**args)


def read_jsonl(path):
  import json  # pylint: disable=g-import-not-at-top
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


common = functools.partial(dict, mixture_or_task_name=TASK, task_feature_lengths=LENGTHS)


def tokens_in_each_mode(name, lengths, split):
  """{mode: (encoder_input_tokens, decoder_target_tokens)} of the first example of `name`'s
  `split` as training (pipeline.get_dataset), eval (InferEvaluator's seqio.Evaluator) and
  infer / score (infer.examples) feed it to a model of the task's vocabulary."""
  task = infer.task_names(name)[0]
  vocabulary = seqio.get_mixture_or_task(task).output_features["inputs"].vocabulary
  model = encoder_decoder.EncoderDecoderModel(network.T5Config(
      vocab_size=vocab.padded_vocab_size(vocabulary), d_model=8, d_ff=8, d_kv=4, num_heads=2,
      num_encoder_layers=1, num_decoder_layers=1))
  first = lambda batch: (batch["encoder_input_tokens"].tolist(),
                         batch["decoder_target_tokens"].tolist())
  train_batch = next(pipeline.get_dataset(name, lengths, split=split, batch_size=1, shuffle=False,
                                      pack=False, num_epochs=1).as_numpy_iterator())
  evaluator = prediction.InferEvaluator(model, partitioning.Partitioner(), name, lengths,
                                        batch_size=1, split=split)
  # The Evaluator's cached model examples are (index, features) pairs.
  _, eval_example = next(evaluator.evaluator.cached_model_datasets[task].as_numpy_iterator())
  infer_example = next(infer.examples(name, split, lengths,
                                      feature_converter=model.feature_converter(pack=False)))
  return {"train": first({k: v[0] for k, v in train_batch.items()}),
          "eval": first(eval_example), "infer": first(infer_example["features"])}
