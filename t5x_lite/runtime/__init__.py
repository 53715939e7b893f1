"""Process-wide set-up the entry point does: XLA flags, TensorFlow's devices, third-party logs."""
