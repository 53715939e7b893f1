"""Task and mixture registrations: `import tasks` registers them all with seqio."""

from tasks import corpora  # noqa: F401
from tasks import vocab  # noqa: F401
from tasks import pretraining  # noqa: F401
from tasks import glue  # noqa: F401

# SuperNI, Flan-style instructions and their metrics.
from tasks import metrics  # noqa: F401
from tasks import superni  # noqa: F401
from tasks import instructions  # noqa: F401

# The mixture `make demo` trains on.
from tasks import quickstart  # noqa: F401
