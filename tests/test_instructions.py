"""tasks/instructions.py: embedded Flan-style families, formats, exemplars, mixtures."""

import os

import gin
import pytest
import seqio

from t5x_lite.config import configurables
from t5x_lite.tasks import instructions as ins
from t5x_lite.tasks import vocab

_SPM = os.path.join(os.path.dirname(seqio.__file__),
                    "test_data/sentencepiece/sentencepiece.model")


@pytest.fixture(scope="module")
def registered():
  return ins.register_instruction_tasks(seqio.SentencePieceVocabulary(_SPM), prefix="t_ins")


ADD = {"fields": {"a": "12", "b": "30"}, "answer": "42",
       "rationale": "Adding 30 to 12 gives 42."}
ADD_EX = {"fields": {"a": "1", "b": "2"}, "answer": "3", "rationale": "Adding 2 to 1 gives 3."}


def test_format_example_exact():
  t = "What is {a} plus {b}?"
  assert ins.format_example(ADD, t, "zeroshot") == ("What is 12 plus 30?", "42")
  assert ins.format_example(ADD, t, "zeroshot_cot") == (
      "What is 12 plus 30?\nLet's think step by step.",
      "Adding 30 to 12 gives 42. So the answer is 42.")
  assert ins.format_example(ADD, t, "fewshot", [ADD_EX]) == (
      "Q: What is 1 plus 2?\nA: 3\n\nQ: What is 12 plus 30?\nA:", "42")
  assert ins.format_example(ADD, t, "fewshot_cot", [ADD_EX]) == (
      "Q: What is 1 plus 2?\nA: Adding 2 to 1 gives 3. So the answer is 3.\n\n"
      "Q: What is 12 plus 30?\nA:", "Adding 30 to 12 gives 42. So the answer is 42.")
  with pytest.raises(ValueError, match="unknown format 'oneshot'"):
    ins.format_example(ADD, t, "oneshot")


def test_generation_is_seeded_and_splits_disjoint():
  first = ins.generate_instances("addition", "test")[0]
  ins._all_instances.cache_clear()
  again = ins.generate_instances("addition", "test")[0]
  assert first == again
  # Pinned values: a change of seed or generator shows up here.
  assert first["fields"] == {"a": "86", "b": "82"} and first["answer"] == "168"
  for family in ins.FAMILIES:
    keys = {s: {tuple(sorted(i["fields"].items())) for i in ins.generate_instances(family, s)}
            for s in ins.SPLITS}
    assert [len(keys[s]) for s in ins.SPLITS] == [
        ins.FAMILIES[family].num_train, 100, 100], family
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_answers_and_cot_targets_are_correct():
  for inst in ins.generate_instances("subtraction", "validation"):
    a, b = int(inst["fields"]["a"]), int(inst["fields"]["b"])
    assert ins.cot_answer(inst) == f"Taking {b} away from {a} leaves {a - b}. So the answer is {a - b}."
  for inst in ins.generate_instances("sort_numbers", "test"):
    xs = sorted(int(x) for x in inst["fields"]["numbers"].split(", "))
    assert inst["answer"] == ", ".join(map(str, xs))
  for inst in ins.generate_instances("count_letter", "test"):
    assert inst["answer"] == str(inst["fields"]["word"].count(inst["fields"]["letter"]))
  for inst in ins.generate_instances("uppercase", "test"):
    assert inst["answer"] == inst["fields"]["word"].upper()


def test_templates_and_exemplars_never_the_example_itself():
  for family, fam in ins.FAMILIES.items():
    assert len(fam.templates) >= 3
    for split in ins.SPLITS:
      for ex in ins.build_examples(family, split, "fewshot"):
        blocks = ex["inputs"].split("\n\n")
        query = blocks[-1]
        shots = [b.split("\nA: ")[0] for b in blocks[:-1]]
        assert len(shots) == 3 and query.endswith("\nA:")
        assert query[:-len("\nA:")] not in shots, (family, split, ex["inputs"])
        assert len(set(shots)) == 3
  # Every phrasing is used: the addition templates start with distinct words.
  starts = {ex["inputs"].split()[0] for ex in ins.build_examples("addition", "train", "zeroshot")}
  assert {"What", "Add", "Compute"} <= starts and any(s.isdigit() for s in starts)
  # Test examples draw their exemplars from the train split (disjoint from test), by an RNG
  # seeded with (family, split, format): the same examples in every process, pinned here.
  train_answers = {inst["answer"] for inst in ins.generate_instances("copy", "train")}
  test = ins.build_examples("copy", "test", "fewshot")
  assert not train_answers & {ex["answer"] for ex in test}
  for ex in test:
    assert all(b.split("\nA: ")[1] in train_answers for b in ex["inputs"].split("\n\n")[:-1])
  assert test[0]["inputs"] == (
      "Q: Repeat after me: reli kuni gamuvoza korovi nigo boda kavoraba\n"
      "A: reli kuni gamuvoza korovi nigo boda kavoraba\n\n"
      "Q: Repeat after me: kirafi mamefu gekiveba kibo\nA: kirafi mamefu gekiveba kibo\n\n"
      "Q: Repeat after me: nupa roline gigovo tedemonu netusi nufapuru muga\n"
      "A: nupa roline gigovo tedemonu netusi nufapuru muga\n\n"
      "Q: Repeat after me: pegi fobora subi reze moli feli biso\nA:")
  assert ins.build_examples("addition", "train", "fewshot")[5]["inputs"] == (
      "Q: 28 + 61 = ?\nA: 89\n\nQ: 70 + 4 = ?\nA: 74\n\nQ: 93 + 83 = ?\nA: 176\n\n"
      "Q: 37 + 43 = ?\nA:")


def test_seqio_task_examples(registered):
  task = seqio.get_mixture_or_task("t_ins_addition_zeroshot_cot")
  ds = task.get_dataset(sequence_length=None, split="test", shuffle=False, num_epochs=1)
  got = list(ds.as_numpy_iterator())
  assert len(got) == 100
  expected = ins.build_examples("addition", "test", "zeroshot_cot")
  for ex, want in zip(got, expected):
    assert ex["inputs_pretokenized"].decode() == want["inputs"]
    assert ex["targets_pretokenized"].decode() == want["targets"]
    assert ex["inputs_pretokenized"].decode().endswith("\nLet's think step by step.")
  assert got[0]["targets_pretokenized"].decode() == (
      "Adding 82 to 86 gives 168. So the answer is 168.")
  vocab_ = seqio.SentencePieceVocabulary(_SPM)
  assert got[0]["targets"].tolist() == vocab_.encode(expected[0]["targets"]) + [1]
  assert task.num_input_examples("train") == 4000


def test_mixture_rates_are_capped_examples(registered):
  mix = seqio.get_mixture_or_task("t_ins_instructions_mixture")
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates == {ins.task_name(f, fmt, "t_ins"): float(min(ins.FAMILIES[f].num_train, 3000))
                   for f in ins.TRAIN_FAMILIES for fmt in ("zeroshot", "fewshot")}
  assert rates["t_ins_copy_zeroshot"] == 2000.0 and rates["t_ins_addition_fewshot"] == 3000.0
  gin.clear_config()
  try:  # the gin binding reaches the mixtures through the entry point's registration
    gin.bind_parameter("instructions.instruction_mixture_cap.cap", 2500)
    ins.register_instruction_tasks(vocab.default_vocabulary(), prefix="t_ins_cap",
                                   mixture_cap=configurables.instruction_mixture_cap())
  finally:
    gin.clear_config()
  capped = seqio.get_mixture_or_task("t_ins_cap_instructions_mixture")
  assert capped.get_rate(seqio.get_mixture_or_task("t_ins_cap_uppercase_zeroshot")) == 2500.0
  assert capped.get_rate(seqio.get_mixture_or_task("t_ins_cap_copy_fewshot")) == 2000.0
  cot = seqio.get_mixture_or_task("t_ins_instructions_cot_mixture")
  assert len(cot.tasks) == len(ins.TRAIN_FAMILIES) * 4
  heldout = seqio.get_mixture_or_task("t_ins_instructions_heldout_zeroshot")
  assert sorted(t.name for t in heldout.tasks) == [
      "t_ins_last_word_zeroshot", "t_ins_max_number_zeroshot", "t_ins_subtraction_zeroshot"]
  train_families = {t.name.split("_", 2)[2].rsplit("_", 1)[0] for t in cot.tasks}
  assert not train_families & set(ins.HELDOUT_FAMILIES)


def test_extract_answer():
  assert ins.extract_answer("The smallest is 1, then 3. So the answer is 1, 3.") == "1, 3"
  assert ins.extract_answer(b"  42 ") == "42"
  assert ins.extract_answer("So the answer is x. So the answer is y.", is_target=True) == "y"


def test_evaluator_perfect_and_wrong_case_models():
  """Through seqio.Evaluator on a default-registered CoT task; the default vocabulary
  round-trips capitals, so a perfect model scores 100 and one whose answers (after
  the CoT marker) are lower-cased fails strict exact match but passes SuperNI's
  normalised one."""
  evaluator = seqio.Evaluator(
      mixture_or_task_name="embedded_uppercase_zeroshot_cot",
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split="validation", sequence_length={"inputs": 64, "targets": 96})
  v = vocab.default_vocabulary()

  def perfect(ds):
    return [(i, ex["decoder_target_tokens"].tolist()) for i, ex in ds.as_numpy_iterator()]

  def lower(ds):
    out = []
    for i, ex in ds.as_numpy_iterator():
      rationale, answer = v.decode(ex["decoder_target_tokens"].tolist()).rsplit(
          ins.ANSWER_MARKER, 1)
      text = rationale + ins.ANSWER_MARKER + answer.lower()  # "So the answer is abc."
      out.append((i, (v.encode(text) + [0] * 96)[:96]))
    return out

  def run(fn):
    m, _ = evaluator.evaluate(compute_metrics=True, predict_fn=fn, score_fn=lambda ds: [])
    return {k: float(getattr(val, "value", val))
            for k, val in m.result()["embedded_uppercase_zeroshot_cot"].items()}

  assert run(perfect) == {"strict_exact_match": 100.0, "exact_match": 100.0}
  assert run(lower) == {"strict_exact_match": 0.0, "exact_match": 100.0}


def test_default_names_registered():
  names = seqio.TaskRegistry.names()
  for family in ins.FAMILIES:
    for fmt in ins.FORMATS:
      assert f"embedded_{family}_{fmt}" in names
  for mix in ("embedded_instructions_mixture", "embedded_instructions_cot_mixture",
              "embedded_instructions_heldout_zeroshot", "embedded_instructions_heldout_fewshot"):
    assert mix in seqio.MixtureRegistry.names()
  first = ins.register_instruction_tasks(vocab.default_vocabulary())
  assert ins.register_instruction_tasks(vocab.default_vocabulary()) == first  # idempotent
