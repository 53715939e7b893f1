"""The quickstart mixture: span corruption on the embedded corpus + embedded instruction tasks.

Half of the examples teach language (T5's objective), half teach the instruction families
whose answers `make demo` prints; nothing needs a download.
"""

import seqio

from t5x_lite.tasks import instructions  # noqa: F401  (registers embedded_instructions_mixture)
from t5x_lite.tasks import pretraining  # noqa: F401  (registers embedded_span_corruption)

QUICKSTART_MIXTURE = "quickstart_mixture"

if QUICKSTART_MIXTURE in seqio.MixtureRegistry.names():
  seqio.MixtureRegistry.remove(QUICKSTART_MIXTURE)
seqio.MixtureRegistry.add(
    QUICKSTART_MIXTURE,
    [("embedded_span_corruption", 1.0), ("embedded_instructions_mixture", 1.0)])
