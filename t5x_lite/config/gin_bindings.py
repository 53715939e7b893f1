"""Every gin binding a user makes takes effect, or the run stops at start naming it.

Gin applies `X.param = value` only when X is called. What a run mode calls is known before it
runs: the run modes' library code reads no gin (t5x_lite/config/configurables.py), so a run calls
exactly the configurables that its run-mode function's bindings reach through references
(`@EncoderDecoderModel()`, `@train/DatasetConfig()`) and macros, plus the built-in task
settings. `check_bindings_are_called` compares the user's bindings with that reach; the entry
point's gin parse (gin_utils.parse given a run mode) calls it.
"""

import difflib
import re
from typing import Optional, Sequence

import gin

from t5x_lite.config import gin_scan
from t5x_lite.config import gin_utils

# configurables.builtin_task_settings() calls these at every start, whatever the run mode:
# the built-in tasks are registered with their values.
BUILTIN_TASK_SETTINGS = ("get_vocabulary", "superni_options", "instruction_mixture_cap")


def _bindings_under(selector: str, scope):
  """The bindings gin applies to `selector` called under `scope` (None: any scope)."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  if scope is None:
    keys = [key for key in config if key[1] == selector]
  else:
    keys = [("/".join(scope[:i]), selector) for i in range(len(scope) + 1)]
  merged = {}
  for key in keys:
    merged.update(config.get(key, {}))
  return merged


def calls_reached_from(roots: Sequence[str]):
  """Where calling the configurables `roots` makes gin call configurables, with which scope.

  Mirrors gin's evaluation: a configurable called under the active scope S gets the bindings
  of every prefix of S (`train/DatasetConfig.pack` applies within scope train); an evaluated
  reference `@a/X()` calls X under scope (a,), an unscoped `@X()` under S; a macro `%M` is
  gin.macro called under scope (M,). An unevaluated reference (`@X`: a callable that library
  code calls later) counts as called under any scope. The run modes' library code reads no
  gin (see configurables), so this is every configurable a run mode calls. Unlike
  gin_utils.walk_bindings, which looks each reference up by its own scoped selector, this
  carries the caller's scope into unscoped references, as gin does when it calls them.

  Args:
    roots: configurable names, called under no scope (e.g. "train").

  Returns:
    {full selector: set of scope tuples it is called under; None in the set: any scope}.
  """
  registry = gin.config._REGISTRY  # pylint: disable=protected-access
  calls, todo = {}, [(registry.get_match(root).selector, ()) for root in roots]
  while todo:
    selector, scope = todo.pop()
    if scope in calls.setdefault(selector, set()):
      continue
    calls[selector].add(scope)
    for reference in gin_utils.references(_bindings_under(selector, scope)):
      if reference.scopes:
        inner = tuple(reference.scopes)
      else:
        inner = scope if reference.evaluate else None
      todo.append((reference.configurable.selector, inner))
  return calls


def _called_in(calls: dict, selector: str, scope: tuple) -> bool:
  return any(s is None or s[:len(scope)] == scope for s in calls.get(selector, ()))


def _project_reference_example(name: str) -> Optional[str]:
  """'file: binding' of the first project gin file binding a parameter to `@name()`."""
  pattern = re.compile(rf"^([\w./]+\s*=\s*@(?:[\w.]+/)*{re.escape(name)}\(\))", re.M)
  for path in sorted(gin_scan.GIN_DIR.rglob("*.gin")):
    match = pattern.search(path.read_text(encoding="utf-8"))
    if match:
      return f"{path.relative_to(gin_scan.GIN_DIR)}: {match.group(1)}"
  return None


def check_bindings_are_called(gin_files: Sequence[str], bindings: Sequence[str],
                              run_mode: str) -> None:
  """Raises ValueError if a parameter bound by the user belongs to a configurable never called.

  Gin applies `X.param = value` only when X is called; a binding of a configurable that this
  run never calls (`infer.batch_size` in a training run, `SequenceClassificationModel.
  num_labels` on a recipe that trains the encoder-decoder, `eval/DatasetConfig.batch_size`
  where only train/DatasetConfig is built) is otherwise silently ignored. The check is
  static, over the parsed config: what the run mode's configurable and the built-in task
  settings reach through bound references and macros (`calls_reached_from`), so it runs
  before any data or model work and also covers what a run calls late (evaluation during
  training, infer-eval at the end). As `check_macros_are_read`, it checks the command-line
  bindings and those of the user's own gin files, not the project's gin files; and only
  configurables of this project (a user module's configurable may be called by its tasks).

  Args:
    gin_files: resolved paths of the --gin_file files (parsed into gin's config already).
    bindings: normalised `NAME = VALUE` binding strings from the command line.
    run_mode: main's --run_mode ("train", "eval", "infer", "score", "export").
  """
  from t5x_lite.config import configurables  # pylint: disable=g-import-not-at-top
  _, _, bound = gin_scan.scan_config(gin_files, bindings)
  if not bound:
    return
  registry = gin.config._REGISTRY  # pylint: disable=protected-access
  calls = calls_reached_from([configurables.RUN_MODE_NAMES[run_mode], *BUILTIN_TASK_SETTINGS])
  if any(scope is not None and "value" not in _bindings_under("gin.macro", scope)
         for scope in calls.get("gin.macro", ())):
    return  # a macro read but never set: calling it fails first, with gin's own message
  # Already called (gin's operative config), e.g. by a module that the gin files import.
  operative = gin.config._OPERATIVE_CONFIG  # pylint: disable=protected-access
  for scope, selector in list(operative):
    calls.setdefault(selector, set()).add(tuple(scope.split("/")) if scope else ())
  for origin, statement in bound:
    try:
      configurable = registry.get_match(statement.selector)
    except ValueError:  # ambiguous: gin's own parse reported it already
      continue
    if configurable is None or not getattr(configurable.wrapped, "__module__", "").startswith(
        "t5x_lite."):
      continue
    scope = tuple(statement.scope.split("/")) if statement.scope else ()
    if _called_in(calls, configurable.selector, scope):
      continue
    name = configurable.name.rsplit(".", 1)[-1]
    binding = "/".join([*scope, statement.selector]) + f".{statement.arg_name}"
    where = f"--gin.{binding}" if origin == "command line" else f"{binding} (set in {origin})"
    in_scope = f" in scope {'/'.join(scope)}" if scope else ""
    modes = [mode for mode, fn_name in configurables.RUN_MODE_NAMES.items()
             if mode != run_mode and _called_in(calls_reached_from([fn_name]),
                                                configurable.selector, scope)]
    others = ["/".join(s) for s in calls.get(configurable.selector, ()) if s]
    others = difflib.get_close_matches("/".join(scope), others, n=len(others) or 1, cutoff=0)
    example = _project_reference_example(name)
    if modes:
      hint = f"remove the binding or use {' or '.join(f'--run_mode={m}' for m in modes)}"
    elif others:
      hint = f"it is called in scope {', '.join(others)}: did you mean {others[0]}/{name}."
      hint += f"{statement.arg_name}?"
    elif example:
      hint = f"remove the binding, or make the run call it ({example})"
    else:
      hint = f"remove the binding, or refer to it (@{name}()) from a binding this run reads"
    raise ValueError(f"{where} is bound but this run (run_mode={run_mode}) never calls "
                     f"{name}{in_scope}; {hint}")
