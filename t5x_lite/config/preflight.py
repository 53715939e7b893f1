"""Settings checked after the gin parse and before any data or model work.

Each check names the gin binding (and the macro it came through, e.g. MODEL_DIR) and what to
write instead. Values that would otherwise pass silently (`MODEL_DIR=None` training into
./None, a list making a directory named "['a']", `~` taken literally) or fail cryptically
later (a dtype name, a number given as a string, an int CHECKPOINT_STEPS, a length whose
activations do not fit in memory) stop the run here.
"""

import dataclasses
import inspect
import os
import typing
from typing import Any, Iterator, List, Optional, Tuple

import gin

from t5x_lite.config import gin_utils

# pylint: disable=protected-access
_REGISTRY = gin.config._REGISTRY
# pylint: enable=protected-access

GiB = 1024 ** 3
# Parameters that hold a path, by name, on the run modes' functions and RestoreConfig.
_PATH_PARAMS = ("model_dir", "output_dir", "checkpoint_path", "path")
# Run modes that need a directory to write to (None is refused).
_NEEDS_MODEL_DIR = ("t5x_lite.modes.train.train",)
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class Binding:
  """One parameter binding a run mode reads, its value resolved through macros."""
  scoped_selector: str   # "train/t5x_lite.settings.DatasetConfig"
  selector: str          # "t5x_lite.settings.DatasetConfig"
  param: str             # "batch_size"
  value: Any             # the value after macros (references left as they are)
  macro: Optional[str]   # the first macro it came through ("BATCH_SIZE"), or None

  @property
  def name(self) -> str:
    """What a user writes: the macro (--gin.BATCH_SIZE) or train/DatasetConfig.batch_size."""
    if self.macro:
      return self.macro
    scope, _, _ = self.scoped_selector.rpartition("/")
    minimal = _REGISTRY.minimal_selector(self.selector)
    return f"{scope + '/' if scope else ''}{minimal}.{self.param}"

  @property
  def where(self) -> str:
    binding = Binding(self.scoped_selector, self.selector, self.param, self.value, None).name
    return f"{self.macro} ({binding})" if self.macro else binding


def _is_macro(value) -> bool:
  return (isinstance(value, gin.config.ConfigurableReference) and
          value.configurable.wrapped is gin.config.macro)


def _resolve(value) -> Tuple[Any, Optional[str]]:
  macro = None
  while _is_macro(value):
    macro = macro or value.scopes[-1]
    value = gin.get_bindings(value.scoped_selector, resolve_references=False)["value"]
  return value, macro


def bindings(configurable: str) -> List[Binding]:
  """Every parameter binding that calling `configurable` (a gin name) reads."""
  found = []
  follow = lambda bound: [ref for raw in bound.values() for ref in _references(_resolve(raw)[0])]
  for current, bound in gin_utils.walk_bindings(_REGISTRY.get_match(configurable).selector,
                                                follow):
    selector = _REGISTRY.get_match(current.split("/")[-1]).selector
    for param, raw in bound.items():
      value, macro = _resolve(raw)
      found.append(Binding(current, selector, param, value, macro))
  return found


def _references(value) -> Iterator[gin.config.ConfigurableReference]:
  if isinstance(value, dict):
    value = list(value.values())
  if isinstance(value, (list, tuple)):
    for item in value:
      yield from _references(item)
  elif isinstance(value, gin.config.ConfigurableReference):
    yield value


def _annotation(selector: str, param: str):
  """The type annotation of `param` on the configurable `selector`, or None."""
  fn = _REGISTRY.get_match(selector).wrapped
  target = fn.__init__ if inspect.isclass(fn) else fn
  try:
    hints = typing.get_type_hints(target)
    parameter = inspect.signature(target).parameters.get(param)
  except Exception:  # pylint: disable=broad-except
    return None
  if param in hints:
    return hints[param]
  # Unannotated (constant_schedule(learning_rate=1e-3)): a number default takes a number.
  default = getattr(parameter, "default", None)
  if isinstance(default, bool):
    return bool
  return float if isinstance(default, (int, float)) else None


def _allowed(annotation) -> Optional[Tuple[type, ...]]:
  """(types,) for float / int / str / bool and Optional of them; None: not checked."""
  none = ()
  if typing.get_origin(annotation) is typing.Union:
    args = typing.get_args(annotation)
    if type(None) not in args or len(args) != 2:
      return None
    annotation, none = [a for a in args if a is not type(None)][0], (type(None),)
  simple = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}
  return simple[annotation] + none if annotation in simple else None


def _check_type(binding: Binding) -> None:
  value = binding.value
  if value is None or isinstance(value, gin.config.ConfigurableReference):
    return  # None: the function's own default or check says what it means
  allowed = _allowed(_annotation(binding.selector, binding.param))
  if allowed is None:
    return
  if isinstance(value, bool) and bool not in allowed:
    ok = False
  else:
    ok = isinstance(value, allowed)
  if ok:
    return
  wanted = {(int, float): "a number", (int,): "an integer", (str,): "a string",
            (bool,): "True or False"}[tuple(t for t in allowed if t is not type(None))]
  hint = ""
  if isinstance(value, str):
    hint = (f": write it without quotes (--gin.{binding.name}={value})" if _number(value)
            else " (a malformed literal on the command line is read as a string)")
  kind = {str: "a string", int: "an integer", float: "a float"}.get(type(value),
                                                                  f"a {type(value).__name__}")
  raise ValueError(f"{binding.where} = {value!r} is {kind}; it takes "
                   f"{wanted}{hint}.")


def _number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _check_path(binding: Binding, run_mode_selector: str) -> Optional[str]:
  """Raises on a path that is not one string; returns the expanded path for `~/...`."""
  value = binding.value
  if isinstance(value, gin.config.ConfigurableReference):
    return None
  example = f"--gin.{binding.name}=experiments/x"
  if value is None or value == "":
    if binding.param == "model_dir" and binding.selector == run_mode_selector and (
        run_mode_selector in _NEEDS_MODEL_DIR):
      raise ValueError(f"{binding.where} is {value!r}: training writes its checkpoints and "
                       f"summaries there (None would make a directory ./None); set {example}.")
    return None
  if not isinstance(value, str):
    raise ValueError(f"{binding.where} = {value!r} is a {type(value).__name__}, not a path "
                     f"(it would make a directory named {str(value)!r}); give one path: "
                     f"{example}.")
  if value.startswith("~"):
    return os.path.expanduser(value)
  return None


def _check_dtype(binding: Binding) -> None:
  if binding.param in ("dtype", "param_dtype") and binding.selector.endswith("T5Config"):
    if binding.value not in DTYPES:
      raise ValueError(f"{binding.where} = {binding.value!r} is not a dtype name this model "
                       f"takes: use one of {', '.join(map(repr, DTYPES))}.")


def _check_checkpoint_steps(binding: Binding, model_dir) -> None:
  value = binding.value
  if binding.param != "checkpoint_steps" or value in ("latest", "all"):
    return
  if isinstance(value, (list, tuple)) and all(
      isinstance(s, int) and not isinstance(s, bool) for s in value):
    return
  from t5x_lite.checkpointing.run_dir import RunDir  # pylint: disable=g-import-not-at-top
  steps = RunDir(model_dir).checkpoint_steps() if isinstance(model_dir, str) else []
  example = f"[{value}]" if isinstance(value, int) else "[1000, 2000]"
  raise ValueError(f"{binding.where} = {value!r}: give 'latest', 'all' or a list of steps, "
                   f"e.g. --gin.{binding.name}=\"{example}\""
                   + (f" (MODEL_DIR's checkpoints: steps {', '.join(map(str, steps))})."
                      if steps else "."))


def machine_memory() -> int:
  """Bytes of memory on this machine (psutil)."""
  import psutil  # pylint: disable=g-import-not-at-top
  return psutil.virtual_memory().total


def check_training_memory(found: List[Binding], available: int) -> None:
  """Refuses a training run whose memory-planner peak exceeds `available` bytes.

  The planner's figure for one device holding the whole batch (a CPU run: every device is the
  same host memory): parameters, Adafactor state, gradients and the activations kept for the
  backward pass, which grow with TASK_FEATURE_LENGTHS and BATCH_SIZE.
  """
  from t5x_lite.config import configurables  # pylint: disable=g-import-not-at-top
  from t5x_lite.training import memory_planner  # pylint: disable=g-import-not-at-top
  by_name = {(b.scoped_selector, b.param): b for b in found}
  lengths = next((b for (s, p), b in by_name.items()
                  if s.startswith("train/") and s.endswith("DatasetConfig")
                  and p == "task_feature_lengths"), None)
  batch = next((b for (s, p), b in by_name.items()
                if s.startswith("train/") and s.endswith("DatasetConfig") and p == "batch_size"),
               None)
  if lengths is None or batch is None or not isinstance(lengths.value, dict):
    return
  micro = next((b.value for b in found if b.selector == "t5x_lite.modes.train.train"
                and b.param == "num_microbatches"), 1)
  try:
    config = configurables.T5Config()
  except Exception:  # pylint: disable=broad-except
    return  # the model's own error is clearer
  plan = memory_planner.plan(config, {"data": 1, "model": 1}, batch.value,
                             lengths.value.get("inputs", 0), lengths.value.get("targets", 0),
                             num_microbatches=micro if isinstance(micro, int) else 1)
  if plan.total > available:
    raise ValueError(
        f"{lengths.where} = {lengths.value} with {batch.where} = {batch.value}: the memory "
        f"planner predicts a training peak of {plan.total / GiB:.1f} GiB (activations "
        f"{plan.activations / GiB:.1f} GiB) and this machine has {available / GiB:.1f} GiB: "
        "lower the lengths or the batch size, or raise train.num_microbatches.")


def check(run_mode: str, available_memory: Optional[int] = None) -> None:
  """Checks the parsed gin settings that `run_mode` ("train", "eval", ...) reads.

  `~` in a path is expanded (the binding is rebound). Raises ValueError naming the binding.

  Args:
    run_mode: main's --run_mode.
    available_memory: bytes a training run may use; None: this machine's memory when JAX
      runs on the CPU (host memory is the limit), no memory check on accelerators.
  """
  from t5x_lite.config import configurables  # pylint: disable=g-import-not-at-top
  name = configurables.RUN_MODE_NAMES[run_mode]
  run_mode_selector = _REGISTRY.get_match(name).selector
  found = bindings(name)
  model_dir = next((b.value for b in found
                    if b.selector == run_mode_selector and b.param == "model_dir"), None)
  expanded = {}
  for binding in found:
    if binding.param in _PATH_PARAMS:
      path = _check_path(binding, run_mode_selector)
      if path is not None:
        expanded[f"{binding.scoped_selector}.{binding.param}"] = path
    _check_dtype(binding)
    _check_checkpoint_steps(binding, model_dir)
    _check_type(binding)
  if expanded:
    with gin.unlock_config():
      for key, path in expanded.items():
        gin.bind_parameter(key, path)
  if run_mode == "train":
    if available_memory is None:
      import jax  # pylint: disable=g-import-not-at-top
      if jax.default_backend() == "cpu":
        available_memory = machine_memory()
    if available_memory is not None:
      check_training_memory(found, available_memory)
