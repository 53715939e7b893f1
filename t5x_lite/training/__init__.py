"""Training: the train state, the jitted sharded steps, Adafactor, the clean stop on a signal."""
