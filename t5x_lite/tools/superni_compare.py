"""The SuperNI generator / rank-classification / classifier table for a trained pair of runs.

  python -m t5x_lite.tools.superni_compare --generator=experiments/ni_gen --classifier=experiments/ni_cls

reads the latest row of each run's eval metrics (MODEL_DIR/eval_metrics.jsonl, written by
training's infer-eval with recipes/superni_{generator,classifier}.gin; `--metrics_file`
picks another, e.g. eval_test_metrics.jsonl of the eval run mode, or give the file itself)
and prints SuperNI exact match on the test classification tasks: overall, per category and
per task, one column per way of answering (tasks/superni_classifier.py; the rank column reads
the rank task's `rank_<metric>` names, which keep it out of the generator's average):

  | group | generator | rank | classifier |
  | overall | 41.20 | 47.85 | 52.10 |
  | textual_entailment | ... |
"""

import argparse
import json
import re
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from etils import epath

COLUMNS = ("generator", "rank", "classifier")
# superni_classifier.RANK_METRIC_PREFIX, spelled here so that this tool imports no TensorFlow.
RANK_METRIC_PREFIX = "rank_"
_TASK_NAME = re.compile(r"^task\d+")
Row = Tuple[str, Optional[float], Optional[float], Optional[float]]


def latest_metrics(path: str, metrics_file: str = "eval_metrics.jsonl") -> Dict[str, float]:
  """The last row of a metrics JSONL file, or of `metrics_file` in a run directory (local or
  remote: etils.epath)."""
  given = epath.Path(path)
  path = given / metrics_file if given.is_dir() else given
  if not path.is_file():
    what = (f"the run directory {given} has no {metrics_file}" if given.is_dir()
            else f"{given} does not exist")
    raise FileNotFoundError(
        f"No metrics file: {what}; expected a run directory holding {metrics_file} (written "
        "by the final eval of training with a SuperNI recipe, or by the eval run mode; "
        "--metrics_file names another) or the metrics file itself.")
  rows = []
  for file in _history_files(path):
    for number, line in enumerate(file.read_text().splitlines(), 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{file} line {number} is not a JSON metrics row ({e.msg}).") from e
  if not rows:
    raise ValueError(f"{path} has no metrics row yet.")
  return rows[-1]


def _history_files(path: epath.Path) -> List[epath.Path]:
  """The file, then its later flushes on an object store (`<file>.parts/NNNNNN.jsonl`, the
  layout of summaries.history_files, spelled here so that this tool imports no TensorFlow)."""
  parts = path.parent / f"{path.name}.parts"
  return [path] + (sorted(parts.glob("*.jsonl")) if parts.is_dir() else [])


def task_names(encoding: str = "def_pos2", prefix: str = "superni") -> Dict[str, str]:
  """The evaluated task of each column."""
  return {"generator": f"{prefix}_classification_{encoding}_test",
          "rank": f"{prefix}_rank_{encoding}_test",
          "classifier": f"{prefix}_pairs_{encoding}_test"}


def comparison_rows(generator_metrics: Mapping[str, float],
                    classifier_metrics: Mapping[str, float], encoding: str = "def_pos2",
                    prefix: str = "superni", metric: str = "exact_match") -> List[Row]:
  """(group, generator, rank, classifier) rows: overall, then categories, then tasks.

  A value the runs did not report is None. The rank column reads `rank_<metric>`
  (superni_classifier.superni_rank_metrics).
  """
  sources = {"generator": generator_metrics, "rank": generator_metrics,
             "classifier": classifier_metrics}
  names = task_names(encoding, prefix)
  metric_names = {"generator": metric, "rank": RANK_METRIC_PREFIX + metric,
                  "classifier": metric}
  groups = set()
  for column, task in names.items():
    key_prefix = f"{task}/{metric_names[column]}_for_"
    groups |= {k[len(key_prefix):] for k in sources[column] if k.startswith(key_prefix)}

  def value(column, group):
    suffix = "" if group == "overall" else f"_for_{group}"
    return sources[column].get(f"{names[column]}/{metric_names[column]}{suffix}")

  categories = sorted(g for g in groups if not _TASK_NAME.match(g))
  tasks = sorted(g for g in groups if _TASK_NAME.match(g))
  return [(group, *(value(c, group) for c in COLUMNS))
          for group in ["overall"] + categories + tasks]


def format_table(rows: Sequence[Row], metric: str = "exact_match") -> str:
  """A Markdown table; missing values print as '-'."""
  cell = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
  lines = [f"| group ({metric}) | " + " | ".join(COLUMNS) + " |",
           "|---|" + "---:|" * len(COLUMNS)]
  lines += [f"| {group} | " + " | ".join(cell(v) for v in values) + " |"
            for group, *values in rows]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.tools.superni_compare",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--generator", required=True,
                      help="the generator run's MODEL_DIR (or its metrics file)")
  parser.add_argument("--classifier", required=True,
                      help="the classifier run's MODEL_DIR (or its metrics file)")
  parser.add_argument("--encoding", default="def_pos2")
  parser.add_argument("--prefix", default="superni")
  parser.add_argument("--metric", default="exact_match", help="or rougeL")
  parser.add_argument("--metrics_file", default="eval_metrics.jsonl")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  runs = {}
  for flag in ("generator", "classifier"):
    try:
      runs[flag] = latest_metrics(getattr(args, flag), args.metrics_file)
    except (FileNotFoundError, ValueError) as e:
      # A wrong path is a usage error: one line naming the flag, the path and the file
      # expected, no traceback.
      print(f"superni_compare: --{flag}: {e}", file=sys.stderr)
      raise SystemExit(2) from None
  rows = comparison_rows(runs["generator"], runs["classifier"], args.encoding, args.prefix,
                         args.metric)
  table = format_table(rows, args.metric)
  print(table)
  return table


if __name__ == "__main__":
  main()
