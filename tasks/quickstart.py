"""The quickstart mixture: span corruption on the embedded corpus + embedded instruction tasks.

Half of the examples teach language (T5's objective), half teach the instruction families
whose answers `make demo` prints; nothing needs a download.
"""

import seqio

QUICKSTART_MIXTURE = "quickstart_mixture"


def register_mixture() -> None:
  """Registers quickstart_mixture over embedded_span_corruption and the instruction mixture."""
  seqio.MixtureRegistry.remove(QUICKSTART_MIXTURE)
  seqio.MixtureRegistry.add(
      QUICKSTART_MIXTURE,
      [("embedded_span_corruption", 1.0), ("embedded_instructions_mixture", 1.0)])
