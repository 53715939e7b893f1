"""Data: seqio tasks and mixtures to model batches (feature converters, packing, per-host shards)."""
