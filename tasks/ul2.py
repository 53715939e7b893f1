"""UL2's mixture of denoisers (Tay et al. 2022, arXiv 2205.05131) as one seqio preprocessor.

The seven denoisers of the paper's final objective (section 3.1.2), each with its
paradigm token prepended to the inputs (mode switching, section 3.2), mean span length
mu and corruption rate r:

  R  [NLU]  span corruption  (mu=3, r=0.15), (mu=8, r=0.15)          rate 0.2 each
  X  [NLG]  span corruption  (mu=3, r=0.5), (mu=8, r=0.5),
                             (mu=64, r=0.15), (mu=64, r=0.5)         rate 0.1 each
  S  [S2S]  prefix LM: a chunk split at a uniformly random point     rate 0.2
            (inputs = prefix, targets = the rest)

Rates: the paper's ablation (section 4.5) finds a small share of S-denoising, about 20%,
works best, and it gives no per-denoiser table; the remaining 80% is split equally
between the R and X paradigms and equally among each paradigm's denoisers (the split
the public seqio re-implementations of the paper's appendix code use). `Denoiser.rate`
makes any other mixture one tuple away.

The pipeline follows the paper's appendix `ul2_objective`: T5's select_random_chunk and
reduce_concat_tokens, then T5's denoise (random spans, unique sentinels) or the prefix
split per chunk, the paradigm token prepended. Each chunk's denoiser is drawn
independently at the rates from the task's seqio seed, and the chunk is cut at that
denoiser's length from the concatenated documents, so each example follows the rates
exactly in distribution and every document token is used once.

Paradigm tokens are three sentinel ids, the last three extra ids of the vocabulary:
  [NLU] = <extra_id_{E-3}>, [NLG] = <extra_id_{E-2}>, [S2S] = <extra_id_{E-1}>
(<extra_id_97>, <extra_id_98>, <extra_id_99> for T5's E = 100 extra ids); span
corruption here may use only the other E - 3 sentinels (<extra_id_0> counting up).
Why not new vocabulary entries: the paper's code encodes the strings "[NLU]" etc. with
the ordinary SentencePiece model (several pieces, different for every vocabulary, and
"[", "]" are unknown to some), and real new pieces would change the vocabulary, the
embedding size and every other task's ids. A sentinel id is one token that no ordinary
text produces, shared by every task of the vocabulary; to switch modes in a fine-tuning
task, prepend `paradigm_token_text(...)` (seqio encodes "<extra_id_97>" to the id).

Deliberate differences from the paper's appendix code:
* One stream: the paper gives each denoiser its own copy or shard of the documents and
  mixes the denoised branches, which reads and tokenizes the source once per denoiser.
* Span-corruption chunks are sized for inputs length L - 1 (the paradigm token takes a
  position); the paper's sizes them for L, so its `append_eos_after_trim` cuts the last
  inputs token after the prompt is prepended.
* S chunks are min(L - 1, Lt) tokens, split into two non-empty parts (a 1-token chunk at
  the end of a group is dropped), with no second select_random_chunk (the paper calls
  T5's `prefix_lm`, which chunks the concatenated documents again).
* More noise spans than the free extra ids is an error (the paper's pipeline at L = 512
  gives the (mu=3, r=0.5) denoiser 128 spans and so uses 28 ordinary vocabulary ids as
  sentinels with T5's 100 extra ids). Here it needs 127 at L = 512: use a vocabulary
  with at least 130 extra ids (`register_ul2_task(...,
  vocabulary=vocab.default_vocabulary(130))`) or inputs of at most 392 tokens with 100.

Registered tasks (default vocabulary; inputs/targets with EOS):
  c4_ul2        TFDS c4/en:3.1.0 "text"
  embedded_ul2  the embedded corpus (tasks.corpora)
"""

import dataclasses
import functools
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from t5x_lite.tasks import corpora
from t5x_lite.tasks import pretraining

NLU, NLG, S2S = "[NLU]", "[NLG]", "[S2S]"
# Position of each paradigm token counted from the last extra id (1 = <extra_id_{E-1}>).
_FROM_LAST_EXTRA_ID = {NLU: 3, NLG: 2, S2S: 1}
NUM_PARADIGM_TOKENS = len(_FROM_LAST_EXTRA_ID)


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """One denoiser of the mixture.

  Attributes:
    paradigm: its paradigm token, NLU (R), NLG (X) or S2S (S, the prefix LM).
    rate: its share of the examples (rates are normalised over the mixture).
    mean_noise_span_length: mu, for span corruption (unused by S2S).
    noise_density: r, the corruption rate, for span corruption (unused by S2S).
  """
  paradigm: str
  rate: float
  mean_noise_span_length: float = 0.0
  noise_density: float = 0.0

  @property
  def is_prefix_lm(self) -> bool:
    return self.paradigm == S2S

  def __str__(self) -> str:
    if self.is_prefix_lm:
      return f"{self.paradigm} prefix LM"
    return f"{self.paradigm} (mean span {self.mean_noise_span_length:g}, density " \
           f"{self.noise_density:g})"


UL2_DENOISERS = (
    Denoiser(NLU, 0.2, 3.0, 0.15),
    Denoiser(NLU, 0.2, 8.0, 0.15),
    Denoiser(NLG, 0.1, 3.0, 0.5),
    Denoiser(NLG, 0.1, 8.0, 0.5),
    Denoiser(NLG, 0.1, 64.0, 0.15),
    Denoiser(NLG, 0.1, 64.0, 0.5),
    Denoiser(S2S, 0.2),
)


def paradigm_token_id(vocabulary: seqio.Vocabulary, paradigm: str) -> int:
  """The id of a paradigm token: one of the vocabulary's last three extra ids."""
  if vocabulary.extra_ids < NUM_PARADIGM_TOKENS:
    raise ValueError(f"UL2 paradigm tokens need at least {NUM_PARADIGM_TOKENS} extra ids; "
                     f"the vocabulary has {vocabulary.extra_ids}")
  return vocabulary.vocab_size - vocabulary.extra_ids - 1 + _FROM_LAST_EXTRA_ID[paradigm]


def paradigm_token_text(vocabulary: seqio.Vocabulary, paradigm: str) -> str:
  """The paradigm token as text ("<extra_id_97>" for [NLU] with 100 extra ids)."""
  return f"<extra_id_{vocabulary.extra_ids - _FROM_LAST_EXTRA_ID[paradigm]}>"


def chunk_lengths(denoiser: Denoiser, sequence_length: Mapping[str, int]):
  """(chunk tokens, targets tokens with EOS) of a denoiser at the given feature lengths.

  The paradigm token takes one inputs position, so span-corruption chunks are sized for
  inputs of L - 1 tokens; S chunks are min(L - 1, Lt) tokens.
  """
  inputs_length = sequence_length["inputs"] - 1
  if denoiser.is_prefix_lm:
    chunk = min(inputs_length, sequence_length["targets"])
    return chunk, chunk  # the targets hold at most chunk - 1 tokens, + EOS
  return pretraining.random_spans_helper(inputs_length, denoiser.noise_density,
                                         denoiser.mean_noise_span_length)


def _check_fits(denoisers: Sequence[Denoiser], sequence_length: Mapping[str, int],
                vocabulary: seqio.Vocabulary) -> None:
  for denoiser in denoisers:
    if denoiser.is_prefix_lm:
      continue
    tokens, targets = chunk_lengths(denoiser, sequence_length)
    if targets > sequence_length["targets"]:
      raise ValueError(
          f"UL2 denoiser {denoiser} makes targets of {targets} tokens at inputs length "
          f"{sequence_length['inputs']}, but TASK_FEATURE_LENGTHS['targets'] is "
          f"{sequence_length['targets']}: set it to at least {targets} (UL2 uses equal "
          "inputs and targets lengths, e.g. 512/512)")
    spans = pretraining.noise_counts(tokens, denoiser.noise_density,
                                     denoiser.mean_noise_span_length)[1]
    pretraining.check_sentinel_budget(spans, vocabulary, reserved=NUM_PARADIGM_TOKENS,
                                      what=f"UL2 denoiser {denoiser}")


def prepend_paradigm_token(dataset: tf.data.Dataset,
                           output_features: Mapping[str, seqio.Feature],
                           paradigm: str) -> tf.data.Dataset:
  """seqio preprocessor (after tokenization): the paradigm token before the inputs.

  For fine-tuning with UL2's mode switching, e.g.
  `functools.partial(ul2.prepend_paradigm_token, paradigm=ul2.NLU)`.
  """
  token = tf.constant([paradigm_token_id(output_features["inputs"].vocabulary, paradigm)])

  def _prepend(x):
    return dict(x, inputs=tf.concat([token, x["inputs"]], 0))

  return dataset.map(_prepend, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset(num_seeds=1)
def _cut_chunks(features, seed, lengths, logits):
  """A group of documents -> consecutive chunks, each for a denoiser drawn at the rates."""
  tokens = features["targets"]
  n_tokens = tf.size(tokens)
  # Enough draws to cover the group even if every chunk were the shortest.
  num_draws = n_tokens // tf.reduce_min(lengths) + 1
  choices = tf.random.stateless_categorical(logits, num_draws, seed, dtype=tf.int32)[0]
  ends = tf.cumsum(tf.gather(lengths, choices))
  num_chunks = tf.reduce_sum(tf.cast(ends - tf.gather(lengths, choices) < n_tokens, tf.int32))
  ends = tf.minimum(ends[:num_chunks], n_tokens)
  chunks = tf.RaggedTensor.from_row_limits(tokens, ends)
  return {"targets": chunks.to_tensor(), "length": chunks.row_lengths(),
          "denoiser": choices[:num_chunks]}


def _unpad(x):
  return {"targets": x["targets"][:x["length"]], "denoiser": x["denoiser"]}


def _denoise_fn(denoiser: Denoiser, tokens, seeds, vocabulary):
  """A branch of the switch: (inputs, targets) of one chunk for one denoiser.

  Its ops are built inside the branch so that only the chosen denoiser runs (a 1-token
  chunk has no prefix split).
  """

  def prefix_lm():
    split = tf.random.stateless_uniform([], seeds[0], minval=1, maxval=tf.size(tokens),
                                        dtype=tf.int32)
    return tokens[:split], tokens[split:]

  def span_corruption():
    mask = pretraining.random_spans_noise_mask(tf.size(tokens), denoiser.noise_density,
                                               seeds[:2], denoiser.mean_noise_span_length)
    return (pretraining.noise_span_to_unique_sentinel(tokens, mask, vocabulary),
            pretraining.nonnoise_span_to_unique_sentinel(tokens, mask, vocabulary))

  return prefix_lm if denoiser.is_prefix_lm else span_corruption


@seqio.map_over_dataset(num_seeds=1)
def _apply_denoiser(features, seed, denoisers, vocabulary):
  # Split as T5's denoise does: seeds[:2] for the mask (seeds[0] for the prefix split).
  seeds = tf.random.experimental.stateless_split(seed, 6)
  tokens, index = features["targets"], features["denoiser"]
  inputs, targets = tf.switch_case(
      index, [_denoise_fn(d, tokens, seeds, vocabulary) for d in denoisers])
  token_ids = tf.constant([paradigm_token_id(vocabulary, d.paradigm) for d in denoisers])
  return {"inputs": tf.concat([token_ids[index][None], inputs], 0), "targets": targets,
          "denoiser": index}


def denoised_examples(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                      vocabulary: seqio.Vocabulary,
                      denoisers: Sequence[Denoiser] = UL2_DENOISERS,
                      merge_examples_to_reduce_padding: bool = True) -> tf.data.Dataset:
  """`ul2_objective`'s examples plus "denoiser": the index in `denoisers` of each."""
  _check_fits(denoisers, sequence_length, vocabulary)
  groups = pretraining.select_random_chunk(dataset)
  if merge_examples_to_reduce_padding:
    groups = pretraining.reduce_concat_tokens(groups, "targets")
  lengths = tf.constant([chunk_lengths(d, sequence_length)[0] for d in denoisers])
  total = sum(d.rate for d in denoisers)
  logits = tf.math.log([[d.rate / total for d in denoisers]])
  chunks = _cut_chunks(groups, lengths=lengths, logits=logits).unbatch().map(
      _unpad, num_parallel_calls=tf.data.AUTOTUNE)
  prefix_lm = tf.constant([d.is_prefix_lm for d in denoisers])
  # A 1-token chunk (a group's last) has no prefix/rest split.
  chunks = chunks.filter(
      lambda x: tf.logical_or(tf.size(x["targets"]) >= 2,
                              tf.logical_not(prefix_lm[x["denoiser"]])))
  return _apply_denoiser(chunks, denoisers=tuple(denoisers), vocabulary=vocabulary)


def ul2_objective(dataset: tf.data.Dataset,
                  sequence_length: Mapping[str, int],
                  output_features: Mapping[str, seqio.Feature],
                  denoisers: Sequence[Denoiser] = UL2_DENOISERS,
                  merge_examples_to_reduce_padding: bool = True) -> tf.data.Dataset:
  """UL2's mixture of denoisers; a seqio post-cache preprocessor.

  Args:
    dataset: examples with "targets": [n] int32 tokens (a whole document).
    sequence_length: {"inputs": L, "targets": Lt}; UL2 uses L == Lt (512/512).
    output_features: "targets" supplies the vocabulary (sentinels, paradigm tokens).
    denoisers: the mixture (default: the paper's seven, `UL2_DENOISERS`).
    merge_examples_to_reduce_padding: concatenate 128 documents before chunking.

  Returns:
    {"inputs": [<= L - 1] int32 starting with the paradigm token,
     "targets": [<= Lt - 1] int32}, no EOS yet.

  Raises:
    ValueError: Lt is too short for a denoiser's targets, or its spans outnumber the
      free extra ids.
  """
  examples = denoised_examples(dataset, sequence_length,
                               output_features["targets"].vocabulary, denoisers,
                               merge_examples_to_reduce_padding)
  return examples.map(lambda x: {"inputs": x["inputs"], "targets": x["targets"]},
                      num_parallel_calls=tf.data.AUTOTUNE)


def register_ul2_task(name: str, source: seqio.DataSource,
                      vocabulary: Optional[seqio.Vocabulary] = None,
                      denoisers: Sequence[Denoiser] = UL2_DENOISERS) -> seqio.Task:
  """Registers (replacing any previous one) a UL2 task over a {"text"} source."""
  objective = functools.partial(ul2_objective, denoisers=tuple(denoisers))
  return pretraining.register_text_task(name, source, objective, vocabulary)


def register_tasks(vocabulary: Optional[seqio.Vocabulary] = None) -> None:
  """Registers c4_ul2 and embedded_ul2."""
  register_ul2_task("c4_ul2", pretraining.c4_source(), vocabulary)
  register_ul2_task("embedded_ul2", corpora.embedded_source(), vocabulary)
