"""Test-wide settings. No network, ever: transformers / huggingface_hub must not try the hub.

The tests run with the XLA flags and TensorFlow device setting the entry point uses
(importing t5x_lite sets neither): applied here, before any test starts JAX.
"""

import os

import pytest

from t5x_lite.runtime import tf_devices, xla_flags

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The test extra installs libtpu (tests/test_aot_compile.py compiles for a TPU topology, which
# needs no TPU backend); without this every JAX process would first probe for a TPU, ~10-20 s.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
xla_flags.apply_defaults()
tf_devices.hide_gpus_from_tf()


@pytest.fixture(autouse=True, scope="session")
def builtin_tasks_registered():
  """Importing t5x_lite registers no task; tests that name built-in tasks get them here, as
  the entry point registers them after parsing gin."""
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  tasks.register_builtin_tasks()
