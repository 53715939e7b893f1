"""The quickstart mixture that `make demo` trains on: the held-in instruction families.

`quickstart_mixture` is the zero-shot format of every training family of
tasks/instructions.py (addition, reverse_word, uppercase, count_letter, sort_numbers,
sort_words, copy), mixed examples-proportionally like the other instruction mixtures. The
held-out families (subtraction, last_word, max_number) are never trained on; the demo scores
them separately with `embedded_instructions_heldout_zeroshot`. Nothing needs a download.
"""

import functools

import seqio

from t5x_lite.tasks import instructions

QUICKSTART_MIXTURE = "quickstart_mixture"


def register_mixture(mixture_cap: int = instructions.DEFAULT_MIXTURE_CAP) -> None:
  """Registers quickstart_mixture (the zero-shot tasks of the training families)."""
  seqio.MixtureRegistry.remove(QUICKSTART_MIXTURE)
  seqio.MixtureRegistry.add(
      QUICKSTART_MIXTURE,
      [instructions.task_name(family, "zeroshot") for family in instructions.TRAIN_FAMILIES],
      default_rate=functools.partial(seqio.mixing_rate_num_examples, maximum=mixture_cap))
