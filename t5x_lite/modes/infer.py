"""The infer and score run modes: predictions / target log-likelihoods to resumable JSONL.

Each job writes OUTPUT_DIR/<kind>-<shard_id:05d>-of-<num_shards:05d>.jsonl (kind: predictions
or scores), one JSON object per example:
  infer:  {"index", "task", "inputs", "targets", "prediction", "score"}
  score:  {"index", "task", "inputs", "targets", "score"}
"task" and "index" name an example: its task (a mixture's tasks in name order) and its
position in that task's source split (unshuffled). Shard k of n takes the source examples
with index % n == k, so n jobs (machines) split the work disjointly and completely, and
each job reads only its share: the source split is sharded before preprocessing, so the
other shards' examples are never preprocessed or tokenized. Preprocessors therefore run
on one source example at a time (per-example maps and filters behave as in seqio; a
preprocessor that joins documents, like span corruption's, sees one document at a time).
A filtered-out example has no row; one that a preprocessor splits has several rows with
the same index. Texts are the task's pretokenized fields, predictions are detokenized
with the task's targets vocabulary (up to EOS, as seqio.Evaluator decodes them). "score"
is the summed log-probability of the prediction (infer; divided by the length penalty for
beam search) or of the targets (score, for rank classification). Sampling draws each row
from its own key, a function of (DecodingSettings.seed, task, index) alone
(prediction.example_keys): an example gets the same sample in every shard, batch position
and resume, and in the eval run mode.

Resuming (t5x_lite.modes.resumable_jsonl): rows are written in chunks of `chunk_batches`
batches, each recorded in `<file>.state.json`; a restarted job continues after the last
recorded example, and at the end the chunks are joined into the JSONL file. An unknown split
is refused at start. OUTPUT_DIR may be a bucket (gs://...) as well as a local directory.

Texts without a task: `infer(input_file=...)` (gin INFER_INPUT_FILE) reads a .txt, .tsv or
.jsonl file of inputs and predicts them as the examples of one unregistered task
(t5x_lite.modes.text_inputs: tokenized with the run's vocabulary, EOS appended, as a
registered task of that vocabulary does), with rows {"index", "inputs", "prediction",
"score"}; sharding and resuming work as above. t5x_lite.modes.predict does the same for a
list of strings in Python.
"""

import itertools
import logging
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import seqio
import tensorflow as tf

from t5x_lite import settings
from t5x_lite.checkpointing import restore
from t5x_lite.checkpointing import run_dir as run_dir_lib
from t5x_lite.checkpointing import step_record
from t5x_lite.data import pipeline
from t5x_lite.data.text import as_text
from t5x_lite.model import model_interface
from t5x_lite.modes import prediction
from t5x_lite.modes import resumable_jsonl
from t5x_lite.modes import text_inputs
from t5x_lite.parallel import partitioning
from t5x_lite.runtime import agreement
from t5x_lite.tasks import vocab

log = logging.getLogger(__name__)

# What a row of a task's example says of it (besides its prediction or score).
ROW_FIELDS = ("index", "task", "inputs", "targets")

# Where a stream of rows starts (task number, source index, rows of it already written).
Position = resumable_jsonl.Position


def task_names(mixture_or_task_name: str, model=None) -> List[str]:
  """The tasks of a task or mixture, sorted by name (the fixed example order).

  Args:
    model: if given, every task's vocabulary is checked against the model's embedding.
  """
  provider = pipeline.check_task(mixture_or_task_name, model)
  return sorted(t.name for t in seqio.get_subtasks(provider))


def _task_rows(task: seqio.Task, split: str, task_feature_lengths: Mapping[str, int],
               converter: seqio.FeatureConverter, shard_id: int, num_shards: int,
               max_examples: Optional[int], first_index: int) -> tf.data.Dataset:
  """(source index, preprocessed example, model features) of this shard's examples of `task`.

  The source is sharded (and resumed at `first_index`) before any preprocessing, so the
  examples of other shards are read from the source but never preprocessed or tokenized.
  """
  source = task.source.get_dataset(split=split, shuffle=False)
  if max_examples is not None:
    source = source.take(max_examples)
  source = source.enumerate().shard(num_shards, shard_id)
  if first_index:
    source = source.filter(lambda index, _: index >= first_index)

  def preprocess(index, example):
    # seqio's own chain (Task.get_dataset) on this one example; no trimming: the converter
    # truncates by training's rule.
    one = tf.data.Dataset.from_tensors(example)
    one = task.preprocess_postcache(task.preprocess_precache(one), task_feature_lengths)
    return one.map(lambda ex: (index, ex))

  def convert(index, example):
    one = tf.data.Dataset.from_tensors(example)  # Already computed: zipping costs no rework.
    return tf.data.Dataset.zip((one, converter(one, dict(task_feature_lengths)))).map(
        lambda ex, features: (index, ex, features))

  return source.flat_map(preprocess).flat_map(convert)


def examples(mixture_or_task_name: str, split: str, task_feature_lengths: Mapping[str, int],
             shard_id: int = 0, num_shards: int = 1, max_examples: Optional[int] = None,
             feature_converter: Optional[seqio.FeatureConverter] = None,
             start: Optional[Position] = None) -> Iterator[Dict]:
  """This shard's examples in the fixed order (see the module docstring).

  Yields {"index", "task", "inputs", "targets", "features", "position"}: "features" as
  `feature_converter` (the model's, unpacked; default EncDecFeatureConverter(pack=False))
  makes them, truncated by training's rule (pipeline.TruncatingFeatureConverter); "position"
  is where the stream after this example starts (to resume there with `start`).

  Args:
    max_examples: only each task's first N source examples (before sharding); None: all.
    start: a `position` yielded by an earlier stream: continue right after that example.
  """
  tasks = [seqio.get_mixture_or_task(name) for name in task_names(mixture_or_task_name)]
  return examples_of(tasks, split, task_feature_lengths, shard_id, num_shards, max_examples,
                     feature_converter, start)


def examples_of(tasks: Sequence[seqio.Task], split: str, task_feature_lengths: Mapping[str, int],
                shard_id: int = 0, num_shards: int = 1, max_examples: Optional[int] = None,
                feature_converter: Optional[seqio.FeatureConverter] = None,
                start: Optional[Position] = None) -> Iterator[Dict]:
  """`examples` of seqio.Task objects (registered or not: text_inputs.text_task), in order."""
  task_number, first_index, skip_rows = start or (0, 0, 0)
  for number in range(task_number, len(tasks)):
    task = tasks[number]
    if split not in task.splits:
      continue
    converter = pipeline.TruncatingFeatureConverter(
        feature_converter or seqio.EncDecFeatureConverter(pack=False),
        pipeline.TruncationStats(task_feature_lengths), task.output_features)
    if number != task_number:
      first_index, skip_rows = 0, 0
    rows = _task_rows(task, split, task_feature_lengths, converter, shard_id, num_shards,
                      max_examples, first_index)
    vocabulary = task.output_features["targets"].vocabulary
    last_index, rows_of_index = first_index, skip_rows
    for index, ex, features in rows.skip(skip_rows).as_numpy_iterator():
      index = int(index)
      rows_of_index = rows_of_index + 1 if index == last_index else 1
      last_index = index
      text = lambda key: as_text(
          ex[f"{key}_pretokenized"] if f"{key}_pretokenized" in ex else vocabulary.decode(
              ex[key].tolist()))
      yield {"index": index, "task": task.name, "inputs": text("inputs"),
             "targets": text("targets"), "features": features,
             "position": (number, index, rows_of_index)}


def _shared(writer: Optional[resumable_jsonl.ResumableJsonl],
            redo: bool = False) -> Tuple[int, bool, bool, Position]:
  """(rows written, done, redo, position) as process 0's writer has them, on every process.

  Only process 0 writes; every process must skip the same examples and stop together.
  """
  values = [writer.rows, writer.done, redo, *(writer.position or (0, 0, 0))] if writer else [
      0, False, False, 0, 0, 0]
  rows, done, redo, *position = agreement.same_on_all(values)
  return int(rows), bool(done), bool(redo), tuple(int(x) for x in position)


def _stacked(batch: Sequence[Mapping]) -> Dict[str, np.ndarray]:
  """The model features of a list of `examples` as one host batch {feature: [n, ...]}."""
  return {k: np.stack([ex["features"][k] for ex in batch]) for k in batch[0]["features"]}


def prediction_rows(batch: Sequence[Mapping], params, model: model_interface.Model,
                    vocabularies: Mapping[str, seqio.Vocabulary], batch_size: int,
                    partitioner: partitioning.Partitioner,
                    fields: Sequence[str] = ROW_FIELDS) -> List[dict]:
  """The rows of up to `batch_size` `examples`: `fields`, "prediction" and "score".

  Each row samples from its own example's key (prediction.example_keys of its task, index
  and row number within its source example), so a row's prediction depends on its example
  alone. Predictions are detokenized with `vocabularies[task]` (up to EOS).
  """
  features = _stacked(batch)
  features[prediction.KEYS] = prediction.example_keys(
      prediction.sampling_seed(model), [ex["task"] for ex in batch],
      [ex["index"] for ex in batch], [ex["position"][2] - 1 for ex in batch])
  predict = prediction.make_predict_fn(model)
  tokens, scores = prediction.run_batches(lambda b: predict(params, b), features, batch_size,
                                          partitioner)
  return [{**{k: ex[k] for k in fields},
           "prediction": vocabularies[ex["task"]].decode(tokens[j].tolist()),
           "score": float(scores[j])} for j, ex in enumerate(batch)]


def _score_rows(batch: Sequence[Mapping], params, score_fn, batch_size: int,
                partitioner: partitioning.Partitioner) -> List[dict]:
  """The rows of up to `batch_size` `examples`: ROW_FIELDS and the targets' "score"."""
  scores = prediction.run_batches(lambda b: score_fn(params, b), _stacked(batch), batch_size,
                                  partitioner)
  return [{**{k: ex[k] for k in ROW_FIELDS}, "score": float(scores[j])}
          for j, ex in enumerate(batch)]


def _write_resumably(path: str, run_config: Mapping, stream_from: Callable[[Optional[Position]],
                                                                            Iterator[Dict]],
                     start: Callable[[], Callable[[List[Dict]], List[dict]]], *,
                     batch_size: int, chunk_batches: int, max_chunks: Optional[int]) -> str:
  """The loop of infer and score: skip what is written, append rows chunk by chunk, join.

  Args:
    path: the JSONL file (resumable_jsonl.ResumableJsonl; only process 0 writes it).
    run_config: what the rows depend on; resuming with another config is refused.
    stream_from: position -> this shard's examples after it (None: from the start).
    start: called once there is something to write (it restores the checkpoint); returns
      the function from a list of up to `batch_size` examples to their rows.
    max_chunks: stop after this many chunks in this run (a rerun continues); None: all.
  """
  writer = (resumable_jsonl.ResumableJsonl(path, run_config) if jax.process_index() == 0
            else None)
  if writer and not writer.done:
    writer.verify()  # A damaged part of an earlier run is redone.
  done_rows, done, _, position = _shared(writer)
  if done:
    log.info("%s is complete (%d rows); nothing to do.", path, done_rows)
    return path
  rows_of = start()
  chunks = 0
  while True:  # Until every part is written and sound.
    stream = stream_from(position)
    while True:
      rows = []
      for _ in range(chunk_batches):
        batch = list(itertools.islice(stream, batch_size))
        if not batch:
          break
        rows += rows_of(batch)
        position = batch[-1]["position"]
      if not rows:
        break
      if writer:
        writer.append(rows, position)
      chunks += 1
      done_rows += len(rows)
      log.info("%s: %d rows written.", path, done_rows)
      if max_chunks is not None and chunks >= max_chunks:
        log.info("Stopping after max_chunks=%d; rerun to continue.", max_chunks)
        return path
    # Parts are checked before they are joined: a damaged one is written again.
    done_rows, _, redo, position = _shared(writer, writer.verify() if writer else False)
    if not redo:
      break
  if writer:
    writer.finish()
  log.info("Done: %s (%d rows).", path, done_rows)
  return path


def _check_job(shard_id: int, num_shards: int, batch_size: int, chunk_batches: int) -> None:
  settings.check_int("infer.num_shards", num_shards, gin="NUM_SHARDS")
  settings.check_int("infer.shard_id", shard_id, minimum=0, gin="SHARD_ID")
  if shard_id >= num_shards:
    raise ValueError(f"SHARD_ID={shard_id} must be less than NUM_SHARDS={num_shards} (shards "
                     "are numbered 0 ... NUM_SHARDS - 1).")
  settings.check_int("infer.batch_size", batch_size, gin="BATCH_SIZE")
  settings.check_int("infer.chunk_batches", chunk_batches)


def _check_task(mixture_or_task_name: str, split: str, task_feature_lengths: Mapping[str, int],
                model) -> None:
  """Settings a typo breaks fail here, before the checkpoint is read."""
  task_names(mixture_or_task_name, model)
  prediction.check_split(mixture_or_task_name, split)
  pipeline.check_feature_lengths(mixture_or_task_name, task_feature_lengths)
  pipeline.check_not_empty(mixture_or_task_name, split, task_feature_lengths)  # else no rows


def _output_path(output_dir: str, kind: str, shard_id: int, num_shards: int) -> str:
  return run_dir_lib.join(output_dir, f"{kind}-{shard_id:05d}-of-{num_shards:05d}.jsonl")


def _run_config(checkpoint_path, source: Mapping, task_feature_lengths, batch_size,
                max_examples, model) -> dict:
  return {"checkpoint_path": run_dir_lib.absolute(checkpoint_path), **source,
          "task_feature_lengths": dict(task_feature_lengths), "batch_size": batch_size,
          "max_examples": max_examples, "decoding": repr(model.decoding)}


def _text_file_task(input_file: str, vocabulary, mixture_or_task_name, model,
                    task_feature_lengths) -> seqio.Task:
  """text_inputs.text_task over INFER_INPUT_FILE's inputs, its settings checked."""
  if mixture_or_task_name:
    raise ValueError(f"INFER_INPUT_FILE={input_file!r} and MIXTURE_OR_TASK_NAME="
                     f"{mixture_or_task_name!r} are both set: set one (the file's inputs, or "
                     "the task's examples).")
  if "targets" not in model.token_features:
    raise ValueError(f"INFER_INPUT_FILE: a {type(model).__name__} predicts a task's labels, "
                     "not text: name its task (MIXTURE_OR_TASK_NAME) instead.")
  if vocabulary is None:
    raise ValueError("INFER_INPUT_FILE needs the vocabulary to tokenize with: bind "
                     "infer.vocabulary = @get_vocabulary() (gin/runs/infer.gin does).")
  padded = vocab.padded_vocab_size(vocabulary)
  if padded != model.config.vocab_size:
    raise ValueError(f"The vocabulary has {vocabulary.vocab_size} ids (padded: {padded}), the "
                     f"model T5Config.vocab_size={model.config.vocab_size}: bind "
                     "get_vocabulary.sentencepiece_model_path to the model's vocabulary.")
  pipeline.check_feature_lengths(input_file, task_feature_lengths)
  return text_inputs.text_task(text_inputs.read_inputs(input_file), vocabulary)


def infer(*, checkpoint_path: str, output_dir: str, task_feature_lengths: Mapping[str, int],
          batch_size: int, model: model_interface.Model,
          mixture_or_task_name: Optional[str] = None, input_file: Optional[str] = None,
          vocabulary: Optional[seqio.Vocabulary] = None, split: str = "validation",
          partitioner: Optional[partitioning.Partitioner] = None, shard_id: int = 0,
          num_shards: int = 1, chunk_batches: int = 8, max_examples: Optional[int] = None,
          max_chunks: Optional[int] = None) -> str:
  """Writes each example's prediction (gin DecodingSettings) and its score to resumable JSONL.

  See the module docstring for the file format, sharding and resuming.

  Args (gin; gin/runs/infer.gin binds the macros in capitals):
    checkpoint_path: CHECKPOINT_PATH — MODEL_DIR/checkpoints/<step> (or a checkpoints dir).
    output_dir: OUTPUT_DIR — where the JSONL, its .state.json and .parts go (local or gs://...).
    task_feature_lengths: TASK_FEATURE_LENGTHS — longer inputs/targets are truncated.
    batch_size: BATCH_SIZE — global batch (all processes of this job together).
    model: MODEL — the model the checkpoint was trained with (a model_interface.Model from
      the model gin file or recipe).
    mixture_or_task_name: MIXTURE_OR_TASK_NAME — a registered task or mixture; or
    input_file: INFER_INPUT_FILE — a file of inputs instead of a task (.txt, .tsv or .jsonl:
      text_inputs.read_inputs); its rows are {"index", "inputs", "prediction", "score"}.
    vocabulary: what INFER_INPUT_FILE's inputs are tokenized and predictions detokenized
      with (gin/runs/infer.gin: @get_vocabulary(), the vocabulary the model files size the
      embedding from); a task's examples use the task's own.
    split: SPLIT — the split to read ("validation", "test", ...); not used with input_file.
    partitioner: mesh and rules; default partitioning.Partitioner().
    shard_id, num_shards: SHARD_ID / NUM_SHARDS — this job does the source examples with
      index % num_shards == shard_id of each task and writes its own file.
    chunk_batches: write a chunk (a part file + the state file) every this many batches.
    max_examples: only each task's first N source examples (before sharding); None: all.
    max_chunks: stop after this many chunks in this run (a rerun continues); None: all.

  Returns:
    The path of the JSONL file.
  """
  _check_job(shard_id, num_shards, batch_size, chunk_batches)
  if input_file:
    tasks = [_text_file_task(input_file, vocabulary, mixture_or_task_name, model,
                             task_feature_lengths)]
    split, fields = text_inputs.TEXT_SPLIT, ("index", "inputs")
    source = {"input_file": run_dir_lib.absolute(input_file)}
    vocabulary_check = vocabulary
  elif mixture_or_task_name:
    _check_task(mixture_or_task_name, split, task_feature_lengths, model)
    tasks = [seqio.get_mixture_or_task(n) for n in task_names(mixture_or_task_name)]
    fields = ROW_FIELDS
    source = {"mixture_or_task_name": mixture_or_task_name, "split": split}
    vocabulary_check = step_record.task_vocabulary(mixture_or_task_name)
  else:
    raise ValueError("Nothing to predict: set MIXTURE_OR_TASK_NAME (a registered task or "
                     "mixture) or INFER_INPUT_FILE (a .txt, .tsv or .jsonl file of inputs).")
  partitioner = partitioner or partitioning.Partitioner()
  vocabularies = {t.name: t.output_features["targets"].vocabulary for t in tasks}

  def start():
    params = restore.restore_model_params(  # Refused if trained with another vocabulary.
        model, partitioner, checkpoint_path, vocabulary_check)
    return lambda batch: prediction_rows(batch, params, model, vocabularies, batch_size,
                                         partitioner, fields)

  return _write_resumably(
      _output_path(output_dir, "predictions", shard_id, num_shards),
      _run_config(checkpoint_path, source, task_feature_lengths, batch_size, max_examples,
                  model),
      lambda position: examples_of(tasks, split, task_feature_lengths, shard_id, num_shards,
                                   max_examples, model.feature_converter(pack=False), position),
      start, batch_size=batch_size, chunk_batches=chunk_batches, max_chunks=max_chunks)


def score(*, checkpoint_path: str, output_dir: str, mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int], batch_size: int,
          model: model_interface.Model, split: str = "validation",
          partitioner: Optional[partitioning.Partitioner] = None, shard_id: int = 0,
          num_shards: int = 1, chunk_batches: int = 8, max_examples: Optional[int] = None,
          max_chunks: Optional[int] = None) -> str:
  """Writes each example's target log-likelihood (summed over target tokens) to resumable
  JSONL: rank classification scores. See the module docstring for format and resuming.

  Args: as `infer` (gin/runs/score.gin binds the same macros); no decoding settings apply.

  Returns:
    The path of the JSONL file.
  """
  _check_job(shard_id, num_shards, batch_size, chunk_batches)
  _check_task(mixture_or_task_name, split, task_feature_lengths, model)
  partitioner = partitioner or partitioning.Partitioner()

  def start():
    params = restore.restore_model_params(  # Refused if trained with another vocabulary.
        model, partitioner, checkpoint_path, step_record.task_vocabulary(mixture_or_task_name))
    score_fn = prediction.make_score_fn(model)
    return lambda batch: _score_rows(batch, params, score_fn, batch_size, partitioner)

  return _write_resumably(
      _output_path(output_dir, "scores", shard_id, num_shards),
      _run_config(checkpoint_path, {"mixture_or_task_name": mixture_or_task_name,
                                    "split": split}, task_feature_lengths, batch_size,
                  max_examples, model),
      lambda position: examples(mixture_or_task_name, split, task_feature_lengths, shard_id,
                                num_shards, max_examples, model.feature_converter(pack=False),
                                position),
      start, batch_size=batch_size, chunk_batches=chunk_batches, max_chunks=max_chunks)
