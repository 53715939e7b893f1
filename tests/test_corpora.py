"""Tests for tasks/corpora.py: the embedded default corpus."""

import hashlib
import json
import os
import platform
import subprocess
import sys

import pytest
import tensorflow as tf

from t5x_lite.tasks import corpora


def test_clean_paragraphs_drops_code_and_short_fragments():
  raw = ("This   paragraph is ordinary English prose,\n   wrapped over two lines.\n\n"
         ">>> x = 1\n>>> print(x)\n\n"
         "Args:\n\n"
         "    indented_code(block, with=args)\n    more_code()\n\n"
         "A second paragraph that is long enough to be kept by the cleaner.")
  assert corpora.clean_paragraphs(raw) == [
      "This paragraph is ordinary English prose, wrapped over two lines.",
      "A second paragraph that is long enough to be kept by the cleaner.",
  ]


# Measured once per CPython release (the corpus is the stdlib source files' docstrings):
# {python_version: (train docs, train chars, validation docs, validation chars, sha256)}.
_PINNED = {
    "3.11.7": (414, 619183, 27, 39213,
               "d6397dcba27de218ca2cc749a08b5e3c0ea6c63e027e19c8f5ed15f141a0225b"),
}

# Run in a fresh interpreter with its own empty cache: builds the corpus and the default
# vocabulary from scratch, optionally after importing torch and transformers (both patch
# docstrings of stdlib objects that the corpus once read from live objects).
_CHILD = """
import hashlib, json, sys
if sys.argv[1] == "torch_first":
  import torch, transformers
from t5x_lite.tasks import corpora, default_spm
with open(default_spm.default_model_path(), "rb") as f:
  model = hashlib.sha256(f.read()).hexdigest()
print(json.dumps({"corpus": corpora.corpus_fingerprint(), "stats": corpora.corpus_stats(),
                  "model": model, "torch": "torch" in sys.modules}))
"""


def test_corpus_size_and_split_are_deterministic():
  stats = corpora.corpus_stats()
  train, validation = corpora.embedded_texts("train"), corpora.embedded_texts("validation")
  assert not set(train) & set(validation)
  for doc in train + validation:
    bucket = int.from_bytes(hashlib.sha256(doc.encode()).digest()[:4], "big") % 100
    assert (bucket < 5) == (doc in validation)
    # Packing stops at 2000 characters; only a single over-long paragraph exceeds it.
    assert (len(doc) <= 2000 or "\n" not in doc) and "  " not in doc
  # The fingerprint is the documented hash of the documents, recomputed here independently.
  h = hashlib.sha256()
  for docs in (train, validation):
    for doc in docs:
      h.update(doc.encode() + b"\0")
    h.update(b"\1")
  assert corpora.corpus_fingerprint() == h.hexdigest()
  pinned = _PINNED.get(platform.python_version())
  if pinned is None:
    pytest.skip(f"no pinned corpus for Python {platform.python_version()}")
  assert (stats["train"]["documents"], stats["train"]["characters"],
          stats["validation"]["documents"], stats["validation"]["characters"],
          h.hexdigest()) == pinned


def test_corpus_and_vocabulary_do_not_depend_on_what_was_imported_first(tmp_path):
  children = {}
  for mode in ("plain", "torch_first"):
    env = dict(os.environ, T5X_LITE_CACHE=str(tmp_path / mode), TF_CPP_MIN_LOG_LEVEL="3")
    children[mode] = subprocess.Popen([sys.executable, "-c", _CHILD, mode], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out = {}
  for mode, child in children.items():
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr[-3000:]
    out[mode] = json.loads(stdout.strip().splitlines()[-1])
  assert (out["plain"]["torch"], out["torch_first"]["torch"]) == (False, True)
  assert out["torch_first"]["corpus"] == out["plain"]["corpus"]
  assert out["torch_first"]["stats"] == out["plain"]["stats"]
  assert out["torch_first"]["model"] == out["plain"]["model"]  # the same vocabulary file
  pinned = _PINNED.get(platform.python_version())
  if pinned is not None:
    assert out["plain"]["corpus"] == pinned[-1]


def test_documents_are_cached_on_disk_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
  built = []

  def fake_build():
    built.append(1)
    return {"train": ("a train document",), "validation": ("a validation document",)}

  monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path))
  monkeypatch.setattr(corpora, "_build_documents", fake_build)
  corpora._documents.cache_clear()  # pylint: disable=protected-access
  try:
    assert corpora.embedded_texts("train") == ("a train document",)
    (path,) = tmp_path.glob("embedded_corpus_*.json")
    corpora._documents.cache_clear()  # pylint: disable=protected-access
    assert corpora.embedded_texts("validation") == ("a validation document",)
    assert len(built) == 1  # read back from the file
    path.write_text(path.read_text().replace("a train document", "tampered"))
    corpora._documents.cache_clear()  # pylint: disable=protected-access
    assert corpora.embedded_texts("train") == ("a train document",)
    assert len(built) == 2  # the hash did not match: rebuilt
  finally:
    corpora._documents.cache_clear()  # pylint: disable=protected-access


def test_seqio_source_yields_documents_in_order():
  source = corpora.embedded_source()
  assert set(source.splits) == {"train", "validation"}
  ds = source.get_dataset(split="validation", shuffle=False)
  texts = [x["text"].decode() for x in ds.as_numpy_iterator()]
  assert tuple(texts) == corpora.embedded_texts("validation")
  assert ds.element_spec["text"].dtype == tf.string
