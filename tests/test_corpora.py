"""Tests for tasks/corpora.py: the embedded default corpus."""

import hashlib

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


def test_corpus_size_and_split_are_deterministic():
  stats = corpora.corpus_stats()
  # Measured on CPython 3.11: ~480 train documents, ~0.72M characters.
  assert 300 <= stats["train"]["documents"] <= 1000
  assert 400_000 <= stats["train"]["characters"] <= 2_000_000
  assert 5 <= stats["validation"]["documents"] <= 100
  train, validation = corpora.embedded_texts("train"), corpora.embedded_texts("validation")
  assert not set(train) & set(validation)
  for doc in train[:50] + validation:
    bucket = int.from_bytes(hashlib.sha256(doc.encode()).digest()[:4], "big") % 100
    assert (bucket < 5) == (doc in validation)
    assert len(doc) <= 2000 and "  " not in doc
  assert corpora.corpus_fingerprint() == corpora.corpus_fingerprint()


def test_seqio_source_yields_documents_in_order():
  source = corpora.embedded_source()
  assert set(source.splits) == {"train", "validation"}
  ds = source.get_dataset(split="validation", shuffle=False)
  texts = [x["text"].decode() for x in ds.as_numpy_iterator()]
  assert tuple(texts) == corpora.embedded_texts("validation")
  assert ds.element_spec["text"].dtype == tf.string
