"""The built-in seqio tasks and mixtures: `import t5x_lite.tasks` registers them all.

This folder installs as the package `t5x_lite.tasks` (setup.py maps it), so no top-level
module named `tasks` exists to collide with a user's own.

Importing registers every task with the default vocabulary (lazy: nothing is built until a
task is read). The entry point re-registers them with the gin-configured vocabulary and
options (`register_builtin_tasks(...)`), so tasks never read gin themselves.
"""

from typing import Optional

import seqio

from t5x_lite.tasks import corpora  # noqa: F401
from t5x_lite.tasks import encoder_tasks
from t5x_lite.tasks import glue
from t5x_lite.tasks import instructions
from t5x_lite.tasks import metrics  # noqa: F401
from t5x_lite.tasks import pretraining
from t5x_lite.tasks import quickstart
from t5x_lite.tasks import superni
from t5x_lite.tasks import superni_classifier
from t5x_lite.tasks import ul2
from t5x_lite.tasks import vocab


def register_builtin_tasks(vocabulary: Optional[seqio.Vocabulary] = None,
                           superni_options: Optional[superni.SuperNIOptions] = None,
                           instruction_mixture_cap: int = instructions.DEFAULT_MIXTURE_CAP):
  """(Re-)registers every built-in task and mixture.

  Args:
    vocabulary: of every task's "inputs" and "targets"; None: the default vocabulary.
    superni_options: the SuperNI data (default: $SUPERNI_DATA_DIR when read).
    instruction_mixture_cap: examples-proportional cap of the instruction mixtures.
  """
  vocabulary = vocabulary or vocab.default_vocabulary()
  pretraining.register_tasks(vocabulary)
  ul2.register_tasks(vocabulary)
  glue.register_tasks(vocabulary)
  instructions.register_instruction_tasks(vocabulary, mixture_cap=instruction_mixture_cap)
  superni.register_superni_tasks(vocabulary, superni_options)
  superni_classifier.register_superni_classifier_tasks(vocabulary, superni_options)
  encoder_tasks.register_tasks(vocabulary)
  quickstart.register_mixture(instruction_mixture_cap)


register_builtin_tasks()
