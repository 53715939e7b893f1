"""The built-in seqio tasks and mixtures, registered by one explicit call.

This folder installs as the package `t5x_lite.tasks` (setup.py maps it), so no top-level
module named `tasks` exists to collide with a user's own.

Importing registers nothing: a task registered at import time would be built with whatever
vocabulary was current then, and a mixture made from it would keep that vocabulary after
gin bound another one. The entry point calls `register_builtin_tasks(...)` once, after gin
has parsed the vocabulary bindings and before any module a gin file imports runs. Outside
the entry point (a notebook, a script), call it yourself:

  from t5x_lite import tasks
  tasks.register_builtin_tasks()  # or register_builtin_tasks(vocabulary=...)

Submodules load on first use (`tasks.glue`, `from t5x_lite.tasks import corpora`), so
`t5x_lite.tasks.corpora` and `.default_spm` work without seqio or TensorFlow.
"""

import importlib
from typing import Optional

_SUBMODULES = ("corpora", "default_spm", "encoder_tasks", "glue", "glue_metrics",
               "instructions", "labels", "metrics", "pretraining", "quickstart", "superni",
               "superni_classifier", "ul2", "vocab")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_builtin_tasks(vocabulary=None, superni_options=None,
                           instruction_mixture_cap: Optional[int] = None) -> None:
  """(Re-)registers every built-in task and mixture.

  Args:
    vocabulary: a seqio.Vocabulary for every task's "inputs" and "targets"; None: the
      default vocabulary (tasks/vocab.py).
    superni_options: a superni.SuperNIOptions (default: $SUPERNI_DATA_DIR when read).
    instruction_mixture_cap: examples-proportional cap of the instruction mixtures; None:
      instructions.DEFAULT_MIXTURE_CAP.
  """
  # pylint: disable=g-import-not-at-top
  from t5x_lite.tasks import encoder_tasks, glue, instructions, pretraining, quickstart
  from t5x_lite.tasks import superni, superni_classifier, ul2, vocab
  # pylint: enable=g-import-not-at-top
  if instruction_mixture_cap is None:
    instruction_mixture_cap = instructions.DEFAULT_MIXTURE_CAP
  vocabulary = vocabulary or vocab.default_vocabulary()
  pretraining.register_tasks(vocabulary)
  ul2.register_tasks(vocabulary)
  glue.register_tasks(vocabulary)
  instructions.register_instruction_tasks(vocabulary, mixture_cap=instruction_mixture_cap)
  superni.register_superni_tasks(vocabulary, superni_options)
  superni_classifier.register_superni_classifier_tasks(vocabulary, superni_options)
  encoder_tasks.register_tasks(vocabulary)
  quickstart.register_mixture(instruction_mixture_cap)
