"""Texts without a registered task: a file of inputs, or a list of strings, as a seqio.Task.

`read_inputs` reads the inputs of a .txt, .tsv or .jsonl file (the infer run mode's
INFER_INPUT_FILE); `text_task` makes an unregistered seqio.Task of a list of texts, with the
features a registered text-to-text task of the same vocabulary gives them, so that the infer
run mode (t5x_lite.modes.infer) and t5x_lite.modes.predict predict them as they would that
task's examples.
"""

import json
from typing import List, Sequence

from etils import epath
import seqio
import tensorflow as tf

from t5x_lite.data.text import as_text

# The task of texts given directly (INFER_INPUT_FILE, t5x_lite.modes.predict): its name goes
# into each text's sampling key (prediction.example_keys), so a text samples alike in both.
TEXT_TASK = "text_inputs"
TEXT_SPLIT = "inputs"


def read_inputs(path: str) -> List[str]:
  """The inputs of a file: one per line (.txt), the `inputs` column of a TSV whose header
  names it or else its first column (.tsv), the "inputs" field of each object (.jsonl).

  Blank lines are skipped; an input's index is its position among the inputs.

  Raises:
    FileNotFoundError: no such file.
    ValueError: another suffix, text that is not UTF-8, or a line without the input
      (named as path:line).
  """
  file = epath.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"INFER_INPUT_FILE={path!r} does not exist: set it to a .txt (one "
                            "input per line), .tsv or .jsonl file of inputs.")
  suffix = file.suffix.lower()
  if suffix not in (".txt", ".tsv", ".jsonl"):
    raise ValueError(f"INFER_INPUT_FILE={path!r}: name a .txt (one input per line), .tsv "
                     "(an 'inputs' column or the first) or .jsonl (an \"inputs\" field) file.")
  try:
    text = as_text(file.read_bytes(), errors="strict")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
  # Only "\n" ends a line (str.splitlines would also split at characters inside a text).
  lines = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), 1)
           if line.strip()]
  if suffix == ".txt":
    return [line for _, line in lines]
  if suffix == ".tsv":
    header = lines[0][1].split("\t") if lines else []
    column = header.index("inputs") if "inputs" in header else 0
    inputs = []
    for number, line in lines[1:] if "inputs" in header else lines:
      fields = line.split("\t")
      if column >= len(fields):
        raise ValueError(f"{path}:{number}: no 'inputs' column (column {column + 1} of the "
                         f"header): the line has {len(fields)} tab-separated fields.")
      inputs.append(fields[column])
    return inputs
  inputs = []
  for number, line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{number}: not JSON ({e.msg}).") from None
    if not isinstance(row, dict) or not isinstance(row.get("inputs"), str):
      raise ValueError(f"{path}:{number}: no \"inputs\" text field (write each line as "
                       "{\"inputs\": \"...\"}).")
    inputs.append(row["inputs"])
  return inputs


def text_task(texts: Sequence[str], vocabulary: seqio.Vocabulary) -> seqio.Task:
  """An unregistered seqio.Task (TEXT_TASK, split TEXT_SPLIT) over `texts`, with empty targets.

  Its features are those of a registered text-to-text task of `vocabulary` (tokenized, EOS
  appended), so a text gets the tokens, and the prediction, it gets through such a task.
  """
  texts = [str(t) for t in texts]

  def source(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant(texts, tf.string, shape=[len(texts)]),
        "targets": tf.constant([""] * len(texts), tf.string, shape=[len(texts)])})

  return seqio.Task(
      TEXT_TASK, source=seqio.FunctionDataSource(source, splits=(TEXT_SPLIT,)),
      output_features={k: seqio.Feature(vocabulary, add_eos=True) for k in ("inputs", "targets")},
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim])
