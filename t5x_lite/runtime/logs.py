"""Third-party noise off: `quiet()` for notebooks and scripts, as the entry point does.

TensorFlow (which only feeds data here), JAX, seqio, orbax and asyncio write start-up lines
and warnings that say nothing a t5x_lite user can act on. `quiet()` silences them; call it
first, before TensorFlow or JAX is imported (a notebook's first cell):

  import t5x_lite.runtime.logs
  t5x_lite.runtime.logs.quiet()

It changes process-wide settings (TensorFlow's visible GPUs, log levels and filters), so
importing t5x_lite never does it. t5x_lite's own logs are untouched.
"""

import contextlib
import logging
import os

# Third-party log lines that say nothing a user can act on (each seen in a plain CPU run).
NOISE = (
    "not cached so using",              # seqio: mixing rates from uncached example counts
    "uncached FunctionDataset",         # seqio: the embedded tasks are generated, not cached
    "will be removed during packing",   # seqio: *_pretokenized features are not model inputs
    "'logger_cls' is empty",            # seqio.Evaluator: we write the summaries ourselves
    "Metadata file does not exist",     # orbax: checkpoints written without optional metadata
    "Unable to initialize backend",     # jax: probing for TPU / GPU on a CPU machine
    # asyncio, when a failed orbax write's futures are collected (the failure itself is
    # reported once, as t5x_lite's error).
    "exception was never retrieved",
)

# Loggers whose records the filter sees directly (a logger's filters miss its children's).
_THIRD_PARTY = ("absl", "asyncio", "jax._src.xla_bridge", "tensorflow", "orbax")


class _DropNoise(logging.Filter):
  """Drops NOISE; keeps other third-party records, without their tracebacks."""

  def filter(self, record):
    if any(noise in record.getMessage() for noise in NOISE):
      return False
    if record.exc_info and not record.name.startswith("t5x_lite"):
      # orbax logs each failed background write with its traceback before t5x_lite raises
      # one error naming the cause and the fix: the first line is enough here.
      record.exc_info, record.exc_text = None, None
    return True


_FILTER = _DropNoise()


@contextlib.contextmanager
def stderr_silenced():
  """Sends file descriptor 2 to /dev/null: C++ code logs there before Python sees anything."""
  saved = os.dup(2)
  try:
    with open(os.devnull, "w", encoding="utf-8") as devnull:
      os.dup2(devnull.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def quiet() -> None:
  """Silences TensorFlow's C++ start-up lines and the known third-party noise (NOISE).

  Run it before TensorFlow is imported: importing TensorFlow and hiding the GPUs from it
  (t5x_lite.runtime.tf_devices) probes CUDA and writes absl lines ("oneDNN custom operations",
  "Could not find cuda drivers", "failed call to cuInit") straight to stderr, whatever
  TF_CPP_MIN_LOG_LEVEL says: that one start-up step runs with stderr silenced. Idempotent.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  with stderr_silenced():
    from t5x_lite.runtime import tf_devices  # pylint: disable=g-import-not-at-top
    tf_devices.hide_gpus_from_tf()
  for name in _THIRD_PARTY:
    logger = logging.getLogger(name)
    if name != "asyncio":  # asyncio's warnings (a slow callback) stay
      logger.setLevel(logging.WARNING)
    if _FILTER not in logger.filters:
      logger.addFilter(_FILTER)
  # Other libraries log on child loggers that propagate: the filter goes on every handler too.
  for handler in logging.getLogger().handlers:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
