"""Gin plumbing: the parse (built-in tasks first), finalize by run mode, errors that name the fix.

Gin files and flags read as text (search path, flag values, the unread-macro check) are in
t5x_lite/config/gin_scan.py.
"""

import contextlib
import difflib
import inspect
import re
from typing import Optional, Sequence

import gin

from t5x_lite.config.gin_scan import GIN_DIR
from t5x_lite.config.gin_scan import check_unread_command_line
from t5x_lite.config.gin_scan import normalize_binding
from t5x_lite.config.gin_scan import resolve_gin_files


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
