"""The T5 model: layers, network, the encoder-decoder and encoder-only heads, decoding, attention kernels."""
