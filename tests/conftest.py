"""Test-wide settings. No network, ever: transformers / huggingface_hub must not try the hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
