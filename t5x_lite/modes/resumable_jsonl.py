"""A JSONL file written chunk by chunk and resumed after a kill: the infer and score outputs.

Resuming: rows are written in chunks of `chunk_batches` batches, each chunk a file of its
own under `<file>.parts/`, then `<file>.state.json` (rows written and the last example,
replaced atomically) records it. A restarted job overwrites any chunk a killed one wrote
after the last record and continues after the last recorded example. At the end the
chunks are joined into the JSONL file, every row once, in order, the state records
"done" and a rerun returns at once. Before resuming and before joining, every part is
checked (each line parses, the row count is the recorded one); a damaged part is written
again from the position recorded before it. Every file goes through epath, so the file may
be in a bucket (gs://...) as well as in a local directory.
"""

import io
import json
import logging
import os
from typing import List, Mapping, Optional, Tuple

from etils import epath

log = logging.getLogger(__name__)

# Where a stream of rows starts: (task number in name order, source index, rows of that
# index already written). Rows of one source example can span two chunks.
Position = Tuple[int, int, int]


def _write_atomically(path: epath.Path, text: str) -> None:
  """Writes `path` whole: a crash leaves the old file or the new one, never half of one."""
  tmp = path.parent / f"{path.name}.tmp"
  with tmp.open("w") as f:
    f.write(text)
    try:  # Local files: on disk before the rename (object stores write whole objects).
      f.flush()
      os.fsync(f.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
      pass
  tmp.replace(path)


def _commit_state(path: epath.Path, state: Mapping) -> None:
  _write_atomically(path, json.dumps(state))


def _damaged_state(path: epath.Path, why: str) -> ValueError:
  return ValueError(f"{path} is damaged ({why}): delete it and the .parts directory beside it "
                    "to write this output again from the start.")


def _read_state(path: epath.Path) -> dict:
  """The state file's content, checked: a damaged file is named, never a bare KeyError."""
  try:
    saved = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise _damaged_state(path, f"not JSON: {e}") from None
  if not isinstance(saved, dict):
    raise _damaged_state(path, f"a JSON {type(saved).__name__}, not an object")
  if "rows" in saved and "position" not in saved:
    raise ValueError(f"{path} is in an older format (one appended file): finish that job with "
                     "the version that started it, or delete the file and its .state.json to "
                     "start again.")
  position = saved.get("position")
  checks = {"rows": isinstance(saved.get("rows"), int) and saved["rows"] >= 0,
            "chunks": isinstance(saved.get("chunks"), int) and saved["chunks"] >= 0,
            "done": isinstance(saved.get("done"), bool),
            "config": isinstance(saved.get("config"), dict),
            "position": position is None or (isinstance(position, list) and len(position) == 3
                                             and all(isinstance(x, int) for x in position))}
  # Per-chunk records (absent in files written before they were kept).
  for key in ("chunk_rows", "chunk_positions"):
    if key in saved:
      checks[key] = (isinstance(saved[key], list)
                     and len(saved[key]) == saved.get("chunks"))
  bad = [k for k, ok in checks.items() if not ok]
  if bad:
    raise _damaged_state(path, f"missing or invalid {bad}")
  return saved


class ResumableJsonl:
  """A JSONL file written chunk by chunk, each chunk recorded in a state file.

  The state file records the rows and the stream position after each chunk, so a part file
  found damaged (a line that does not parse, a row count that is not the recorded one) is
  redone from the position before it (`verify`).

  Args:
    path: the JSONL file (any epath: local or gs://...).
    run_config: what the rows depend on (task, split, checkpoint, shard, ...); resuming
      with a different config is refused, as its rows would not continue the file's.
  """

  def __init__(self, path: str, run_config: Mapping):
    self.path = epath.Path(path)
    self.state_path = self.path.parent / f"{self.path.name}.state.json"
    self.parts = self.path.parent / f"{self.path.name}.parts"
    self.state = {"rows": 0, "chunks": 0, "position": None, "done": False,
                  "config": dict(run_config), "chunk_rows": [], "chunk_positions": []}
    if self.state_path.exists():
      saved = _read_state(self.state_path)
      if saved["config"] != self.state["config"]:
        changed = sorted(k for k in set(saved["config"]) | set(run_config)
                         if saved["config"].get(k) != run_config.get(k))
        raise ValueError(f"{path} was started with different settings ({changed}: "
                         f"{[saved['config'].get(k) for k in changed]} then, "
                         f"{[run_config.get(k) for k in changed]} now). Use another OUTPUT_DIR "
                         "or delete the file, its .state.json and its .parts directory.")
      self.state = saved
    elif self.path.exists():
      raise ValueError(f"{path} exists without {self.state_path}: refusing to overwrite it.")
    self.parts.mkdir(parents=True, exist_ok=True)

  @property
  def rows(self) -> int:
    return self.state["rows"]

  @property
  def done(self) -> bool:
    return self.state["done"]

  @property
  def position(self) -> Optional[Position]:
    """Where the next row's stream starts (None: at the beginning)."""
    return tuple(self.state["position"]) if self.state["position"] else None

  def _part(self, number: int) -> epath.Path:
    return self.parts / f"{number:06d}.jsonl"

  def append(self, rows: List[Mapping], position: Position) -> None:
    """Writes `rows` as the next chunk; `position` is where the stream after them starts."""
    _write_atomically(self._part(self.state["chunks"]), "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    self.state.update(rows=self.state["rows"] + len(rows), chunks=self.state["chunks"] + 1,
                      position=list(position))
    if "chunk_rows" in self.state:
      self.state["chunk_rows"] = self.state["chunk_rows"] + [len(rows)]
      self.state["chunk_positions"] = self.state["chunk_positions"] + [list(position)]
    _commit_state(self.state_path, self.state)

  def _damage(self, number: int, expected_rows: Optional[int]) -> Optional[str]:
    """Why part `number` cannot be joined, or None when it is sound."""
    part = self._part(number)
    if not part.exists():
      return "missing"
    try:
      lines = part.read_text().splitlines()
    except UnicodeDecodeError:
      return "not UTF-8 text"
    for line_number, line in enumerate(lines, 1):
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        return f"line {line_number} is not JSON"
      if not isinstance(row, dict) or "index" not in row:
        return f"line {line_number} is not a row"
    if expected_rows is not None and len(lines) != expected_rows:
      return f"{len(lines)} rows, {expected_rows} recorded"
    return None

  def verify(self) -> bool:
    """Checks every recorded part; rewinds the state to before the first damaged one.

    Returns:
      True if a part was damaged (the stream must continue from `position` again).
    """
    counts = self.state.get("chunk_rows")
    for number in range(self.state["chunks"]):
      why = self._damage(number, counts[number] if counts is not None else None)
      if why is None:
        continue
      if counts is None:  # No per-chunk record: all that is known is the start.
        number, rows, position = 0, 0, None
      else:
        rows = sum(counts[:number])
        position = self.state["chunk_positions"][number - 1] if number else None
        self.state.update(chunk_rows=counts[:number],
                          chunk_positions=self.state["chunk_positions"][:number])
      log.warning("%s is damaged (%s): writing it again from row %d.", self._part(number), why,
                  rows)
      self.state.update(rows=rows, chunks=number, position=position)
      _commit_state(self.state_path, self.state)
      return True
    if counts is None and sum(len(self._part(i).read_text().splitlines())
                              for i in range(self.state["chunks"])) != self.state["rows"]:
      log.warning("The parts of %s do not hold the %d recorded rows: writing them again.",
                  self.path, self.state["rows"])
      self.state.update(rows=0, chunks=0, position=None)
      _commit_state(self.state_path, self.state)
      return True
    return False

  def finish(self) -> None:
    """Joins the recorded chunks into the JSONL file and records that it is complete."""
    _write_atomically(self.path, "".join(self._part(i).read_text()
                                         for i in range(self.state["chunks"])))
    self.state["done"] = True
    _commit_state(self.state_path, self.state)
    self.parts.rmtree()
