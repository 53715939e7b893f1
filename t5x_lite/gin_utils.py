"""Gin plumbing: flag values, search paths, errors that name the fix, the operative config."""

import ast
import difflib
import importlib.util
import inspect
import logging
import os
import pathlib
import re
from typing import Sequence

from etils import epath
import gin



_SENTINEL = pathlib.Path("recipes", "quickstart.gin")


def _gin_dir() -> pathlib.Path:
  """The project's gin/ directory (models/, runs/, recipes/), always on the search path.

  In a source checkout (editable install) it sits next to the package; a regular install
  ships it as the data package `t5x_lite_gin`. A directory counts only if it holds the
  project's files: `site-packages/gin` next to an installed package is the gin-config library.
  """
  candidates = [pathlib.Path(__file__).resolve().parent.parent / "gin"]
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


def parse(gin_files: Sequence[str], bindings: Sequence[str], finalize: bool = True):
  """Parses gin files (searched on GIN_DIR too) and `NAME=VALUE` bindings, in that order.

  Raises:
    ValueError naming the file/binding and, where gin allows, the closest valid name.
  """
  from t5x_lite import configurables  # pylint: disable=g-import-not-at-top,unused-import
  _use_explicit_search_path_only()
  if str(GIN_DIR) not in gin.config._LOCATION_PREFIXES:  # pylint: disable=protected-access
    gin.add_config_file_search_path(str(GIN_DIR))
  resolved = []
  for gin_file in gin_files:
    if os.path.exists(gin_file):
      resolved.append(gin_file)
    elif (GIN_DIR / gin_file).exists():
      resolved.append(str(GIN_DIR / gin_file))
    else:
      raise ValueError(f"--gin_file={gin_file}: no such file here or under the package's gin "
                       f"directory ({', '.join(sorted(p.name for p in GIN_DIR.iterdir()))}/...).")
  try:
    gin.parse_config_files_and_bindings(
        resolved, [normalize_binding(b) for b in bindings], finalize_config=finalize,
        skip_unknown=False)
  except (ValueError, KeyError, TypeError, SyntaxError) as e:
    raise ValueError(f"Gin configuration error: {_explain(e)}") from e


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


def write_operative_config(path: str):
  """Writes every gin binding this run used (MODEL_DIR/config.gin) to `path`."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(gin.operative_config_str())
