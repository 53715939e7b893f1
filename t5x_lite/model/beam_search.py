"""Beam search over a step callback, by t5x's rules or by HF transformers' rules.

A pure loop (one `lax.while_loop`, stopping as soon as no batch element can improve) over
`tokens_to_logits(tokens [N, 1], cache) -> (logits [N, vocab], new_cache)` and a
`gather_cache(cache, beams [B, K]) -> cache` that reorders the beams of each input; it knows
nothing about the model (t5x_lite.model.decoding is the model glue). Scores are model
log-probabilities (raw logits) summed up to and including EOS, divided by the length penalty
(the quantity the beams are ranked by); a decoder prompt is forced token by token as t5x forces
its `inputs`.

Beam search runs one of two algorithms, picked by `length_penalty` (one setting: each
algorithm comes with its own length normalisation, as in its library):
  - "t5x" (default): t5x's `decoding.beam_search`. Each step takes the 2*num_beams best
    expansions; every one of them that ends in EOS competes for the num_beams "finished" slots
    (even when it ranks below num_beams), the best num_beams that do not end go on. Finished
    scores are sum_logprob / ((5 + length) / 6) ** alpha (t5x's `brevity_penalty`). A sequence
    reaching max_decode_length without EOS is not finished; the search stops when no live beam,
    normalised at max_decode_length + 1, can beat the worst finished one. As in t5x, slots
    no finished sequence filled hold unfinished candidates scored about -1e7 (t5x's NEG_INF),
    and a batch element with no finished sequence at all returns its live beams with their
    raw summed log-probabilities.
    Checked against sequences and scores of t5x's own code (tests/fixtures/t5x_decoding).
  - "hf": HF transformers' algorithm (the vectorised `_beam_search` of transformers 5): of the
    2*num_beams best expansions only those among the top num_beams that end (EOS or max
    length) compete for the finished slots; `early_stopping` (False / True / "never") decides
    when a batch element can no longer improve; scores are sum_logprob / length ** alpha (HF's
    `length_penalty=alpha`). With early_stopping as passed to HF it reproduces
    `generate(num_beams=...)` exactly.
Both return the beams best first (t5x returns them worst first).
"""

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp

# HF's "very negative" constant; beam search arithmetic must match HF's, down to this value.
NEG_INF = -1.0e9
# t5x's (decoding.NEG_INF); its beam search's float32 values depend on it.
T5X_NEG_INF = -1.0e7
LENGTH_PENALTIES = ("t5x", "hf")

Cache = Any
TokensToLogits = Callable[[jax.Array, Cache], tuple[jax.Array, Cache]]


def length_penalty_fn(style: str, alpha: float):
  """length (float32 array) -> divisor of a finished beam's summed log-probability."""
  if style == "t5x":
    return lambda length: ((5.0 + length) / 6.0) ** alpha
  if style == "hf":
    return lambda length: length ** alpha
  raise ValueError(f"length_penalty={style!r}; choose one of {LENGTH_PENALTIES}.")


def gather_beams(x, indices):
  """x: [batch, beams_in, ...], indices: int [batch, beams_out] -> [batch, beams_out, ...]."""
  return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(tokens_to_logits: TokensToLogits, cache: Cache,
                gather_cache: Callable[[Cache, jax.Array], Cache], batch_size: int,
                num_beams: int, *, max_decode_length: int, eos_id: int = 1, alpha: float = 0.6,
                length_penalty: str = "t5x", early_stopping: Union[bool, str] = "never",
                prompt: Optional[jax.Array] = None):
  """Beam search: t5x's algorithm (length_penalty="t5x") or HF's ("hf").

  Args:
    tokens_to_logits: (tokens [B*K, 1], cache) -> (logits [B*K, vocab], cache), rows ordered
      batch-major (row b*K + k is beam k of batch element b).
    cache: decoding state for B*K rows, each batch element's row repeated K times.
    gather_cache: (cache, beams int32 [B, K]) -> cache whose row b*K + j is the old row
      b*K + beams[b, j] (reorders the beams of each batch element; given per element, not as
      global row numbers, so a reorder never reads another element's rows, which on a
      batch-sharded mesh would gather the whole batch's cache on every chip).
    batch_size, num_beams: B and K.
    max_decode_length: at most this many generated tokens.
    eos_id: end of sequence.
    alpha: length penalty exponent (0: plain summed log-probabilities).
    length_penalty: the algorithm, with its length normalisation (module docstring):
      "t5x": t5x's `decoding.beam_search`, scores / ((5 + len) / 6) ** alpha;
      "hf": HF transformers' `generate(num_beams=...)`, scores / len ** alpha.
    early_stopping: "hf" only, as HF: True stops a batch element when num_beams beams are
      finished; False stops when the best running beam, normalised at its current length,
      cannot beat the worst finished one; "never" normalises it at max_decode_length (for
      alpha > 0). "t5x" has one rule (the "never" one), so it takes only "never".
    prompt: "t5x" only: optional int32 [B, max_decode_length], tokens forced at the start of
      each sequence, 0 after them (t5x's prefix forcing: one beam follows the prompt with
      log-probability 0, the brevity penalty counts its tokens).

  Returns:
    tokens: int32 [B, K, max_decode_length], best first, 0 after EOS.
    scores: float32 [B, K], summed log-probability / length penalty (see the module
      docstring for t5x's rows that did not finish).
  """
  if early_stopping not in (True, False, "never"):
    raise ValueError(f"early_stopping={early_stopping!r}; use True, False or 'never'.")
  kwargs = dict(max_decode_length=max_decode_length, eos_id=eos_id, alpha=alpha)
  if length_penalty == "t5x":
    if early_stopping != "never":
      raise ValueError(f"early_stopping={early_stopping!r} is HF's setting: t5x's beam search "
                       "(length_penalty='t5x') stops by its own rule; pass "
                       "early_stopping='never' or length_penalty='hf'.")
    return _beam_search_t5x(tokens_to_logits, cache, gather_cache, batch_size, num_beams,
                            prompt=prompt, **kwargs)
  if prompt is not None and length_penalty == "hf":
    raise ValueError("A decoder prompt is t5x's prefix forcing: use length_penalty='t5x' (HF's "
                     "beam search treats prompts differently; it is not ported).")
  if length_penalty == "hf":
    return _beam_search_hf(tokens_to_logits, cache, gather_cache, batch_size, num_beams,
                           early_stopping=early_stopping, **kwargs)
  raise ValueError(f"length_penalty={length_penalty!r}; choose one of {LENGTH_PENALTIES}.")


def _beam_search_t5x(tokens_to_logits, cache, gather_cache, b, k, *, max_decode_length, eos_id,
                     alpha, prompt=None):
  """t5x's `decoding.beam_search` (prompt as its `inputs` without initial_index;
  min_log_prob and max_decode_step at their defaults).

  Same arithmetic and order as t5x, so ties and float32 values come out as t5x's: beams are
  kept worst first (t5x's flipped top_k) and only the outputs are flipped to best first.
  """
  length = max_decode_length
  k2 = 2 * k
  penalty = length_penalty_fn("t5x", alpha)
  # t5x's stop test normalises the best live beam at max_decode_len + 1 (its buffers hold
  # a leading start token), and gives up on beams below min_log_prob = NEG_INF.
  stop_penalty = penalty(jnp.float32(length + 1))

  def cond(state):
    i, live_scores, _, fin_scores, _, fin_flags, _ = state
    best_live = live_scores[:, -1:] / stop_penalty
    worst_fin = jnp.where(fin_flags, jnp.min(fin_scores, axis=1, keepdims=True), T5X_NEG_INF)
    terminated = jnp.all(worst_fin > best_live)
    hopeless = jnp.all(best_live < T5X_NEG_INF / stop_penalty) & (i > 0)
    return (i < length) & ~terminated & ~hopeless

  def body(state):
    i, live_scores, live_seqs, fin_scores, fin_seqs, fin_flags, cache = state
    last = jax.lax.dynamic_index_in_dim(live_seqs, i - 1, axis=2, keepdims=False)
    last = jnp.where(i == 0, 0, last)  # decoding starts from token 0
    logits, cache = tokens_to_logits(last.reshape(b * k, 1), cache)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, vocab)
    log_probs = (log_probs + live_scores[:, :, None]).reshape(b, k * vocab)
    # Top 2K expansions: even if K of them end in EOS, K remain to go on.
    cand_scores, cand_index = jax.lax.top_k(log_probs, k2)  # [B, 2K]
    cand_beam, cand_token = cand_index // vocab, (cand_index % vocab).astype(jnp.int32)
    if prompt is not None:  # in the prompt: its token, score 0 for one candidate, dead others
      forced = jax.lax.dynamic_index_in_dim(prompt, i, axis=1)  # [B, 1]
      free = forced == 0
      inside = jnp.where(jnp.arange(k2) == 0, 0.0, T5X_NEG_INF)[None, :]
      cand_scores = cand_scores * free + inside * ~free
      cand_token = cand_token * free + forced * ~free
    cand_seqs = gather_beams(live_seqs, cand_beam)
    cand_seqs = jax.lax.dynamic_update_slice_in_dim(cand_seqs, cand_token[:, :, None], i, axis=2)
    ended = cand_token == eos_id  # max length ends nothing in t5x: those stay live

    # Live set: the K best of the 2K that did not end, worst first.
    alive_scores = cand_scores + ended * T5X_NEG_INF
    alive = jnp.flip(jax.lax.top_k(alive_scores, k)[1], axis=1)
    live_seqs, live_scores = gather_beams(cand_seqs, alive), gather_beams(alive_scores, alive)
    cache = gather_cache(cache, gather_beams(cand_beam, alive).astype(jnp.int32))

    # Finished set: every one of the 2K that ended competes (HF lets only the top K in).
    new_fin = cand_scores / penalty(i + 1) + (~ended) * T5X_NEG_INF
    all_scores = jnp.concatenate([fin_scores, new_fin], axis=1)  # [B, 3K]
    best = jnp.flip(jax.lax.top_k(all_scores, k)[1], axis=1)
    fin_seqs = gather_beams(jnp.concatenate([fin_seqs, cand_seqs], axis=1), best)
    fin_flags = gather_beams(jnp.concatenate([fin_flags, ended], axis=1), best)
    fin_scores = gather_beams(all_scores, best)
    return i + 1, live_scores, live_seqs, fin_scores, fin_seqs, fin_flags, cache

  live_scores = jnp.tile(jnp.array([0.0] + [T5X_NEG_INF] * (k - 1), jnp.float32), (b, 1))
  zeros = jnp.zeros((b, k, length), jnp.int32)
  state = (jnp.array(0, jnp.int32), live_scores, zeros, jnp.full((b, k), T5X_NEG_INF, jnp.float32),
           zeros, jnp.zeros((b, k), bool), cache)
  _, live_scores, live_seqs, fin_scores, fin_seqs, fin_flags, _ = jax.lax.while_loop(
      cond, body, state)
  # As t5x: a batch element with no finished sequence returns its live ones, raw scores.
  any_finished = jnp.any(fin_flags, axis=1)
  seqs = jnp.where(any_finished[:, None, None], fin_seqs, live_seqs)
  scores = jnp.where(any_finished[:, None], fin_scores, live_scores)
  return jnp.flip(seqs, axis=1), jnp.flip(scores, axis=1)


def _beam_search_hf(tokens_to_logits, cache, gather_cache, b, k, *, max_decode_length, eos_id,
                    alpha, early_stopping):
  """HF transformers' vectorised `_beam_search` (transformers 5); see the module docstring."""
  length = max_decode_length
  k2 = 2 * k  # one EOS id: 2K candidates always leave K that do not end
  penalty = length_penalty_fn("hf", alpha)
  top_k_mask = jnp.arange(k2) < k  # only the top K candidates may become finished beams

  def cond(state):
    i, _, _, _, _, _, finished, improvable, all_ended, _ = state
    stop_full = jnp.all(finished) if early_stopping is True else jnp.array(False)
    return (i < length) & jnp.any(improvable) & ~stop_full & ~all_ended

  def body(state):
    (i, run_seqs, run_scores, seqs, scores, last, finished, improvable, _, cache) = state
    logits, cache = tokens_to_logits(last.reshape(b * k, 1), cache)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, vocab)
    log_probs = (log_probs + run_scores[:, :, None]).reshape(b, k * vocab)
    cand_scores, cand_index = jax.lax.top_k(log_probs, k2)  # [B, 2K]
    cand_beam, cand_token = cand_index // vocab, (cand_index % vocab).astype(jnp.int32)
    cand_seqs = gather_beams(run_seqs, cand_beam)
    cand_seqs = jax.lax.dynamic_update_slice_in_dim(cand_seqs, cand_token[:, :, None], i, axis=2)
    ended = (cand_token == eos_id) | (i + 1 >= length)

    # The K best candidates that go on (ended ones pushed down by NEG_INF, as HF does).
    cont_scores = cand_scores + ended.astype(jnp.float32) * NEG_INF
    cont = jax.lax.top_k(cont_scores, k)[1]
    run_seqs, run_scores = gather_beams(cand_seqs, cont), gather_beams(cont_scores, cont)
    last = gather_beams(cand_token, cont)
    cache = gather_cache(cache, gather_beams(cand_beam, cont).astype(jnp.int32))

    # Ended candidates among the top K compete with the finished beams; additions of
    # NEG_INF in HF's order keep the float32 values identical to HF's.
    just_ended = ended & top_k_mask[None, :]
    fin_scores = cand_scores / penalty((i + 1).astype(jnp.float32))
    if early_stopping is True:
      fin_scores += jnp.all(finished, axis=-1, keepdims=True).astype(jnp.float32) * NEG_INF
    fin_scores += (~improvable).astype(jnp.float32)[:, None] * NEG_INF
    fin_scores += (~just_ended).astype(jnp.float32) * NEG_INF
    merged_scores = jnp.concatenate([scores, fin_scores], axis=1)
    best = jax.lax.top_k(merged_scores, k)[1]
    seqs = gather_beams(jnp.concatenate([seqs, cand_seqs], axis=1), best)
    scores = gather_beams(merged_scores, best)
    finished = gather_beams(jnp.concatenate([finished, just_ended], axis=1), best)

    i = i + 1
    best_length = length if (early_stopping == "never" and alpha > 0.0) else i
    best_running = run_scores[:, :1] / penalty(jnp.asarray(best_length, jnp.float32))
    worst_finished = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), NEG_INF)
    improvable = improvable & jnp.any(best_running > worst_finished, axis=-1)
    return (i, run_seqs, run_scores, seqs, scores, last, finished, improvable, jnp.all(ended),
            cache)

  # Only beam 0 is live at the start, so the first step does not pick K copies of one token.
  run_scores = jnp.where(jnp.arange(k)[None, :] == 0, 0.0, NEG_INF) * jnp.ones((b, 1), jnp.float32)
  state = (jnp.array(0, jnp.int32), jnp.zeros((b, k, length), jnp.int32), run_scores,
           jnp.zeros((b, k, length), jnp.int32), jnp.full((b, k), NEG_INF, jnp.float32),
           jnp.zeros((b, k), jnp.int32), jnp.zeros((b, k), bool), jnp.ones((b,), bool),
           jnp.array(False), cache)
  state = jax.lax.while_loop(cond, body, state)
  seqs, scores = state[3], state[4]
  # Positions after EOS come from the zero-initialised buffers already: nothing to mask.
  return seqs, scores
