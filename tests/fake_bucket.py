"""A bucket that runs here: TensorFlow's in-memory filesystem (`ram://`), registered with
etils.epath the way `gs://` is (a PosixGPath on the tf.io.gfile backend).

Paths under `ram://` exist only in this process; `os.path` cannot see them, so code that
reaches a user path through anything but epath / tf.io.gfile fails on them as it would
on a bucket. (Orbax writes arrays through TensorStore, which knows gs:// but no in-memory
scheme, so checkpoints themselves cannot live here.)
"""

from etils.epath import backend, gpath, register

SCHEME = "ram"


def register_scheme(monkeypatch) -> str:
  """Makes epath.Path("ram://...") a PosixGPath on the tf.io.gfile backend for one test.

  Returns:
    "ram://bucket", a fresh root to write under.
  """
  # pylint: disable=protected-access
  monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {SCHEME})
  monkeypatch.setattr(gpath, "_URI_PREFIXES", gpath._URI_PREFIXES + (f"{SCHEME}://",))
  monkeypatch.setitem(gpath._URI_MAP_ROOT, f"{SCHEME}://", f"/{SCHEME}/")
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, SCHEME, backend.tf_backend)
  monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, f"{SCHEME}://", gpath.PosixGPath)
  return f"{SCHEME}://bucket"
