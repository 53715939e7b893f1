"""t5x_lite.data.text: the one bytes-to-text conversion of the library and the tasks."""

import pathlib
import re

import numpy as np
import pytest

import t5x_lite
from t5x_lite import tasks
from t5x_lite.data import text


def test_as_text_decodes_bytes_and_str_converts_the_rest():
  assert text.as_text(b"caf\xc3\xa9") == "caf\u00e9"
  assert text.as_text(np.bytes_(b"caf\xc3\xa9")) == "caf\u00e9"  # a tf.string read as numpy
  assert text.as_text("caf\u00e9") == "caf\u00e9"
  assert text.as_text(np.str_("x")) == "x"
  assert text.as_text(3) == "3"
  assert text.as_text(np.int64(-2)) == "-2"


def test_as_text_errors_replace_by_default_or_raise_when_strict():
  assert text.as_text(b"ok \xff end") == "ok \ufffd end"
  with pytest.raises(UnicodeDecodeError) as e:
    text.as_text(b"ok \xff end", errors="strict")
  assert e.value.start == 3


def test_no_other_module_decodes_utf8_itself():
  """The library and the tasks convert bytes through data/text.py only (one behaviour)."""
  decode = re.compile(r"\.decode\(\s*[\"']utf-?8", re.IGNORECASE)
  roots = [pathlib.Path(t5x_lite.__file__).parent, pathlib.Path(tasks.__file__).parent]
  found = sorted(f"{path.parent.name}/{path.name}" for root in roots for path in root.rglob("*.py")
                 if decode.search(path.read_text()))
  assert found == ["data/text.py"]
