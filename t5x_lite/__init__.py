"""t5x_lite: T5 encoder-decoder models in JAX/Flax, fed by SeqIO, configured with gin."""

__version__ = "0.1.0"
