"""The XLA flags t5x_lite sets by default: the one place they live.

XLA reads the XLA_FLAGS environment variable once, when JAX starts its first backend. Importing
t5x_lite changes nothing global: the entry point (t5x_lite.main) calls `apply_defaults()`
before JAX starts, and a notebook, benchmark or script that wants the same flags calls it
first (`t5x_lite.runtime.xla_flags.apply_defaults()`, before `import jax`). A flag the user already
put in XLA_FLAGS is left as it is, and T5X_LITE_XLA_DEFAULTS=0 adds none of them (XLA's own
defaults then apply). Called after a JAX computation ran, it warns: the flags are fixed then.

`compiler_options()` gives the same flags as `jax.jit(..., compiler_options=...)`, for one
compiled function, with no environment change at all.

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
tests/test_xla_flags.py compiles with these flags (both ways), so a version bump re-checks
them.
"""

import os
import sys
import warnings
from typing import Dict

# name -> value; names are matched as written (`--name=`) against the user's XLA_FLAGS.
DEFAULT_FLAGS = {
    "--xla_cpu_experimental_ynn_fusion_type": "individual_dot",
}

# The same flags as compiler options: XLA's DebugOptions field (no "--") and, for an enum,
# the value's proto name (the XLA_FLAGS spelling is refused there).
COMPILER_OPTIONS = {
    "--xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}

OPT_OUT_ENV = "T5X_LITE_XLA_DEFAULTS"


def apply_defaults(environ=os.environ):
  """Appends each DEFAULT_FLAGS entry the user has not set to environ['XLA_FLAGS'].

  Call it before JAX starts a backend (before the first computation or `jax.devices()`).

  Args:
    environ: the environment to change (os.environ; a dict in tests).

  Returns:
    The flags added (a list of '--name=value' strings).
  """
  added = [f"{name}={value}" for name, value in _unset_defaults(environ).items()]
  if added:
    environ["XLA_FLAGS"] = " ".join([environ.get("XLA_FLAGS", "").strip()] + added).strip()
    if environ is os.environ and _jax_backend_started():
      warnings.warn(f"JAX started before t5x_lite.runtime.xla_flags.apply_defaults() ran, so XLA runs "
                    f"without {added}; call it before any JAX computation or put them in "
                    "XLA_FLAGS.", stacklevel=2)
  return added


def compiler_options(environ=os.environ) -> Dict[str, str]:
  """DEFAULT_FLAGS as `jax.jit(fn, compiler_options=...)` takes them, for one function.

  The flags are CPU ones; other backends get none (XLA:GPU and TPU have no use for them).
  Like `apply_defaults`, a flag the user set in XLA_FLAGS wins (it is left out here), and
  T5X_LITE_XLA_DEFAULTS=0 gives none.

  Args:
    environ: where XLA_FLAGS and T5X_LITE_XLA_DEFAULTS are read (os.environ).

  Returns:
    {DebugOptions field name: value}, e.g. {"xla_cpu_experimental_ynn_fusion_type":
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}; {} off CPU.
  """
  import jax  # pylint: disable=g-import-not-at-top  # this module must not import JAX
  if jax.default_backend() != "cpu":
    return {}
  return {name[len("--"):]: COMPILER_OPTIONS[name] for name in _unset_defaults(environ)}


def _unset_defaults(environ) -> Dict[str, str]:
  """DEFAULT_FLAGS less those the user set in XLA_FLAGS (all of them when opted out)."""
  if environ.get(OPT_OUT_ENV, "1") == "0":
    return {}
  user_names = {token.split("=", 1)[0] for token in environ.get("XLA_FLAGS", "").split()}
  return {name: value for name, value in DEFAULT_FLAGS.items() if name not in user_names}


def _jax_backend_started():
  """True if this process already started a JAX backend (its XLA flags are fixed)."""
  if "jax" not in sys.modules:  # Not imported: nothing started, and no import needed to know.
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # A private API: if it moves, say nothing.
    return False
