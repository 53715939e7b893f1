"""Autoregressive decoding for the T5 encoder-decoder: greedy, sampling, beam search.

Two layers:
  - `greedy_or_sample` (here) and `beam_search` (t5x_lite.model.beam_search: t5x's and HF's
    rules) are pure loops (one `lax.while_loop` each, stopping as soon as every sequence is
    done) over a step callback
    `tokens_to_logits(tokens [N, 1], cache) -> (logits [N, vocab], new_cache)`; they know
    nothing about the model.
  - `decode(model, params, encoder_input_tokens, ...)` is the model glue: it encodes once,
    creates the KV cache (self-attention cache sized to max_decode_length, cross-attention
    keys/values computed once per input, see layers.MultiHeadAttention), repeats the
    self-attention cache per beam / per sample (the cross-attention keys/values stay one copy
    per input: the beams of an input attend it together), and runs one of the loops, all in
    one jit.

Conventions: decoding starts from token 0 (pad, T5's decoder start); outputs hold only the
generated tokens (no start token), [.., max_decode_length], 0 after a sequence's EOS. A decoder
prompt is forced token by token, as t5x's decodings force their `inputs` (without
`initial_index`): outputs start with it, its tokens add nothing to the scores. Scores
are model log-probabilities (raw logits: no temperature, top-k or top-p) summed up to and
including EOS; beam search returns that sum divided by its length penalty (the quantity the
beams are ranked by).
"""

import functools
from typing import Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.model.beam_search import Cache, TokensToLogits, beam_search, gather_beams

METHODS = ("greedy", "sample", "beam")


def warp_logits(logits, *, temperature=1.0, top_k=0, top_p=1.0):
  """Temperature, then top-k, then top-p (nucleus) filtering, in HF's order.

  Args:
    logits: [N, vocab] float32.
    temperature: divides the logits (> 0).
    top_k: keep the top_k largest logits (0: all).
    top_p: keep the smallest set of most probable tokens whose probability mass reaches
      top_p (a token is kept when the mass of strictly more probable tokens is < top_p, so
      the most probable token always stays; 1.0: all).

  Returns:
    [N, vocab] float32 with removed tokens at -inf.
  """
  if temperature <= 0.0:
    raise ValueError(f"temperature={temperature} must be > 0; use method='greedy' for argmax.")
  logits = logits / temperature
  if top_k > 0:
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = -jnp.sort(-logits, axis=-1)  # descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # Tokens top-k already removed have probability 0 and must not lower the threshold.
    keep = (mass_before < top_p) & jnp.isfinite(sorted_logits)
    # The smallest kept logit is the threshold: ties with it stay (as in HF, up to ties).
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def greedy_or_sample(tokens_to_logits: TokensToLogits, cache: Cache, num_sequences: int, *,
                     max_decode_length: int, eos_id: int = 1, sample: bool = False,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                     rng: Optional[jax.Array] = None, prompt: Optional[jax.Array] = None):
  """Greedy (argmax) or sampled decoding of num_sequences sequences in lockstep.

  Args:
    tokens_to_logits: (tokens [N, 1], cache) -> (logits [N, vocab], cache); the step
      callback, called with the previous token (0 at the first step).
    cache: the decoding state for N = num_sequences rows (e.g. the model's KV cache).
    num_sequences: N.
    max_decode_length: at most this many tokens per sequence.
    eos_id: a sequence ends after emitting it; later positions hold 0.
    sample: sample from `warp_logits(logits, temperature, top_k, top_p)` instead of argmax.
    rng: PRNG key, required when sample is True; or one key per row (uint32 [N, 2]): each
      row then draws only from its own key, so its sample does not depend on the other rows.
    prompt: optional int32 [N, max_decode_length]: tokens forced at the start of each
      sequence, 0 after them (t5x's prefix forcing); forced tokens add nothing to the score.

  Returns:
    tokens: int32 [N, max_decode_length] (the prompt included).
    scores: float32 [N], sum of the model's log-probabilities of the generated tokens up to
      EOS.
  """
  if sample and rng is None:
    raise ValueError("Sampling needs rng=jax.random.PRNGKey(seed).")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  per_row = jnp.ndim(rng) == 2

  def cond(state):
    i, _, _, _, done, _, _ = state
    return (i < max_decode_length) & ~jnp.all(done)

  def body(state):
    i, tokens, last, cache, done, scores, rng = state
    logits, cache = tokens_to_logits(last[:, None], cache)
    logits = logits.astype(jnp.float32)
    if sample and per_row:
      keys = jax.vmap(jax.random.split)(rng)  # [N, 2, 2]
      rng, step_rng = keys[:, 0], keys[:, 1]
      warped = warp_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
      next_token = jax.vmap(jax.random.categorical)(step_rng, warped).astype(jnp.int32)
    elif sample:
      rng, step_rng = jax.random.split(rng)
      warped = warp_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
      next_token = jax.random.categorical(step_rng, warped, axis=-1).astype(jnp.int32)
    else:
      next_token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    next_token = jnp.where(done, 0, next_token)  # finished rows emit padding
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), next_token[:, None], axis=-1)[:, 0]
    if prompt is not None:
      forced = jax.lax.dynamic_index_in_dim(prompt, i, axis=1, keepdims=False)
      next_token = jnp.where(forced != 0, forced, next_token)
      log_prob = jnp.where(forced != 0, 0.0, log_prob)
    scores = scores + jnp.where(done, 0.0, log_prob)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, next_token[:, None], i, axis=1)
    done = done | (next_token == eos_id)
    return i + 1, tokens, next_token, cache, done, scores, rng

  n = num_sequences
  state = (jnp.array(0, jnp.int32), jnp.zeros((n, max_decode_length), jnp.int32),
           jnp.zeros((n,), jnp.int32), cache, jnp.zeros((n,), bool), jnp.zeros((n,), jnp.float32),
           rng)
  _, tokens, _, _, _, scores, _ = jax.lax.while_loop(cond, body, state)
  return tokens, scores


# ----------------------------------------------------------------------------------------------
# Model glue: t5x_lite.model.network.Transformer with its 'cache' collection.


def _cache_batch_axis(path, scan_layers):
  """Batch axis of a cache leaf, or None for the per-layer scalar cache_index."""
  if jax.tree_util.keystr(path[-1:]) == "['cache_index']":
    return None
  return 1 if scan_layers else 0  # scanned stacks put the layer axis first


def _is_cross_attention(path):
  return any(getattr(p, "key", None) == "encoder_decoder_attention" for p in path)


def init_cache(model, params, encoded, encoder_input_tokens, max_decode_length, copies=1):
  """Creates the decoder cache and repeats it `copies` times per batch row.

  The creating call runs the decoder on [batch, max_decode_length] zeros with decode=True:
  it sizes the self-attention cache and projects the encoder output into the
  cross-attention keys/values (once per input). Under jit XLA drops the rest of that call
  (its logits are unused).

  Args:
    encoded: [batch, enc_len, d_model]; encoder_input_tokens: [batch, enc_len].
    copies: rows per input (beams or samples), batch-major: row b*copies + c.

  Returns:
    The 'cache' collection for batch*copies rows: self-attention entries repeated per row,
    cross-attention keys/values once per input (all rows of an input read the same ones).
  """
  batch = encoder_input_tokens.shape[0]
  dummy = jnp.zeros((batch, max_decode_length), jnp.int32)
  _, variables = model.apply({"params": params}, encoded, encoder_input_tokens, dummy,
                             decode=True, mutable=["cache"], method=model.decode)
  scan = model.config.scan_layers

  def expand(path, x):
    axis = _cache_batch_axis(path, scan)
    if axis is None or copies == 1 or _is_cross_attention(path):
      return x
    return jnp.repeat(x, copies, axis=axis)

  # The barrier keeps XLA from moving the cache's layout transposes (layers.MultiHeadAttention
  # stores keys/values in the layout the attention matmuls read) into the decoding loop,
  # where they would run at every step.
  return jax.lax.optimization_barrier(
      jax.tree_util.tree_map_with_path(expand, variables["cache"]))


def gather_cache_beams(cache, beams, scan_layers=False):
  """Reorders the self-attention cache's beams within each input: row b*K + j becomes old
  row b*K + beams[b, j] (beams int32 [B, K]; the cache has B*K rows, see `init_cache`).

  The rows are regrouped as [B, K] and gathered along K alone, so the gather is local to
  each input: on a batch-sharded mesh every chip reorders its own inputs' rows (global row
  numbers would make XLA gather the whole batch's cache first). Cross-attention keys/values
  are held once per input and beams never move across inputs, so they are left alone.
  """
  batch, beams_per_input = beams.shape

  def gather(path, x):
    axis = _cache_batch_axis(path, scan_layers)
    if axis is None or _is_cross_attention(path):
      return x
    grouped = x.reshape(x.shape[:axis] + (batch, beams_per_input) + x.shape[axis + 1:])
    index = beams.reshape((1,) * axis + beams.shape + (1,) * (x.ndim - axis - 1))
    # The beam indices are in range: no fill select.
    picked = jnp.take_along_axis(grouped, index, axis=axis + 1, mode="clip")
    return picked.reshape(x.shape)

  return jax.tree_util.tree_map_with_path(gather, cache)


def make_tokens_to_logits(model, params, encoded, encoder_input_tokens):
  """The step callback for t5x_lite's Transformer: one token [N, 1] -> logits [N, vocab].

  encoded / encoder_input_tokens hold one row per input (batch = N / copies, as given to
  `init_cache`); the encoder tokens give the cross-attention padding mask (encoded itself is
  not read again: its K/V are cached).
  """
  def tokens_to_logits(tokens, cache):
    logits, variables = model.apply({"params": params, "cache": cache}, encoded,
                                    encoder_input_tokens, tokens, decode=True, mutable=["cache"],
                                    method=model.decode)
    return logits[:, -1, :], variables["cache"]
  return tokens_to_logits


@functools.partial(jax.jit, static_argnames=(
    "model", "max_decode_length", "method", "num_decodes", "num_beams", "temperature", "top_k",
    "top_p", "alpha", "length_penalty", "early_stopping", "eos_id"))
def _decode_jit(params, encoder_input_tokens, rng, prompt, *, model, max_decode_length, method,
                num_decodes, num_beams, temperature, top_k, top_p, alpha, length_penalty,
                early_stopping, eos_id):
  batch = encoder_input_tokens.shape[0]
  copies = num_beams if method == "beam" else num_decodes
  encoded = model.apply({"params": params}, encoder_input_tokens, method=model.encode)
  cache = init_cache(model, params, encoded, encoder_input_tokens, max_decode_length, copies)
  step = make_tokens_to_logits(model, params, encoded, encoder_input_tokens)
  if rng.ndim == 2 and copies > 1:  # per-input keys: one key per sample of each input
    rng = jax.vmap(lambda key: jax.random.split(key, copies))(rng).reshape(-1, 2)
  if method == "beam":
    tokens, scores = beam_search(
        step, cache, functools.partial(gather_cache_beams, scan_layers=model.config.scan_layers),
        batch, num_beams, max_decode_length=max_decode_length, eos_id=eos_id, alpha=alpha,
        length_penalty=length_penalty, early_stopping=early_stopping, prompt=prompt)
    return tokens[:, :num_decodes], scores[:, :num_decodes]
  tokens, scores = greedy_or_sample(
      step, cache, batch * copies, max_decode_length=max_decode_length, eos_id=eos_id,
      sample=method == "sample", temperature=temperature, top_k=top_k, top_p=top_p, rng=rng,
      prompt=None if prompt is None else jnp.repeat(prompt, copies, axis=0))
  tokens, scores = tokens.reshape(batch, copies, max_decode_length), scores.reshape(batch, copies)
  # Samples best first, like the beams (t5x sorts its samples too, worst first).
  order = jnp.argsort(-scores, axis=1, stable=True)
  return gather_beams(tokens, order), gather_beams(scores, order)


def decode(model, params, encoder_input_tokens, *, max_decode_length: int,
           method: str = "greedy", num_decodes: int = 1, num_beams: Optional[int] = None,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, alpha: float = 0.6,
           length_penalty: str = "t5x", early_stopping: Union[bool, str] = "never",
           eos_id: int = 1, rng: Optional[jax.Array] = None,
           decoder_prompt: Optional[jax.Array] = None):
  """Decodes a batch of inputs with a t5x_lite Transformer (jitted; cached per setting).

  Args:
    model: network.Transformer (deterministic: no dropout while decoding).
    params: its parameters (the tree under "params").
    encoder_input_tokens: int [batch, enc_len], 0 = padding.
    max_decode_length: generated tokens per sequence (EOS included).
    method: "greedy", "sample" (temperature / top_k / top_p) or "beam".
    num_decodes: sequences returned per input, best (highest score) first: independent
      samples, or the best num_decodes beams (greedy: identical copies).
    num_beams: beam width (method "beam"); defaults to max(num_decodes, 4).
    alpha, length_penalty, early_stopping: beam search settings (see `beam_search`):
      length_penalty="t5x" (default) runs t5x's beam search, "hf" with HF's early_stopping
      reproduces HF generate.
    eos_id: end-of-sequence id (1 in T5).
    rng: PRNG key for sampling, or one per input (uint32 [batch, 2]): an input's samples then
      depend only on its key and tokens, not on its batch position or the other inputs.
    decoder_prompt: optional int [batch, prompt_len <= max_decode_length]: each output starts
      with these tokens (0 = padding after them), t5x's prefix forcing: the decoder reads them
      as if it had generated them, they add nothing to the summed log-probability, and beam
      search's length penalty counts them. Beam search: length_penalty="t5x" only.

  Returns:
    tokens: int32 [batch, num_decodes, max_decode_length] (the prompt included), 0 after EOS.
    scores: float32 [batch, num_decodes]: summed log-probabilities (greedy, sample) or
      summed log-probability / length penalty (beam).
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}; choose one of {METHODS}.")
  if method == "beam":
    num_beams = max(num_decodes, 4) if num_beams is None else num_beams
    if num_decodes > num_beams:
      raise ValueError(f"num_decodes={num_decodes} > num_beams={num_beams}: beam search "
                       "returns at most num_beams sequences.")
  else:
    num_beams = 1
  if method == "sample" and rng is None:
    raise ValueError("method='sample' needs rng=jax.random.PRNGKey(seed).")
  rng = jax.random.PRNGKey(0) if rng is None else jnp.asarray(rng)
  if rng.ndim == 2 and rng.shape[0] != encoder_input_tokens.shape[0]:
    raise ValueError(f"rng has {rng.shape[0]} per-input keys for a batch of "
                     f"{encoder_input_tokens.shape[0]} inputs.")
  if decoder_prompt is not None:
    decoder_prompt = jnp.asarray(decoder_prompt, jnp.int32)
    if (decoder_prompt.ndim != 2 or decoder_prompt.shape[0] != encoder_input_tokens.shape[0]
        or decoder_prompt.shape[1] > max_decode_length):
      raise ValueError(f"decoder_prompt has shape {decoder_prompt.shape}; it needs [batch, "
                       f"prompt_len] with batch {encoder_input_tokens.shape[0]} (the inputs') "
                       f"and prompt_len <= max_decode_length={max_decode_length}.")
    decoder_prompt = jnp.pad(decoder_prompt,
                             ((0, 0), (0, max_decode_length - decoder_prompt.shape[1])))
  return _decode_jit(
      nn.unbox(params), jnp.asarray(encoder_input_tokens, jnp.int32), rng, decoder_prompt,
      model=model,
      max_decode_length=max_decode_length, method=method, num_decodes=num_decodes,
      num_beams=num_beams, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
      alpha=float(alpha), length_penalty=length_penalty, early_stopping=early_stopping,
      eos_id=eos_id)
