"""Decoding (t5x_lite.model.decoding, beam_search) against HF transformers' generate and itself.

Tiny random float32 HF T5 models of both families (relu + tied, gated-gelu + untied),
converted with t5x_lite.interop.hf_param_layout. Random T5 weights at HF's init repeat one token
forever, so the attention / feed-forward weights are scaled up (varied outputs) and the EOS output
row is scaled (some sequences end early, at different steps, exercising EOS handling).
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from t5x_lite.interop import hf_param_layout
from t5x_lite.model import beam_search, decoding, network
import hf_utils  # tests/hf_utils.py (pytest puts tests/ on sys.path)

VOCAB, ENC_LEN, MAX_LEN = 128, 12, 16
# family -> (tied, scale of attention / feed-forward weights, scale of the EOS output row)
FAMILIES = {"relu": (True, 4.0, 3.0), "gated-gelu": (False, 2.0, 3.0)}


def _config(family, scan_layers=False):
  tied = FAMILIES[family][0]
  return network.T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_heads=4,
                          num_encoder_layers=2, num_decoder_layers=2, feed_forward=family,
                          tie_word_embeddings=tied, dropout_rate=0.0, scan_layers=scan_layers)


@functools.lru_cache(maxsize=None)
def _models(family, scaled=True):
  """(HF model, t5x_lite config, params) with the same random weights (HF init if not scaled)."""
  _, weight_scale, eos_scale = FAMILIES[family]
  config = _config(family)
  hf = hf_utils.hf_model(config)
  if not scaled:
    return hf, config, hf_param_layout.params_from_hf_state_dict(hf.state_dict(), config)
  with torch.no_grad():
    for name, w in hf.named_parameters():
      if any(s in name for s in ("SelfAttention", "EncDecAttention", "DenseReluDense")):
        if "relative_attention_bias" not in name:
          w.mul_(weight_scale)
    (hf.shared if config.tie_word_embeddings else hf.lm_head).weight[1] *= eos_scale
  return hf, config, hf_param_layout.params_from_hf_state_dict(hf.state_dict(), config)


def _inputs(batch=6):
  """int32 [batch, ENC_LEN], ids >= 2, row r padded with 2r trailing zeros (row 0 unpadded)."""
  x = np.random.RandomState(0).randint(2, VOCAB, size=(batch, ENC_LEN)).astype(np.int32)
  for r in range(1, batch):
    x[r, ENC_LEN - 2 * r:] = 0
  return x


def _normalise(tokens, eos_id=1):
  """[n, len] -> [n, MAX_LEN]: generated tokens, 0 after the first EOS and to MAX_LEN.

  HF pads finished greedy rows with pad (0) but fills beam outputs with eos_token_id (its
  fill value is `pad_token_id or eos_token_id`, and pad is 0), and crops to the longest.
  """
  tokens = np.asarray(tokens)
  out = np.zeros((tokens.shape[0], MAX_LEN), np.int64)
  out[:, :tokens.shape[1]] = tokens
  after_eos = np.cumsum(np.cumsum(out == eos_id, axis=1), axis=1) > 1
  out[after_eos] = 0
  return out


def _hf_generate(hf, x, **kwargs):
  with torch.no_grad():
    return hf.generate(input_ids=torch.from_numpy(x).long(),
                       attention_mask=torch.from_numpy((x > 0).astype(np.int64)),
                       max_new_tokens=MAX_LEN, do_sample=False, return_dict_in_generate=True,
                       output_scores=True, **kwargs)


def _teacher_forced_log_probs(config, params, x, tokens):
  """Independent scoring: [n, L] generated tokens -> per-token log-probs [n, L], 0 after EOS."""
  model = network.Transformer(config)
  n = tokens.shape[0]
  enc = np.repeat(x, n // x.shape[0], axis=0)
  dec_in = np.concatenate([np.zeros((n, 1), np.int32), tokens[:, :-1]], axis=1)
  logits = model.apply({"params": params}, enc, dec_in)
  log_probs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
  per_token = np.take_along_axis(log_probs, tokens[:, :, None].astype(np.int64), axis=-1)[..., 0]
  upto_eos = np.cumsum(np.cumsum(tokens == 1, axis=1), axis=1) <= 1  # EOS itself counts
  valid = upto_eos & ((tokens > 0) | (np.arange(tokens.shape[1]) == 0))
  return np.where(valid, per_token, 0.0), valid.sum(axis=1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_matches_hf_generate(family):
  hf, config, params = _models(family)
  x = _inputs()
  expected = _normalise(_hf_generate(hf, x).sequences[:, 1:].numpy())
  tokens, scores = decoding.decode(network.Transformer(config), params, x,
                                   max_decode_length=MAX_LEN)
  tokens = np.asarray(tokens)
  assert tokens.shape == (6, 1, MAX_LEN) and scores.shape == (6, 1)
  np.testing.assert_array_equal(tokens[:, 0], expected)
  ends = [int(np.argmax(r == 1)) if (r == 1).any() else None for r in expected]
  assert any(e is not None for e in ends) and any(e is None for e in ends), ends  # EOS exercised
  log_probs, _ = _teacher_forced_log_probs(config, params, x, tokens[:, 0])
  np.testing.assert_allclose(scores[:, 0], log_probs.sum(axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,early_stopping", [
    ("relu", False), ("gated-gelu", False), ("relu", True), ("gated-gelu", "never")])
def test_beam_search_matches_hf_generate(family, early_stopping):
  hf, config, params = _models(family)
  x = _inputs()
  out = _hf_generate(hf, x, num_beams=4, num_return_sequences=3, length_penalty=0.6,
                     early_stopping=early_stopping)
  expected = _normalise(out.sequences[:, 1:].numpy()).reshape(6, 3, MAX_LEN)
  ended = (expected == 1).any(axis=-1)
  assert ended.any() and not ended.all(), ended  # beams ending by EOS and by max length
  tokens, scores = decoding.decode(
      network.Transformer(config), params, x, max_decode_length=MAX_LEN, method="beam",
      num_beams=4, num_decodes=3, alpha=0.6, length_penalty="hf", early_stopping=early_stopping)
  np.testing.assert_array_equal(np.asarray(tokens), expected)
  np.testing.assert_allclose(np.asarray(scores), out.sequences_scores.numpy().reshape(6, 3),
                             rtol=1e-5, atol=1e-5)
  # Scores are summed log-probabilities (teacher-forced, independent) / length**alpha.
  flat = np.asarray(tokens).reshape(18, MAX_LEN)
  log_probs, lengths = _teacher_forced_log_probs(config, params, x, flat)
  np.testing.assert_allclose(np.asarray(scores).reshape(18) * lengths ** 0.6,
                             log_probs.sum(axis=1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_decoding_equals_uncached(family):
  """Cached steps vs a full teacher-forced recomputation (no cache) at every step.

  Logits: HF-init weights (the scaled test weights amplify float32 rounding to ~1e-4 in
  both paths alike) fed random tokens, so every cache slot holds a different token.
  Tokens: decode() on the scaled weights vs argmax of the recomputed logits.
  """
  x = jnp.asarray(_inputs())
  batch = x.shape[0]
  for scaled in (False, True):
    _, config, params = _models(family, scaled)
    model = network.Transformer(config)
    encoded = model.apply({"params": params}, x, method=model.encode)
    cache = decoding.init_cache(model, params, encoded, x, MAX_LEN)
    step = jax.jit(decoding.make_tokens_to_logits(model, params, encoded, x))
    full = jax.jit(functools.partial(model.apply, {"params": params}, x))  # no cache
    feed = np.random.RandomState(1).randint(2, VOCAB, size=(batch, MAX_LEN)).astype(np.int32)
    dec_in = np.zeros((batch, MAX_LEN), np.int32)
    tokens = np.zeros((batch, MAX_LEN), np.int32)
    for i in range(MAX_LEN):
      cached_logits, cache = step(jnp.asarray(dec_in[:, i:i + 1]), cache)
      uncached_logits = np.asarray(full(jnp.asarray(dec_in))[:, i])
      if not scaled:
        # float32 rounding of the two accumulation orders reaches ~1.2e-5 on logits of up to
        # ~12 (XLA:CPU's kernel choice moves it); a wrong cache entry moves logits by O(1).
        np.testing.assert_allclose(cached_logits, uncached_logits, rtol=1e-5, atol=3e-5)
      tokens[:, i] = np.argmax(uncached_logits, axis=-1)
      if i + 1 < MAX_LEN:
        dec_in[:, i + 1] = tokens[:, i] if scaled else feed[:, i]
    if scaled:
      got, _ = decoding.decode(model, params, x, max_decode_length=MAX_LEN)
      np.testing.assert_array_equal(np.asarray(got)[:, 0], _normalise(tokens))


def test_beam_search_scan_layers_and_t5x_penalty():
  """Stacked (scan) cache layout gives the same beams; t5x brevity penalty scores add up."""
  family = "gated-gelu"
  hf, config, params = _models(family)
  x = _inputs()
  kwargs = dict(max_decode_length=MAX_LEN, method="beam", num_beams=4, num_decodes=4, alpha=0.6)
  tokens, scores = decoding.decode(network.Transformer(config), params, x, **kwargs)
  scan_config = _config(family, scan_layers=True)
  scan_params = hf_param_layout.params_from_hf_state_dict(hf.state_dict(), scan_config)
  scan_tokens, scan_scores = decoding.decode(network.Transformer(scan_config), scan_params, x,
                                             **kwargs)
  np.testing.assert_array_equal(np.asarray(scan_tokens), np.asarray(tokens))
  np.testing.assert_allclose(scan_scores, scores, rtol=1e-5, atol=1e-5)
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)  # best first
  flat, flat_scores = np.asarray(tokens).reshape(24, MAX_LEN), np.asarray(scores).reshape(24)
  # t5x's algorithm finishes only on EOS; slots no EOS sequence filled score about -1e7.
  filled = flat_scores > -1e6
  assert filled.sum() >= 12 and np.all((flat[filled] == 1).any(axis=1)), flat_scores
  np.testing.assert_allclose(flat_scores[~filled], beam_search.T5X_NEG_INF, rtol=1e-5)
  log_probs, lengths = _teacher_forced_log_probs(config, params, x, flat)
  np.testing.assert_allclose(flat_scores[filled] * ((5.0 + lengths[filled]) / 6.0) ** 0.6,
                             log_probs.sum(axis=1)[filled], rtol=1e-5, atol=1e-4)


def test_sampling_reproducible_and_scored():
  _, config, params = _models("relu")
  model = network.Transformer(config)
  x = _inputs(batch=2)
  sample = functools.partial(decoding.decode, model, params, x, max_decode_length=MAX_LEN,
                             method="sample", num_decodes=3, temperature=1.5, top_k=20, top_p=0.95)
  tokens, scores = sample(rng=jax.random.PRNGKey(7))
  again, again_scores = sample(rng=jax.random.PRNGKey(7))
  other, _ = sample(rng=jax.random.PRNGKey(8))
  assert tokens.shape == (2, 3, MAX_LEN)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(again))
  np.testing.assert_array_equal(np.asarray(scores), np.asarray(again_scores))
  assert not np.array_equal(np.asarray(tokens), np.asarray(other))
  assert not np.array_equal(np.asarray(tokens[:, 0]), np.asarray(tokens[:, 1]))
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 0), scores  # best first
  # Scores are the model's own log-probabilities (not the warped distribution's).
  log_probs, _ = _teacher_forced_log_probs(config, params, x, np.asarray(tokens).reshape(6, -1))
  np.testing.assert_allclose(np.asarray(scores).reshape(6), log_probs.sum(axis=1),
                             rtol=1e-5, atol=1e-4)


def _fixed_distribution_step(logits):
  """tokens_to_logits returning the same logits [vocab] for every row; cache counts calls."""
  def step(tokens, cache):
    return jnp.broadcast_to(logits, (tokens.shape[0], logits.shape[0])), cache + 1
  return step


@pytest.mark.parametrize("temperature,top_k,top_p,allowed", [
    (1.0, 3, 1.0, {0, 1, 2}),
    (1.0, 0, 0.7, {0, 1, 2}),        # mass before token 3 is 0.75 >= 0.7
    (1.0, 0, 0.76, {0, 1, 2, 3}),
    (0.5, 0, 0.7, {0, 1}),           # sharper: p = .44, .31, .19, ...
    (1.0, 2, 0.9, {0, 1}),           # top-k first, then top-p of the renormalised pair
])
def test_top_k_top_p_respected(temperature, top_k, top_p, allowed):
  probs = np.array([0.3, 0.25, 0.2, 0.1, 0.08, 0.04, 0.02, 0.01], np.float32)
  logits = jnp.log(jnp.asarray(probs))[jnp.asarray([0, 1, 2, 3, 4, 5, 6, 7])]
  num, steps = 512, 4
  tokens, _ = jax.jit(functools.partial(
      decoding.greedy_or_sample, _fixed_distribution_step(logits), jnp.int32(0), num,
      max_decode_length=steps, eos_id=-1, sample=True, temperature=temperature, top_k=top_k,
      top_p=top_p))(rng=jax.random.PRNGKey(0))
  assert set(np.unique(np.asarray(tokens)).tolist()) == allowed
  # The same filtering as HF's warpers (temperature -> top-k -> top-p), as -inf masks.
  hf_logits = torch.from_numpy(np.array(logits))[None]
  for warper in ([transformers.TemperatureLogitsWarper(temperature)]
                 + ([transformers.TopKLogitsWarper(top_k)] if top_k else [])
                 + ([transformers.TopPLogitsWarper(top_p)] if top_p < 1.0 else [])):
    hf_logits = warper(None, hf_logits)
  ours = decoding.warp_logits(logits[None], temperature=temperature, top_k=top_k, top_p=top_p)
  np.testing.assert_array_equal(np.isfinite(np.asarray(ours)), np.isfinite(hf_logits.numpy()))
  # Frequencies follow the renormalised distribution (2048 draws: within 0.05).
  kept = np.where(np.isfinite(np.asarray(ours[0])), probs ** (1.0 / temperature), 0.0)
  freq = np.bincount(np.asarray(tokens).ravel(), minlength=8) / tokens.size
  np.testing.assert_allclose(freq, kept / kept.sum(), atol=0.05)


def test_eos_stops_and_pads_and_exits_early():
  """A crafted step that emits EOS at a row-dependent step: padding after, early loop exit."""
  calls = []

  def step(tokens, count):
    jax.debug.callback(lambda c: calls.append(int(c)), count)
    # Row r puts all mass on token 5 before step r, then on EOS (id 1).
    target = jnp.where(count >= jnp.arange(tokens.shape[0]), 1, 5)
    return jax.nn.one_hot(target, 8) * 50.0, count + 1

  tokens, scores = decoding.greedy_or_sample(step, jnp.int32(0), 3, max_decode_length=6)
  np.testing.assert_array_equal(np.asarray(tokens), [[1, 0, 0, 0, 0, 0],
                                                     [5, 1, 0, 0, 0, 0],
                                                     [5, 5, 1, 0, 0, 0]])
  np.testing.assert_allclose(scores, 0.0, atol=1e-5)
  jax.effects_barrier()
  assert sorted(calls) == [0, 1, 2]  # stopped once every row had ended: 3 steps, not 6


# ----------------------------------------------------------------------------------------------
# Beam search algorithms on table "models": logits [batch, steps, vocab, vocab] read at
# (batch element, step, last token), the last token being 0 at the first step.

T5X_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "t5x_decoding",
                           "beam_search.json")
F32_EPS = float(np.finfo(np.float32).eps)


def _table_beam_search(table, num_beams, **kwargs):
  """beam_search.beam_search on the table (the cache is the step index): tokens, scores (numpy)."""
  batch, steps = table.shape[:2]
  lookup = jnp.asarray(table, jnp.float32)
  rows = jnp.arange(batch * num_beams) // num_beams

  def step(tokens, i):
    return lookup[rows, i, tokens[:, 0]], i + 1

  tokens, scores = jax.jit(lambda: beam_search.beam_search(
      step, jnp.int32(0), lambda cache, _: cache, batch, num_beams, max_decode_length=steps,
      **kwargs))()
  return np.asarray(tokens), np.asarray(scores)


def _table_log_prob64(table, tokens, eos_id=1, prompt=None):
  """float64 summed log-probability of tokens [batch, K, steps] up to EOS, and the length.

  Positions where prompt [batch, steps] is not 0 were forced: they add nothing.
  """
  table = np.asarray(table, np.float64)
  log_probs = table - np.log(np.sum(np.exp(table - table.max(-1, keepdims=True)), -1,
                                    keepdims=True)) - table.max(-1, keepdims=True)
  total = np.zeros(tokens.shape[:2])
  length = np.zeros(tokens.shape[:2], np.int64)
  for b, k in np.ndindex(*tokens.shape[:2]):
    last = 0
    for i, token in enumerate(tokens[b, k]):
      if prompt is None or prompt[b, i] == 0:
        total[b, k] += log_probs[b, i, last, token]
      length[b, k], last = i + 1, token
      if token == eos_id:
        break
  return total, length


def _minimal_table():
  """The smallest case where t5x's and HF's beam searches part (2 beams, 5 steps, EOS = 1).

  Step 0: EOS ranks 3rd of the expansions (tokens 2 and 3 at 0.1 beat it); t5x keeps it as
  a finished sequence, HF's algorithm lets only the top num_beams finish and drops it. Later
  steps make EOS unlikely, so every other sequence is far worse.
  """
  table = np.empty((1, 5, 6, 6), np.float32)
  table[0, 0] = [-1e9, 0.0, 0.1, 0.1, -10, -10]
  table[0, 1:] = [-1e9, -5.0, 0, 0, 0, 0]
  return table


def test_t5x_beam_search_keeps_eos_ranked_below_num_beams():
  table = _minimal_table()
  first, later = (row - np.log(np.sum(np.exp(row))) for row in table[0, :2, 0].astype(np.float64))
  tokens, scores = _table_beam_search(table, 2, alpha=0.6, length_penalty="t5x")
  np.testing.assert_array_equal(tokens[0, 0], [1, 0, 0, 0, 0])
  # ((5 + 1) / 6) ** 0.6 = 1: the score is log p(EOS) = -1.1664; float32 ulp there is 1.2e-7.
  np.testing.assert_allclose(scores[0, 0], first[1], rtol=0, atol=4 * F32_EPS)
  # HF's algorithm: five times token 2 (-4.871), the run-up to its length penalty 5 ** 0.6.
  tokens, scores = _table_beam_search(table, 2, alpha=0.6, length_penalty="hf")
  np.testing.assert_array_equal(tokens[0, 0], [2, 2, 2, 2, 2])
  np.testing.assert_allclose(scores[0, 0], (first[2] + 4 * later[2]) / 5 ** 0.6, rtol=0,
                             atol=4 * 5 * F32_EPS)


def _fixture():
  with open(T5X_FIXTURE) as f:
    return json.load(f)


@pytest.mark.parametrize("case", ["minimal", "eos_rank_k_plus_1", "eos_rank_2k_later_step",
                                  "random_k2", "random_k3", "random_k4"])
def test_t5x_beam_search_matches_t5x_fixture(case):
  """Sequences and scores of t5x's own decoding.beam_search (make_fixtures.py ran it)."""
  fixture = _fixture()
  spec = fixture["cases"][case]
  table = np.asarray(spec["logits"], np.float32)
  prompt = None if spec["prompt"] is None else np.asarray(spec["prompt"], np.int32)
  # t5x returns beams worst first, t5x_lite best first.
  expected_tokens = np.asarray(spec["tokens"])[:, ::-1]
  expected_scores = np.asarray(spec["scores"], np.float32)[:, ::-1]
  tokens, scores = _table_beam_search(table, spec["num_beams"], alpha=fixture["alpha"],
                                      eos_id=fixture["eos_id"], length_penalty="t5x",
                                      prompt=None if prompt is None else jnp.asarray(prompt))
  np.testing.assert_array_equal(tokens, expected_tokens)
  # Tolerance: t5x's own float32 error against a float64 rescoring of its sequences (finished
  # ones / brevity penalty; a batch element with none finished returns raw live sums).
  log_prob, length = _table_log_prob64(table, expected_tokens, prompt=prompt)
  finished = (expected_tokens == 1).any(-1)
  penalty = ((5.0 + length) / 6.0) ** fixture["alpha"]
  reference = np.where(finished, log_prob / penalty, log_prob)
  real = expected_scores > -1e6  # the others are t5x's unfilled slots, about -1e7
  assert real[:, 0].all(), expected_scores
  t5x_error = np.max(np.abs(expected_scores[real] - reference[real]))
  assert t5x_error < 1e-5, t5x_error
  np.testing.assert_allclose(scores[real], expected_scores[real], rtol=0,
                             atol=4 * max(t5x_error, F32_EPS))
  # Unfilled slots: -1e7 plus a log-probability, float32 there resolves 1.0.
  np.testing.assert_allclose(scores[~real], expected_scores[~real], rtol=4 * F32_EPS)


def test_t5x_decoding_test_beam_search():
  """t5x decoding_test.py `test_beam_search`: a first-order Markov model, alpha 0, 2 beams.

  States PAD, A, B, START, END (= EOS 4); START at step 0, then alternating edge potentials
  between A and B, END for free at the last step. The two best sequences tie:
  START-AABBA-END and START-BBAAB-END, which t5x returns in that (worst first) order.
  """
  neg_inf = -1.0e7  # t5x's NEG_INF, as in that test
  ab = np.asarray([[[1, -1], [-1, 1]], [[-1, 1], [1, -1]]] * 2, np.float32)
  edges = np.full([6, 5, 5], neg_inf, np.float32)
  edges[1:5, 1:3, 1:3] = ab
  edges[0, 3, 1:3] = 0
  edges[5, 1:3, 4] = 0
  edges[:, 0, :] = 0
  table = np.empty((2, 7, 5, 5), np.float32)
  table[:, 0] = [neg_inf, neg_inf, neg_inf, 0, neg_inf]  # any last token: START
  table[:, 1:] = edges
  tokens, _ = _table_beam_search(table, 2, alpha=0.0, eos_id=4, length_penalty="t5x")
  states = ["PAD", "A", "B", "START-", "-END"]
  strings = [["".join(states[t] for t in beam) for beam in row] for row in tokens]
  assert strings == [["START-BBAAB-END", "START-AABBA-END"]] * 2  # best first: t5x's reversed


def test_t5x_decoding_test_beam_search_force_decode_no_prefix():
  """t5x decoding_test.py `test_beam_search_force_decode_no_prefix` (no EOS is ever likely).

  No sequence finishes, so t5x returns the live beams with raw summed log-probabilities.
  """
  logits = np.asarray([[-1e7, -1e10, -0.1, -0.9], [-1e7, -1e10, -0.9, -0.1]], np.float32)
  table = np.broadcast_to(logits[:, None, None, :], (2, 5, 4, 4))
  tokens, scores = _table_beam_search(table, 2, alpha=0.6, length_penalty="t5x")
  t5x_expected = [[[3, 2, 2, 2, 2], [2, 2, 2, 2, 2]], [[2, 3, 3, 3, 3], [3, 3, 3, 3, 3]]]
  np.testing.assert_array_equal(tokens, np.asarray(t5x_expected)[:, ::-1])
  log_prob, _ = _table_log_prob64(table, tokens)
  np.testing.assert_allclose(scores, log_prob, rtol=0, atol=4 * 5 * F32_EPS)


def test_t5x_decoding_test_beam_search_force_decode_prefix():
  """t5x decoding_test.py `test_beam_search_force_decode_prefix`: prompts [7] and [4, 5]."""
  logits = np.asarray([[-1e7, -1e10, -0.1, -0.9, -1e4, -1e4, -1e4, -1e4],
                       [-1e7, -1e10, -0.9, -0.1, -1e4, -1e4, -1e4, -1e4]], np.float32)
  table = np.broadcast_to(logits[:, None, None, :], (2, 5, 8, 8))
  prompt = jnp.asarray([[7, 0, 0, 0, 0], [4, 5, 0, 0, 0]], jnp.int32)
  tokens, scores = _table_beam_search(table, 2, alpha=0.0, length_penalty="t5x", prompt=prompt)
  t5x_expected = [[[7, 3, 2, 2, 2], [7, 2, 2, 2, 2]], [[4, 5, 2, 3, 3], [4, 5, 3, 3, 3]]]
  np.testing.assert_array_equal(tokens, np.asarray(t5x_expected)[:, ::-1])
  # As that test: prompt tokens score 0, the others their log-probability (alpha 0, no EOS).
  log_probs = logits.astype(np.float64) - np.log(np.sum(np.exp(logits.astype(np.float64)), -1,
                                                        keepdims=True))
  expected = [[sum(log_probs[b, t] for t, p in zip(beam, np.asarray(prompt)[b]) if p == 0)
               for beam in tokens[b]] for b in range(2)]
  np.testing.assert_allclose(scores, expected, rtol=0, atol=4 * 5 * F32_EPS)


def test_decoder_prompt_is_forced_and_not_scored():
  """decode(decoder_prompt=...): greedy continues the prompt by argmax of the teacher-forced
  logits and scores only what it generated (beams with prompts: the t5x tests above)."""
  _, config, params = _models("relu")
  model = network.Transformer(config)
  x = _inputs(batch=2)
  prompt = np.asarray([[5, 9, 0], [7, 0, 0]], np.int32)
  tokens, scores = decoding.decode(model, params, x, max_decode_length=MAX_LEN,
                                   decoder_prompt=prompt)
  tokens = np.asarray(tokens)[:, 0]
  np.testing.assert_array_equal(tokens[:, :3] * (prompt > 0), prompt)
  dec_in = np.concatenate([np.zeros((2, 1), np.int32), tokens[:, :-1]], axis=1)
  log_probs = np.asarray(jax.nn.log_softmax(model.apply({"params": params}, x, dec_in)))
  free = (np.arange(MAX_LEN) >= (prompt > 0).sum(1, keepdims=True)) & (
      np.cumsum(np.cumsum(tokens == 1, axis=1), axis=1) <= 1)  # generated, up to EOS
  np.testing.assert_array_equal(tokens[free], np.argmax(log_probs, -1)[free])
  per_token = np.take_along_axis(log_probs, tokens[:, :, None], axis=-1)[..., 0]
  np.testing.assert_allclose(scores[:, 0], np.where(free, per_token, 0.0).sum(1), rtol=1e-5,
                             atol=1e-5)


def _while_body_ops(hlo_text):
  """(op, element count) of every instruction in the decode loop's body and the fusions it
  calls, from XLA's optimised HLO text."""
  import re  # pylint: disable=g-import-not-at-top
  comps = {m.group(1): m.group(2) for m in re.finditer(
      r"^(?:ENTRY )?%([\w.\-]+) .*?\{\n(.*?)\n\}", hlo_text, re.S | re.M)}
  (body,) = re.findall(r" while\(.*?body=%([\w.\-]+)", hlo_text)
  ops, todo = [], [body]
  while todo:
    text = comps[todo.pop()]
    todo += re.findall(r"calls=%([\w.\-]+)", text)
    for shape, op in re.findall(r"= \w+\[([\d,]*)\]\S* ([\w\-]+)\(", text):
      ops.append((op, int(np.prod([int(d) for d in shape.split(",") if d]))))
  return ops


def test_beam_cache_layout_and_loop_body():
  """The beams of an input share one copy of its cross-attention keys/values, and the
  decoding loop reads both caches in place: no transpose in the compiled loop body is as
  large as one layer's cross-attention keys (XLA used to transpose every cached key and
  value of every layer at every step). The beams' tokens are checked against HF above."""
  _, config, params = _models("gated-gelu")
  model = network.Transformer(config)
  x = jnp.asarray(_inputs(4))
  beams, (batch, enc_len) = 3, x.shape
  encoded = model.apply({"params": params}, x, method=model.encode)
  cache = decoding.init_cache(model, params, encoded, x, MAX_LEN, copies=beams)
  heads, d_kv = config.num_heads, config.d_kv
  for i in range(config.num_decoder_layers):
    layer = cache["decoder"][f"layers_{i}"]
    for name in ("cached_key", "cached_value"):
      assert layer["encoder_decoder_attention"][name].shape == (batch, heads, d_kv, enc_len)
      assert layer["self_attention"][name].shape == (batch * beams, heads, MAX_LEN, d_kv)

  kwargs = dict(model=model, max_decode_length=MAX_LEN, method="beam", num_decodes=1,
                num_beams=beams, temperature=1.0, top_k=0, top_p=1.0, alpha=0.6,
                length_penalty="t5x", early_stopping="never", eos_id=1)
  decode_jit = decoding._decode_jit  # pylint: disable=protected-access
  hlo = decode_jit.lower(params, x, jax.random.PRNGKey(0), None, **kwargs).compile().as_text()
  ops = _while_body_ops(hlo)
  assert sum(op == "dot" for op, _ in ops) >= 4 * config.num_decoder_layers  # the loop's body
  cross_size = batch * heads * d_kv * enc_len
  assert [(op, n) for op, n in ops if op == "transpose" and n >= cross_size] == []
