"""Keeps TensorFlow, which only feeds data here, off the GPUs that JAX uses.

TensorFlow reserves most of every GPU's memory the first time it runs an op there. Hiding the
GPUs from it is a process-wide setting, so no module does it on import: the entry point
(t5x_lite.main) and `t5x_lite.runtime.logs.quiet()` call `hide_gpus_from_tf()`, and so does
`t5x_lite.data.pipeline` before it builds a tf.data pipeline (a library user who never called either).
"""

import logging

log = logging.getLogger(__name__)

_hidden = False


def hide_gpus_from_tf() -> None:
  """Makes no GPU visible to TensorFlow (`tf.config.set_visible_devices([], "GPU")`).

  Idempotent and cheap after the first call. TensorFlow accepts the setting only before its
  runtime starts (before its first op); later, on a machine with GPUs, it logs a warning
  naming what to call earlier instead of raising.
  """
  global _hidden
  if _hidden:
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # not needed on import
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TF's runtime already started and sees GPUs
    log.warning("TensorFlow already started and may reserve GPU memory that JAX needs (%s): "
                "call t5x_lite.runtime.tf_devices.hide_gpus_from_tf() (or t5x_lite.runtime.logs.quiet()) "
                "before any TensorFlow op.", e)
  _hidden = True
