"""infer / score run modes: resumable chunked JSONL (a killed run resumes with no duplicate or
missing row), disjoint and complete sharding, and scores equal to independently computed
target log-likelihoods; predict_batch equals decoding.decode; a file of inputs (INFER_INPUT_FILE)
and predict() give the registered task's predictions."""

import contextlib
import json
import os
import zlib

from etils import epath
import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

import fake_bucket
import runmode_utils as u
from t5x_lite.checkpointing import restore
from t5x_lite.model import decoding
from t5x_lite.modes import evaluate as eval_lib
from t5x_lite.modes import infer
from t5x_lite.modes import resumable_jsonl
from t5x_lite.modes import text_inputs
from t5x_lite.tasks import vocab


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run")
  u.train_tiny(model_dir, 6)
  return str(model_dir / "checkpoints" / "6")


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def run(mode, checkpoint, output_dir, **kwargs):
  args = dict(u.common(), checkpoint_path=checkpoint, output_dir=str(output_dir), batch_size=4,
              model=u.tiny_model(), chunk_batches=1)
  args.update(kwargs)
  return getattr(infer, mode)(**args)


@contextlib.contextmanager
def killed_at_commit(monkeypatch, n):
  """The job dies (KeyboardInterrupt) at its n-th state commit: that chunk is written but
  not recorded."""
  commits = {"n": 0}
  real_commit = resumable_jsonl._commit_state

  def dying_commit(path, state):
    commits["n"] += 1
    if commits["n"] == n:
      raise KeyboardInterrupt("killed")
    real_commit(path, state)

  monkeypatch.setattr(resumable_jsonl, "_commit_state", dying_commit)
  with pytest.raises(KeyboardInterrupt):
    yield
  monkeypatch.setattr(resumable_jsonl, "_commit_state", real_commit)


@pytest.mark.parametrize("mode", ["infer", "score"])
def test_killed_run_resumes_without_duplicate_or_missing_rows(mode, checkpoint, tmp_path,
                                                               monkeypatch):
  straight = u.read_jsonl(run(mode, checkpoint, tmp_path / "straight"))
  assert [r["index"] for r in straight] == list(range(u.NUM_VALIDATION))

  # Kill 1: the 3rd chunk's rows reach the file but its state commit never happens.
  with killed_at_commit(monkeypatch, 3):
    run(mode, checkpoint, tmp_path / "killed")
  kind = "predictions" if mode == "infer" else "scores"
  path = tmp_path / "killed" / f"{kind}-00000-of-00001.jsonl"
  parts = path.parent / (path.name + ".parts")
  committed = lambda: json.loads((path.parent / (path.name + ".state.json")).read_text())
  assert len(os.listdir(parts)) == 3 and committed()["rows"] == 8  # 3 chunks of 4, 2 recorded
  assert not path.exists()
  # Kill 2: a clean stop after one more chunk (max_chunks), then run to the end.
  run(mode, checkpoint, tmp_path / "killed", max_chunks=1)
  assert len(os.listdir(parts)) == 3 and committed()["rows"] == 12  # the 3rd chunk redone
  assert committed()["position"] == [0, 11, 1]  # next: after source example 11 of the task
  run(mode, checkpoint, tmp_path / "killed")
  resumed = u.read_jsonl(path)
  assert resumed == straight
  assert not parts.exists() and committed()["done"]
  run(mode, checkpoint, tmp_path / "killed")  # complete: a rerun appends nothing
  assert u.read_jsonl(path) == straight
  with pytest.raises(ValueError, match="split"):
    run(mode, checkpoint, tmp_path / "killed", split="train")


def test_shards_are_disjoint_and_complete(checkpoint, tmp_path):
  whole = {r["index"]: r for r in u.read_jsonl(run("infer", checkpoint, tmp_path / "all"))}
  seen = []
  for shard_id in range(3):
    rows = u.read_jsonl(run("infer", checkpoint, tmp_path / "sharded", shard_id=shard_id,
                            num_shards=3))
    assert all(r["index"] % 3 == shard_id for r in rows)
    for r in rows:
      assert {k: r[k] for k in ("task", "inputs", "targets", "prediction")} == {
          k: whole[r["index"]][k] for k in ("task", "inputs", "targets", "prediction")}
      assert r["score"] == pytest.approx(whole[r["index"]]["score"], abs=1e-4)
    seen += [r["index"] for r in rows]
  assert sorted(seen) == list(range(u.NUM_VALIDATION))
  assert len(os.listdir(tmp_path / "sharded")) == 6  # 3 JSONL + 3 state files


@pytest.mark.parametrize("mode", ["infer", "score"])
def test_infer_and_score_resume_on_a_bucket(mode, checkpoint, tmp_path, monkeypatch):
  """OUTPUT_DIR on a bucket (tests/fake_bucket.py): killed, resumed, the same rows."""
  local = u.read_jsonl(run(mode, checkpoint, tmp_path / "local", max_examples=16))
  bucket = fake_bucket.register_scheme(monkeypatch)
  with killed_at_commit(monkeypatch, 2):
    run(mode, checkpoint, f"{bucket}/{mode}", max_examples=16)
  path = run(mode, checkpoint, f"{bucket}/{mode}", max_examples=16)
  kind = "predictions" if mode == "infer" else "scores"
  assert path == f"{bucket}/{mode}/{kind}-00000-of-00001.jsonl"
  rows = [json.loads(line) for line in epath.Path(path).read_text().splitlines()]
  assert [r["index"] for r in rows] == list(range(16))
  for ours, theirs in zip(rows, local):
    assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)
    assert {k: v for k, v in ours.items() if k != "score"} == {
        k: v for k, v in theirs.items() if k != "score"}
  assert sorted(p.name for p in epath.Path(f"{bucket}/{mode}").iterdir()) == [
      f"{kind}-00000-of-00001.jsonl", f"{kind}-00000-of-00001.jsonl.state.json"]


COUNTED_TASK = "runmode_test_counted"


def test_each_shard_preprocesses_only_its_share():
  """A shard reads only its share: other shards' examples are never preprocessed."""
  preprocessed = []

  def count(ex):
    def note(index_text):
      preprocessed.append(index_text.numpy().decode())
      return index_text
    inputs = tf.py_function(note, [ex["inputs"]], tf.string)
    inputs.set_shape([])
    return dict(ex, inputs=inputs)

  task = seqio.get_mixture_or_task(u.TASK)
  seqio.TaskRegistry.remove(COUNTED_TASK)
  seqio.TaskRegistry.add(COUNTED_TASK, source=task.source, output_features=task.output_features,
                         preprocessors=[seqio.map_over_dataset(count)] + list(task.preprocessors))
  try:
    whole = [(r["index"], r["inputs"])
             for r in infer.examples(COUNTED_TASK, "validation", u.LENGTHS)]
    assert [i for i, _ in whole] == list(range(u.NUM_VALIDATION))
    assert len(preprocessed) == u.NUM_VALIDATION
    seen = []
    for shard_id in range(3):
      preprocessed.clear()
      rows = [(r["index"], r["inputs"]) for r in infer.examples(
          COUNTED_TASK, "validation", u.LENGTHS, shard_id=shard_id, num_shards=3)]
      assert [i for i, _ in rows] == list(range(shard_id, u.NUM_VALIDATION, 3))
      assert sorted(preprocessed) == sorted(text for _, text in rows)  # 8 of 24, no more
      seen += rows
    assert sorted(seen) == sorted(whole)
    # Resuming after source example 13 of shard 1 preprocesses only 13 again (it might have
    # had more rows) and what follows it.
    preprocessed.clear()
    rest = [r["index"] for r in infer.examples(COUNTED_TASK, "validation", u.LENGTHS, shard_id=1,
                                               num_shards=3, start=(0, 13, 1))]
    assert rest == [16, 19, 22] and len(preprocessed) == 4
  finally:
    seqio.TaskRegistry.remove(COUNTED_TASK)


def _restored(checkpoint, model):
  from t5x_lite.parallel import partitioning  # pylint: disable=g-import-not-at-top
  return restore.restore_model_params(model, partitioning.Partitioner(), checkpoint)


def _log_likelihood(model, params, enc, target_ids):
  """float64 sum of log p(target_ids) given enc [1, Li], from the model's logits."""
  tgt = np.array([target_ids + [0] * (u.LENGTHS["targets"] - len(target_ids))], np.int32)
  dec = np.concatenate([[[0]], tgt[:, :-1]], axis=1).astype(np.int32)
  logits = np.asarray(model.module.apply({"params": params}, enc, dec, tgt), np.float64)[0]
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.sum(np.exp(logits - top), -1, keepdims=True))
  return sum(log_probs[i, t] for i, t in enumerate(target_ids))


def test_scores_equal_independent_teacher_forced_log_likelihood(checkpoint, tmp_path):
  rows = u.read_jsonl(run("score", checkpoint, tmp_path))
  model = u.tiny_model()
  params = _restored(checkpoint, model)
  vocabulary = seqio.get_mixture_or_task(u.TASK).output_features["targets"].vocabulary
  pad = lambda ids, n: np.array([ids + [0] * (n - len(ids))], np.int32)
  for row in rows[:6]:
    enc = pad(vocabulary.encode(row["inputs"]) + [1], u.LENGTHS["inputs"])
    target_ids = vocabulary.encode(row["targets"]) + [1]
    tgt = pad(target_ids, u.LENGTHS["targets"])
    dec = np.concatenate([[[0]], tgt[:, :-1]], axis=1).astype(np.int32)
    logits = np.asarray(model.module.apply({"params": params}, enc, dec, tgt), np.float64)[0]
    log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                       keepdims=True)) - logits.max(-1, keepdims=True)
    expected = sum(log_probs[i, t] for i, t in enumerate(target_ids))
    assert row["score"] == pytest.approx(expected, abs=1e-4), row


def test_predictions_are_greedy_decodes_of_the_inputs(checkpoint, tmp_path):
  rows = u.read_jsonl(run("infer", checkpoint, tmp_path, max_examples=4))
  assert len(rows) == 4
  model = u.tiny_model()
  params = _restored(checkpoint, model)
  vocabulary = seqio.get_mixture_or_task(u.TASK).output_features["targets"].vocabulary
  enc = np.zeros((4, u.LENGTHS["inputs"]), np.int32)
  for i, row in enumerate(rows):
    ids = vocabulary.encode(row["inputs"]) + [1]
    enc[i, :len(ids)] = ids
  tokens, scores = decoding.decode(model.module, params, enc,
                                   max_decode_length=u.LENGTHS["targets"])
  assert [r["prediction"] for r in rows] == [vocabulary.decode(t.tolist()) for t in tokens[:, 0]]
  np.testing.assert_allclose([r["score"] for r in rows], scores[:, 0], atol=1e-4)
  # predict_batch is the same greedy decode.
  batch = {"encoder_input_tokens": enc,
           "decoder_input_tokens": np.zeros((4, u.LENGTHS["targets"]), np.int32)}
  np.testing.assert_array_equal(model.predict_batch(params, batch), tokens[:, 0])
  # Sampling with a key per row: a row's sample does not depend on its batch position, and
  # its score is the model's log-likelihood of the sampled tokens (float64 reference).
  sampler = u.tiny_model(method="sample", num_decodes=3, temperature=2.0)
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  sampled, aux = sampler.predict_batch_with_aux(params, batch, keys)
  flipped, flipped_aux = sampler.predict_batch_with_aux(
      params, {k: v[::-1] for k, v in batch.items()}, keys[::-1])
  np.testing.assert_array_equal(flipped[::-1], sampled)
  np.testing.assert_allclose(flipped_aux["scores"][::-1], aux["scores"], atol=1e-5)
  assert len({tuple(t) for t in sampled.tolist()}) > 1  # not one stream copied to all rows
  for i, tokens in enumerate(np.asarray(sampled).tolist()):
    length = tokens.index(1) + 1 if 1 in tokens else len(tokens)
    assert all(t == 0 for t in tokens[length:])
    expected = _log_likelihood(model, params, enc[i:i + 1], tokens[:length])
    assert aux["scores"][i] == pytest.approx(expected, abs=1e-4), (i, tokens)


SAMPLING = dict(method="sample", temperature=3.0, seed=7)


def _example_key(index):
  """The documented key of example `index` of u.TASK: (seed, crc32(task), index, row 0)."""
  key = jax.random.fold_in(jax.random.PRNGKey(SAMPLING["seed"]),
                           zlib.crc32(u.TASK.encode()) & 0x7FFFFFFF)
  return jax.random.fold_in(jax.random.fold_in(key, index), 0)


def test_samples_are_keyed_by_example_in_eval_infer_shards_and_resumes(checkpoint, tmp_path):
  """An example's sample is the same in eval (batch 8), in a resumed infer (batch 4) and in
  shard 1 of 2 (other batch positions); it is the sample of its own key at any position."""
  n = 8
  sample_run = lambda out, **kw: run("infer", checkpoint, tmp_path / out, max_examples=n,
                                     model=u.tiny_model(**SAMPLING), **kw)
  eval_lib.evaluate(**u.common(), batch_size=8, checkpoint_path=checkpoint, num_examples=n,
                    model=u.tiny_model(**SAMPLING), output_dir=str(tmp_path / "eval"))
  evaluated = [r["prediction"] for r in u.read_jsonl(
      tmp_path / "eval" / "eval_validation_predictions" / "6.jsonl")]
  assert len(set(evaluated)) > n // 2  # samples, not one greedy answer
  sample_run("one", max_chunks=1)  # stopped after its first chunk, then resumed
  whole = u.read_jsonl(sample_run("one"))
  assert [r["index"] for r in whole] == list(range(n))
  assert [r["prediction"] for r in whole] == evaluated
  shard1 = u.read_jsonl(sample_run("two", shard_id=1, num_shards=2))
  assert [(r["index"], r["prediction"]) for r in shard1] == [
      (i, evaluated[i]) for i in range(1, n, 2)]

  # The same inputs with another example's key sample another stream; with their own key,
  # the same sample at any batch position.
  model = u.tiny_model(**SAMPLING)
  params = _restored(checkpoint, model)
  vocabulary = seqio.get_mixture_or_task(u.TASK).output_features["targets"].vocabulary
  enc = np.zeros((4, u.LENGTHS["inputs"]), np.int32)
  ids = vocabulary.encode(whole[5]["inputs"]) + [1]
  enc[:, :len(ids)] = ids
  keys = np.stack([_example_key(i) for i in (6, 5, 9, 5)])
  tokens, _ = model.predict_batch_with_aux(
      params, {"encoder_input_tokens": enc,
               "decoder_input_tokens": np.zeros((4, u.LENGTHS["targets"]), np.int32)}, keys)
  texts = [vocabulary.decode(t) for t in np.asarray(tokens).tolist()]
  assert texts[1] == texts[3] == evaluated[5]
  assert texts[0] != evaluated[5] and texts[2] != evaluated[5] and texts[0] != texts[2]


def test_unknown_split_is_refused_at_start(tmp_path):
  checkpoint = str(tmp_path / "never_read")  # refused before any checkpoint is read
  for mode in ("infer", "score"):
    with pytest.raises(ValueError, match=r"split='validaton' \(gin: SPLIT\): no task of "
                       r"'runmode_test_yes_no' has it; its splits are \['train', 'validation'\]"
                       r"\. Did you mean 'validation'\?"):
      run(mode, checkpoint, tmp_path / "out", split="validaton")
  assert not os.listdir(tmp_path)  # nothing written, nothing recorded as complete


@pytest.mark.parametrize("content, why", [
    ("{\"rows\": 4, \"chunks\": 1, \"posit", "not JSON"),
    ("{}", "missing or invalid \\['rows', 'chunks', 'done', 'config'\\]"),
    ('{"position": null, "done": false}', "missing or invalid \\['rows', 'chunks', 'config'\\]"),
    ("[1, 2]", "a JSON list, not an object")])
def test_damaged_state_file_is_named(content, why, tmp_path):
  state = tmp_path / "predictions-00000-of-00001.jsonl.state.json"
  state.write_text(content)
  with pytest.raises(ValueError, match=f"^{state} is damaged \\({why}.*\\): delete it and the "
                     r"\.parts directory beside it to write this output again from the start\.$"):
    run("infer", str(tmp_path / "never_read"), tmp_path)


def test_damaged_parts_are_written_again(checkpoint, tmp_path, monkeypatch, caplog):
  """A part garbled after a stopped run, and one written short in the final run, are both
  redone before the parts are joined."""
  path = tmp_path / "predictions-00000-of-00001.jsonl"
  parts = path.parent / (path.name + ".parts")
  run("infer", checkpoint, tmp_path, max_examples=8, max_chunks=1)
  first = (parts / "000000.jsonl").read_text()
  lines = first.splitlines(keepends=True)
  (parts / "000000.jsonl").write_text(lines[0] + lines[1][:20] + "\n" + "".join(lines[2:]))

  real_write = resumable_jsonl._write_atomically
  shortened = []

  def write_one_row_short(target, text):
    if target.name == "000001.jsonl" and not shortened:
      shortened.append(target)
      text = "".join(text.splitlines(keepends=True)[:-1])
    real_write(target, text)

  monkeypatch.setattr(resumable_jsonl, "_write_atomically", write_one_row_short)
  run("infer", checkpoint, tmp_path, max_examples=8)
  rows = u.read_jsonl(path)
  assert [r["index"] for r in rows] == list(range(8))
  assert "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:4]) == first
  assert json.loads((path.parent / (path.name + ".state.json")).read_text())["done"]
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
              and "is damaged" in r.getMessage()]
  assert warnings == [
      f"{parts / '000000.jsonl'} is damaged (line 2 is not JSON): writing it again from row 0.",
      f"{parts / '000001.jsonl'} is damaged (3 rows, 4 recorded): writing it again from row 4."]


def test_input_file_and_predict_give_the_tasks_predictions(checkpoint, tmp_path):
  """Texts in a file (the infer run mode from the command line) and in a list (predict) get
  exactly the predictions the same examples get through the registered task."""
  from t5x_lite import main  # pylint: disable=g-import-not-at-top
  from t5x_lite.modes import predict  # pylint: disable=g-import-not-at-top
  by_task = u.read_jsonl(run("infer", checkpoint, tmp_path / "task", max_examples=6))
  texts = [r["inputs"] for r in by_task]
  assert len(set(r["prediction"] for r in by_task)) > 1  # not one answer for every input
  lines = [texts[0], "", *texts[1:]]  # a blank line is no input
  (tmp_path / "inputs.txt").write_text("\n".join(lines) + "\n")
  path = main.main(["--run_mode=infer", "--gin_file=models/t5_1_0.gin", *u.TINY_GIN,
                    "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH={checkpoint}",
                    f"--gin.INFER_INPUT_FILE={tmp_path / 'inputs.txt'}", "--gin.BATCH_SIZE=4",
                    f"--gin.OUTPUT_DIR={tmp_path / 'file'}",
                    f"--gin.TASK_FEATURE_LENGTHS={json.dumps(u.LENGTHS)}"])
  by_file = u.read_jsonl(path)
  assert [{k: r[k] for k in ("index", "inputs", "prediction")} for r in by_file] == [
      {"index": i, "inputs": r["inputs"], "prediction": r["prediction"]}
      for i, r in enumerate(by_task)]
  assert [sorted(r) for r in by_file] == [["index", "inputs", "prediction", "score"]] * 6
  np.testing.assert_allclose([r["score"] for r in by_file], [r["score"] for r in by_task],
                             atol=1e-5)
  # The .tsv and .jsonl forms hold the same inputs.
  (tmp_path / "inputs.tsv").write_text("id\tinputs\n" + "".join(
      f"{i}\t{t}\n" for i, t in enumerate(texts)))
  (tmp_path / "inputs.jsonl").write_text("".join(
      json.dumps({"inputs": t, "id": i}) + "\n" for i, t in enumerate(texts)))
  (tmp_path / "plain.tsv").write_text("".join(f"{t}\tx\n" for t in texts))
  for name in ("inputs.tsv", "inputs.jsonl", "plain.tsv"):
    assert text_inputs.read_inputs(str(tmp_path / name)) == texts, name
  # predict(): the same predictions in batches of 4 (one full, one padded).
  predictor = predict.load(checkpoint, model=u.tiny_model(), input_length=u.LENGTHS["inputs"],
                           target_length=u.LENGTHS["targets"], batch_size=4)
  assert predictor(texts) == [r["prediction"] for r in by_task]
  assert predictor(texts[4:5]) == [by_task[4]["prediction"]] and predictor([]) == []
  # From the checkpoint exported as a HF directory, its config.json giving the model.
  from t5x_lite.modes import export  # pylint: disable=g-import-not-at-top
  hf_dir = export.export(checkpoint_path=checkpoint, output_dir=str(tmp_path / "hf"),
                         model=u.tiny_model())
  assert predict.predict(texts, hf_dir, input_length=u.LENGTHS["inputs"],
                         target_length=u.LENGTHS["targets"], batch_size=4) == [
                             r["prediction"] for r in by_task]


@pytest.mark.parametrize("name, content, error", [
    ("missing.txt", None, r"^INFER_INPUT_FILE='.*missing\.txt' does not exist"),
    ("in.tsv", "id\tinputs\n1\tsay yes\n2\n", r"^.*in\.tsv:3: no 'inputs' column \(column 2 of "
     r"the header\): the line has 1 tab-separated fields\.$"),
    ("in.jsonl", '{"inputs": "a"}\n\n{"input": "b"}\n', r"^.*in\.jsonl:3: no \"inputs\" text "
     r"field \(write each line as \{\"inputs\": \"\.\.\.\"\}\)\.$"),
    ("in.jsonl", '{"inputs": "a"}\n{"inputs": \n', r"^.*in\.jsonl:2: not JSON "),
    ("in.csv", "a,b\n", r"^INFER_INPUT_FILE='.*in\.csv': name a \.txt"),
])
def test_bad_input_files_are_refused_with_file_and_line(name, content, error, tmp_path):
  if content is not None:
    (tmp_path / name).write_text(content)
  with pytest.raises((ValueError, FileNotFoundError), match=error):
    infer.infer(checkpoint_path=str(tmp_path / "never_read"), output_dir=str(tmp_path / "out"),
                task_feature_lengths=u.LENGTHS, batch_size=4, model=u.tiny_model(),
                input_file=str(tmp_path / name), vocabulary=vocab.default_vocabulary())
  assert not (tmp_path / "out").exists()  # refused before anything is read or written


def test_infer_needs_one_source_of_examples(tmp_path):
  args = dict(checkpoint_path=str(tmp_path / "never_read"), output_dir=str(tmp_path),
              task_feature_lengths=u.LENGTHS, batch_size=4, model=u.tiny_model())
  with pytest.raises(ValueError, match=r"^Nothing to predict: set MIXTURE_OR_TASK_NAME"):
    infer.infer(**args)
  (tmp_path / "in.txt").write_text("say yes\n")
  with pytest.raises(ValueError, match=r"INFER_INPUT_FILE='.*in\.txt' and MIXTURE_OR_TASK_NAME="
                     r"'runmode_test_yes_no' are both set: set one"):
    infer.infer(**args, mixture_or_task_name=u.TASK, input_file=str(tmp_path / "in.txt"),
                vocabulary=vocab.default_vocabulary())
