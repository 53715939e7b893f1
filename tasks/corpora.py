"""The embedded default corpus: English prose that ships with every Python install.

`make demo` must work on a machine with no data at all, so the default pretraining corpus
and the default vocabulary are built from text already on disk: the Python reference
manual's topic pages (`pydoc_data.topics.topics`) and the docstrings of a fixed list of
stdlib modules and their public functions, classes and methods.

Enumeration is deterministic (fixed module list, sorted attribute names), modules are only
imported (never executed beyond import), and modules that fail to import are skipped. The
text depends on the Python version (docstrings change between releases); everything built
from it (the vocabulary cache key, for one) is keyed by `corpus_fingerprint()`.

Documents: cleaned paragraphs (whitespace collapsed, interactive/code paragraphs dropped)
packed greedily into documents of at most `_MAX_DOC_CHARS` characters, each within one
source (one topic page or one module's docstrings). The split is by a hash of each
document's text: ~5% validation, the rest train; stable across runs and machines.
"""

import functools
import hashlib
import importlib
import inspect
import re
from typing import Dict, List, Tuple

import seqio
import tensorflow as tf

# Modules whose docstrings are mostly English prose. Fixed (not discovered) so the corpus
# does not depend on what else is installed; none of them has import side effects
# (no `this`, `antigravity`, GUI toolkits or test suites).
_DOCSTRING_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "builtins", "bz2",
    "calendar", "cmath", "codecs", "collections", "collections.abc", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "email", "email.message", "enum", "filecmp", "fnmatch", "fractions",
    "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html", "html.parser", "http.client", "http.cookies", "http.server", "imaplib",
    "importlib", "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging",
    "logging.handlers", "lzma", "mailbox", "math", "mimetypes", "multiprocessing",
    "numbers", "operator", "optparse", "os", "os.path", "pathlib", "pickle", "pkgutil",
    "platform", "plistlib", "poplib", "pprint", "profile", "pstats", "queue", "random",
    "re", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics",
    "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "time", "timeit", "tokenize", "traceback", "types", "typing", "unittest",
    "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zlib",
)

_MIN_PARAGRAPH_CHARS = 40  # shorter fragments are headings, signatures, "Args:" lines
_MAX_DOC_CHARS = 2000  # ~500 tokens: a span-corruption chunk (568 tokens) spans 1-2 docs
_MIN_PROSE_FRACTION = 0.85  # letters, spaces and light punctuation; code falls below this
_VALIDATION_PERCENT = 5
SPLITS = ("train", "validation")

_PROSE_CHARS = re.compile(r"[A-Za-z\s,.;:'\"()\-?!]")
_CODE_LINE = re.compile(r"^\s*(>>>|.*::=|\.\.\.|\$ |#|[a-z_][\w.]*\s*=[^=]|def |class |import |from \w+ import)")


def _raw_sources() -> List[Tuple[str, str]]:
  """Returns [(source_name, raw_text)] in a fixed order."""
  sources = []
  try:
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top
    for key in sorted(topics.topics):
      sources.append((f"topic:{key}", topics.topics[key]))
  except ImportError:  # stripped-down Python builds omit pydoc_data
    pass
  for module_name in _DOCSTRING_MODULES:
    try:
      module = importlib.import_module(module_name)
    except Exception:  # pylint: disable=broad-except  # e.g. ssl/sqlite3 not compiled in
      continue
    docs = [inspect.getdoc(module) or ""]
    for name in sorted(vars(module)):
      if name.startswith("_"):
        continue
      obj = getattr(module, name, None)
      # Only objects defined in this module: re-exports would duplicate text.
      if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        continue
      if getattr(obj, "__module__", None) != module.__name__:
        continue
      docs.append(inspect.getdoc(obj) or "")
      if inspect.isclass(obj):
        for member_name in sorted(vars(obj)):
          if member_name.startswith("_"):
            continue
          member = vars(obj)[member_name]
          if inspect.isroutine(member):
            docs.append(inspect.getdoc(member) or "")
    sources.append((f"module:{module_name}", "\n\n".join(d for d in docs if d)))
  return sources


def _is_prose(paragraph: str) -> bool:
  if len(paragraph) < _MIN_PARAGRAPH_CHARS:
    return False
  prose = len(_PROSE_CHARS.findall(paragraph))
  return prose / len(paragraph) >= _MIN_PROSE_FRACTION


def clean_paragraphs(raw_text: str) -> List[str]:
  """Splits raw text at blank lines; drops code, collapses whitespace.

  Args:
    raw_text: a topic page or a module's joined docstrings.

  Returns:
    Cleaned single-line paragraphs, in their original order.
  """
  paragraphs = []
  for block in re.split(r"\n\s*\n", raw_text):
    lines = block.split("\n")
    # An indented block or any interactive/code-looking line marks a code sample.
    if any(_CODE_LINE.match(line) for line in lines):
      continue
    if len(lines) > 1 and all(line.startswith("   ") for line in lines if line.strip()):
      continue
    text = " ".join(block.split())
    if _is_prose(text):
      paragraphs.append(text)
  return paragraphs


def _split_of(text: str) -> str:
  digest = hashlib.sha256(text.encode("utf-8")).digest()
  bucket = int.from_bytes(digest[:4], "big") % 100
  return "validation" if bucket < _VALIDATION_PERCENT else "train"


@functools.lru_cache(maxsize=None)
def _documents() -> Dict[str, Tuple[str, ...]]:
  """Builds all documents once per process; {split: (document, ...)}."""
  out = {split: [] for split in SPLITS}
  seen = set()
  for _, raw in _raw_sources():
    current = ""
    docs = []
    for paragraph in clean_paragraphs(raw):
      if paragraph in seen:  # inherited docstrings repeat verbatim
        continue
      seen.add(paragraph)
      if current and len(current) + 1 + len(paragraph) > _MAX_DOC_CHARS:
        docs.append(current)
        current = ""
      current = f"{current}\n{paragraph}" if current else paragraph
    if current:
      docs.append(current)
    for doc in docs:
      out[_split_of(doc)].append(doc)
  return {split: tuple(docs) for split, docs in out.items()}


def embedded_texts(split: str = "train") -> Tuple[str, ...]:
  """The embedded corpus' documents for `split` ("train" or "validation").

  Each document is one or more paragraphs joined by "\\n" (at most ~2000 characters).
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r} of the embedded corpus; use one of {SPLITS}.")
  return _documents()[split]


def corpus_fingerprint() -> str:
  """sha256 hex digest of the whole corpus (both splits, in order): a cache key."""
  h = hashlib.sha256()
  for split in SPLITS:
    for doc in embedded_texts(split):
      h.update(doc.encode("utf-8"))
      h.update(b"\0")
    h.update(b"\1")
  return h.hexdigest()


def corpus_stats() -> Dict[str, Dict[str, int]]:
  """{split: {"documents": n, "characters": n}} for the embedded corpus."""
  return {
      split: {
          "documents": len(embedded_texts(split)),
          "characters": sum(len(d) for d in embedded_texts(split)),
      }
      for split in SPLITS
  }


def embedded_dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
  """seqio dataset_fn: {"text": tf.string scalar} per document of `split`.

  The corpus is a single in-memory "file", so `shuffle_files` has nothing to shuffle;
  example-level shuffling is the Task's shuffle buffer.
  """
  del shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({"text": list(embedded_texts(split))})


def embedded_source() -> seqio.FunctionDataSource:
  """The embedded corpus as a seqio data source with a "text" feature.

  Building it is cheap (the corpus is materialised on first read), so tasks can be
  registered at import time.
  """
  return seqio.FunctionDataSource(dataset_fn=embedded_dataset_fn, splits=SPLITS)
