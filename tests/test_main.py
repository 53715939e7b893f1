"""The entry point as a user meets it: a subprocess in a directory of the user's own, a quiet
terminal, short errors, --list_tasks, and gin includes that a user's `runs/` or `tasks/`
directory cannot hijack."""

import os
import subprocess
import sys

import pytest

from t5x_lite import main


def _run(args, cwd, env=None):
  env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, "-m", "t5x_lite.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def user_dir(tmp_path):
  """A working directory like a user's after `make demo`: runs/, models/, tasks/ of their own."""
  (tmp_path / "runs" / "demo").mkdir(parents=True)
  (tmp_path / "runs" / "demo" / "config.gin").write_text("garbage that is not gin\n")
  (tmp_path / "models").mkdir()
  (tmp_path / "tasks").mkdir()
  (tmp_path / "tasks" / "__init__.py").write_text("raise RuntimeError('user tasks imported')\n")
  return tmp_path


def test_user_runs_and_tasks_directories_change_nothing_and_logs_are_quiet(user_dir):
  result = _run(["--gin_file=recipes/quickstart.gin", "--gin.MODEL_DIR=x",
                 "--list_tasks=quickstart*"], cwd=user_dir)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == ["mixture  quickstart_mixture  (tasks: 7)"]
  for noise in ("cuInit", "Unable to initialize backend", "absl::InitializeLog", "oneDNN",
                "cuda drivers", "Traceback"):
    assert noise not in result.stderr, (noise, result.stderr)


def test_list_tasks_pattern():
  result = _run(["--list_tasks=glue_*_v2"], cwd=os.getcwd())
  lines = result.stdout.splitlines()
  assert "task     glue_sst2_v2  (splits: train, validation, test)" in lines
  assert all(line.split()[1].startswith("glue_") for line in lines)


def test_errors_are_one_short_message_with_the_fix(tmp_path):
  result = _run(["--gin_file=recipes/quickstart.gin"], cwd=tmp_path)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert "Traceback" not in result.stderr and len(lines) <= 6, result.stderr
  assert "--gin.MODEL_DIR=VALUE" in result.stderr
  # The message comes last, below the line naming the log file.
  assert lines[0].startswith("(traceback in ") and lines[1].startswith("t5x-lite: ValueError: ")
  log_path = lines[0].split("traceback in ")[1].split(";")[0]
  with open(log_path, encoding="utf-8") as f:
    assert "Traceback" in f.read()
  verbose = _run(["--gin_file=recipes/quickstart.gin", "--verbose"], cwd=tmp_path)
  assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_missing_tfds_data_names_dataset_dir_and_command(tmp_path):
  """No download attempt: the message says which dataset, where it looked, how to prepare."""
  result = _run(["--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
                 "--gin.MIXTURE_OR_TASK_NAME=c4_span_corruption",
                 f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.BATCH_SIZE=2"],
                cwd=tmp_path, env={"TFDS_DATA_DIR": str(tmp_path / "tfds")})
  assert result.returncode == 1
  message = result.stderr
  assert "c4/en:3.1.0" in message and str(tmp_path / "tfds") in message, message
  assert "tfds build c4/en:3.1.0" in message and "TFDS_DATA_DIR" in message
  assert len(message.strip().splitlines()) <= 6


def test_a_macro_that_nothing_reads_stops_the_run_before_any_work(tmp_path):
  """recipes/quickstart.gin does not read INITIAL_CHECKPOINT_PATH (runs/finetune.gin does):
  before, the run trained from scratch and exited 0."""
  model_dir = tmp_path / "run"
  result = _run(["--gin_file=recipes/quickstart.gin", f"--gin.MODEL_DIR={model_dir}",
                 "--gin.INITIAL_CHECKPOINT_PATH=/nonexistent/checkpoints/5",
                 "--gin.TRAIN_STEPS=1"], cwd=tmp_path)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1] == (
      "t5x-lite: ValueError: --gin.INITIAL_CHECKPOINT_PATH is set but nothing in these gin "
      "files reads it (%INITIAL_CHECKPOINT_PATH); add --gin_file=runs/finetune.gin")
  assert not model_dir.exists()  # stopped before any data or model work


def test_macro_check_command_line_and_user_files(tmp_path):
  from t5x_lite.config import gin_scan  # pylint: disable=g-import-not-at-top
  quickstart = str(gin_scan.GIN_DIR / "recipes" / "quickstart.gin")
  # Read by runs/pretrain.gin (included by the recipe): fine, as is a project file's own
  # macro that this combination leaves unread.
  gin_scan.check_macros_are_read([quickstart], ["MODEL_DIR = 'x'", "TRAIN_STEPS = 3"])
  with pytest.raises(ValueError) as error:
    gin_scan.check_macros_are_read([quickstart], ["TRAIN_STEP = 3"])
  assert str(error.value) == ("--gin.TRAIN_STEP is set but nothing in these gin files reads "
                              "it (%TRAIN_STEP); did you mean TRAIN_STEPS?")
  # A user's gin file: its macros are checked too, read through its own bindings or not.
  user = tmp_path / "mine.gin"
  user.write_text("include 'recipes/quickstart.gin'\nMY_RATE = 0.1\nWARMUP = 10\n"
                  "constant_schedule.learning_rate = %MY_RATE\n")
  with pytest.raises(ValueError) as error:
    gin_scan.check_macros_are_read([str(user)], [])
  assert str(error.value) == (
      f"WARMUP (set in {user}) is set but nothing in these gin files reads it (%WARMUP); no "
      "gin file of the project reads it either: remove it or check its spelling")
  user.write_text(user.read_text().replace("WARMUP = 10\n", ""))
  gin_scan.check_macros_are_read([str(user)], [])


@pytest.fixture
def clean_gin():
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("gin_files,run_mode,bindings,unread", [
    # quickstart includes runs/pretrain.gin (MODEL_DIR = %gin.REQUIRED, read by train only).
    (["recipes/quickstart.gin", "runs/infer.gin"], "infer",
     ["CHECKPOINT_PATH=c/checkpoints/1600", "MIXTURE_OR_TASK_NAME=quickstart_mixture",
      "OUTPUT_DIR=out"], "MODEL_DIR"),
    # A finetune recipe: runs/finetune.gin makes INITIAL_CHECKPOINT_PATH required for train.
    (["recipes/squad_qa.gin", "runs/export.gin"], "export",
     ["CHECKPOINT_PATH=c/checkpoints/1600", "OUTPUT_DIR=hf"], "INITIAL_CHECKPOINT_PATH"),
])
def test_a_run_mode_demands_only_the_required_macros_it_reads(clean_gin, gin_files, run_mode,
                                                                bindings, unread):
  import gin  # pylint: disable=g-import-not-at-top
  from t5x_lite.config import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.parse(gin_files, bindings, register_builtin_tasks=False, run_mode=run_mode)
  assert gin.config_is_locked()
  # Still required, unset and unread: reading it would stop the call.
  assert repr(gin.get_bindings(f"{unread}/gin.macro", resolve_references=False)["value"]) == (
      "%gin.REQUIRED")
  assert gin.query_parameter("%OUTPUT_DIR") in ("out", "hf")
  # The run mode's own required macros are still demanded, by name.
  gin.clear_config()
  with pytest.raises(ValueError) as error:
    gin_utils.parse(gin_files, [b for b in bindings if not b.startswith("OUTPUT_DIR")],
                    register_builtin_tasks=False, run_mode=run_mode)
  assert "OUTPUT_DIR/macro.value set to `%gin.REQUIRED`" in str(error.value)
  assert "--gin.OUTPUT_DIR=VALUE" in str(error.value)
  # Training with the same files asks for the train file's macro.
  gin.clear_config()
  with pytest.raises(ValueError) as error:
    gin_utils.parse(gin_files, bindings + ["MODEL_DIR=run"] * (unread != "MODEL_DIR"),
                    register_builtin_tasks=False, run_mode="train")
  assert f"--gin.{unread}=VALUE" in str(error.value)


def test_a_missing_checkpoint_step_names_the_steps_there(tmp_path):
  from t5x_lite.checkpointing import restore  # pylint: disable=g-import-not-at-top
  for step in (1000, 1600):
    (tmp_path / "checkpoints" / str(step) / "state").mkdir(parents=True)
  with pytest.raises(ValueError) as error:
    restore.resolve_checkpoint_path(str(tmp_path / "checkpoints" / "400"))
  assert str(error.value).startswith(
      f"No checkpoint at '{tmp_path}/checkpoints/400': it does not exist; the steps in "
      f"'{tmp_path}/checkpoints' are 1000, 1600. Expected MODEL_DIR/checkpoints/<step>")


def test_end_of_run_summary_lists_only_files_that_exist(tmp_path, capsys):
  """No evaluation ran: no eval_metrics.jsonl, no predictions, no loss curve are listed."""
  import types  # pylint: disable=g-import-not-at-top
  from t5x_lite.checkpointing.run_dir import RunDir  # pylint: disable=g-import-not-at-top
  from t5x_lite.modes import train  # pylint: disable=g-import-not-at-top
  run_dir = RunDir(str(tmp_path))
  (tmp_path / "train_metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
  (tmp_path / "config.gin").write_text("")
  manager = types.SimpleNamespace(directory=run_dir.checkpoints, all_steps=lambda: [2])
  eval_writer = types.SimpleNamespace(history_path=run_dir.metrics_history("eval"))
  report = train._report  # pylint: disable=protected-access
  report(run_dir, manager, str(tmp_path / "loss.png"), eval_writer,
         run_dir.predictions("infer_eval", 2), [], {}, 0)
  assert capsys.readouterr().out.splitlines() == [
      f"Outputs in {tmp_path}:",
      f"  checkpoints   {tmp_path}/checkpoints (steps 2)",
      f"  TensorBoard   tensorboard --logdir {tmp_path}  (train/, eval/)",
      f"  metrics       {tmp_path}/train_metrics.jsonl",
      f"  config        {tmp_path}/config.gin"]


_EARLY_FAILURES = r"""
import json, sys
from t5x_lite import main
out = []
for argv in json.loads(sys.argv[1]):
  try:
    main.main(argv)
    out.append(None)
  except ValueError as e:
    out.append([str(e), sorted(m for m in ("tensorflow", "jax") if m in sys.modules)])
print(json.dumps(out))
"""


def test_misspelt_gin_files_and_broken_gin_fail_before_tensorflow_and_jax_load(tmp_path):
  """Before: a misspelt include or a syntax error surfaced after ~15 s of imports, the
  latter at the line after the broken binding and without quoting it."""
  import json  # pylint: disable=g-import-not-at-top
  (tmp_path / "typo.gin").write_text("include 'runs/pretrian.gin'\n")
  (tmp_path / "broken.gin").write_text(
      "include 'recipes/quickstart.gin'\n# the model\nT5Config.d_model = (128\nTRAIN_STEPS = 2\n")
  cases = [["--gin_file=recipes/quickstrat.gin"], ["--gin_file=typo.gin"],
           ["--gin_file=broken.gin", "--gin.MODEL_DIR=x"],
           ["--gin_file=recipes/quickstart.gin", "--gin.T5Config d_model=3"]]
  result = subprocess.run([sys.executable, "-c", _EARLY_FAILURES, json.dumps(cases)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=True)
  gin_dirs = "hardware, models, recipes, runs/..."
  assert json.loads(result.stdout) == [
      [f"--gin_file=recipes/quickstrat.gin: no such file here or under the package's gin "
       f"directory ({gin_dirs}).", []],
      [f"include 'runs/pretrian.gin' (in typo.gin): no such file here or under the package's "
       f"gin directory ({gin_dirs}).", []],
      ["broken.gin, line 3: 'T5Config.d_model = (128' is not valid gin (Expected ',' or ')'); "
       "values are Python literals", []],
      ["--gin.T5Config d_model=3: not a gin binding (Couldn't parse statement, expected ':' or "
       "'='); values are Python literals, e.g. --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 64, "
       "'targets': 32}\"", []]]


_QUICK = ["recipes/quickstart.gin"]


@pytest.mark.parametrize("bindings,message", [
    (["MODEL_DIR=None"],
     "MODEL_DIR (train.model_dir) is None: training writes its checkpoints and summaries "
     "there (None would make a directory ./None); set --gin.MODEL_DIR=experiments/x."),
    (["MODEL_DIR=['a']"],
     "MODEL_DIR (train.model_dir) = ['a'] is a list, not a path (it would make a directory "
     "named \"['a']\"); give one path: --gin.MODEL_DIR=experiments/x."),
    (["MODEL_DIR=r", "T5Config.dtype=bf16"],
     "T5Config.dtype = 'bf16' is not a dtype name this model takes: use one of 'float32', "
     "'bfloat16', 'float16'."),
    (["MODEL_DIR=r", "constant_schedule.learning_rate='1e-3'"],
     "constant_schedule.learning_rate = '1e-3' is a string; it takes a number: write it "
     "without quotes (--gin.constant_schedule.learning_rate=1e-3)."),
    (["MODEL_DIR=r", "T5Config.d_model=(128"],
     "T5Config.d_model = '(128' is a string; it takes an integer (a malformed literal on the "
     "command line is read as a string)."),
])
def test_settings_that_were_silent_or_cryptic_stop_with_the_binding_to_change(
    clean_gin, bindings, message):
  from t5x_lite.config import gin_utils, preflight  # pylint: disable=g-import-not-at-top
  gin_utils.parse(_QUICK, bindings, register_builtin_tasks=False, run_mode="train")
  with pytest.raises(ValueError) as error:
    preflight.check("train", available_memory=64 * 1024 ** 3)
  assert str(error.value) == message


def test_a_home_relative_path_is_expanded(clean_gin, tmp_path, monkeypatch):
  """Before: MODEL_DIR = '~/runs/x' in a gin file trained into ./~/runs/x."""
  import gin  # pylint: disable=g-import-not-at-top
  from t5x_lite.config import gin_utils, preflight  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("HOME", str(tmp_path))
  user = tmp_path / "mine.gin"
  user.write_text("include 'recipes/quickstart.gin'\nMODEL_DIR = '~/runs/x'\n")
  gin_utils.parse([str(user)], [], register_builtin_tasks=False, run_mode="train")
  preflight.check("train", available_memory=64 * 1024 ** 3)
  assert gin.query_parameter("train.model_dir") == f"{tmp_path}/runs/x"


def test_an_int_checkpoint_steps_names_the_steps_there(clean_gin, tmp_path):
  """Before: TypeError: 'int' object is not iterable, from evaluate."""
  from t5x_lite.config import gin_utils, preflight  # pylint: disable=g-import-not-at-top
  for step in (1000, 1600):
    (tmp_path / "checkpoints" / str(step) / "state").mkdir(parents=True)
  gin_utils.parse(_QUICK + ["runs/eval.gin"], [
      f"MODEL_DIR={tmp_path}", "CHECKPOINT_STEPS=10", "MIXTURE_OR_TASK_NAME=quickstart_mixture"],
                  register_builtin_tasks=False, run_mode="eval")
  with pytest.raises(ValueError) as error:
    preflight.check("eval")
  assert str(error.value) == (
      "CHECKPOINT_STEPS (evaluate.checkpoint_steps) = 10: give 'latest', 'all' or a list of "
      "steps, e.g. --gin.CHECKPOINT_STEPS=\"[10]\" (MODEL_DIR's checkpoints: steps 1000, 1600).")


def test_lengths_whose_planned_training_peak_exceeds_memory_are_refused(clean_gin):
  import gin  # pylint: disable=g-import-not-at-top
  """Before: inputs of 65,536 tokens grew the process to 6 GiB with no message."""
  # pylint: disable=g-import-not-at-top
  from t5x_lite.config import configurables, gin_utils, preflight
  from t5x_lite.training import memory_planner
  lengths = {"inputs": 65536, "targets": 32}
  gin_utils.parse(_QUICK, ["MODEL_DIR=r", f"TASK_FEATURE_LENGTHS={lengths}"],
                  register_builtin_tasks=False, run_mode="train")
  plan = memory_planner.plan(configurables.T5Config(), {"data": 1, "model": 1}, 32, 65536, 32)
  with pytest.raises(ValueError) as error:
    preflight.check("train", available_memory=8 * 1024 ** 3)
  assert str(error.value) == (
      f"TASK_FEATURE_LENGTHS (train/DatasetConfig.task_feature_lengths) = {lengths} with "
      f"BATCH_SIZE (train/DatasetConfig.batch_size) = 32: the memory planner predicts a training "
      f"peak of {plan.total / 1024 ** 3:.1f} GiB (activations {plan.activations / 1024 ** 3:.1f} "
      "GiB) and this machine has 8.0 GiB: lower the lengths or the batch size, or raise "
      "train.num_microbatches.")
  assert plan.total > 8 * 1024 ** 3
  # The recipe's own lengths fit: no refusal.
  gin.clear_config()
  gin_utils.parse(_QUICK, ["MODEL_DIR=r"], register_builtin_tasks=False, run_mode="train")
  preflight.check("train", available_memory=8 * 1024 ** 3)


def test_a_host_without_tpu_skips_libtpus_probe_unless_the_user_chose_platforms():
  has = lambda *names: (lambda name: object() if name in names else None)
  no_devices, tpu_devices = (lambda: []), (lambda: ["/dev/vfio/0"])
  environ = {}
  assert main.skip_absent_tpu(environ, has("libtpu"), no_devices)
  assert environ == {"JAX_PLATFORMS": "cpu"}
  for environ, find_spec, devices in (({"JAX_PLATFORMS": "tpu"}, has("libtpu"), no_devices),
                                      ({}, has(), no_devices),
                                      ({}, has("libtpu"), tpu_devices),
                                      ({}, has("libtpu", "jax_cuda12_plugin"), no_devices)):
    before = dict(environ)
    assert not main.skip_absent_tpu(environ, find_spec, devices)
    assert environ == before
