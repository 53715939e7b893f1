"""Gin files and --gin flags read as text, before gin parses them (gin's state untouched).

The project's gin/ directory (always on the search path, `GIN_DIR`), --gin_file values resolved
against it, `NAME=VALUE` flags normalised, and a syntactic scan of the files, their includes
and the flags (`scan_config`) that finds macros nothing reads (`check_macros_are_read`) and
names the file, line and statement of gin that does not parse. Cheap (no TensorFlow or JAX),
so the entry point runs it first; `gin_utils.parse` does the real parse.
"""

import ast
import difflib
import importlib.util
import os
import pathlib
from typing import Optional, Sequence

import gin
from gin import config_parser


_SENTINEL = pathlib.Path("recipes", "quickstart.gin")


def _gin_dir() -> pathlib.Path:
  """The project's gin/ directory (models/, runs/, recipes/), always on the search path.

  In a source checkout (editable install) it sits next to the package; a regular install
  ships it as the data package `t5x_lite_gin`. A directory counts only if it holds the
  project's files: `site-packages/gin` next to an installed package is the gin-config library.
  """
  candidates = [pathlib.Path(__file__).resolve().parents[2] / "gin"]
  spec = importlib.util.find_spec("t5x_lite_gin")
  if spec is not None:
    candidates += [pathlib.Path(p) for p in spec.submodule_search_locations or ()]
  for candidate in candidates:
    if (candidate / _SENTINEL).is_file():
      return candidate
  raise FileNotFoundError(
      f"The t5x_lite gin files are missing (looked for {_SENTINEL} in "
      f"{', '.join(map(str, candidates))}): reinstall the package (pip install t5x_lite).")


GIN_DIR = _gin_dir()


def _is_gin_literal(value: str) -> bool:
  if value.startswith(("@", "%")):
    return True
  try:
    ast.literal_eval(value)
    return True
  except (ValueError, SyntaxError):
    return False


def normalize_binding(binding: str) -> str:
  """`NAME=VALUE` with a bare string VALUE becomes `NAME='VALUE'` (so no escaped quotes).

  Numbers, booleans, None, quoted strings, lists/dicts, @references and %macros pass as is.
  """
  if "=" not in binding:
    raise ValueError(f"--gin.{binding}: a binding is NAME=VALUE, e.g. --gin.MODEL_DIR=experiments/x")
  name, value = binding.split("=", 1)
  name, value = name.strip(), value.strip()
  if not _is_gin_literal(value):
    value = repr(value)
  return f"{name} = {value}"


def resolve_gin_files(gin_files: Sequence[str]):
  """--gin_file values -> paths: as given if it exists, else under GIN_DIR."""
  resolved = []
  for gin_file in gin_files:
    if os.path.exists(gin_file):
      resolved.append(gin_file)
    elif (GIN_DIR / gin_file).exists():
      resolved.append(str(GIN_DIR / gin_file))
    else:
      raise ValueError(f"--gin_file={gin_file}: no such file here or under the package's gin "
                       f"directory ({', '.join(sorted(p.name for p in GIN_DIR.iterdir()))}/...).")
  return resolved


def check_unread_command_line(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """`check_macros_are_read` on --gin_file values and raw --gin bindings; cheap (no imports),
  so the entry point runs it first, before TensorFlow or JAX load."""
  resolved = resolve_gin_files(gin_files)
  normalized = [normalize_binding(b) for b in bindings]
  for binding, text in zip(bindings, normalized):
    try:
      for _ in config_parser.ConfigParser(text, _MacroRecorder()):
        pass
    except SyntaxError as e:
      raise ValueError(f"--gin.{binding}: not a gin binding ({e.msg.rstrip('.')}); values are "
                       "Python literals, e.g. --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 64, "
                       "'targets': 32}\"") from None
  check_macros_are_read(resolved, normalized)


class _MacroRecorder(config_parser.ParserDelegate):
  """Parses gin text without touching gin's state; records every `%NAME` it reads."""

  def __init__(self):
    self.read = set()

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return None

  def macro(self, macro_name):
    self.read.add(macro_name)
    return None


def _statements(text: str, recorder: _MacroRecorder, origin: str):
  """gin statements of `text`; a syntax error names the file, line and statement it is in.

  gin reports where its tokenizer gave up, often the line after the broken binding
  (`T5Config.d_model = (128` is reported at the next line): the statement quoted is the
  first one after the last statement that parsed.
  """
  last = 0
  try:
    for statement in config_parser.ConfigParser(text, recorder):
      last = max(last, statement.location.line_num or 0)
      yield statement
  except SyntaxError as e:
    lines = text.splitlines()
    starts = [i for i in range(last, len(lines))
              if lines[i][:1] not in ("", "#", " ", "\t", ")", "]", "}")]
    where = "--gin" if origin == "command line" else origin
    if starts and starts[0] < (e.lineno or len(lines)):
      raise ValueError(f"{where}, line {starts[0] + 1}: {lines[starts[0]].strip()!r} is not "
                       f"valid gin ({e.msg.rstrip('.')}); values are Python literals") from None
    raise ValueError(f"{where}, line {e.lineno}: not valid gin ({e.msg.rstrip('.')})") from None


def _scan(text: str, recorder: _MacroRecorder, defined: dict, seen: set, origin: str,
          bound: Optional[list] = None):
  """Records macro definitions (name -> origin) and reads of `text` and of its includes.

  With `bound`, also appends (origin, BindingStatement) for each configurable parameter
  binding (`X.param = value`) outside the project's gin files.
  """
  for statement in _statements(text, recorder, origin):
    if isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
      name = f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector
      defined.setdefault(name, origin)
    elif isinstance(statement, config_parser.BindingStatement):
      if bound is not None and origin != "project":
        bound.append((origin, statement))
    elif isinstance(statement, config_parser.IncludeStatement):
      path = _find_include(statement.filename)
      if path is None:
        where = {"command line": "the command line", "project": "a project gin file"}.get(
            origin, origin)
        raise ValueError(f"include {statement.filename!r} (in {where}): no such file here or "
                         "under the package's gin directory "
                         f"({', '.join(sorted(p.name for p in GIN_DIR.iterdir()))}/...).")
      if path not in seen:
        seen.add(path)
        _scan(pathlib.Path(path).read_text(encoding="utf-8"), recorder, defined, seen,
              "project" if _in_gin_dir(path) else path, bound)


def _find_include(filename: str):
  # As gin resolves includes: as given, then under each search-path prefix.
  prefixes = [""] if os.path.isabs(filename) else (
      list(gin.config._LOCATION_PREFIXES) + [str(GIN_DIR)])  # pylint: disable=protected-access
  for prefix in prefixes:
    candidate = os.path.join(prefix, filename)
    if os.path.isfile(candidate):
      return os.path.realpath(candidate)
  return None


def _in_gin_dir(path: str) -> bool:
  return pathlib.Path(path).resolve().is_relative_to(GIN_DIR.resolve())


def _project_files_reading(name: str):
  """The project's gin files that read `%name`, as --gin_file values (runs/finetune.gin)."""
  found = []
  for path in sorted(GIN_DIR.rglob("*.gin")):
    recorder = _MacroRecorder()
    try:
      for _ in config_parser.ConfigParser(path.read_text(encoding="utf-8"), recorder):
        pass
    except (SyntaxError, ValueError):
      continue
    if name in recorder.read:
      found.append(str(path.relative_to(GIN_DIR)))
  # Run files first: they are what a user adds to a recipe.
  return sorted(found, key=lambda f: (not f.startswith("runs/"), f))


def scan_config(gin_files: Sequence[str], bindings: Sequence[str]):
  """Reads the gin files (their includes too) and bindings without touching gin's state.

  Args:
    gin_files: resolved paths of the --gin_file files.
    bindings: normalised `NAME = VALUE` binding strings from the command line.

  Returns:
    (a _MacroRecorder of the `%NAME`s read; {macro name: origin} of the macros defined;
    [(origin, config_parser.BindingStatement)] of the parameter bindings outside the project's
    gin files), origin being "command line", "project" or the user's file.
  """
  recorder, defined, seen, bound = _MacroRecorder(), {}, set(), []
  for gin_file in gin_files:
    path = os.path.realpath(gin_file)
    if path in seen:
      continue
    seen.add(path)
    _scan(pathlib.Path(path).read_text(encoding="utf-8"), recorder, defined, seen,
          "project" if _in_gin_dir(path) else gin_file, bound)
  for binding in bindings:
    _scan(binding, recorder, defined, seen, "command line", bound)
  return recorder, defined, bound


def check_macros_are_read(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Raises ValueError if a macro set on the command line or in a user's gin file is never read.

  A macro (`NAME = value`) takes effect only through a binding that reads it (`%NAME`); one
  that nothing reads is otherwise silently ignored (a recipe without runs/finetune.gin
  ignores --gin.INITIAL_CHECKPOINT_PATH and trains from scratch). The check is syntactic,
  over the given files, their includes and the bindings, so it runs before anything else.
  Macros defined in the project's own gin files are not checked (a run file may define one
  that only some recipes read).

  Args:
    gin_files: resolved paths of the --gin_file files.
    bindings: normalised `NAME = VALUE` binding strings from the command line.
  """
  recorder, defined, _ = scan_config(gin_files, bindings)
  read_last = {name.rsplit("/", 1)[-1] for name in recorder.read}
  for name, origin in defined.items():
    if origin == "project" or name in recorder.read or name in read_last:
      continue
    where = f"--gin.{name}" if origin == "command line" else f"{name} (set in {origin})"
    users = _project_files_reading(name)
    if users:
      hint = f"add --gin_file={users[0]}" + (
          f" (also read by {', '.join(users[1:])})" if len(users) > 1 else "")
    else:
      close = difflib.get_close_matches(name, sorted(read_last), n=3, cutoff=0.6)
      hint = (f"did you mean {', '.join(close)}?" if close else
              "no gin file of the project reads it either: remove it or check its spelling")
    raise ValueError(f"{where} is set but nothing in these gin files reads it (%{name}); "
                     f"{hint}")
