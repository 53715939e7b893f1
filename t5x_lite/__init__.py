"""t5x_lite: T5 encoder-decoder models in JAX/Flax, fed by SeqIO, configured with gin."""

from t5x_lite import xla_flags as _xla_flags

__version__ = "0.1.0"

# Before any JAX computation: XLA reads its flags once, when the first backend starts.
_xla_flags.apply_defaults()
