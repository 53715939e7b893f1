"""Every `python -m t5x_lite.main` command in README.md, in the gin files' header comments and
in the Makefile's demo parses as written: its flags, its gin files (found on the project's gin
search path), its gin config (misspelt configurables and parameters, unread macros) and the
required macros of its run mode. Nothing is run.

Commands that name `experiments/demo` are meant to run after `make demo`: they must read the
demo's model files and only checkpoint steps the demo keeps (CheckpointConfig of the demo's
own config). Commands that need data or checkpoints from elsewhere (C4, SuperNI, buckets,
/models/...) are checked for parsing only; the others also name registered tasks.
"""

import inspect
import pathlib
import re
import shlex

import gin
import pytest
import seqio

from t5x_lite import main as main_lib
from t5x_lite.config import configurables
from t5x_lite.config import gin_scan
from t5x_lite.config import gin_utils
from t5x_lite.tools import plan_memory

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEMO_DIR = "experiments/demo"
_ENTRY = "python -m t5x_lite.main"
# Where a command reads what a fresh clone does not have: checked for parsing only.
_EXTERNAL = ("gs://", "/models/", "/data/", "/shared/", "c4_", "superni", "glue", "conll",
             "squad")


def _logical_lines(text: str):
  """(line number, line) with backslash continuations joined, as a shell reads them."""
  lines, start, parts = [], None, []
  for number, line in enumerate(text.splitlines(), 1):
    start = start or number
    if line.rstrip().endswith("\\"):
      parts.append(line.rstrip()[:-1])
      continue
    parts.append(line)
    lines.append((start, " ".join(p.strip() for p in parts)))
    start, parts = None, []
  if parts:
    lines.append((start, " ".join(p.strip() for p in parts)))
  return lines


def extract_commands(text: str):
  """(line number, argv after `python -m t5x_lite.main`) for each command in shell `text`.

  A command inside a double-quoted argument (`ssh --command="cd x && python -m ..."`) ends at
  the closing quote. Shell variables ($MASTER_ADDR) become 0: only their flags' syntax counts.
  """
  found = []
  for number, line in _logical_lines(text):
    at = line.find(_ENTRY)
    while at >= 0:
      rest = line[at + len(_ENTRY):]
      if line[:at].count('"') % 2:
        rest = rest.split('"', 1)[0]
      rest = rest.split(" && ", 1)[0].split(" | ", 1)[0]
      found.append((number, shlex.split(re.sub(r"\$\{?\w+\}?", "0", rest), comments=True)))
      at = line.find(_ENTRY, at + len(_ENTRY))
  return found


def _readme_code():
  """README.md's fenced code blocks, lines outside them blanked (line numbers kept)."""
  out, inside = [], False
  for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
    if line.startswith("```"):
      inside = not inside
      out.append("")
    else:
      out.append(line if inside else "")
  return "\n".join(out)


def _gin_header(path: pathlib.Path) -> str:
  """The leading `#` comment block of a gin file, comment marks removed."""
  lines = []
  for line in path.read_text(encoding="utf-8").splitlines():
    if not line.startswith("#"):
      break
    lines.append(line[1:])
  return "\n".join(lines)


def _makefile_demo():
  """The Makefile's `demo` recipe lines, $(DEMO_GIN) expanded, as shell text."""
  text = (ROOT / "Makefile").read_text(encoding="utf-8")
  demo_gin = re.search(r"^DEMO_GIN := (.*)$", text, re.M).group(1)
  recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M).group(1)
  return recipe.replace("$(DEMO_GIN)", demo_gin).replace("$(PY) -m", "python -m")


def _all_commands():
  sources = [("README.md", _readme_code()), ("Makefile", _makefile_demo())]
  for path in sorted((ROOT / "gin").rglob("*.gin")):
    sources.append((str(path.relative_to(ROOT)), _gin_header(path)))
  return [(f"{name}:{number}", argv) for name, text in sources
          for number, argv in extract_commands(text)]


COMMANDS = _all_commands()


def _parse_kwargs():
  """The keyword arguments the entry point gives gin_utils.parse that this version takes.

  Built-in tasks are not registered again: commands naming another vocabulary or a SuperNI
  directory would read it; the tests' session already registered the default ones.
  """
  wanted = {"check_unread_macros": True, "register_builtin_tasks": False}
  taken = inspect.signature(gin_utils.parse).parameters
  return {k: v for k, v in wanted.items() if k in taken}


def macros_read_by(configurable):
  """{macro: unset (still %gin.REQUIRED)} for every macro that calling `configurable` reads.

  Follows the bound references (`@EncoderDecoderModel()`, `@train/DatasetConfig()`) and
  macros (`%MODEL_DIR`) from the configurable down, as a call would evaluate them.
  """
  macros = {}
  for _, bindings in gin_utils.walk_bindings(configurable, gin_utils.references):
    for value in gin_utils.references(bindings):
      if value.configurable.wrapped is gin.config.macro:
        bound = gin.get_bindings(value.scoped_selector, resolve_references=False).get("value")
        macros["/".join(value.scopes)] = (isinstance(bound, gin.config.ConfigurableReference)
                                          and repr(bound) == "%gin.REQUIRED")
  return macros


def _evaluate(name: str):
  """The value of macro `name` in the parsed config."""
  return gin.get_bindings(f"{name}/gin.macro", resolve_references=True)["value"]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_extraction_joins_continuations_and_quoted_commands():
  text = ("# train:\n"
          "python -m t5x_lite.main --gin_file=a.gin \\\n"
          "    \"--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}\" \\\n"
          "    --gin.MODEL_DIR=x   # a comment\n"
          "ssh h --command=\"cd t && \\\n"
          "  python -m t5x_lite.main --process_id=$RANK --gin.B=2\"\n")
  assert extract_commands(text) == [
      (2, ["--gin_file=a.gin", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}",
           "--gin.MODEL_DIR=x"]),
      (5, ["--process_id=0", "--gin.B=2"])]
  sources = {name.split(":")[0] for name, _ in COMMANDS}
  assert {"README.md", "Makefile", "gin/runs/infer.gin", "gin/runs/eval.gin",
          "gin/runs/score.gin", "gin/runs/export.gin", "gin/recipes/quickstart.gin"} <= sources


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[n for n, _ in COMMANDS])
def test_command_parses(argv):
  """Flags, gin files, gin config and the run mode's required macros; local tasks exist.

  Finalizing as the entry point does demands the REQUIRED macros that the run mode reads (an
  infer command over a recipe that includes runs/pretrain.gin needs no MODEL_DIR).
  """
  args, bindings = main_lib.parse_flags(argv)
  for gin_file in args.gin_file:
    assert (gin_scan.GIN_DIR / gin_file).is_file(), (
        f"--gin_file={gin_file} is not under the project's gin directory")
  gin_utils.parse(args.gin_file, bindings, finalize=False, **_parse_kwargs())
  needed = macros_read_by(configurables.RUN_MODES[args.run_mode])
  unset = sorted(name for name, required in needed.items() if required)
  assert not unset, f"--run_mode={args.run_mode} needs {unset}: add --gin.{unset[0]}=..."
  text = " ".join(argv)
  if "MIXTURE_OR_TASK_NAME" in needed and not any(marker in text for marker in _EXTERNAL):
    task = _evaluate("MIXTURE_OR_TASK_NAME")
    assert seqio.get_mixture_or_task(task).name == task
  gin_utils.finalize(configurables.RUN_MODE_NAMES[args.run_mode])


def _demo_steps():
  """The checkpoint steps `make demo` leaves: CheckpointConfig of the demo's train config."""
  (_, argv), = [(n, a) for n, a in COMMANDS if n.startswith("Makefile") and
                "--run_mode=eval" not in a]
  args, bindings = main_lib.parse_flags(argv)
  gin_utils.parse(args.gin_file, bindings, finalize=False, **_parse_kwargs())
  train_bindings = gin.get_bindings("train", resolve_references=False)
  config = train_bindings["checkpoint"].scoped_configurable_fn()
  train_steps = _evaluate("TRAIN_STEPS")
  # Saved at each multiple of the period and at the last step; the newest `keep` remain.
  saved = sorted({*range(config.period, train_steps + 1, config.period), train_steps})
  assert config.keep_best_metric is None
  return args.gin_file, saved[-config.keep:] if config.keep else saved


def test_demo_commands_read_the_demo_model_and_kept_steps():
  demo_files, kept = _demo_steps()
  # README's "Set up" paragraph and the run files' headers name these steps.
  assert kept == [1000, 1600]
  model_files = [f for f in demo_files if not f.startswith("runs/")]
  checked = []
  for name, argv in COMMANDS:
    text = " ".join(argv)
    if DEMO_DIR not in text:
      continue
    args, bindings = main_lib.parse_flags(argv)
    assert [f for f in args.gin_file if not f.startswith("runs/")] == model_files, name
    assert not [b for b in bindings if b.startswith("T5Config.")], name
    steps = [int(s) for s in re.findall(rf"{DEMO_DIR}/checkpoints/(\d+)", text)]
    for binding in bindings:
      if binding.startswith("CHECKPOINT_STEPS=["):
        steps += [int(s) for s in re.findall(r"\d+", binding.split("=", 1)[1])]
    assert set(steps) <= set(kept), f"{name}: steps {steps}, the demo keeps {kept}"
    checked.append(name)
  # The Makefile's two commands and the README's and run files' eval / infer / score / export.
  assert len(checked) >= 9, checked


def test_memory_planner_command_gives_the_readme_table(capsys):
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  command = next(line for _, line in _logical_lines(readme)
                 if line.startswith("python -m t5x_lite.tools.plan_memory "))
  argv = shlex.split(command)[3:]
  mesh = next(a for a in argv if a.startswith("--mesh=")).split("=")[1].replace("x", "×")
  row = next(line for line in readme.splitlines() if f", {mesh} (data × model) |" in line)
  expected = [cell.strip() for cell in row.split("|")[2:-1]]
  plan_memory.main(argv)
  printed = dict(re.findall(r"^\| ([^|]+?) \| ([\d.]+) \|$", capsys.readouterr().out, re.M))
  assert [f"{printed[k]} GiB" for k in ("parameters", "optimizer state (Adafactor)",
                                        "gradients", "activations (estimate)", "total")] == (
                                            expected)
