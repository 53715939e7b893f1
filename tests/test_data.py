"""Tests for t5x_lite/data/pipeline.py: batches, packing, sharding, determinism, resume, robustness."""

import collections
import logging
import os
import threading

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_lite.data import pipeline
from t5x_lite.modes import infer, prediction
from t5x_lite.parallel import partitioning
from t5x_lite.tasks import metrics as task_metrics
from t5x_lite.tasks import pretraining, vocab
import runmode_utils

TINY_SPM = os.path.join(os.path.dirname(seqio.__file__),
                        "test_data/sentencepiece/sentencepiece.model")
TINY = seqio.SentencePieceVocabulary(TINY_SPM, extra_ids=10)
N = 30
# (i % 6, i // 6) is unique per example: the tiny vocabulary maps digits to <unk>.
INPUTS = [b"", b"bad \xff\xfe bytes"] + [b"ex " + b"cat " * (i % 6) for i in range(2, N)]
TARGETS = [b"t " + b"dog " * (i // 6) for i in range(N)]
TASK = "test_data_task"


def _register():
  if TASK in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(TASK)
  seqio.TaskRegistry.add(
      TASK,
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": INPUTS, "targets": TARGETS}), splits=["train"]),
      preprocessors=[pretraining.sanitize_text, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos],
      output_features={"inputs": seqio.Feature(TINY), "targets": seqio.Feature(TINY)})


_register()


def _batches(**kwargs):
  args = dict(split="train", batch_size=1, shuffle=False, seed=0, pack=False, num_epochs=1)
  args.update(kwargs)
  lengths = args.pop("lengths", {"inputs": 64, "targets": 32})
  ds = pipeline.get_dataset(TASK, lengths, **args)
  return list(pipeline.DatasetIterator(ds, 0, 1)), ds


def _expected(text, length=None):
  tokens = TINY.encode(text.decode("utf-8", errors="replace")) + [1]
  return tokens if length is None or len(tokens) <= length else tokens[:length - 1] + [1]


def test_unpacked_batches_keep_every_example_including_empty_and_bad_bytes():
  batches, _ = _batches()
  assert len(batches) == N  # nothing dropped
  assert batches[0]["encoder_input_tokens"].shape == (1, 64)
  assert batches[0]["encoder_input_tokens"][0, :2].tolist() == [1, 0]  # "" -> EOS only
  for b, text in zip(batches, INPUTS):
    tokens = b["encoder_input_tokens"][0]
    assert tokens[tokens != 0].tolist() == _expected(text)
  bad = batches[1]["encoder_input_tokens"][0]  # invalid bytes became U+FFFD, row kept
  assert bad[bad != 0].tolist() == TINY.encode("bad \ufffd\ufffd bytes") + [1]
  b = batches[3]
  assert b["decoder_input_tokens"][0, 0] == 0
  np.testing.assert_array_equal(b["decoder_input_tokens"][0, 1:],
                                b["decoder_target_tokens"][0, :-1])


def _non_pad_tokens(batches, key):
  """All non-padding tokens of `key` across `batches`, in order: [n]."""
  return np.concatenate([b[key][b[key] != 0] for b in batches])


def test_packing_preserves_every_token():
  unpacked, _ = _batches(pack=False)
  packed, _ = _batches(pack=True, lengths={"inputs": 64, "targets": 32})
  assert len(packed) < len(unpacked)
  for key in ("encoder_input_tokens", "decoder_target_tokens"):
    np.testing.assert_array_equal(_non_pad_tokens(unpacked, key), _non_pad_tokens(packed, key))
  for b in packed:
    seg, pos = b["encoder_segment_ids"][0], b["encoder_positions"][0]
    assert np.all((seg == 0) == (b["encoder_input_tokens"][0] == 0))
    for s in set(seg[seg > 0].tolist()):  # positions restart at 0 in every segment
      assert pos[seg == s].tolist() == list(range(int(np.sum(seg == s))))
  assert max(b["encoder_segment_ids"].max() for b in packed) >= 2


def test_two_host_shards_are_disjoint_and_cover():
  def examples(shard):
    batches, _ = _batches(shard_info=shard)
    return collections.Counter(
        tuple(b["encoder_input_tokens"][0]) + tuple(b["decoder_target_tokens"][0])
        for b in batches)

  full = examples(None)
  a, b = examples(seqio.ShardInfo(0, 2)), examples(seqio.ShardInfo(1, 2))
  assert not set(a) & set(b)
  assert a + b == full and sum(full.values()) == N


def test_shuffle_is_deterministic_given_seed():
  first = [b["encoder_input_tokens"] for b in _batches(shuffle=True, seed=7)[0]]
  again = [b["encoder_input_tokens"] for b in _batches(shuffle=True, seed=7)[0]]
  other = [b["encoder_input_tokens"] for b in _batches(shuffle=True, seed=8)[0]]
  assert all(np.array_equal(x, y) for x, y in zip(first, again))
  assert not all(np.array_equal(x, y) for x, y in zip(first, other))


def test_iterator_restore_continues_exactly(tmp_path):
  def make():
    ds = pipeline.get_dataset(TASK, {"inputs": 32, "targets": 16}, batch_size=2, shuffle=True,
                          seed=3, pack=True, num_epochs=None)
    return pipeline.DatasetIterator(ds, 0, 1)

  reference = [next(it) for it in [make()] for _ in range(8)]
  it = make()
  for _ in range(3):
    next(it)
  it.save(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["data_iterator-00000-of-00001.data-00000-of-00001",
                                         "data_iterator-00000-of-00001.index"]
  restored = make()
  restored.restore(str(tmp_path))
  for k in range(3, 8):
    batch = next(restored)
    for key in reference[k]:
      np.testing.assert_array_equal(batch[key], reference[k][key])
  with pytest.raises(FileNotFoundError):
    make().restore(str(tmp_path / "missing"))


def test_unknown_name_lists_closest():
  with pytest.raises(ValueError, match="closest|Closest") as e:
    pipeline.get_dataset("test_data_tsk", {"inputs": 8, "targets": 8})
  assert TASK in str(e.value)


def test_truncation_is_counted_and_logged(caplog):
  lengths = {"inputs": 6, "targets": 4}
  with caplog.at_level(logging.INFO):
    batches, ds = _batches(lengths=lengths)
  assert len(batches) == N
  expected_in = sum(len(_expected(t)) > 6 for t in INPUTS)
  expected_tg = sum(len(_expected(t)) > 4 for t in TARGETS)
  assert 0 < expected_in < N and 0 < expected_tg <= N
  assert ds.truncation_stats.counts() == {
      "inputs": {"examples": N, "truncated": expected_in},
      "targets": {"examples": N, "truncated": expected_tg}}
  for b, text in zip(batches, INPUTS):  # truncated, EOS kept
    tokens = b["encoder_input_tokens"][0]
    assert tokens[tokens != 0].tolist() == _expected(text, 6)
  assert (f"Truncated examples: inputs: {expected_in} of {N} examples longer than 6 tokens; "
          f"targets: {expected_tg} of {N} examples longer than 4 tokens") in caplog.text


def test_train_eval_and_infer_truncate_an_over_long_example_alike():
  """One truncation rule: cut to the length, EOS kept, in every run mode."""
  modes = runmode_utils.tokens_in_each_mode("embedded_copy_zeroshot",
                                            {"inputs": 6, "targets": 3}, "validation")
  assert modes["train"] == modes["eval"] == modes["infer"], modes
  inputs, targets = modes["train"]
  assert len(inputs) == 6 and inputs[-1] == 1 and 0 not in inputs  # cut, EOS last
  assert len(targets) == 3 and targets[-1] == 1


@seqio.map_over_dataset
def _parse_two_columns(line):
  number, words = tf.io.decode_csv(line, record_defaults=["", ""], field_delim="\t")
  return {"inputs": number, "targets": words}


def _tsv_task(tmp_path, name, text, keep=None):
  """A task reading tmp_path/<name>.tsv (header skipped), as the tasks notebook builds one.

  keep: a predicate on the parsed example; the task's preprocessors drop the others.
  """
  path = tmp_path / f"{name}.tsv"
  path.write_text(text)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  filters = [] if keep is None else [lambda dataset: dataset.filter(keep)]
  seqio.TaskRegistry.add(
      name, source=seqio.TextLineDataSource({"train": str(path)}, skip_header_lines=1),
      preprocessors=[_parse_two_columns, *filters, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos],
      output_features={"inputs": seqio.Feature(TINY), "targets": seqio.Feature(TINY)})
  return path


def _first_batch(name, batch_size=2, num_epochs=None):
  ds = pipeline.get_dataset(name, {"inputs": 8, "targets": 8}, batch_size=batch_size, pack=False,
                        shuffle=False, num_epochs=num_epochs)
  return next(pipeline.DatasetIterator(ds, 0, 1))


def test_a_task_without_a_batch_names_the_task_split_and_file(tmp_path):
  path = _tsv_task(tmp_path, "test_data_empty_tsv", "number\twords\n")
  with pytest.raises(pipeline.EmptyDatasetError) as error:
    _first_batch("test_data_empty_tsv")
  assert str(error.value) == (f"task 'test_data_empty_tsv' split 'train' yielded no examples "
                              f"(file {path} is empty).")


def test_a_split_smaller_than_one_batch_names_the_task_split_and_counts(tmp_path):
  # One pass (evaluation's num_epochs=1): 3 examples never fill a batch of 4, which is dropped.
  _tsv_task(tmp_path, "test_data_short_tsv", "number\twords\n1\tone\n2\ttwo\n3\tthree\n")
  with pytest.raises(pipeline.EmptyDatasetError) as error:
    _first_batch("test_data_short_tsv", batch_size=4, num_epochs=1)
  assert str(error.value) == (
      "task 'test_data_short_tsv' split 'train' has only 3 example(s), fewer than one batch of "
      "4 (BATCH_SIZE): add examples or lower BATCH_SIZE.")


def test_a_split_whose_examples_are_all_filtered_names_the_task_and_files(tmp_path):
  path = _tsv_task(tmp_path, "test_data_filtered_tsv", "number\twords\n1\tone\n2\ttwo\n",
                   keep=lambda ex: tf.strings.length(ex["targets"]) > 5)
  with pytest.raises(pipeline.EmptyDatasetError) as error:
    _first_batch("test_data_filtered_tsv", num_epochs=1)
  assert str(error.value) == (
      "task 'test_data_filtered_tsv' split 'train' yielded no examples (its source has 2 "
      "examples but none after its preprocessors: preprocessor 2 of 4 (<lambda>) removes "
      "every one).")


def _keep_nothing(dataset):
  return dataset.filter(lambda ex: False)


def _filtered_task(name):
  """A task over the N examples of TASK whose second preprocessor drops every one."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": INPUTS, "targets": TARGETS}), splits=["train"]),
      preprocessors=[pretraining.sanitize_text, _keep_nothing, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos],
      output_features={"inputs": seqio.Feature(TINY), "targets": seqio.Feature(TINY)})


def _error_within(seconds, fn):
  """The exception `fn()` raises, failing the test if it has not returned after `seconds`."""
  outcome = {}

  def run():
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except
      outcome["error"] = e

  thread = threading.Thread(target=run, daemon=True)  # a hung read cannot be interrupted
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"still reading after {seconds} s"
  return outcome.get("error")


def test_training_data_that_preprocessing_empties_stops_before_the_first_batch():
  # Training repeats the split forever (num_epochs=None); seqio repeats it before the
  # preprocessors, so an epoch they empty used to be read again and again without end.
  _filtered_task("test_data_filtered_function")
  error = _error_within(60, lambda: _first_batch("test_data_filtered_function"))
  assert isinstance(error, pipeline.EmptyDatasetError), error
  assert str(error) == (
      f"task 'test_data_filtered_function' split 'train' yielded no examples (its source has "
      f"{N} examples but none after its preprocessors: preprocessor 2 of 4 (_keep_nothing) "
      "removes every one).")


def test_eval_and_infer_over_a_split_emptied_by_preprocessing_stop_in_one_line():
  # Before: infer wrote an empty output and eval had no example to score, without a word.
  name = "test_data_filtered_validation"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(runmode_utils._examples, splits=["validation"]),
      preprocessors=[_keep_nothing, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features={k: seqio.Feature(vocab.default_vocabulary()) for k in ("inputs",
                                                                               "targets")},
      metric_fns=[task_metrics.exact_match])
  expected = (f"task '{name}' split 'validation' yielded no examples (its source has "
              f"{runmode_utils.NUM_VALIDATION} examples but none after its preprocessors: "
              "preprocessor 1 of 3 (_keep_nothing) removes every one).")
  with pytest.raises(pipeline.EmptyDatasetError) as error:  # infer and score
    infer._check_task(name, "validation", runmode_utils.LENGTHS, None)
  assert str(error.value) == expected
  with pytest.raises(pipeline.EmptyDatasetError) as error:  # eval, and infer-eval in training
    prediction.InferEvaluator(runmode_utils.tiny_model(), partitioning.Partitioner(), name,
                              runmode_utils.LENGTHS, 8, split="validation")
  assert str(error.value) == expected


def test_a_mixture_names_each_of_its_empty_tasks(tmp_path):
  _filtered_task("test_data_filtered_function")
  path = _tsv_task(tmp_path, "test_data_empty_tsv", "number\twords\n")
  name = "test_data_mixture_with_empty_tasks"
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(
      name, [(TASK, 1.0), ("test_data_filtered_function", 1.0), ("test_data_empty_tsv", 1.0)])
  error = _error_within(60, lambda: _first_batch(name))
  assert isinstance(error, pipeline.EmptyDatasetError), error
  assert str(error) == (
      f"mixture '{name}' split 'train' yielded no examples from 2 of its tasks (task "
      f"'test_data_empty_tsv': file {path} is empty; task 'test_data_filtered_function': its "
      f"source has {N} examples but none after its preprocessors: preprocessor 2 of 4 "
      "(_keep_nothing) removes every one): fix them or remove them from the mixture.")



def test_a_tsv_line_with_another_column_count_names_the_file_and_line(tmp_path):
  path = _tsv_task(tmp_path, "test_data_bad_tsv", "number\twords\n1\tone\n2\ttwo\tx\n3\tthree\n")
  with pytest.raises(ValueError) as error:
    _first_batch("test_data_bad_tsv")
  assert str(error.value) == (
      f"{path}, line 3: 3 tab-separated columns, but task 'test_data_bad_tsv' parses 2: fix the "
      "line (a tab inside a field?) or the task's parser.")
