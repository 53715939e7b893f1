"""Command-line tools: TPU ahead-of-time compile, the memory planner, the SuperNI comparison table."""
