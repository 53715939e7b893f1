"""Entry point: `python -m t5x_lite.main --gin_file=... --gin.NAME=VALUE --run_mode=train`.

Also installed as the `t5x-lite` console script. Flags:
  --gin_file FILE        repeatable; searched here and in the project's gin/ directory.
  --gin.NAME=VALUE       repeatable gin binding; bare strings need no quotes
                         (--gin.MODEL_DIR=experiments/x).
  --run_mode MODE        train | eval | infer | score | export | compile (default: train);
                         compile: for a TPU topology on this host (gin/runs/compile.gin).
  --list_tasks [PATTERN] print the registered seqio tasks and mixtures (shell-style PATTERN).
  --verbose              print full tracebacks of errors (otherwise one short message; the
                         traceback goes to a log file) and third-party logs.
  --coordinator_address, --num_processes, --process_id
                         multi-process runs (jax.distributed); automatic on TPU pods.
  --heartbeat_timeout_seconds S
                         a process silent this long stops the others with one line (10).
"""

import argparse
import fnmatch
import glob
import importlib.util
import logging
import os
import re
import sys
import tempfile
import traceback
from typing import Optional, Sequence

from t5x_lite.config import gin_scan
from t5x_lite.config import gin_utils
from t5x_lite.parallel import distributed
from t5x_lite.parallel import supervisor
from t5x_lite.runtime import logs
from t5x_lite.runtime import xla_flags

RUN_MODES = ("train", "eval", "infer", "score", "export", "compile")


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
  parser.add_argument("--heartbeat_timeout_seconds", type=float,
                      default=distributed.DEFAULT_HEARTBEAT_TIMEOUT_S)
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


def set_up_process(verbose: bool = False) -> None:
  """The process-wide settings a run needs, which importing t5x_lite never makes.

  Before TensorFlow and JAX start: t5x_lite's XLA flags (xla_flags.apply_defaults), log
  output, and TensorFlow kept off the GPUs; unless `verbose`, third-party noise silenced
  (logs.quiet, which also hides the GPUs with TensorFlow's start-up lines silenced).
  """
  xla_flags.apply_defaults()
  skip_absent_tpu()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  if verbose:
    from t5x_lite.runtime import tf_devices  # pylint: disable=g-import-not-at-top
    tf_devices.hide_gpus_from_tf()
  else:
    logs.quiet()


def skip_absent_tpu(environ=os.environ, find_spec=importlib.util.find_spec,
                    device_files=lambda: glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*")):
  """JAX_PLATFORMS=cpu where libtpu is installed but the host has no TPU and no GPU plugin.

  The test extra installs libtpu (compiling for a TPU topology on a CPU host needs it, not a
  TPU backend); JAX would then probe for a TPU in every run, which takes seconds and prints
  libtpu's start-up warnings. A TPU host has /dev/accel* (v2-v4, v5p) or /dev/vfio/N (v5e,
  v6e). A JAX_PLATFORMS the user set is left as it is.

  Returns:
    True if JAX_PLATFORMS was set here.
  """
  if "JAX_PLATFORMS" in environ or find_spec("libtpu") is None or device_files():
    return False
  if find_spec("jax_cuda12_plugin") is not None or find_spec("jax_cuda13_plugin") is not None:
    return False
  environ["JAX_PLATFORMS"] = "cpu"
  return True


def initialize_distributed(args):
  """jax.distributed.initialize from flags (or auto-detected) before any other JAX call."""
  if args.coordinator_address or args.multiprocess:
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                           args.heartbeat_timeout_seconds, run_mode=args.run_mode,
                           model_dir=gin_utils.model_dir_macro)


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
  gin_scan.check_unread_command_line(args.gin_file, bindings)
  set_up_process(args.verbose)
  initialize_distributed(args)
  # Registers the built-in tasks once, with the bound vocabulary.
  # Finalizing demands the REQUIRED macros that this run mode reads, and only those.
  gin_utils.parse(args.gin_file, bindings, finalize=args.list_tasks is None,
                  run_mode=args.run_mode)
  from t5x_lite.config import configurables  # pylint: disable=g-import-not-at-top
  from t5x_lite.config import preflight  # pylint: disable=g-import-not-at-top
  try:
    if args.list_tasks is not None:
      print(list_tasks(args.list_tasks))
      return None
    # Paths, dtypes, types, checkpoint steps and training memory: before any data or model.
    preflight.check(args.run_mode)
    return configurables.call_run_mode(args.run_mode)
  except (RuntimeError, TypeError, ValueError) as e:
    if "Required bindings" in str(e) or "gin" in type(e).__module__:
      raise ValueError(gin_utils.explain_call_error(e)) from e
    raise


def run(argv: Optional[Sequence[str]] = None) -> int:
  """Console entry: an error prints as one short message, the last line on stderr.

  The traceback goes to a log file, named on the line above the message. As the process's
  entry (`argv` None: the console script, `python -m t5x_lite.main`), everything written to
  stderr after the message also goes to that file: a failed checkpoint write's background
  threads and asyncio at interpreter exit log tracebacks of the error the message reports.

  Returns:
    The exit status: 0, or 1 after an error.
  """
  entry = argv is None
  argv = sys.argv[1:] if argv is None else list(argv)
  if entry:  # several processes: the work runs in a child (see parallel/supervisor.py)
    flags, _ = parse_flags(argv)
    status = supervisor.supervise(argv, bool(flags.coordinator_address or flags.multiprocess)
                                  and flags.num_processes != 1)
    if status is not None:
      return status
  try:
    main(argv)
  except Exception as e:  # pylint: disable=broad-except
    distributed.stop_if_a_process_is_lost()  # then the lost process is the cause: its line
    if "--verbose" in argv:
      raise
    log_path = os.path.join(tempfile.gettempdir(), f"t5x_lite-error-{os.getpid()}.log")
    with open(log_path, "w", encoding="utf-8") as f:
      traceback.print_exc(file=f)
    # Gin appends "In call to configurable 'train' (<function train at 0x...>)": noise here.
    message = re.sub(r"\n\s*In call to configurable [^\n]*", "", str(e))
    text = (f"(traceback in {log_path}; --verbose prints it)\n"
            f"t5x-lite: {type(e).__name__}: {message}\n")
    if entry:
      _print_last(text, log_path)
    else:
      print(text, end="", file=sys.stderr)
    return 1
  return 0


def _print_last(text: str, log_path: str) -> None:
  """Writes `text` to stderr and sends what this process writes there afterwards to log_path."""
  sys.stdout.flush()
  sys.stderr.flush()
  terminal = os.dup(2)
  with open(log_path, "a", encoding="utf-8") as log:
    os.dup2(log.fileno(), 2)  # sys.stderr and C++ code both write to descriptor 2
  os.write(terminal, text.encode("utf-8"))
  os.close(terminal)


if __name__ == "__main__":
  sys.exit(run())
