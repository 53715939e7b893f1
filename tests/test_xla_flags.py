"""t5x_lite's default XLA flags: added on import, the user's own settings win, and XLA uses them."""

import os
import re
import subprocess
import sys

from t5x_lite import xla_flags

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"

# A matmul with elementwise work and a reduction around it: the shape of attention's backward.
_COMPILE_SNIPPET = """
import t5x_lite
import jax, jax.numpy as jnp
x = jnp.ones((256, 256), jnp.float32)
f = jax.jit(lambda a, b: jnp.sum(jnp.exp(a @ b) * a, axis=-1))
print(f.lower(x, x).compile().as_text())
"""


def test_defaults_are_added_to_an_empty_environment():
  environ = {}
  assert xla_flags.apply_defaults(environ) == [f"{YNN_FLAG}=individual_dot"]
  assert environ["XLA_FLAGS"] == f"{YNN_FLAG}=individual_dot"


def test_other_user_flags_are_kept_and_the_default_appended():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  xla_flags.apply_defaults(environ)
  assert environ["XLA_FLAGS"] == (
      f"--xla_force_host_platform_device_count=8 {YNN_FLAG}=individual_dot")


def test_a_flag_the_user_set_wins():
  environ = {"XLA_FLAGS": f"{YNN_FLAG}= --xla_cpu_multi_thread_eigen=false"}
  assert xla_flags.apply_defaults(environ) == []
  assert environ["XLA_FLAGS"] == f"{YNN_FLAG}= --xla_cpu_multi_thread_eigen=false"


def test_opt_out_adds_nothing():
  environ = {xla_flags.OPT_OUT_ENV: "0"}
  assert xla_flags.apply_defaults(environ) == []
  assert "XLA_FLAGS" not in environ


def _ynn_fusion_bodies(environ_updates):
  """The instructions of each YNNPACK fusion XLA:CPU compiles for _COMPILE_SNIPPET."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT_ENV)}
  env.update(environ_updates)
  text = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET], env=env, check=True,
                        capture_output=True, text=True).stdout
  callees = [re.search(r"calls=%([\w.\-]+)", line).group(1)
             for line in text.splitlines() if "__ynn_fusion" in line]
  bodies = []
  for callee in callees:
    body = re.search(r"\n%" + re.escape(callee) + r" [^\n]*\{\n(.*?)\n\}", text, re.S).group(1)
    bodies.append([re.search(r"= \S+ (\w[\w-]*)\(", line).group(1)
                   for line in body.splitlines() if " = " in line])
  return bodies


def test_xla_compiles_each_dot_alone_with_the_default_and_fuses_without_it():
  # On import of t5x_lite, in a fresh process: YNNPACK gets the dot alone.
  with_default = _ynn_fusion_bodies({})
  assert with_default, "no YNNPACK fusion compiled"
  for ops in with_default:
    assert sorted(set(ops)) == ["dot", "parameter"], ops
  # XLA's own default (opted out) folds the elementwise work into the YNNPACK call: the flag
  # is what changes the compiled program.
  opted_out = _ynn_fusion_bodies({xla_flags.OPT_OUT_ENV: "0"})
  assert any(set(ops) - {"dot", "parameter"} for ops in opted_out), opted_out


def test_importing_t5x_lite_after_jax_started_warns():
  code = ("import warnings, jax; jax.devices()\n"
          "with warnings.catch_warnings(record=True) as caught:\n"
          "  warnings.simplefilter('always')\n"
          "  import t5x_lite\n"
          "print([str(w.message) for w in caught])")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT_ENV)}
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                       text=True).stdout
  assert "JAX started before t5x_lite was imported" in out
  assert f"{YNN_FLAG}=individual_dot" in out
