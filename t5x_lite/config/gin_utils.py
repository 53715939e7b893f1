"""Gin plumbing: flag values, search paths, errors that name the fix, the operative config."""

import ast
import contextlib
import difflib
import importlib.util
import inspect
import logging
import os
import pathlib
import re
from typing import Optional, Sequence

from etils import epath
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


def _use_explicit_search_path_only():
  """Drops gin-config's package-path file reader (gin.resource_reader).

  That reader treats the head of a relative include (`runs/pretrain.gin`) as a Python package
  and imports it: with the working directory on sys.path, a user's `runs/` or `models/`
  directory is found as a namespace package and the include crashes or reads the wrong file.
  Gin files are found on the search path alone: the working directory, then GIN_DIR.
  """
  gin.config._FILE_READERS[:] = [  # pylint: disable=protected-access
      (reader, exists) for reader, exists in gin.config._FILE_READERS  # pylint: disable=protected-access
      if getattr(reader, "__module__", "") != "gin.resource_reader"]


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


def _registered_names():
  return sorted(selector for selector, _ in gin.config._REGISTRY.items())  # pylint: disable=protected-access


def _explain(error: Exception) -> str:
  """Adds the closest valid names to gin's 'no configurable' / 'no parameter' errors."""
  message = str(error)
  match = re.search(r"(\w+)/macro.value set to `%gin.REQUIRED`", message)
  if match:
    return (f"{message}\nThe macro {match.group(1)} is required: set it with "
            f"--gin.{match.group(1)}=VALUE or in a gin file (the run file's header lists the "
            "required macros).")
  match = re.search(r"No configurable matching '([^']+)'", message)
  if match:
    names = [n.split(".")[-1] for n in _registered_names()]
    close = difflib.get_close_matches(match.group(1).split(".")[-1], names, n=3, cutoff=0.5)
    if close:
      return f"{message}\nDid you mean: {', '.join(close)}?"
    return message
  match = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", message)
  if match:
    try:
      fn = gin.config._REGISTRY.get_match(match.group(1)).wrapped  # pylint: disable=protected-access
      target = fn.__init__ if inspect.isclass(fn) else fn
      params = list(inspect.signature(target).parameters)
      close = difflib.get_close_matches(match.group(2), params, n=3, cutoff=0.5)
      if close:
        return f"{message}\nDid you mean: {', '.join(close)}?"
    except Exception:  # pylint: disable=broad-except
      pass
  return message


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


_TASK_SETTINGS_CHANGED = (
    "The built-in tasks' settings (get_vocabulary, superni_options, instruction_mixture_cap) "
    "came out differently once the modules that the gin files import were loaded: bind them "
    "without references to those modules' configurables, so the built-in tasks are "
    "registered with their final values before those modules run.")


@contextlib.contextmanager
def _imports_deferred():
  """Gin `import` lines are recorded but not run (`from __gin__ import ...` features are)."""
  parse_context = gin.config.ParseContext
  original = parse_context.process_import

  def process_import(self, statement):
    if ((statement.is_from and statement.module.startswith("__gin__."))
        or self._dynamic_registration):  # pylint: disable=protected-access
      # With dynamic registration selectors resolve through imported modules: import them.
      return original(self, statement)
    self._imports.append(statement)  # pylint: disable=protected-access
    return None

  parse_context.process_import = process_import
  try:
    yield
  finally:
    parse_context.process_import = original


@contextlib.contextmanager
def _scratch_config():
  """Runs a parse whose bindings are discarded afterwards (gin's global state restored)."""
  # pylint: disable=protected-access
  state = (gin.config._CONFIG, gin.config._IMPORTS, gin.config._OPERATIVE_CONFIG,
           gin.config._SINGLETONS)
  # pylint: enable=protected-access
  saved = [dict(x) if isinstance(x, dict) else set(x) for x in state]
  try:
    yield
  finally:
    for live, copy in zip(state, saved):
      live.clear()
      live.update(copy)


def bindings_read_by(configurable: str):
  """What calling `configurable` evaluates: (configurable selectors, macro names).

  Follows the bound references (`@EncoderDecoderModel()`, `@train/DatasetConfig()`) and macros
  (`%MODEL_DIR`, and what a macro's value references) from the configurable down, as a call
  evaluates them. The run modes' library code reads no gin (see configurables), so this is
  everything a run mode reads.

  Args:
    configurable: a gin configurable name, e.g. "infer".

  Returns:
    (set of full selectors, e.g. "t5x_lite.model.encoder_decoder.EncoderDecoderModel"; set of macro names).
  """
  start = gin.config._REGISTRY.get_match(configurable)  # pylint: disable=protected-access
  selectors, macros = {start.selector}, set()
  for _, bound in walk_bindings(start.selector, references):
    for value in references(bound):
      if value.configurable.wrapped is gin.config.macro:
        macros.add(value.scopes[-1])
      else:
        selectors.add(value.configurable.selector)
  return selectors, macros


def walk_bindings(start: str, follow):
  """Yields (scoped selector, its bindings) for `start` and every configurable reached from it.

  Each scoped selector is visited once; `follow(bindings)` gives the
  `gin.config.ConfigurableReference`s to visit next (bound references, macros). Configurables
  without bindings and gin's own constants are skipped.
  """
  seen, todo = set(), [start]
  while todo:
    current = todo.pop()
    if current in seen:
      continue
    seen.add(current)
    try:
      bound = gin.get_bindings(current, resolve_references=False)
    except ValueError:  # gin's own constants and unbound configurables
      continue
    yield current, bound
    todo.extend(reference.scoped_selector for reference in follow(bound))


def references(value):
  """The ConfigurableReferences (`@X()`, `%MACRO`) anywhere inside a bound value."""
  return [item for item in _flattened(value)
          if isinstance(item, gin.config.ConfigurableReference)]


def _flattened(value):
  if isinstance(value, dict):
    value = list(value.values())
  if isinstance(value, (list, tuple)):
    for item in value:
      yield from _flattened(item)
  else:
    yield value


def finalize(configurable: Optional[str] = None) -> None:
  """gin.finalize(), demanding only the `%gin.REQUIRED` values that `configurable` reads.

  gin's own check asks for every REQUIRED value in the config: an infer run over a recipe
  that includes runs/pretrain.gin was told to set MODEL_DIR, which only training reads.
  A REQUIRED value left unset and never read is harmless; one that is read still stops the
  call (gin: "Required bindings for ... not provided").

  Args:
    configurable: the run mode's gin name ("train", "evaluate", ...); None checks all.
  """
  if configurable is None:
    gin.finalize()
    return
  selectors, macros = bindings_read_by(configurable)

  def read(key):
    scope, selector = key
    if selector == "gin.macro":  # a macro NAME = value is the binding NAME/gin.macro.value
      return scope.split("/")[-1] in macros
    return selector in selectors

  hooks = gin.config._FINALIZE_HOOKS  # pylint: disable=protected-access
  check_all = gin.config.find_missing_overrides_hook
  at = hooks.index(check_all)
  hooks[at] = lambda config: check_all({k: v for k, v in config.items() if read(k)})
  try:
    gin.finalize()
  finally:
    hooks[at] = check_all


_finalize = finalize


@contextlib.contextmanager
def _gin_errors():
  """gin's parse and finalize errors as one ValueError, with the closest valid names."""
  try:
    yield
  except (ValueError, KeyError, TypeError, SyntaxError) as e:
    raise ValueError(f"Gin configuration error: {_explain(e)}") from e


def parse(gin_files: Sequence[str], bindings: Sequence[str], finalize: bool = True,
          register_builtin_tasks: bool = True, check_unread_macros: bool = False,
          run_mode: Optional[str] = None):
  """Parses gin files (searched on GIN_DIR too) and `NAME=VALUE` bindings, in that order.

  With `register_builtin_tasks` the built-in seqio tasks are registered once, with the
  gin-bound vocabulary and task options, before any module that a gin file imports runs
  (so a user's mixture over built-in tasks sees the bound vocabulary). Two passes: the
  first parses everything with gin `import` lines deferred (bindings to configurables of
  those modules skipped), reads the task settings and registers the tasks; the second is
  the real parse, imports included. The settings are then re-read and must agree.

  Args:
    gin_files: --gin_file values (a path here, or one under GIN_DIR).
    bindings: --gin values, `NAME=VALUE`.
    finalize: lock the config after parsing.
    register_builtin_tasks: register the built-in tasks as above.
    check_unread_macros: first raise if a macro set in `bindings` or in a gin file outside
      GIN_DIR is read by no binding (`check_macros_are_read`).
    run_mode: "train", "eval", ... (main's --run_mode): finalizing demands only the
      REQUIRED macros and bindings that this run mode reads. None: all of them. With
      `finalize`, a user's binding of a configurable this run mode never calls then raises
      (`gin_bindings.check_bindings_are_called`).

  Raises:
    ValueError naming the file/binding and, where gin allows, the closest valid name.
  """
  if check_unread_macros:
    check_unread_command_line(gin_files, bindings)
  from t5x_lite.config import configurables  # pylint: disable=g-import-not-at-top
  _use_explicit_search_path_only()
  if str(GIN_DIR) not in gin.config._LOCATION_PREFIXES:  # pylint: disable=protected-access
    gin.add_config_file_search_path(str(GIN_DIR))
  resolved = resolve_gin_files(gin_files)
  normalized = [normalize_binding(b) for b in bindings]
  if register_builtin_tasks:
    with _scratch_config(), _imports_deferred():
      with _gin_errors():
        gin.parse_config_files_and_bindings(resolved, normalized, finalize_config=False,
                                            skip_unknown=True)
      # Not a gin error: the settings' own errors (a vocabulary path that is not a
      # SentencePiece model) name their binding.
      settings = configurables.builtin_task_settings()
    configurables.register_builtin_tasks(settings)
  with _gin_errors():
    gin.parse_config_files_and_bindings(resolved, normalized, finalize_config=False,
                                        skip_unknown=False)
    if finalize:
      _finalize(configurables.RUN_MODE_NAMES[run_mode] if run_mode else None)
  if register_builtin_tasks:
    if configurables.builtin_task_settings() != settings:  # vocabularies compare by content
      raise ValueError(_TASK_SETTINGS_CHANGED)
  if finalize and run_mode:
    from t5x_lite.config import gin_bindings  # pylint: disable=g-import-not-at-top
    gin_bindings.check_bindings_are_called(resolved, normalized, run_mode)


def explain_call_error(error: Exception) -> str:
  """Turns gin's missing-required-binding errors into the macro/binding to set."""
  message = str(error)
  match = re.search(r"Required bindings for `([^`]+)` not provided in config: \[([^\]]*)\]",
                    message)
  if match:
    missing = match.group(2)
    return (f"{message}\nSet them in a gin file or on the command line, e.g. "
            f"--gin.{match.group(1)}.{missing.split(',')[0].strip(' ' + chr(39))}=...; the run "
            "gin files' headers list the required macros (e.g. --gin.MODEL_DIR=experiments/x).")
  return _explain(error)


def model_dir_macro() -> Optional[str]:
  """The MODEL_DIR macro of the parsed gin config, or None (no config, or no such macro)."""
  try:
    model_dir = gin.query_parameter("%MODEL_DIR")
  except (ValueError, KeyError):
    return None
  return model_dir if isinstance(model_dir, str) else None
