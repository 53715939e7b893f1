"""Gin at the edge: every gin configurable of the project is registered here, and only here.

Library modules (network, layers, models, trainer, partitioning, checkpoints, data,
optimizers, decoding, tasks) take explicit arguments and never read gin. This module wraps
their classes and functions with `gin.external_configurable` under the names the gin files
use (`T5Config.d_model`, `EncoderDecoderModel.z_loss`, `train.train_steps`, ...); calling a
wrapper here, or an `@Name()` reference in a gin file, applies the bindings. The entry point
(t5x_lite.main) parses gin (which registers the built-in tasks with the bound vocabulary,
`register_builtin_tasks`) and runs `RUN_MODES[mode]`.
"""

import gin

from t5x_lite import settings
from t5x_lite import tasks
from t5x_lite.model import encoder_decoder
from t5x_lite.model import heads
from t5x_lite.model import model_sizes
from t5x_lite.model import network
from t5x_lite.modes import compile as compile_lib
from t5x_lite.modes import evaluate as evaluate_lib
from t5x_lite.modes import export as export_lib
from t5x_lite.modes import infer as infer_lib
from t5x_lite.modes import train as train_lib
from t5x_lite.parallel import partitioning
from t5x_lite.tasks import instructions
from t5x_lite.tasks import superni
from t5x_lite.tasks import superni_classifier
from t5x_lite.tasks import vocab
from t5x_lite.training import optimizers

# The model and how it decodes.
T5Config = gin.external_configurable(network.T5Config)
gin.external_configurable(encoder_decoder.EncoderDecoderModel)
gin.external_configurable(encoder_decoder.DecodingSettings)
# Encoder-only models (e.g. `MODEL = @SequenceClassificationModel()`, the model of every run mode).
for _cls in (heads.SequenceClassificationModel, heads.TokenClassificationModel,
             heads.QuestionAnsweringModel):
  gin.external_configurable(_cls)
gin.external_configurable(model_sizes.efficient_field)
gin.external_configurable(model_sizes.efficient_config)

# The vocabulary, shared by the built-in tasks and the model's embedding size.
get_vocabulary = gin.external_configurable(vocab.get_vocabulary)
gin.external_configurable(vocab.padded_vocab_size)

# Built-in task options.
superni_options = gin.external_configurable(superni.superni_options, module="superni")
instruction_mixture_cap = gin.external_configurable(instructions.instruction_mixture_cap,
                                                    module="instructions")
# The task names of the SuperNI generator / classifier comparison recipes.
gin.external_configurable(superni_classifier.superni_comparison_task, module="superni")

# Optimizer and schedules.
for _fn in (optimizers.adafactor, optimizers.constant_schedule, optimizers.rsqrt_schedule,
            optimizers.linear_decay_schedule, optimizers.cosine_decay_schedule):
  gin.external_configurable(_fn)

# Partitioning.
gin.external_configurable(partitioning.Partitioner)
gin.external_configurable(partitioning.standard_logical_axis_rules)

# Settings groups of the run modes.
for _cls in (settings.DatasetConfig, settings.CheckpointConfig, settings.RestoreConfig,
             settings.EvalConfig):
  gin.external_configurable(_cls)

# The run modes.
# --run_mode -> the gin name of its function.
RUN_MODE_NAMES = {"train": "train", "eval": "evaluate", "infer": "infer", "score": "score",
                  "export": "export", "compile": "compile"}
_RUN_MODE_FNS = {"train": train_lib.train, "eval": evaluate_lib.evaluate,
                 "infer": infer_lib.infer, "score": infer_lib.score, "export": export_lib.export,
                 "compile": compile_lib.compile_for_topology}
RUN_MODES = {mode: gin.external_configurable(fn, name=RUN_MODE_NAMES[mode])
             for mode, fn in _RUN_MODE_FNS.items()}


def call_run_mode(mode: str):
  """Runs a run mode with its gin bindings; training writes gin's operative config."""
  if mode == "train":
    return RUN_MODES[mode](run_config=gin.operative_config_str)
  return RUN_MODES[mode]()


def builtin_task_settings():
  """(vocabulary, superni options, instruction mixture cap) as gin binds them now."""
  return get_vocabulary(), superni_options(), instruction_mixture_cap()


def register_builtin_tasks(settings=None) -> None:
  """Registers the built-in tasks with `settings` (default: `builtin_task_settings()`).

  The entry point's gin parse (gin_utils.parse) calls this once, before any module that a
  gin file imports runs.
  """
  vocabulary, options, cap = settings or builtin_task_settings()
  tasks.register_builtin_tasks(vocabulary=vocabulary, superni_options=options,
                               instruction_mixture_cap=cap)


# The name bench/ scripts and older callers use.
configure_builtin_tasks = register_builtin_tasks
