"""Flan-style instruction tuning on embedded, generated task families.

Every family is generated from a fixed seed (no files, no network), is checkable by
exact match, and carries a rationale for chain of thought (CoT). Each family has
three or more instruction phrasings (templates); each example gets one, picked by a
seeded RNG, and is rendered in four formats (Flan's zero/few-shot x with/without CoT):

  zeroshot      inputs  "What is 12 plus 30?"
                targets "42"
  zeroshot_cot  inputs  "What is 12 plus 30?\nLet's think step by step."
                targets "Adding 30 to 12 gives 42. So the answer is 42."
  fewshot       inputs  "Q: What is 1 plus 2?\nA: 3\n\n" (x k) "Q: What is 12 plus 30?\nA:"
                targets "42"
  fewshot_cot   as fewshot, each exemplar's answer and the target being CoT answers.

Few-shot exemplars (k=3) are drawn by a seeded RNG from the family's *train* split,
rendered with the example's own template; for a train example its own index is
excluded, and the splits hold disjoint instances, so a prompt never shows its
own answer.

Evaluation: `extract_answer` (the postprocess_fn) keeps the text after the last
"So the answer is " (minus its final "."), so CoT and direct answers are scored the
same way, by `metrics.strict_exact_match` (case and punctuation matter here: an
"uppercase" answer of "hello" is wrong) and SuperNI's normalised `metrics.exact_match`.

Registered:
  embedded_{family}_{format}                 splits train / validation / test
  embedded_instructions_mixture              train families, zeroshot + fewshot
  embedded_instructions_cot_mixture          train families, all four formats
  embedded_instructions_heldout_zeroshot     held-out families, zeroshot (evaluation)
  embedded_instructions_heldout_fewshot      held-out families, fewshot (evaluation)
Mixture rates are examples-proportional with a cap: rate = min(num train examples,
`instruction_mixture_cap()`), as in T5/Flan. Held-out families (HELDOUT_FAMILIES)
are never in a training mixture, which is what makes their evaluation zero-shot
at the task level.
"""

import dataclasses
import functools
import random
import string
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from t5x_lite.data.text import as_text
from t5x_lite.tasks import metrics
from t5x_lite.tasks import vocab

SEED = 20240611
NUM_EVAL_EXAMPLES = 100  # per family, for each of validation and test
NUM_FEWSHOT_EXEMPLARS = 3
FORMATS = ("zeroshot", "fewshot", "zeroshot_cot", "fewshot_cot")
COT_TRIGGER = "Let's think step by step."
ANSWER_MARKER = "So the answer is "

Instance = Dict[str, Any]  # {"fields": {template field: str}, "answer": str, "rationale": str}


# ---------------------------------------------------------------- generators

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _pseudo_word(rng: random.Random) -> str:
  """A pronounceable lower-case non-word (2-4 CV syllables): tokenises into few pieces
  but cannot be answered from memorised English."""
  return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS)
                 for _ in range(rng.randint(2, 4)))


def _letters(word: str) -> str:
  return ", ".join(word)


def _gen_addition(rng):
  a, b = rng.randint(0, 99), rng.randint(0, 99)
  return {"a": a, "b": b}, str(a + b), f"Adding {b} to {a} gives {a + b}."


def _gen_subtraction(rng):
  a = rng.randint(0, 99)
  b = rng.randint(0, a)
  return {"a": a, "b": b}, str(a - b), f"Taking {b} away from {a} leaves {a - b}."


def _gen_reverse_word(rng):
  w = _pseudo_word(rng)
  return ({"word": w}, w[::-1],
          f"The letters of {w} are {_letters(w)}. From last to first they are "
          f"{_letters(w[::-1])}.")


def _gen_uppercase(rng):
  w = _pseudo_word(rng)
  return {"word": w}, w.upper(), f"The letters {_letters(w)} in capitals are {_letters(w.upper())}."


def _gen_count_letter(rng):
  w = _pseudo_word(rng)
  # Mostly a letter of the word, sometimes any letter, so that 0 is a possible answer.
  letter = rng.choice(w) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)
  n = w.count(letter)
  return ({"word": w, "letter": letter}, str(n),
          f"The letters of {w} are {_letters(w)}. The letter {letter} appears {n} "
          f"time{'' if n == 1 else 's'}.")


def _number_list(rng):
  return [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]


def _gen_sort_numbers(rng):
  xs = _number_list(rng)
  s = sorted(xs)
  return ({"numbers": ", ".join(map(str, xs))}, ", ".join(map(str, s)),
          f"The smallest is {s[0]}" + "".join(f", then {x}" for x in s[1:]) + ".")


def _gen_sort_words(rng):
  ws, n = [], rng.randint(3, 5)
  while len(ws) < n:
    w = _pseudo_word(rng)
    if w not in ws:
      ws.append(w)
  s = sorted(ws)
  return ({"words": ", ".join(ws)}, ", ".join(s),
          f"In alphabetical order {s[0]} comes first" + "".join(f", then {w}" for w in s[1:]) + ".")


def _sentence(rng):
  return " ".join(_pseudo_word(rng) for _ in range(rng.randint(3, 7)))


def _gen_copy(rng):
  t = _sentence(rng)
  return {"text": t}, t, f"The text to repeat is {t}."


def _gen_last_word(rng):
  t = _sentence(rng)
  words = t.split()
  return ({"text": t}, words[-1],
          f"The words are {', '.join(words)}. The last one is {words[-1]}.")


def _gen_max_number(rng):
  xs = _number_list(rng)
  return ({"numbers": ", ".join(map(str, xs))}, str(max(xs)),
          f"Comparing {', '.join(map(str, xs))}, the largest is {max(xs)}.")


@dataclasses.dataclass(frozen=True)
class Family:
  """An instruction task family: a seeded generator, its phrasings, its train size."""
  name: str
  generate: Callable[[random.Random], Tuple[Dict[str, Any], str, str]]
  templates: Tuple[str, ...]
  num_train: int


FAMILIES: Dict[str, Family] = {f.name: f for f in [
    Family("addition", _gen_addition, (
        "What is {a} plus {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}.",
        "{a} + {b} = ?"), 4000),
    Family("reverse_word", _gen_reverse_word, (
        'Reverse the word "{word}".', 'Write "{word}" backwards.',
        'What is "{word}" spelled in reverse?'), 4000),
    Family("uppercase", _gen_uppercase, (
        'Write "{word}" in capital letters.', 'Convert "{word}" to uppercase.',
        "Uppercase this word: {word}"), 3000),
    Family("count_letter", _gen_count_letter, (
        'How many times does the letter "{letter}" appear in "{word}"?',
        'Count the letter "{letter}" in the word "{word}".',
        'In "{word}", how often does "{letter}" occur?'), 4000),
    Family("sort_numbers", _gen_sort_numbers, (
        "Sort these numbers from smallest to largest: {numbers}",
        "Put in ascending order: {numbers}", "Arrange {numbers} in increasing order."), 4000),
    Family("sort_words", _gen_sort_words, (
        "Sort these words alphabetically: {words}", "Put in alphabetical order: {words}",
        "Arrange the words {words} from A to Z."), 3000),
    Family("copy", _gen_copy, (
        "Repeat after me: {text}", "Copy this text exactly: {text}",
        'Say "{text}" back to me.'), 2000),
    # Held out of every training mixture (see HELDOUT_FAMILIES).
    Family("subtraction", _gen_subtraction, (
        "What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}."), 2000),
    Family("last_word", _gen_last_word, (
        'What is the last word of "{text}"?', 'Which word ends the sentence "{text}"?',
        "Give the final word in: {text}"), 2000),
    Family("max_number", _gen_max_number, (
        "What is the largest number in {numbers}?", "Which is the biggest of {numbers}?",
        "Find the maximum of {numbers}."), 2000),
]}
HELDOUT_FAMILIES = ("subtraction", "last_word", "max_number")
TRAIN_FAMILIES = tuple(n for n in FAMILIES if n not in HELDOUT_FAMILIES)
SPLITS = ("train", "validation", "test")


def num_examples(family: str, split: str) -> int:
  return FAMILIES[family].num_train if split == "train" else NUM_EVAL_EXAMPLES


@functools.lru_cache(maxsize=None)
def _all_instances(family: str) -> Tuple[Instance, ...]:
  """train + validation + test instances of a family, all distinct, in split order.

  Drawing until enough *distinct* field sets exist makes the splits disjoint, so no
  evaluation example is also a training example or an exemplar.
  """
  fam = FAMILIES[family]
  rng = random.Random(f"{SEED}:{family}")  # str seeds hash with SHA-512: stable across runs
  total = fam.num_train + 2 * NUM_EVAL_EXAMPLES
  seen, out = set(), []
  while len(out) < total:
    fields, answer, rationale = fam.generate(rng)
    key = tuple(sorted(fields.items()))
    if key in seen:
      continue
    seen.add(key)
    out.append({"fields": {k: str(v) for k, v in fields.items()}, "answer": answer,
                "rationale": rationale})
  return tuple(out)


def generate_instances(family: str, split: str) -> Tuple[Instance, ...]:
  """The seeded instances of one family's split (cached; do not mutate)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  n_train = FAMILIES[family].num_train
  start = {"train": 0, "validation": n_train, "test": n_train + NUM_EVAL_EXAMPLES}[split]
  return _all_instances(family)[start:start + num_examples(family, split)]


# ---------------------------------------------------------------- formats


def cot_answer(instance: Instance) -> str:
  """Chain-of-thought target: "<rationale> So the answer is <answer>."."""
  return f"{instance['rationale']} {ANSWER_MARKER}{instance['answer']}."


def format_example(instance: Instance, template: str, fmt: str,
                   exemplars: Sequence[Instance] = ()) -> Tuple[str, str]:
  """(inputs, targets) of one instance in one format (see the module docstring)."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  cot = fmt.endswith("_cot")
  answer = cot_answer if cot else (lambda inst: inst["answer"])
  question = template.format(**instance["fields"])
  if fmt.startswith("zeroshot"):
    return (f"{question}\n{COT_TRIGGER}" if cot else question), answer(instance)
  shots = "".join(f"Q: {template.format(**ex['fields'])}\nA: {answer(ex)}\n\n"
                  for ex in exemplars)
  return f"{shots}Q: {question}\nA:", answer(instance)


def build_examples(family: str, split: str, fmt: str,
                   k: int = NUM_FEWSHOT_EXEMPLARS) -> List[Dict[str, str]]:
  """All examples of one family/split/format, deterministic.

  The template and (for few-shot) the k train-split exemplars of each example come
  from an RNG seeded by (family, split, format). For a train example its own index
  is excluded from the draw.
  """
  fam = FAMILIES[family]
  instances = generate_instances(family, split)
  pool = generate_instances(family, "train")
  rng = random.Random(f"{SEED}:{family}:{split}:{fmt}")
  out = []
  for i, inst in enumerate(instances):
    template = fam.templates[rng.randrange(len(fam.templates))]
    exemplars = []
    if fmt.startswith("fewshot"):
      if split == "train":
        # Sample from the n-1 other indices: shift indices >= i up by one.
        idx = [j + (j >= i) for j in rng.sample(range(len(pool) - 1), k)]
      else:
        idx = rng.sample(range(len(pool)), k)
      exemplars = [pool[j] for j in idx]
    inputs, targets = format_example(inst, template, fmt, exemplars)
    out.append({"inputs": inputs, "targets": targets, "answer": inst["answer"],
                "family": family, "format": fmt})
  return out


def _dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None, *,
                family: str, fmt: str) -> tf.data.Dataset:
  # One in-memory "file": shuffling belongs to seqio's example-level shuffle.
  del shuffle_files, seed
  examples = build_examples(family, split, fmt)
  columns = {k: [ex[k] for ex in examples] for k in examples[0]}
  return tf.data.Dataset.from_tensor_slices(columns)


def extract_answer(text: Any, example: Optional[Mapping[str, Any]] = None,
                   is_target: bool = False) -> str:
  """postprocess_fn: the text after the last "So the answer is ", final "." removed.

  Applied to predictions and targets alike, so CoT and direct formats are scored on
  the bare answer. Text without the marker is returned stripped.
  """
  del example, is_target
  text = as_text(text).strip()
  if ANSWER_MARKER in text:
    text = text.rsplit(ANSWER_MARKER, 1)[1].strip()
    if text.endswith("."):
      text = text[:-1].rstrip()
  return text


DEFAULT_MIXTURE_CAP = 3000


def instruction_mixture_cap(cap: int = DEFAULT_MIXTURE_CAP) -> int:
  """Examples-proportional mixing cap (the gin configurable `instruction_mixture_cap`).

  A task's rate in the instruction mixtures is min(num train examples, cap). T5 used 2**19
  on full datasets; the embedded families hold 2000-4000 examples each.
  """
  return cap


def task_name(family: str, fmt: str, prefix: str = "embedded") -> str:
  return f"{prefix}_{family}_{fmt}"


def register_instruction_tasks(vocabulary: seqio.Vocabulary, prefix: str = "embedded",
                               mixture_cap: int = DEFAULT_MIXTURE_CAP) -> Dict[str, List[str]]:
  """Registers every family x format task and the mixtures (idempotent).

  Args:
    vocabulary: vocabulary of "inputs" and "targets".
    prefix: prefix of task and mixture names.
    mixture_cap: examples-proportional mixing cap of the mixtures.

  Returns:
    {"tasks": [...], "mixtures": [...]} of registered names.
  """
  features = {k: seqio.Feature(vocabulary=vocabulary, add_eos=True)
              for k in ("inputs", "targets")}
  tasks = []
  for family in FAMILIES:
    for fmt in FORMATS:
      name = task_name(family, fmt, prefix)
      source = seqio.FunctionDataSource(
          functools.partial(_dataset_fn, family=family, fmt=fmt), splits=SPLITS,
          num_input_examples={s: num_examples(family, s) for s in SPLITS})
      seqio.TaskRegistry.remove(name)
      seqio.TaskRegistry.add(
          name, source=source, output_features=features,
          preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                         seqio.preprocessors.append_eos_after_trim],
          postprocess_fn=extract_answer,
          metric_fns=[metrics.strict_exact_match, metrics.exact_match])
      tasks.append(name)
  mixtures = {
      f"{prefix}_instructions_mixture": (TRAIN_FAMILIES, ("zeroshot", "fewshot")),
      f"{prefix}_instructions_cot_mixture": (TRAIN_FAMILIES, FORMATS),
      f"{prefix}_instructions_heldout_zeroshot": (HELDOUT_FAMILIES, ("zeroshot",)),
      f"{prefix}_instructions_heldout_fewshot": (HELDOUT_FAMILIES, ("fewshot",)),
  }
  for name, (families, fmts) in mixtures.items():
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(
        name, [task_name(f, fmt, prefix) for f in families for fmt in fmts],
        default_rate=functools.partial(seqio.mixing_rate_num_examples, maximum=mixture_cap))
  return {"tasks": tasks, "mixtures": list(mixtures)}
