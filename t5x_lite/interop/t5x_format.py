"""t5x's checkpoint files: the checkpoint_<step>/ directory, its msgpack and TensorStore arrays.

The format (t5x/checkpoints.py, VERSION 3): `checkpoint_<step>/checkpoint` is a msgpack
(flax.serialization) of
  {"version": 3, "optimizer": {"target": params,
                               "state": {"step": int, "param_states": params' tree of
                                         {"v_row", "v_col", "v", "m"}}}}
where each leaf is either an array in the msgpack itself or a TensorStore spec (a dict with
"driver": "zarr" and a "kvstore" path relative to the checkpoint directory) of a zarr array
beside it. This module reads and writes that layout in t5x's names and shapes; what they mean
for t5x_lite is t5x_lite.interop.t5x_param_layout's and t5x_adafactor's concern. t5x's newer
orbax layout (checkpoint_<step>/state/, t5x_lite.interop.t5x_orbax_format) holds the same tree
and is read through the same functions: checkpoint_dir, read_t5x_checkpoint, read_target_shapes.
"""

import copy
import os
import posixpath
import re
import time
from typing import Any, Mapping, Tuple

from etils import epath
from flax import serialization
from flax import traverse_util
import numpy as np
import tensorstore as ts

FORMAT_VERSION = 3
CHECKPOINT_FILE = "checkpoint"
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
# t5x's zarr chunks hold at most this many bytes.
_CHUNK_BYTES = 64 * 1024 * 1024
# Files only orbax writes (t5x's checkpoint_utils tells the formats apart by them too).
_ORBAX_FILES = ("_METADATA", "_CHECKPOINT_METADATA")


class T5xCheckpointError(ValueError):
  """A path that is not a readable t5x checkpoint, or one that does not fit the T5Config."""


# ---------------------------------------------------------------- paths


def _orbax_format():
  # Imported here: t5x_orbax_format builds on this module's error and tree helpers.
  from t5x_lite.interop import t5x_orbax_format  # pylint: disable=g-import-not-at-top
  return t5x_orbax_format


def _orbax_state(directory: epath.Path):
  """The `state` item of a checkpoint_dir() in t5x's orbax layout, None in the msgpack one."""
  if (directory / CHECKPOINT_FILE).is_file():
    return None
  return _orbax_format().state_item(directory)


def checkpoint_dir(path) -> epath.Path:
  """The `checkpoint_<step>` directory of `path` (that directory, its `checkpoint` file or, in
  t5x's orbax layout, its `state` item).

  Raises:
    T5xCheckpointError: `path` is neither; when it is a model directory holding t5x
      checkpoints, the message lists them.
  """
  path = epath.Path(path)
  if path.name == CHECKPOINT_FILE and path.is_file():
    path = path.parent
  if (path / CHECKPOINT_FILE).is_file():
    if any((path / name).exists() for name in _ORBAX_FILES):
      raise T5xCheckpointError(
          f"{path} is an orbax checkpoint (it has {' or '.join(_ORBAX_FILES)}), not one in "
          "t5x's msgpack + TensorStore layout.")
    return path
  orbax = _orbax_format()
  item = orbax.state_item(path)
  if item is not None:
    names = orbax.top_level_names(item)
    if "target" not in names:
      raise T5xCheckpointError(
          f"{path} is an orbax checkpoint whose tree holds {sorted(names)}, not t5x's train "
          "state ('target', 'state'): a t5x_lite checkpoint is read as one (its step "
          "directory MODEL_DIR/checkpoints/<step>), not as a t5x checkpoint.")
    return item.parent
  if path.is_dir():
    steps = sorted((int(m.group(1)), child.name) for child in path.iterdir()
                   if (m := _STEP_DIR.match(child.name)) and (
                       (child / CHECKPOINT_FILE).exists() or orbax.state_item(child)))
    if steps:
      raise T5xCheckpointError(
          f"{path} is a t5x model directory, not one checkpoint: pass one of its checkpoint "
          f"directories, e.g. {path / steps[-1][1]} (steps {[s for s, _ in steps]}).")
    if (path / orbax.STATE_ITEM / CHECKPOINT_FILE).exists():
      raise T5xCheckpointError(
          f"{path} is a checkpoint in an orbax layout this reader does not know "
          f"({orbax.STATE_ITEM}/{CHECKPOINT_FILE} without orbax's tree metadata "
          f"{orbax.STATE_ITEM}/_METADATA); t5x's msgpack + TensorStore layout and its orbax "
          "layout of today (checkpoint_<step>/state/_METADATA) are read.")
  raise T5xCheckpointError(
      f"{path} is not a t5x checkpoint: t5x writes a directory checkpoint_<step>/ holding a "
      f"msgpack file `{CHECKPOINT_FILE}`, and there is none "
      f"{'in it' if path.is_dir() else 'at that path'}.")


def is_t5x_checkpoint(path) -> bool:
  """Whether `path` is a t5x checkpoint directory (or its `checkpoint` file): cheap, no read."""
  try:
    checkpoint_dir(path)
  except T5xCheckpointError:
    return False
  return True


# ---------------------------------------------------------------- reading


def is_spec(leaf) -> bool:
  """Whether a msgpack leaf is a TensorStore spec (of a zarr array beside the msgpack)."""
  return isinstance(leaf, Mapping) and "driver" in leaf and (
      "kvstore" in leaf or "path" in leaf)


def flatten(tree):
  """Nested dict -> {path tuple: leaf}; TensorStore spec dicts are leaves."""
  return traverse_util.flatten_dict(tree, is_leaf=lambda _, value: is_spec(value))


unflatten = traverse_util.unflatten_dict


def _kvstore(directory: epath.Path, name: str) -> dict:
  """TensorStore kvstore of the array `name` (a path relative to the checkpoint directory)."""
  text = os.fspath(directory)
  if text.startswith("gs://"):
    bucket, _, prefix = text[len("gs://"):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": posixpath.join(prefix, name)}
  return {"driver": "file", "path": os.path.join(text, name)}


def _absolute_spec(spec: Mapping[str, Any], directory: epath.Path) -> dict:
  """A spec as t5x wrote it (relative path; a dummy bucket for gs://) for this directory."""
  spec = copy.deepcopy(dict(spec))
  kvstore = dict(spec.get("kvstore") or {})
  # tensorstore < 0.1.14 and t5x's gcs specs keep the path beside the kvstore.
  name = kvstore.get("path") or spec.pop("path", None)
  spec.pop("path", None)
  if not name:
    raise T5xCheckpointError(f"t5x checkpoint {directory}: a TensorStore spec without a path: "
                             f"{spec}.")
  spec["kvstore"] = _kvstore(directory, name)
  return spec


def _chunk_count(spec_json) -> int:
  meta = spec_json["metadata"]
  return int(np.prod([-(-n // c) for n, c in zip(meta["shape"], meta["chunks"])]))


def _read_arrays(specs: Mapping[tuple, Mapping], directory: epath.Path) -> dict:
  """{path: np.ndarray} for {path: t5x TensorStore spec}, all read concurrently.

  A missing or truncated array file raises T5xCheckpointError naming the array and file: a
  zarr chunk that is absent would otherwise read as zeros.
  """
  # Parameters by their names; statistics as state/param_states/<name>/<statistic>.
  named = lambda path: "/".join(path[1:] if path[0] == "target" else path)
  opened = {}
  for path, spec in specs.items():
    absolute = _absolute_spec(spec, directory)
    opened[path] = (absolute, ts.open(absolute, open=True, read=True))
  arrays, reads = {}, {}
  for path, (absolute, future) in opened.items():
    where = absolute["kvstore"]["path"]
    try:
      store = future.result()
      listing = ts.KvStore.open(dict(absolute["kvstore"], path=where.rstrip("/") + "/")
                                ).result().list().result()
      chunks = [key for key in listing if not key.decode().startswith(".")]
      expected = _chunk_count(store.spec().to_json())
      if len(chunks) < expected:
        raise ValueError(f"{expected - len(chunks)} of its {expected} chunk files are missing")
      reads[path] = (where, store.read())
    except ValueError as error:
      raise T5xCheckpointError(
          f"t5x checkpoint {directory}: cannot read array {named(path)} from {where}: "
          f"{error}. The checkpoint is incomplete or damaged (copy it again).") from error
  for path, (where, future) in reads.items():
    try:
      arrays[path] = np.asarray(future.result())
    except ValueError as error:
      raise T5xCheckpointError(
          f"t5x checkpoint {directory}: cannot read array {named(path)} from {where}: "
          f"{error}. The file is truncated or damaged (copy the checkpoint again).") from error
  return arrays


def read_t5x_checkpoint(path, with_optimizer_state: bool = True):
  """The raw contents of a t5x checkpoint, in t5x's names and shapes.

  Args:
    path: a checkpoint_<step> directory (or its `checkpoint` file), local or gs://, in the
      msgpack + TensorStore layout or t5x's orbax one.
    with_optimizer_state: also read the optimizer statistics' arrays.

  Returns:
    (target, param_states, step): {path tuple: np.ndarray} of the parameters, the same of
    the statistics (paths end in v_row / v_col / v / m; empty without the optimizer
    state), and the step (int).
  """
  directory = checkpoint_dir(path)
  item = _orbax_state(directory)
  if item is not None:
    return _orbax_format().read(item, with_optimizer_state)
  data = (directory / CHECKPOINT_FILE).read_bytes()
  if data.startswith(b"model_checkpoint_path"):
    raise T5xCheckpointError(
        f"{directory / CHECKPOINT_FILE} is a TensorFlow checkpoint index (Mesh TensorFlow T5), "
        "not a t5x checkpoint: convert it with t5x first.")
  try:
    contents = serialization.msgpack_restore(data)
  except Exception as error:  # pylint: disable=broad-except
    raise T5xCheckpointError(
        f"{directory / CHECKPOINT_FILE} is not a t5x checkpoint file (not msgpack: "
        f"{type(error).__name__}: {error}).") from error
  optimizer = contents.get("optimizer") if isinstance(contents, Mapping) else None
  if not isinstance(optimizer, Mapping) or "target" not in optimizer:
    keys = sorted(contents) if isinstance(contents, Mapping) else type(contents).__name__
    raise T5xCheckpointError(
        f"{directory / CHECKPOINT_FILE} is not a t5x checkpoint file: t5x's holds "
        f"{{'version', 'optimizer': {{'target', 'state'}}}}, this one {keys}.")
  state = optimizer.get("state") or {}
  step = int(np.asarray(state.get("step", 0)))
  leaves = {("target",) + p: v for p, v in flatten(optimizer["target"]).items()}
  if with_optimizer_state:
    leaves.update({("state",) + p: v
                   for p, v in flatten(state.get("param_states") or {}).items()})
  arrays = _read_arrays({p: v for p, v in leaves.items() if is_spec(v)}, directory)
  values = {p: arrays[p] if p in arrays else np.asarray(v) for p, v in leaves.items()}
  target = {p[1:]: v for p, v in values.items() if p[0] == "target"}
  param_states = {p[1:]: v for p, v in values.items() if p[0] == "state"}
  return target, param_states, step


def read_target_shapes(path) -> dict:
  """{t5x parameter path: shape} of a t5x checkpoint, from its msgpack alone (no array read)."""
  directory = checkpoint_dir(path)
  item = _orbax_state(directory)
  if item is not None:
    return _orbax_format().read_target_shapes(item)
  contents = serialization.msgpack_restore((directory / CHECKPOINT_FILE).read_bytes())
  shapes = {}
  for p, leaf in flatten(contents["optimizer"]["target"]).items():
    if is_spec(leaf):
      shapes[p] = tuple(leaf["metadata"]["shape"])
    else:
      shapes[p] = tuple(np.shape(leaf))
  return shapes


# ---------------------------------------------------------------- writing


def _chunks(shape, itemsize):
  """t5x's chunk shape: shrink the largest dim to its next divisor until under 64 MiB."""
  chunks = [max(int(n), 1) for n in shape]
  while int(np.prod(chunks)) * itemsize > _CHUNK_BYTES:
    i = int(np.argmax(chunks))
    chunks[i] = max(d for d in range(1, chunks[i]) if shape[i] % d == 0)
  return chunks


def _spec(name: str, array: np.ndarray, gcs: bool) -> dict:
  """The TensorStore spec t5x writes into the msgpack for array `name` (relative path)."""
  spec = {"driver": "zarr", "dtype": array.dtype.name,
          "metadata": {"compressor": {"id": "gzip", "level": 1}, "shape": list(array.shape),
                       "chunks": _chunks(array.shape, array.dtype.itemsize)}}
  if gcs:  # t5x's portable gcs spec: a dummy bucket, replaced by the reader's
    spec.update(kvstore={"driver": "gcs", "bucket": "t5x-dummy-bucket"}, path=name)
  else:
    spec["kvstore"] = {"driver": "file", "path": name + "/"}
  return spec


def write_t5x_checkpoint(final: epath.Path, leaves: Mapping[Tuple[str, ...], Tuple[Any, bool]],
                         step: int) -> str:
  """Writes the directory `final` (checkpoint_<step>) in t5x's layout.

  Args:
    final: the checkpoint directory to create (local or gs://); it must not exist.
    leaves: {path under "optimizer" (("target", ...) or ("state", "param_states", ...)):
      (np.ndarray, whether it goes to a zarr array beside the msgpack rather than into it)}.
    step: the train step (t5x's `state/step`).

  Returns:
    `final`, as a string.
  """
  gcs = os.fspath(final).startswith("gs://")
  # Locally, write beside the final name and rename at the end, as t5x does: a killed save
  # leaves no directory that looks like a checkpoint.
  directory = final if gcs else final.parent / f"{final.name}.tmp-{int(time.time())}"
  directory.mkdir(parents=True, exist_ok=True)
  tree, opened = {}, []
  for path, (array, to_tensorstore) in leaves.items():
    if not to_tensorstore:
      tree[path] = array
      continue
    name = ".".join(path)
    spec = _spec(name, array, gcs)
    tree[path] = spec
    absolute = dict(_absolute_spec(spec, directory), dtype=array.dtype.name)
    opened.append((ts.open(absolute, create=True, delete_existing=True), array))
  # All opens, then all writes, in flight together (a bucket answers each in a round trip).
  writes = [store.result().write(array) for store, array in opened]
  for write in writes:
    write.result()
  tree[("state", "step")] = np.asarray(step, np.int32)
  contents = {"version": FORMAT_VERSION, "optimizer": unflatten(tree)}
  # The msgpack last: readers open it first, so a partial save never looks complete.
  (directory / CHECKPOINT_FILE).write_bytes(serialization.msgpack_serialize(contents))
  if directory != final:
    directory.rename(final)
  return os.fspath(final)
