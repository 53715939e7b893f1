"""t5x_lite: T5 encoder-decoder models in JAX/Flax, fed by SeqIO, configured with gin.

Importing t5x_lite changes nothing global (environment, XLA flags, TensorFlow's devices, log
settings): the entry point does that, and notebooks and scripts call
`t5x_lite.runtime.xla_flags.apply_defaults()` and `t5x_lite.runtime.logs.quiet()` first.
"""

__version__ = "0.1.0"
