"""Entry point: `python -m t5x_lite.main --gin_file=... --gin.NAME=VALUE --run_mode=train`.

Also installed as the `t5x-lite` console script. Flags:
  --gin_file FILE        repeatable; searched here and in the project's gin/ directory.
  --gin.NAME=VALUE       repeatable gin binding; bare strings need no quotes
                         (--gin.MODEL_DIR=experiments/x).
  --run_mode MODE        train | eval | infer | score | export (default: train).
  --list_tasks [PATTERN] print the registered seqio tasks and mixtures (shell-style PATTERN).
  --verbose              print full tracebacks of errors (otherwise one short message; the
                         traceback goes to a log file) and third-party logs.
  --coordinator_address, --num_processes, --process_id
                         multi-process runs (jax.distributed); automatic on TPU pods.
"""

import argparse
import contextlib
import fnmatch
import logging
import os
import re
import sys
import tempfile
import traceback
from typing import Optional, Sequence

from t5x_lite import gin_utils

RUN_MODES = ("train", "eval", "infer", "score", "export")

# Third-party log lines that say nothing a user can act on (each seen in a plain CPU run).
_NOISE = (
    "not cached so using",              # seqio: mixing rates from uncached example counts
    "uncached FunctionDataset",         # seqio: the embedded tasks are generated, not cached
    "'logger_cls' is empty",            # seqio.Evaluator: we write the summaries ourselves
    "Metadata file does not exist",     # orbax: checkpoints written without optional metadata
    "Unable to initialize backend",     # jax: probing for TPU / GPU on a CPU machine
)


def parse_flags(argv: Sequence[str]):
  parser = argparse.ArgumentParser(prog="t5x-lite", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--run_mode", default="train", choices=RUN_MODES)
  parser.add_argument("--list_tasks", nargs="?", const="*", default=None, metavar="PATTERN")
  parser.add_argument("--verbose", action="store_true")
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--multiprocess", action="store_true",
                      help="call jax.distributed.initialize() with auto-detection (TPU pods, "
                           "SLURM/Open MPI GPU clusters)")
  args, rest = parser.parse_known_args(argv)
  bindings, unknown = [], []
  for item in rest:
    if item.startswith("--gin."):
      bindings.append(item[len("--gin."):])
    else:
      unknown.append(item)
  if unknown:
    parser.error(f"unrecognised arguments: {' '.join(unknown)} (gin bindings are --gin.NAME=VALUE)")
  return args, bindings


class _DropNoise(logging.Filter):

  def filter(self, record):
    message = record.getMessage()
    return not any(noise in message for noise in _NOISE)


@contextlib.contextmanager
def _stderr_silenced():
  """Sends file descriptor 2 to /dev/null: C++ code logs there before Python sees anything."""
  saved = os.dup(2)
  try:
    with open(os.devnull, "w", encoding="utf-8") as devnull:
      os.dup2(devnull.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def quiet_third_party_logs(verbose: bool = False) -> None:
  """Silences TensorFlow's C++ start-up lines and known third-party noise (not our logs).

  Must run before TensorFlow is imported. TensorFlow only feeds data here; importing it and
  hiding the GPUs from it (as t5x_lite.data does) probes CUDA and writes absl lines ("oneDNN
  custom operations", "Could not find cuda drivers", "failed call to cuInit") straight to
  stderr, whatever TF_CPP_MIN_LOG_LEVEL says: that one start-up step runs silenced.
  """
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  if verbose:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  with _stderr_silenced():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  for name in ("absl", "jax._src.xla_bridge", "tensorflow", "orbax"):
    logging.getLogger(name).setLevel(logging.WARNING)
  # A logger's filters see only records logged on it, so the filter goes on every handler.
  for handler in logging.getLogger().handlers:
    handler.addFilter(_DropNoise())


def initialize_distributed(args):
  """jax.distributed.initialize from flags (or auto-detected) before any other JAX call."""
  if args.coordinator_address or args.multiprocess:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)


def list_tasks(pattern: str) -> str:
  """Registered tasks and mixtures whose names match `pattern` (shell-style), one per line."""
  import seqio  # pylint: disable=g-import-not-at-top
  lines = []
  for kind, registry in (("task", seqio.TaskRegistry), ("mixture", seqio.MixtureRegistry)):
    for name in sorted(fnmatch.filter(registry.names(), pattern)):
      provider = registry.get(name)
      detail = (f"splits: {', '.join(provider.splits)}" if kind == "task" else
                f"tasks: {len(provider.tasks)}")
      lines.append(f"{kind:8s} {name}  ({detail})")
  return "\n".join(lines) if lines else f"No registered task or mixture matches {pattern!r}."


def main(argv: Optional[Sequence[str]] = None):
  """Parses flags and gin (which registers the built-in tasks), runs the run mode.

  Returns:
    The run mode's result (None for --list_tasks).
  """
  args, bindings = parse_flags(sys.argv[1:] if argv is None else argv)
  # A macro that nothing reads stops the run here, before TensorFlow, JAX or any data load.
  gin_utils.check_unread_command_line(args.gin_file, bindings)
  quiet_third_party_logs(args.verbose)
  initialize_distributed(args)
  # Registers the built-in tasks once, with the bound vocabulary.
  # Finalizing demands the REQUIRED macros that this run mode reads, and only those.
  gin_utils.parse(args.gin_file, bindings, finalize=args.list_tasks is None,
                  run_mode=args.run_mode)
  from t5x_lite import configurables  # pylint: disable=g-import-not-at-top
  from t5x_lite import preflight  # pylint: disable=g-import-not-at-top
  try:
    if args.list_tasks is not None:
      print(list_tasks(args.list_tasks))
      return None
    # Paths, dtypes, types, checkpoint steps and training memory: before any data or model.
    preflight.check(args.run_mode)
    return configurables.RUN_MODES[args.run_mode]()
  except (RuntimeError, TypeError, ValueError) as e:
    if "Required bindings" in str(e) or "gin" in type(e).__module__:
      raise ValueError(gin_utils.explain_call_error(e)) from e
    raise


def run(argv: Optional[Sequence[str]] = None) -> int:
  """Console entry: errors print as one short message; the traceback goes to a log file."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    main(argv)
  except Exception as e:  # pylint: disable=broad-except
    if "--verbose" in argv:
      raise
    log_path = os.path.join(tempfile.gettempdir(), f"t5x_lite-error-{os.getpid()}.log")
    with open(log_path, "w", encoding="utf-8") as f:
      traceback.print_exc(file=f)
    # Gin appends "In call to configurable 'train' (<function train at 0x...>)": noise here.
    message = re.sub(r"\n\s*In call to configurable [^\n]*", "", str(e))
    print(f"t5x-lite: {type(e).__name__}: {message}\n(traceback in {log_path}; --verbose prints "
          "it)", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(run())
