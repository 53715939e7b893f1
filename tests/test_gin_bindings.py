"""Tests for t5x_lite/config/gin_bindings.py and the vocabulary path checks of tasks/vocab.py: a user's
binding that this run never applies, or a vocabulary path that is not a SentencePiece model,
stops the run at start with one message naming the binding."""

import os
import re

import gin
import pytest
import seqio

from t5x_lite import main as main_lib
from t5x_lite.config import configurables
from t5x_lite.config import gin_bindings
from t5x_lite.config import gin_scan
from t5x_lite.config import gin_utils
from t5x_lite.tasks import vocab
import test_docs_commands

TINY_SPM = os.path.join(os.path.dirname(seqio.__file__),
                        "test_data/sentencepiece/sentencepiece.model")
QUICK = ["recipes/quickstart.gin"]


@gin.configurable
def user_preprocessor(rate=0.1):
  """A user's own configurable (a task module's): called by its tasks, when gin cannot tell."""
  return rate


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


# The macros each run mode requires (runs/*.gin headers).
REQUIRED = {"train": ["MODEL_DIR=r"], "export": ["CHECKPOINT_PATH=c", "OUTPUT_DIR=o"],
            "infer": ["CHECKPOINT_PATH=c", "OUTPUT_DIR=o",
                      "MIXTURE_OR_TASK_NAME=quickstart_mixture"]}


def _parse(gin_files, bindings, run_mode="train"):
  gin_utils.parse(gin_files, REQUIRED[run_mode] + bindings, register_builtin_tasks=False,
                  run_mode=run_mode)


@pytest.mark.parametrize("gin_files,run_mode,binding,message", [
    (QUICK, "train", "infer.batch_size=8",
     "--gin.infer.batch_size is bound but this run (run_mode=train) never calls infer; remove "
     "the binding or use --run_mode=infer"),
    (QUICK + ["runs/infer.gin"], "infer", "train.train_steps=4",
     "--gin.train.train_steps is bound but this run (run_mode=infer) never calls train; remove "
     "the binding or use --run_mode=train"),
    # Only train/DatasetConfig is built; the scope is a typo or from another codebase.
    (QUICK, "train", "eval/DatasetConfig.batch_size=3",
     "--gin.eval/DatasetConfig.batch_size is bound but this run (run_mode=train) never calls "
     "DatasetConfig in scope eval; it is called in scope train: did you mean "
     "train/DatasetConfig.batch_size?"),
])
def test_a_binding_this_run_never_applies_names_the_run_mode_or_scope(gin_files, run_mode,
                                                                      binding, message):
  """Before: each was silently ignored (the run trained / decoded with the default)."""
  with pytest.raises(ValueError) as error:
    _parse(gin_files, [binding], run_mode)
  assert str(error.value) == message


@pytest.mark.parametrize("binding,name", [
    # A head model on a recipe that trains the encoder-decoder.
    ("SequenceClassificationModel.num_labels=5", "SequenceClassificationModel"),
    # The classifier comparison's task names, on a recipe that does not read them.
    ("superni_comparison_task.split='test'", "superni_comparison_task"),
    # quickstart replaces runs/pretrain.gin's rsqrt schedule with a constant one.
    ("rsqrt_schedule.warmup_steps=100", "rsqrt_schedule"),
])
def test_a_configurable_nothing_refers_to_names_a_project_file_that_does(binding, name):
  with pytest.raises(ValueError) as error:
    _parse(QUICK, [binding])
  match = re.fullmatch(
      rf"--gin\.{re.escape(binding.split('=')[0])} is bound but this run \(run_mode=train\) "
      rf"never calls {name}; remove the binding, or make the run call it \(([\w/.]+\.gin): "
      r"(.*)\)", str(error.value))
  assert match, str(error.value)
  # The example quoted is a real line of that project gin file, referring to the configurable.
  lines = (gin_scan.GIN_DIR / match.group(1)).read_text().splitlines()
  assert match.group(2) in lines and re.search(rf"= @(\w+/)*{name}\(\)$", match.group(2))


def test_a_users_gin_file_is_checked_and_named(tmp_path):
  user = tmp_path / "mine.gin"
  user.write_text("include 'recipes/quickstart.gin'\n"
                  "train.log_period = 10\ninfer.batch_size = 8\n")
  with pytest.raises(ValueError) as error:
    _parse([str(user)], [])
  assert str(error.value) == (
      f"infer.batch_size (set in {user}) is bound but this run (run_mode=train) never calls "
      "infer; remove the binding or use --run_mode=infer")


@pytest.mark.parametrize("gin_files,run_mode,bindings", [
    # Called late in the run: evaluation and infer-eval during training, decoding at the end.
    (QUICK, "train", ["EvalConfig.period=5", "EvalConfig.infer_eval_num_examples=3",
                      "DecodingSettings.top_k=4", "CheckpointConfig.keep=2",
                      "train/DatasetConfig.pack=False", "constant_schedule.learning_rate=0.1"]),
    # Called at every start by the built-in tasks' registration, whatever the run mode.
    (QUICK + ["runs/export.gin"], "export",
     ["get_vocabulary.extra_ids=100",
      "superni_options.data_dir='/ni'", "T5Config.d_model=64", "Partitioner.num_partitions=1"]),
    # Macro-bound references, scoped: MIXTURE_OR_TASK_NAME = @train/superni_comparison_task().
    (["recipes/superni_classifier.gin"], "train",
     ["INITIAL_CHECKPOINT_PATH=c", "train/superni_comparison_task.encoding='x'",
      "eval/superni_comparison_task.split='validation'",
      "SequenceClassificationModel.dropout_rate=0.0"]),
    # A configurable of the user's own module: gin cannot tell when its tasks call it.
    (QUICK, "train", ["user_preprocessor.rate=0.3"]),
])
def test_bindings_that_the_run_applies_pass(gin_files, run_mode, bindings):
  _parse(gin_files, bindings, run_mode)
  assert gin.config_is_locked()


def test_builtin_task_settings_are_the_configurables_called_at_every_start():
  """BUILTIN_TASK_SETTINGS is what configurables.builtin_task_settings() calls."""
  # pylint: disable=protected-access
  gin.config._OPERATIVE_CONFIG.clear()
  configurables.builtin_task_settings()
  called = {selector for _, selector in gin.config._OPERATIVE_CONFIG}
  assert called == {gin.config._REGISTRY.get_match(name).selector
                    for name in gin_bindings.BUILTIN_TASK_SETTINGS}


def test_every_documented_command_binds_only_what_its_run_calls():
  """README, Makefile and gin-header commands (tests/test_docs_commands.py) pass the check."""
  assert len(test_docs_commands.COMMANDS) >= 15
  for name, argv in test_docs_commands.COMMANDS:
    gin.clear_config()
    args, bindings = main_lib.parse_flags(argv)
    gin_utils.parse(args.gin_file, bindings, finalize=False, register_builtin_tasks=False)
    try:
      gin_bindings.check_bindings_are_called(gin_scan.resolve_gin_files(args.gin_file),
                                             [gin_scan.normalize_binding(b) for b in bindings],
                                             args.run_mode)
    except ValueError as e:
      raise AssertionError(f"{name}: {e}") from e


def test_fsdp_binding_shards_the_embed_axis():
  """README's `--gin.standard_logical_axis_rules.fsdp=True`: the run's Partitioner applies it.

  Before, the Partitioner built its rules by calling the library function directly, so the
  binding was ignored and parameters stayed replicated over 'data'.
  """
  _parse(["models/tiny.gin", "runs/pretrain.gin"],
         ["MIXTURE_OR_TASK_NAME=quickstart_mixture", "standard_logical_axis_rules.fsdp=True"])
  rules = dict(gin.get_configurable("Partitioner")().rules)
  assert rules["embed"] == "data" and rules["mlp"] == "model"


def test_a_vocabulary_path_that_is_not_a_sentencepiece_model_names_the_binding(tmp_path):
  """Before: DecodeError 'Wire format was corrupt' or 'Is a directory' from deep in seqio."""
  text = tmp_path / "vocab.txt"
  text.write_text("hello\nworld\n")
  with pytest.raises(ValueError) as error:
    vocab.get_vocabulary(str(text))
  assert str(error.value) == (
      f"get_vocabulary.sentencepiece_model_path='{text}' is not a SentencePiece model that "
      "sentencepiece can load (DecodeError: Error parsing message with type "
      "'sentencepiece.ModelProto': Wire format was corrupt): set it to a SentencePiece .model "
      "file (a HF T5 directory's spiece.model), or leave it unset for the default vocabulary.")
  empty = tmp_path / "empty.model"  # parses as an empty ModelProto; sentencepiece refuses it
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match=r"empty\.model' is not a SentencePiece model that "
                     r"sentencepiece can load \(RuntimeError: INTERNAL: unk is not defined"):
    vocab.get_vocabulary(str(empty))
  hf_dir = tmp_path / "t5-small"
  hf_dir.mkdir()
  with pytest.raises(IsADirectoryError) as error:
    vocab.get_vocabulary(str(hf_dir))
  assert str(error.value) == (
      f"get_vocabulary.sentencepiece_model_path='{hf_dir}' is a directory: set it to a "
      "SentencePiece .model file (a HF T5 directory has spiece.model).")
  (hf_dir / "spiece.model").write_bytes(open(TINY_SPM, "rb").read())
  with pytest.raises(IsADirectoryError) as error:
    vocab.get_vocabulary(str(hf_dir) + "/")
  assert str(error.value).endswith(
      f"is a directory: set it to the model file in it, e.g. '{hf_dir / 'spiece.model'}'.")
  # The model itself loads, with T5's ids and the extra ids after its pieces.
  vocabulary = vocab.get_vocabulary(str(hf_dir / "spiece.model"), extra_ids=10)
  assert (vocabulary.vocab_size, vocabulary.eos_id) == (36, 1)
