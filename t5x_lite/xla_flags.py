"""The XLA flags t5x_lite sets by default: the one place they live.

XLA reads the XLA_FLAGS environment variable once, when JAX starts its first backend, so
`import t5x_lite` applies these defaults (`apply_defaults`) before any computation runs. A flag
the user already put in XLA_FLAGS is left as it is, and T5X_LITE_XLA_DEFAULTS=0 adds none of
them (XLA's own defaults then apply). A process that runs a JAX computation before
importing t5x_lite has already fixed its flags (apply_defaults warns then); set XLA_FLAGS in
its environment instead.

The flags:

  --xla_cpu_experimental_ynn_fusion_type=individual_dot
      XLA:CPU gives each dot to YNNPACK on its own instead of also folding the surrounding
      elementwise ops and reductions into the YNNPACK call. Those folded calls run T5's
      attention backward (the softmax gradient next to the [heads, q, k] matmuls) several
      times slower than XLA's own loops. CPU only; GPU and TPU ignore it. Measured in
      bench/README.md ("XLA flags", "Scaling table"): at input length 2048 the T5-efficient-tiny
      training step is 23-33% faster, at 512 it is unchanged, and peak memory is lower at
      every length.

XLA aborts on a flag it does not know: jax is pinned below 0.11 in setup.py, and
tests/test_xla_flags.py compiles with these flags, so a version bump re-checks them.
"""

import os
import sys
import warnings

# name -> value; names are matched as written (`--name=`) against the user's XLA_FLAGS.
DEFAULT_FLAGS = {
    "--xla_cpu_experimental_ynn_fusion_type": "individual_dot",
}

OPT_OUT_ENV = "T5X_LITE_XLA_DEFAULTS"


def apply_defaults(environ=os.environ):
  """Appends each DEFAULT_FLAGS entry the user has not set to environ['XLA_FLAGS'].

  Returns the flags added (a list of '--name=value' strings).
  """
  if environ.get(OPT_OUT_ENV, "1") == "0":
    return []
  flags = environ.get("XLA_FLAGS", "")
  user_names = {token.split("=", 1)[0] for token in flags.split()}
  added = [f"{name}={value}" for name, value in DEFAULT_FLAGS.items() if name not in user_names]
  if added:
    environ["XLA_FLAGS"] = " ".join([flags.strip()] + added).strip()
    if _jax_backend_started():
      warnings.warn(f"JAX started before t5x_lite was imported, so XLA runs without {added}; "
                    "import t5x_lite first or put them in XLA_FLAGS.", stacklevel=2)
  return added


def _jax_backend_started():
  """True if this process already started a JAX backend (its XLA flags are fixed)."""
  if "jax" not in sys.modules:  # Not imported: nothing started, and no import needed to know.
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # A private API: if it moves, say nothing.
    return False
