"""Metrics histories: each write costs only its own rows, locally and on a bucket, and
`summaries.read_history` reads the whole history whatever its layout."""

import json

from etils import epath
import pytest

import fake_bucket
from t5x_lite.checkpointing import summaries


def _row(step, loss):
  return json.dumps({"step": step, "loss": loss}) + "\n"


@pytest.fixture
def bucket_io(monkeypatch):
  """A `ram://` bucket; records the (path, characters) of every write_text and read_text."""
  root = fake_bucket.register_scheme(monkeypatch)
  io = {"write": [], "read": []}
  cls = type(epath.Path(root))
  write_text, read_text = cls.write_text, cls.read_text

  def counted_write(self, data, *args, **kwargs):
    io["write"].append((str(self), len(data)))
    return write_text(self, data, *args, **kwargs)

  def counted_read(self, *args, **kwargs):
    text = read_text(self, *args, **kwargs)
    io["read"].append((str(self), len(text)))
    return text

  monkeypatch.setattr(cls, "write_text", counted_write)
  monkeypatch.setattr(cls, "read_text", counted_read)
  return root, io


def test_each_flush_on_a_bucket_writes_only_its_rows(bucket_io):
  """One object per flush, holding that flush's rows; nothing earlier is read or rewritten."""
  root, io = bucket_io
  path = f"{root}/flushes/train_metrics.jsonl"
  writer = summaries._JsonlWriter(path)  # pylint: disable=protected-access
  for step in range(1, 6):
    writer.write_scalars(step, {"loss": step / 2})
    writer.flush()
  writer.flush()  # nothing pending: no object
  parts = f"{root}/flushes/train_metrics.jsonl.parts"
  assert io["write"] == [(path, len(_row(1, 0.5)))] + [
      (f"{parts}/{n:06d}.jsonl", len(_row(n + 1, (n + 1) / 2))) for n in range(1, 5)]
  assert io["read"] == []
  assert epath.Path(path).read_text() == _row(1, 0.5)  # never rewritten
  assert epath.Path(f"{parts}/000004.jsonl").read_text() == _row(5, 2.5)
  # Rows written between flushes share one object.
  writer.write_scalars(6, {"loss": 3.0})
  writer.write_scalars(7, {"loss": float("nan")})
  writer.close()
  assert io["write"][-1] == (f"{parts}/000005.jsonl", len(_row(6, 3.0) + _row(7, None)))
  assert summaries.read_history(path) == [{"step": s, "loss": s / 2} for s in range(1, 7)] + [
      {"step": 7, "loss": None}]


def test_resumed_history_on_a_bucket_reads_whole_latest_row_wins(bucket_io):
  """A history written whole by an older version, then a resumed run's parts: every row, in
  order, the latest row of a redone step winning; parts numbered after existing ones."""
  root, _ = bucket_io
  path = epath.Path(f"{root}/resumed/train_metrics.jsonl")
  path.parent.mkdir(parents=True)
  path.write_text(_row(1, 4.0) + _row(2, 3.0) + _row(3, 2.5))
  for run, steps in enumerate(((3, 4), (4, 5, 6))):  # each resumes and redoes a step
    writer = summaries._JsonlWriter(str(path))  # pylint: disable=protected-access
    for step in steps:
      writer.write_scalars(step, {"loss": 10.0 * (run + 1) + step})
      writer.flush()
    writer.close()
  assert sorted(p.name for p in summaries.parts_dir(path).iterdir()) == [
      f"{n:06d}.jsonl" for n in range(1, 6)]
  assert summaries.read_history(str(path)) == [
      {"step": 1, "loss": 4.0}, {"step": 2, "loss": 3.0}, {"step": 3, "loss": 13.0},
      {"step": 4, "loss": 24.0}, {"step": 5, "loss": 25.0}, {"step": 6, "loss": 26.0}]
  assert [r["step"] for r in summaries.read_history(str(path), by_step=False)] == [
      1, 2, 3, 3, 4, 4, 5, 6]


def test_local_history_is_appended_to_and_a_torn_line_skipped(tmp_path):
  """Locally each write appends its row (the file so far is a prefix of the next); a line
  torn by a killed run is ended by the next writer and skipped by the reader."""
  path = tmp_path / "train_metrics.jsonl"
  path.write_text(_row(1, 4.0) + '{"step": 2, "lo')
  writer = summaries._JsonlWriter(str(path))  # pylint: disable=protected-access
  before = path.read_text()
  assert before == _row(1, 4.0) + '{"step": 2, "lo\n'
  for step in (2, 3):
    writer.write_scalars(step, {"loss": float(step)})
    writer.flush()
    after = path.read_text()
    assert after == before + _row(step, float(step))
    before = after
  writer.close()
  assert not summaries.parts_dir(path).exists()
  assert summaries.read_history(str(path)) == [
      {"step": 1, "loss": 4.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0}]
