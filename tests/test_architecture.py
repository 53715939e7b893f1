"""The README's Architecture section, checked: imports point one way and gin stays at the edge.

Reads every module of the package with `ast` (imports inside functions included); nothing is
imported.
"""

import ast
import pathlib

import t5x_lite

PACKAGE = pathlib.Path(t5x_lite.__file__).parent

# Each folder (or root module) and its level: a module may import from its own folder, from a
# lower level, and along the two sideways edges below.
LEVELS = {"main": 7, "tools": 7, "config": 6, "modes": 5, "interop": 4, "training": 3,
          "checkpointing": 2, "model": 2, "data": 2, "parallel": 2, "settings": 0,
          "runtime": 0}
# A model names its feature converter (as t5x's models do); the peer-loss line names the step a
# rerun resumes from.
SIDEWAYS = {("model", "data"), ("parallel", "checkpointing")}
# What library code below the edge may take from tasks/ (which registers nothing at import).
TASKS_ALLOWED = {"t5x_lite.tasks.vocab", "t5x_lite.tasks.labels"}
GIN_READERS = {"main", "tools", "config"}


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    yield path, parts


def _imports(path):
  """Every absolute module name `path` imports ("t5x_lite.x.y" for `from t5x_lite.x import y`)."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _folder(dotted: str):
  """'t5x_lite.model.heads' -> 'model'; None outside the package's folders."""
  parts = dotted.split(".")
  if parts[0] != "t5x_lite" or len(parts) < 2:
    return None
  return parts[1] if parts[1] in LEVELS or parts[1] == "tasks" else None


def test_every_folder_has_a_level():
  folders = {parts[0] for _, parts in _modules() if parts[0] != "__init__"}
  assert folders == set(LEVELS)


def test_imports_point_down_the_layers():
  upward = []
  for path, parts in _modules():
    here = parts[0]
    if here == "__init__":
      continue
    for name in _imports(path):
      there = _folder(name)
      if there is None or there == here:
        continue
      if there == "tasks":
        # The edge registers the tasks; the library reads the vocabulary and label helpers.
        if here not in GIN_READERS and not any(
            name == allowed or name.startswith(allowed + ".") for allowed in TASKS_ALLOWED):
          upward.append(f"{path.relative_to(PACKAGE)} imports {name}")
        continue
      if LEVELS[there] < LEVELS[here] or (here, there) in SIDEWAYS:
        continue
      upward.append(f"{path.relative_to(PACKAGE)} imports {name}")
  assert sorted(set(upward)) == []


def test_layers_and_kernels_import_nothing_above_them():
  for path, parts in _modules():
    if parts[:2] == ("model", "kernels") or parts == ("model", "layers"):
      names = {n for n in _imports(path) if n.startswith("t5x_lite.")}
      assert all(n.startswith("t5x_lite.model.kernels") for n in names), (path, names)


def test_only_the_edge_imports_gin():
  readers = sorted({str(path.relative_to(PACKAGE)) for path, parts in _modules()
                    if any(n == "gin" or n.startswith("gin.") for n in _imports(path))
                    and parts[0] not in GIN_READERS})
  assert readers == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
  """The checker itself: a model module importing a run mode is reported."""
  fake = tmp_path / "t5x_lite"
  (fake / "model").mkdir(parents=True)
  (fake / "model" / "bad.py").write_text("from t5x_lite.modes import train\n")
  for folder in LEVELS:
    if folder not in ("main", "settings", "model"):
      (fake / folder).mkdir()
      (fake / folder / "x.py").write_text("")
  (fake / "main.py").write_text("")
  (fake / "settings.py").write_text("import gin\n")
  monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
  try:
    test_imports_point_down_the_layers()
  except AssertionError as e:
    assert "model/bad.py imports t5x_lite.modes" in str(e)
  else:
    raise AssertionError("an upward import was not reported")
  try:
    test_only_the_edge_imports_gin()
  except AssertionError as e:
    assert "settings.py" in str(e)
  else:
    raise AssertionError("gin outside the edge was not reported")
