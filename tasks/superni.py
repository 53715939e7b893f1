"""Super-NaturalInstructions (SuperNI) tasks from a local clone of allenai/natural-instructions.

Data layout read (the repository as cloned, nothing converted):

    <data_dir>/tasks/<task_name>.json        one task per file
    <data_dir>/splits/<split>/train_tasks.txt  task names, one per line
    <data_dir>/splits/<split>/test_tasks.txt

The clone is located lazily, when a dataset is built, so that importing `tasks`
registers everything on machines without the data: `superni_options.data_dir` (gin)
wins, else the `SUPERNI_DATA_DIR` environment variable.

Prompts are Tk-Instruct's (Wang et al. 2022, `src/ni_collator.py`), character for
character, e.g. definition + 2 positive examples ("def_pos2", Tk-Instruct's default):

    Definition: <definition[0]>.\n\n
     Positive Example 1 -\nInput: <in>.\n Output: <out>.\n\n
     Positive Example 2 -\nInput: <in>.\n Output: <out>.\n\n
    Now complete the following example -\nInput: <instance input>.\nOutput: 

(the "." is added only when the text does not already end in punctuation; the
leading spaces before "Positive Example" and "Output" are Tk-Instruct's). Unlike
the collator, examples are not dropped to fit a token budget: seqio trims to the
feature converter's sequence length instead.

Instances per task, as Tk-Instruct's `ni_dataset.py`: training tasks keep a seeded
random sample of `max_train_instances_per_task` (100); test tasks keep the first
`max_test_instances_per_task` (100) — SuperNI stores its label-balanced evaluation
instances first, and its leaderboard scores exactly those.

Task type rule (for the `superni_classification_*` / `superni_generation_*`
subsets), `superni_options.task_type_rule`, computed on all of a task's valid
instances, before the per-task cap:
  "study" (default): the rule of the generator-vs-classifier study this project reproduces
    (RenzeLou/Text-to-Text-Classification, Super_NI/data/add_output_space.py):
    "classification" when the task's category (its first "Categories" entry) is in
    STUDY_CLASSIFICATION_CATEGORIES and its instances' lower-cased outputs take at most
    `max_output_space` (100) distinct values — its output space, the candidate labels of
    the encoder classifier and of rank classification (tasks/superni_classifier.py);
    otherwise "generation". On the default test split this keeps the six exact-match
    categories (Textual Entailment, Cause Effect Classification, Coreference Resolution,
    Dialogue Act Recognition, Answerability Classification, Word Analogy): 73 tasks, of
    which 64 keep an output space of at most 100 (the study's count).
  "category": the same with CLASSIFICATION_CATEGORIES, i.e. without Word Analogy (this
    project's rule before "study"; 56 default test tasks).
  "label_count": "classification" when the normalised references take at most
    `max_classification_labels` (10) distinct values and there are at least twice as
    many instances as distinct values (so a 3-instance task with 3 different answers is
    not a 3-way classifier).

Registered tasks (`{enc}` in ENCODINGS):
  superni_{enc}_train                    splits: train       (train_tasks.txt)
  superni_{enc}_test                     splits: test, validation (test_tasks.txt)
  superni_{classification|generation}_{enc}_{train|test}
Every example carries `references` (JSON list of str), `task_name`, `category`,
`task_type` and `id`, so the metrics (tasks/metrics.superni_metrics) report SuperNI's
exact_match / rougeL overall, per task and per category.
"""

import dataclasses
import functools
import json
import logging
import os
import random
import string
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from etils import epath
import seqio
import tensorflow as tf

from t5x_lite.data.text import as_text
from t5x_lite.tasks import metrics
from t5x_lite.tasks import vocab

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "SUPERNI_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Encoding:
  """How an instance is turned into a prompt (Tk-Instruct's collator options)."""
  add_definition: bool = True
  num_pos_examples: int = 2
  num_neg_examples: int = 0
  add_explanation: bool = False
  add_task_name: bool = False


# Tk-Instruct's five training encodings plus def+pos+neg with explanations.
ENCODINGS: Dict[str, Encoding] = {
    "def": Encoding(num_pos_examples=0),
    "pos2": Encoding(add_definition=False),
    "def_pos2": Encoding(),
    "def_pos2_neg2": Encoding(num_neg_examples=2),
    "def_pos2_expl": Encoding(add_explanation=True),
    "def_pos2_neg2_expl": Encoding(num_neg_examples=2, add_explanation=True),
}
TASK_TYPES = ("classification", "generation")
TASK_TYPE_RULES = ("study", "category", "label_count")

# SuperNI's categories (its task JSON "Categories" names, spelled as there) whose tasks
# pick a label from a closed set: detection, identification, recognition, verification,
# classification, entailment and matching tasks, and coreference (picking the referent).
# Tasks of these categories whose outputs still take more than max_output_space values
# (e.g. coreference answered with free names) count as generation.
CLASSIFICATION_CATEGORIES = frozenset((
    "Answer Verification", "Answerability Classification", "Cause Effect Classification",
    "Coherence Classification", "Commonsense Classification", "Coreference Resolution",
    "Dialogue Act Recognition", "Discourse Connective Identification",
    "Discourse Relation Classification", "Entity Relation Classification",
    "Ethics Classification", "Fact Verification", "Gender Classification",
    "Grammar Error Detection", "Intent Identification", "Irony Detection",
    "Language Identification", "Linguistic Probing", "Negotiation Strategy Detection",
    "Punctuation Error Detection", "Section Classification", "Sentiment Analysis",
    "Spam Classification", "Speaker Identification", "Speaker Relation Classification",
    "Spelling Error Detection", "Stance Detection", "Stereotype Detection",
    "Text Categorization", "Text Matching", "Text Quality Evaluation", "Textual Entailment",
    "Toxic Language Detection", "Word Relation Classification", "Word Semantics",
))
# The study's classification categories. Its evaluation (the commented-out `is_gen_task` of
# Super_NI/src/ni_dataset_classifier.py) scores by exact match the six test categories
# Textual Entailment, Cause Effect Classification, Coreference Resolution, Dialogue Act
# Recognition, Answerability Classification and Word Analogy; the other six test categories
# (Overlap Extraction, Keyword Tagging, Question Rewriting, Title Generation, Data to Text,
# Grammar Error Correction) are generation, and none of them is in the table above. Its
# category file for the training tasks (splits/categories_cls_gen.json) is not published:
# the table above stands in for it.
STUDY_CLASSIFICATION_CATEGORIES = CLASSIFICATION_CATEGORIES | {"Word Analogy"}
_RULE_CATEGORIES = {"study": STUDY_CLASSIFICATION_CATEGORIES,
                    "category": CLASSIFICATION_CATEGORIES}


@dataclasses.dataclass(frozen=True)
class SuperNIOptions:
  """Where the SuperNI clone is and how much of it to use (gin: `superni_options.*`).

  Attributes:
    data_dir: root of a clone of allenai/natural-instructions. None: the
      `SUPERNI_DATA_DIR` environment variable, read when a dataset is built.
    split: sub-directory of `splits/` holding train_tasks.txt / test_tasks.txt
      ("default" is the English track; "xlingual" the cross-lingual one).
    max_train_instances_per_task: instances sampled per training task (Tk-Instruct: 100).
      A negative value keeps all.
    max_test_instances_per_task: first instances kept per test task (SuperNI: 100).
    task_type_rule: "study" (the study's categories and the output space), "category"
      (the same without Word Analogy) or "label_count" (at most max_classification_labels
      labels); see the module docstring.
    max_output_space: largest output space of a "classification" task ("study",
      "category").
    max_classification_labels: largest label set of a "classification" task
      ("label_count").
    seed: seeds the training-instance sample, the choice among several references
      for the training target, and the task order when files are shuffled.
  """
  data_dir: Optional[str] = None
  split: str = "default"
  max_train_instances_per_task: int = 100
  max_test_instances_per_task: int = 100
  task_type_rule: str = "study"
  max_output_space: int = 100
  max_classification_labels: int = 10
  seed: int = 42

  def __post_init__(self):
    if self.task_type_rule not in TASK_TYPE_RULES:
      raise ValueError(f"superni_options.task_type_rule={self.task_type_rule!r}; use one of "
                       f"{TASK_TYPE_RULES}.")

  def resolved_data_dir(self) -> str:
    """data_dir, else $SUPERNI_DATA_DIR.

    Raises:
      ValueError: neither is set.
    """
    data_dir = self.data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
      raise ValueError(
          "SuperNI needs a local clone of allenai/natural-instructions: bind "
          "`superni_options.data_dir = '/path/to/natural-instructions'` in gin or set "
          f"the {DATA_DIR_ENV} environment variable.")
    return data_dir


def superni_options(**kwargs) -> SuperNIOptions:
  """SuperNIOptions from keyword arguments: the gin configurable `superni_options`."""
  return SuperNIOptions(**kwargs)


# ---------------------------------------------------------------- prompt encoding


def _end_sentence(text: str) -> str:
  """Tk-Instruct's rule: add "." unless the text already ends in punctuation."""
  return text if text and text[-1] in string.punctuation else text + "."


def _example_block(kind: str, idx: int, example: Mapping[str, str],
                   add_explanation: bool) -> str:
  block = f" {kind} Example {idx} -\n"
  block = _end_sentence(block + f"Input: {example['input'].strip()}") + "\n"
  block = _end_sentence(block + f" Output: {example['output'].strip()}") + "\n"
  if add_explanation and "explanation" in example:
    block = _end_sentence(block + f" Explanation: {example['explanation'].strip()}") + "\n"
  return block + "\n"


def encode_prompt(task: Mapping[str, Any], instance_input: str, encoding: Encoding) -> str:
  """Tk-Instruct's prompt for one instance (DataCollatorForNI, no length budget).

  Args:
    task: a parsed task with "Task", "Definition" (str or list of str),
      "Positive Examples" and "Negative Examples".
    instance_input: the instance's input text.
    encoding: which parts to include.

  Returns:
    The source string; it ends with "Output: " (trailing space included).
  """
  task_input = _end_sentence(
      "Now complete the following example -\n" + f"Input: {instance_input.strip()}")
  return instruction(task, encoding) + task_input + "\nOutput: "


def classifier_prompt(task: Mapping[str, Any], instance_input: str, candidate: str,
                      encoding: Encoding) -> Tuple[str, str]:
  """The encoder classifier's input, asking whether `candidate` is this instance's output.

  The instruction (as in encode_prompt), then "Input: <input>.\nOutput: <candidate>.\nIs
  this example correct?" ("." added as Tk-Instruct adds it: unless the text already ends
  in punctuation).

  Returns:
    (head, tail): the prompt is head + tail; the tail ("Output: <candidate>. ...") is what
    must survive truncation, so that the question the label answers is in the input.
  """
  head = instruction(task, encoding) + _end_sentence(f"Input: {instance_input.strip()}") + "\n"
  return head, _end_sentence(f"Output: {candidate.strip()}") + "\nIs this example correct?"


def instruction(task: Mapping[str, Any], encoding: Encoding) -> str:
  """The task part of a prompt: name, definition, positive and negative examples."""
  name = task["Task"] + ". " if encoding.add_task_name else ""
  definition = ""
  if encoding.add_definition:
    text = task["Definition"]
    text = text[0] if isinstance(text, list) else text
    definition = _end_sentence("Definition: " + text.strip()) + "\n\n"
  pos = [_example_block("Positive", i + 1, ex, encoding.add_explanation)
         for i, ex in enumerate(task["Positive Examples"][:encoding.num_pos_examples])]
  neg = [_example_block("Negative", i + 1, ex, encoding.add_explanation)
         for i, ex in enumerate(task["Negative Examples"][:encoding.num_neg_examples])]
  return name + definition + "".join(pos) + "".join(neg)


# ---------------------------------------------------------------- reading the clone


def _text(value: Any) -> str:
  return value if isinstance(value, str) else ("" if value is None else str(value))


def _clean_examples(examples: Any) -> List[Dict[str, str]]:
  """Positive/negative examples with every field a str (None -> "")."""
  if not isinstance(examples, list):
    return []
  out = []
  for ex in examples:
    if isinstance(ex, Mapping):
      cleaned = {k: _text(ex.get(k)) for k in ("input", "output")}
      if "explanation" in ex:
        cleaned["explanation"] = _text(ex["explanation"])
      out.append(cleaned)
  return out


def read_task_names(path: str) -> List[str]:
  """Task names of a split file, one per line; blank lines are ignored."""
  if not epath.Path(path).is_file():
    raise FileNotFoundError(
        f"SuperNI split file {path} does not exist: is superni_options.data_dir "
        f"(or {DATA_DIR_ENV}) the root of a natural-instructions clone, and "
        "superni_options.split a directory under splits/?")
  lines = as_text(epath.Path(path).read_bytes()).splitlines()
  return [line.strip() for line in lines if line.strip()]


def read_task_file(path: str) -> Dict[str, Any]:
  """Parses one task JSON. Non-UTF-8 bytes become U+FFFD rather than failing the file.

  Raises:
    FileNotFoundError: the file is missing.
    ValueError: malformed JSON (with line and column) or a missing "Definition" /
      "Instances" key; the message names the file.
  """
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"SuperNI task file {path} does not exist (the task is "
                            "listed in the split file)")
  raw = epath.Path(path).read_bytes()
  try:
    text = as_text(raw, errors="strict")
  except UnicodeDecodeError:
    text = as_text(raw)
    logger.warning("%s: non-UTF-8 bytes replaced by U+FFFD", path)
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: "
                     f"{e.msg}") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object at the top level, got "
                     f"{type(data).__name__}")
  for key in ("Definition", "Instances"):
    if key not in data:
      raise ValueError(f"{path}: missing the {key!r} key of a SuperNI task")
  if not isinstance(data["Instances"], list):
    raise ValueError(f"{path}: 'Instances' must be a list")
  return data


def _valid_instances(task_name: str, instances: List[Any], path: str) -> List[Dict[str, Any]]:
  """Instances with a str input and at least one str reference.

  An empty-string reference is a reference: SuperNI's official evaluation keeps every
  `output` (its reference file is the instances' outputs as they are), so a model that
  answers nothing scores an exact match there. Instances with no str reference at all
  cannot be trained on or scored; they are skipped and counted in a warning so that one
  bad record never loses the rest of the task.
  """
  valid, skipped = [], 0
  for idx, inst in enumerate(instances):
    if not isinstance(inst, Mapping) or not isinstance(inst.get("input"), str):
      skipped += 1
      continue
    outputs = inst.get("output")
    outputs = [outputs] if isinstance(outputs, str) else outputs
    refs = [o for o in outputs or [] if isinstance(o, str)]
    if not refs:
      skipped += 1
      continue
    valid.append({"id": _text(inst.get("id")) or f"{task_name}-{idx}",
                  "input": inst["input"], "output": refs})
  if skipped:
    logger.warning("%s: skipped %d of %d instances (no input text or no reference)",
                   path, skipped, len(instances))
  return valid


def classify_task_type(instances: Sequence[Mapping[str, Any]], max_labels: int) -> str:
  """"classification" or "generation" by the "label_count" rule (module docstring)."""
  labels = {metrics.normalize_answer(o) for inst in instances for o in inst["output"]}
  if len(labels) <= max_labels and 2 * len(labels) <= len(instances):
    return "classification"
  return "generation"


def output_space(instances: Sequence[Mapping[str, Any]]) -> List[str]:
  """The distinct lower-cased outputs of a task's instances, each as first spelled there.

  Returns:
    One candidate per lower-cased value, in order of first appearance.
  """
  first = {}
  for inst in instances:
    for output in inst["output"]:
      first.setdefault(output.lower(), output)
  return list(first.values())


def category_task_type(category: str, space: Sequence[str], max_output_space: int,
                       rule: str = "study") -> str:
  """"classification" or "generation" by the "study" or "category" rule.

  Args:
    category: the task's first "Categories" entry.
    space: its output space (output_space()).
    max_output_space: the largest output space of a classification task.
    rule: "study" (STUDY_CLASSIFICATION_CATEGORIES) or "category"
      (CLASSIFICATION_CATEGORIES).
  """
  if category in _RULE_CATEGORIES[rule] and len(space) <= max_output_space:
    return "classification"
  return "generation"


@functools.lru_cache(maxsize=4096)
def _load_task(path: str, mtime: float, size: int, subset: str, cap: int, seed: int,
               rule: str, max_size: int) -> Dict[str, Any]:
  """Parsed, capped task; cached on (path, mtime, size) since files are big.

  `max_size` is the rule's limit: max_output_space ("study", "category") or
  max_classification_labels ("label_count").
  """
  del mtime, size  # Cache key only: a rewritten file is re-read.
  task_name = epath.Path(path).stem
  data = read_task_file(path)
  instances = _valid_instances(task_name, data["Instances"], path)
  categories = data.get("Categories") or [""]
  space = output_space(instances)
  if rule == "label_count":
    task_type = classify_task_type(instances, max_size)
  else:
    task_type = category_task_type(_text(categories[0]), space, max_size, rule)
  rng = random.Random(f"{seed}:{task_name}")
  if subset == "train":
    instances = list(instances)
    rng.shuffle(instances)
  if cap >= 0:
    instances = instances[:cap]
  return {
      "Task": task_name,
      "Definition": data["Definition"] if isinstance(data["Definition"], list)
                    else [_text(data["Definition"])],
      "Positive Examples": _clean_examples(data.get("Positive Examples")),
      "Negative Examples": _clean_examples(data.get("Negative Examples")),
      "Category": _text(categories[0]),
      "TaskType": task_type,
      # The candidate labels of classification tasks (tasks/superni_classifier.py).
      "OutputSpace": space if task_type == "classification" else [],
      # Tk-Instruct samples one reference per training step; a seeded pick per
      # instance keeps the dataset deterministic. Test targets use the first one.
      "Instances": [dict(inst, target=(rng.choice(inst["output"]) if subset == "train"
                                       else inst["output"][0])) for inst in instances],
  }


def load_split_tasks(options: SuperNIOptions, subset: str) -> List[Dict[str, Any]]:
  """All tasks of `subset` ("train" or "test") of the options' split, capped."""
  data_dir = options.resolved_data_dir()
  if not epath.Path(data_dir).is_dir():
    raise FileNotFoundError(
        f"SuperNI data directory {data_dir} does not exist: set "
        f"superni_options.data_dir (gin) or {DATA_DIR_ENV} to a natural-instructions clone")
  split_file = str(epath.Path(data_dir) / "splits" / options.split / f"{subset}_tasks.txt")
  names = read_task_names(split_file)
  task_dir = epath.Path(data_dir) / "tasks"
  cap = (options.max_train_instances_per_task if subset == "train"
         else options.max_test_instances_per_task)
  tasks = []
  for name in names:
    path = str(task_dir / f"{name}.json")
    if not epath.Path(path).is_file():
      raise FileNotFoundError(f"SuperNI task file {path} does not exist, but task "
                              f"{name!r} is listed in {split_file}")
    stat = epath.Path(path).stat()
    max_size = (options.max_classification_labels if options.task_type_rule == "label_count"
                else options.max_output_space)
    tasks.append(_load_task(path, stat.mtime, stat.length, subset, cap,
                            options.seed, options.task_type_rule, max_size))
  return tasks


_FIELDS = ("inputs", "targets", "references", "task_name", "category", "task_type", "id")


def build_examples(tasks: Sequence[Mapping[str, Any]], encoding: Encoding,
                   task_type: Optional[str] = None) -> List[Dict[str, str]]:
  """Flat list of example dicts (all str fields, `references` JSON-encoded)."""
  examples = []
  for task in tasks:
    if task_type and task["TaskType"] != task_type:
      continue
    for inst in task["Instances"]:
      examples.append({
          "inputs": encode_prompt(task, inst["input"], encoding),
          "targets": inst["target"],
          # JSON in a scalar string: a fixed-rank field survives seqio caching,
          # batching and the Evaluator's example cache unchanged.
          "references": json.dumps(inst["output"], ensure_ascii=False),
          "task_name": task["Task"],
          "category": task["Category"],
          "task_type": task["TaskType"],
          "id": inst["id"],
      })
  return examples


def _dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None, *,
                subset: str, encoding: Encoding, task_type: Optional[str],
                options: SuperNIOptions) -> tf.data.Dataset:
  """seqio FunctionDataSource fn; `split` is checked by seqio, `subset` picks the tasks."""
  del split
  tasks = load_split_tasks(options, subset)
  if shuffle_files:
    tasks = list(tasks)
    random.Random(options.seed if seed is None else seed).shuffle(tasks)
  return string_columns_dataset(build_examples(tasks, encoding, task_type), _FIELDS)


def string_columns_dataset(examples: Sequence[Mapping[str, str]],
                           fields: Sequence[str]) -> tf.data.Dataset:
  """A dataset of str-field dicts, from columns: unlike a generator-backed dataset, its
  iterator can be checkpointed (training saves the input pipeline's position)."""
  return tf.data.Dataset.from_tensor_slices(
      {k: tf.constant([ex[k] for ex in examples], tf.string) for k in fields})


def _as_str(value: Any) -> str:
  if hasattr(value, "numpy"):
    value = value.numpy()
  if hasattr(value, "item") and not isinstance(value, (bytes, str)):
    value = value.item()
  return as_text(value, errors="strict")


def superni_postprocess(output: Any, example: Optional[Mapping[str, Any]] = None,
                        is_target: bool = False) -> Any:
  """Targets become {"references", "task", "category"} from the example; outputs pass."""
  if not is_target or example is None or "references" not in example:
    return output
  return {"references": json.loads(_as_str(example["references"])),
          "task": _as_str(example["task_name"]),
          "category": _as_str(example["category"])}


def register_superni_tasks(vocabulary: seqio.Vocabulary,
                           options: Optional[SuperNIOptions] = None, prefix: str = "superni",
                           encodings: Optional[Mapping[str, Encoding]] = None) -> List[str]:
  """Registers the SuperNI tasks (idempotent: existing names are replaced).

  Args:
    vocabulary: vocabulary of both "inputs" and "targets".
    options: where the data is and how much to use; default SuperNIOptions() (the data
      directory from $SUPERNI_DATA_DIR when a dataset is built).
    prefix: task name prefix.
    encodings: name -> Encoding; defaults to ENCODINGS.

  Returns:
    The registered task names.
  """
  features = {k: seqio.Feature(vocabulary=vocabulary, add_eos=True)
              for k in ("inputs", "targets")}
  names = []
  for enc_name, encoding in (encodings or ENCODINGS).items():
    for subset in ("train", "test"):
      for task_type in (None,) + TASK_TYPES:
        name = f"{prefix}_{task_type + '_' if task_type else ''}{enc_name}_{subset}"
        splits = ("train",) if subset == "train" else ("test", "validation")
        source = seqio.FunctionDataSource(
            functools.partial(_dataset_fn, subset=subset, encoding=encoding,
                              task_type=task_type, options=options or SuperNIOptions()),
            splits=splits)
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name, source=source, output_features=features,
            preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                           seqio.preprocessors.append_eos_after_trim],
            postprocess_fn=superni_postprocess,
            metric_fns=[metrics.superni_metrics])
        names.append(name)
  return names
