"""Other formats: HF transformers directories and google-research/t5x checkpoints."""
