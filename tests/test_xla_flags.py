"""t5x_lite's default XLA flags: nothing changes on import; the entry point (or an explicit
apply_defaults()) adds them, the user's own settings win, and XLA compiles with them (from
XLA_FLAGS or as jit compiler options)."""

import json
import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from t5x_lite import main
from t5x_lite.runtime import tf_devices, xla_flags

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"

# A matmul with elementwise work and a reduction around it: the shape of attention's backward.
_FUNCTION = """
import jax, jax.numpy as jnp
x = jnp.ones((256, 256), jnp.float32)
f = lambda a, b: jnp.sum(jnp.exp(a @ b) * a, axis=-1)
"""

# Imports the library as a user's script does, then compiles plain and with compiler_options.
_IMPORT_SNIPPET = """
import json, os, sys
import t5x_lite, t5x_lite.training.trainer, t5x_lite.data.pipeline, t5x_lite.tasks, t5x_lite.runtime.xla_flags
from tensorflow.python.eager import context
out = {"XLA_FLAGS": os.environ.get("XLA_FLAGS"),
       # None until something probes TF's devices (tf.config.set_visible_devices does).
       "tf_devices_probed": context.context()._physical_devices is not None}
""" + _FUNCTION + """
out["plain"] = jax.jit(f).lower(x, x).compile().as_text()
options = t5x_lite.runtime.xla_flags.compiler_options()
out["with_options"] = jax.jit(f, compiler_options=options).lower(x, x).compile().as_text()
print(json.dumps(out))
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
  assert xla_flags.compiler_options(environ) == {}


def test_opt_out_adds_nothing():
  environ = {xla_flags.OPT_OUT_ENV: "0"}
  assert xla_flags.apply_defaults(environ) == []
  assert "XLA_FLAGS" not in environ
  assert xla_flags.compiler_options(environ) == {}


def test_compiler_options_spell_the_flags_as_jit_takes_them():
  assert xla_flags.compiler_options({}) == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def _ynn_fusion_bodies(hlo_text):
  """The instructions of each YNNPACK fusion in a compiled module's text."""
  callees = [re.search(r"calls=%([\w.\-]+)", line).group(1)
             for line in hlo_text.splitlines() if "__ynn_fusion" in line]
  bodies = []
  for callee in callees:
    body = re.search(r"\n%" + re.escape(callee) + r" [^\n]*\{\n(.*?)\n\}", hlo_text,
                     re.S).group(1)
    bodies.append(sorted({re.search(r"= \S+ (\w[\w-]*)\(", line).group(1)
                          for line in body.splitlines() if " = " in line}))
  return bodies


def _run(snippet):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT_ENV)}
  result = subprocess.run([sys.executable, "-c", snippet], env=env, check=False,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_changes_nothing_global_and_compiler_options_apply_the_flag():
  out = _run(_IMPORT_SNIPPET)
  assert out["XLA_FLAGS"] is None
  assert out["tf_devices_probed"] is False  # TensorFlow's GPUs left alone too
  # XLA's own default: the elementwise work and the reduction fold into the YNNPACK call.
  plain = _ynn_fusion_bodies(out["plain"])
  assert plain and any(set(ops) - {"dot", "parameter"} for ops in plain), plain
  # compiler_options(): YNNPACK gets each dot alone, with no environment change.
  with_options = _ynn_fusion_bodies(out["with_options"])
  assert with_options and all(ops == ["dot", "parameter"] for ops in with_options), with_options


def test_the_entry_point_sets_the_flag_and_xla_compiles_with_it(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv(xla_flags.OPT_OUT_ENV, raising=False)
  calls = []
  # The process-wide log and TensorFlow settings stay as the test session has them.
  monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: calls.append("basicConfig"))
  monkeypatch.setattr(tf_devices, "hide_gpus_from_tf", lambda: calls.append("hide_gpus"))
  jax.devices()
  # JAX started in this test process: the flag is set but XLA's already fixed, and it says so.
  with pytest.warns(UserWarning, match=re.escape(
      "JAX started before t5x_lite.runtime.xla_flags.apply_defaults() ran, so XLA runs without "
      f"['{YNN_FLAG}=individual_dot']")):
    main.set_up_process(verbose=True)
  assert os.environ["XLA_FLAGS"] == f"{YNN_FLAG}=individual_dot"
  assert calls == ["basicConfig", "hide_gpus"]
  # This process started JAX with the same flag (tests/conftest.py applies the defaults as the
  # entry point does): YNNPACK gets each dot alone.
  x = jnp.ones((256, 256), jnp.float32)
  hlo_text = jax.jit(_f).lower(x, x).compile().as_text()
  bodies = _ynn_fusion_bodies(hlo_text)
  assert bodies and all(ops == ["dot", "parameter"] for ops in bodies), bodies


def _f(a, b):
  return jnp.sum(jnp.exp(a @ b) * a, axis=-1)
