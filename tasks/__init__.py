"""Task and mixture registrations: `import t5x_lite.tasks` registers them all with seqio.

This folder installs as the package `t5x_lite.tasks` (setup.py maps it), so no top-level
module named `tasks` exists to collide with a user's own.
"""

from t5x_lite.tasks import corpora  # noqa: F401
from t5x_lite.tasks import vocab  # noqa: F401
from t5x_lite.tasks import pretraining  # noqa: F401
from t5x_lite.tasks import ul2  # noqa: F401
from t5x_lite.tasks import glue  # noqa: F401

# SuperNI, Flan-style instructions and their metrics.
from t5x_lite.tasks import metrics  # noqa: F401
from t5x_lite.tasks import superni  # noqa: F401
from t5x_lite.tasks import instructions  # noqa: F401

# The mixture `make demo` trains on.
from t5x_lite.tasks import quickstart  # noqa: F401
