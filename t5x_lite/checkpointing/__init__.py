"""MODEL_DIR: its layout, storage checks and lock, checkpoints and their checksums, summaries, initial parameters."""
