"""The embedded default corpus: English prose that ships with every Python install.

`make demo` must work on a machine with no data at all, so the default pretraining corpus
and the default vocabulary are built from text already on disk: the Python reference
manual's topic pages (the `topics` literal of `pydoc_data/topics.py`) and the docstrings
in the source files of a fixed list of stdlib modules (module, public top-level functions
and classes, their public methods).

It is a pure function of files: each source file is read from the interpreter's stdlib
directory (`sysconfig.get_path("stdlib")`) and parsed with `ast`, nothing is imported, so
what else the process imported first (torch and transformers patch some stdlib objects'
docstrings) cannot change it, nor can a module of the same name elsewhere on sys.path.
Modules without a .py file (C builtins such as `math`) are skipped. What it depends on: the
bytes of those stdlib files, i.e. the CPython release (3.11.x patch releases may edit
docstrings), and this module's code; everything built from it (the vocabulary cache key,
for one) is keyed by `corpus_fingerprint()`. Parsing takes seconds, so the documents are
cached on disk next to the vocabulary, keyed by a hash of all input files' bytes.

Documents: cleaned paragraphs (whitespace collapsed, interactive/code paragraphs dropped)
packed greedily into documents of at most `_MAX_DOC_CHARS` characters, each within one
source (one topic page or one module's docstrings). The split is by a hash of each
document's text: ~5% validation, the rest train; stable across runs and machines.
"""

import ast
import functools
import hashlib
import json
import os
import pathlib
import re
import sysconfig
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

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
)  # `os.path`, `builtins`, `math` and other modules with no .py of that name are skipped

_MIN_PARAGRAPH_CHARS = 40  # shorter fragments are headings, signatures, "Args:" lines
_MAX_DOC_CHARS = 2000  # ~500 tokens: a span-corruption chunk (568 tokens) spans 1-2 docs
_MIN_PROSE_FRACTION = 0.85  # letters, spaces and light punctuation; code falls below this
_VALIDATION_PERCENT = 5
SPLITS = ("train", "validation")

_PROSE_CHARS = re.compile(r"[A-Za-z\s,.;:'\"()\-?!]")
_CODE_LINE = re.compile(r"^\s*(>>>|.*::=|\.\.\.|\$ |#|[a-z_][\w.]*\s*=[^=]|def |class |import |from \w+ import)")


def _stdlib_dir() -> pathlib.Path:
  """The running interpreter's standard library directory (the base install, not a venv)."""
  return pathlib.Path(sysconfig.get_path("stdlib"))


def _module_file(stdlib: pathlib.Path, module_name: str) -> Optional[pathlib.Path]:
  """`a.b` -> stdlib/a/b.py or stdlib/a/b/__init__.py; None for a module with no source.

  Found on disk, not through the import system, so a module of the same name in the working
  directory or on PYTHONPATH cannot stand in for the standard library's.
  """
  base = stdlib.joinpath(*module_name.split("."))
  for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
    if candidate.is_file():
      return candidate
  return None


def _public_docstrings(tree: ast.Module) -> List[str]:
  """Docstrings of a module, its public top-level functions/classes and their public methods.

  Names sorted; only definitions at the top level of the file (not inside `if`/`try`), so
  what a module defines conditionally at import time plays no part.
  """
  defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
  docs = [ast.get_docstring(tree) or ""]
  nodes = sorted((n for n in tree.body if isinstance(n, defs) and not n.name.startswith("_")),
                 key=lambda n: n.name)
  for node in nodes:
    docs.append(ast.get_docstring(node) or "")
    if isinstance(node, ast.ClassDef):
      methods = sorted((m for m in node.body if isinstance(m, defs[:2])
                        and not m.name.startswith("_")), key=lambda m: m.name)
      docs.extend(ast.get_docstring(m) or "" for m in methods)
  return [d for d in docs if d]


def _topics(stdlib: pathlib.Path) -> Dict[str, str]:
  """pydoc_data/topics.py's `topics` dict, read as a literal (the file is data only)."""
  path = stdlib / "pydoc_data" / "topics.py"
  if not path.is_file():  # stripped-down Python builds omit pydoc_data
    return {}
  tree = ast.parse(path.read_text(encoding="utf-8"))
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and getattr(node.targets[0], "id", None) == "topics"):
      return ast.literal_eval(node.value)
  return {}


def _raw_sources() -> List[Tuple[str, str]]:
  """Returns [(source_name, raw_text)] in a fixed order, read from source files only.

  Nothing is imported: docstrings of live objects change when other libraries patch the
  standard library (importing torch or transformers first did), which would change the
  corpus, the default vocabulary and every token id with it.
  """
  stdlib = _stdlib_dir()
  topics = _topics(stdlib)
  sources = [(f"topic:{key}", topics[key]) for key in sorted(topics)]
  for module_name in _DOCSTRING_MODULES:
    path = _module_file(stdlib, module_name)
    if path is None:
      continue
    tree = ast.parse(path.read_bytes(), filename=str(path))
    sources.append((f"module:{module_name}", "\n\n".join(_public_docstrings(tree))))
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


def cache_dir() -> str:
  """Directory for built artefacts: `$T5X_LITE_CACHE` or `~/.cache/t5x_lite`."""
  return os.environ.get("T5X_LITE_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "t5x_lite")


def _input_files() -> List[pathlib.Path]:
  """Every file the corpus is read from, in a fixed order (this module's source last)."""
  stdlib = _stdlib_dir()
  files = [stdlib / "pydoc_data" / "topics.py"]
  files += [_module_file(stdlib, name) for name in _DOCSTRING_MODULES]
  return [f for f in files if f is not None and f.is_file()] + [pathlib.Path(__file__)]


def _inputs_key() -> str:
  """sha256 over the input files' bytes (and this module's code): the corpus cache key."""
  h = hashlib.sha256()
  for path in _input_files():
    h.update(path.name.encode("utf-8") + b"\0")
    h.update(path.read_bytes())
    h.update(b"\1")
  return h.hexdigest()[:16]


def _build_documents() -> Dict[str, Tuple[str, ...]]:
  """Builds all documents from the source files; {split: (document, ...)}."""
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


def _fingerprint_of(documents: Dict[str, Sequence[str]]) -> str:
  h = hashlib.sha256()
  for split in SPLITS:
    for doc in documents[split]:
      h.update(doc.encode("utf-8"))
      h.update(b"\0")
    h.update(b"\1")
  return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _documents() -> Dict[str, Tuple[str, ...]]:
  """All documents, once per process: from the on-disk cache, else built (~5 s) and cached.

  The cache file is keyed by the bytes of every input file, so it is exactly as valid as a
  rebuild; a damaged file (content hash mismatch) is rebuilt. Writers publish with an atomic
  `os.replace`, so concurrent processes are safe.
  """
  path = os.path.join(cache_dir(), f"embedded_corpus_{_inputs_key()}.json")
  try:
    with open(path, encoding="utf-8") as f:
      cached = json.load(f)
    documents = {split: tuple(cached["documents"][split]) for split in SPLITS}
    if _fingerprint_of(documents) == cached["sha256"]:
      return documents
  except (OSError, ValueError, KeyError, TypeError):
    pass
  documents = _build_documents()
  os.makedirs(cache_dir(), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=cache_dir(), prefix=".embedded_corpus_", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump({"sha256": _fingerprint_of(documents),
                 "documents": {k: list(v) for k, v in documents.items()}}, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return documents


def embedded_texts(split: str = "train") -> Tuple[str, ...]:
  """The embedded corpus' documents for `split` ("train" or "validation").

  Each document is one or more paragraphs joined by "\\n" (at most ~2000 characters).
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r} of the embedded corpus; use one of {SPLITS}.")
  return _documents()[split]


def corpus_fingerprint() -> str:
  """sha256 hex digest of the whole corpus (both splits, in order): a cache key."""
  return _fingerprint_of(_documents())


def corpus_stats() -> Dict[str, Dict[str, int]]:
  """{split: {"documents": n, "characters": n}} for the embedded corpus."""
  return {
      split: {
          "documents": len(embedded_texts(split)),
          "characters": sum(len(d) for d in embedded_texts(split)),
      }
      for split in SPLITS
  }


def embedded_dataset_fn(split: str, shuffle_files: bool, seed=None) -> "tf.data.Dataset":
  """seqio dataset_fn: {"text": tf.string scalar} per document of `split`.

  The corpus is a single in-memory "file", so `shuffle_files` has nothing to shuffle;
  example-level shuffling is the Task's shuffle buffer.
  """
  del shuffle_files, seed
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # the corpus itself needs no TF
  return tf.data.Dataset.from_tensor_slices({"text": list(embedded_texts(split))})


def embedded_source() -> "seqio.FunctionDataSource":
  """The embedded corpus as a seqio data source with a "text" feature.

  Building it is cheap (the corpus is materialised on first read), so registering tasks
  over it builds nothing.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.FunctionDataSource(dataset_fn=embedded_dataset_fn, splits=SPLITS)
