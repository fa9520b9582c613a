"""Greedy and beam search decoding with the key/value cache (§6.1).

The paper decodes with "beam search with a beam size of 4 and length penalty
alpha = 0.6", with a maximum output length of "input length + 50", terminating
early when possible. The length penalty is the GNMT form (Wu et al., 2016):

  lp(Y) = ((5 + |Y|) / 6)^alpha,     score(Y) = log P(Y | X) / lp(Y)

where |Y| counts the target tokens including the final EOS.

Deviation from the paper (``decode.min_length``, default 1): no hypothesis may
end before its first real token. The paper's search (``min_length=0``) lets
EOS come first, and since lp(1) = 1 that empty hypothesis keeps its whole
log-probability while a 20-token one divides a larger negative sum by 2.35, so
a small model that puts some mass on EOS at the first step loses the sentence
(about 1% of Multi30k val translations were empty). CTranslate2's default is
also 1.

Dimension letters (as in transformer/model.py, plus): W beam size (width),
L maximum output length, N = B * W flattened rows fed to the model.

Three layers:

* ``greedy_search`` and ``beam_search`` are pure JAX over a step function
  ``step_fn(tokens, cache, step) -> (logits, cache)`` (tokens: (N,) previous
  token, BOS_ID at step 0; logits: (N, V)). Every leaf of ``cache`` has the
  batch as its leading axis; beam search tiles it to B * W rows and reorders
  beams with one generic ``jax.tree.map``. A dict cache may keep state per
  sentence under the key ``"shared"``: beam search neither tiles nor reorders
  it, and the step function lays it out for the W beams itself (the
  Transformer keeps its keys and values there, and only a small table of
  which slot holds each position moves with the beams; see ``init_cache``).
  Tests drive them with hand-made step functions.
* ``init_cache`` and ``decode_step`` are that step function for a
  ``Transformer``: its decoder one position at a time
  (``Transformer.decode_step``, the layers training runs), over a key/value
  cache whose layout this module owns.
* ``translate_batch(model, inputs, ...)`` runs them on a ``Transformer``:
  encodes once, builds the cache with ``init_cache``, pads the batch to
  a few fixed shapes (powers of two) and returns token ids. It is jitted and
  compiles once per (batch bucket, length bucket, beam size).

Each sentence gets its own length limit (its own source length + 50) and its
own termination test, and a finished sentence's state is frozen while the rest
of the batch runs on, so a sentence decodes the same alone and inside any
batch.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from transformer import fields
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID, bucket

# config.decode's defaults (transformer/fields.py): the paper's search (§6.1).
_DECODE = fields.defaults("decode")

# Score of an impossible hypothesis. Finite, so that sums never make NaNs.
NEG_INF = -1.0e9

StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]

# The key of a dict cache's per-sentence state, which beam search leaves alone.
SHARED = "shared"


def length_penalty(length, alpha):
  """lp(Y) = ((5 + |Y|) / 6)^alpha (GNMT; cited in §6.1)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _allowed_logprobs(logits, step, max_lengths, eos_id, min_length=0):
  """log_softmax of the logits, with impossible tokens set to NEG_INF.

  PAD_ID and BOS_ID are never targets, so they are never emitted (their
  probability mass is simply dropped, not renormalized). At a sentence's last
  allowed position only EOS may be emitted; the forced EOS keeps its own
  log-probability, so every hypothesis ends with EOS within the limit and is
  scored like any other. Before ``min_length`` real tokens EOS may not be
  emitted (unless the length limit forces it), the same way.

  Args:
    logits: (B, ..., V).
    step: () position being predicted.
    max_lengths: (B,) limits on |Y|.
    eos_id: EOS token id.
    min_length: fewest real tokens before EOS (0: EOS allowed at once).

  Returns:
    (logprobs (B, ..., V) float32, at_limit (B,) bool).
  """
  logprobs = jax.nn.log_softmax(logits.astype(jnp.float32))
  at_limit = step + 1 >= max_lengths  # (B,)
  vocab = jnp.arange(logprobs.shape[-1])
  shape = (-1,) + (1,) * (logprobs.ndim - 1)
  forbid = (vocab == PAD_ID) | (vocab == BOS_ID)
  forbid = forbid | (at_limit.reshape(shape) & (vocab != eos_id))
  # Deviation from the paper (decode.min_length > 0): no EOS before the
  # min_length-th real token. The paper's search (min_length=0) lets a
  # hypothesis end at once, and lp(|Y|=1) = 1 keeps all of its log-probability,
  # so a small model can prefer the empty translation.
  too_short = (step < min_length) & ~at_limit  # (B,)
  forbid = forbid | (too_short.reshape(shape) & (vocab == eos_id))
  return jnp.where(forbid, NEG_INF, logprobs), at_limit


def _previous_tokens(seqs, step, bos_id):
  """Token at position step - 1 along the last axis, BOS_ID at step 0."""
  prev = jax.lax.dynamic_index_in_dim(
      seqs, jnp.maximum(step - 1, 0), axis=seqs.ndim - 1, keepdims=False)
  return jnp.where(step == 0, bos_id, prev)


# ----------------------------------------------------------------------------
# Greedy search.
# ----------------------------------------------------------------------------


class GreedyState(NamedTuple):
  step: jax.Array  # () int32
  seqs: jax.Array  # (B, L) int32, PAD_ID after EOS
  logprobs: jax.Array  # (B,) float32, log P(Y | X)
  done: jax.Array  # (B,) bool
  cache: Any


def greedy_search(step_fn: StepFn, cache, max_lengths, *, max_length: int,
                  min_length: int = 0, eos_id: int = EOS_ID, bos_id: int = BOS_ID):
  """Picks the most probable token at each step until EOS.

  Args:
    step_fn: ``(tokens (B,), cache, step) -> (logits (B, V), cache)``.
    cache: pytree, batch leading on every leaf.
    max_lengths: (B,) int32, per-sentence limit on |Y| (EOS included), in
      [1, max_length].
    max_length: static L, the size of the output buffer.
    min_length: fewest real tokens before EOS, unless the sentence's limit
      is shorter (0: the paper's search; see ``_allowed_logprobs``).
    eos_id, bos_id: special token ids.

  Returns:
    (seqs (B, L) int32 ending with EOS then PAD_ID, logprobs (B,) float32).
  """
  max_lengths = jnp.clip(jnp.asarray(max_lengths, jnp.int32), 1, max_length)
  batch = max_lengths.shape[0]
  state = GreedyState(
      step=jnp.array(0, jnp.int32),
      seqs=jnp.full((batch, max_length), PAD_ID, jnp.int32),
      logprobs=jnp.zeros((batch,), jnp.float32),
      done=jnp.zeros((batch,), bool),
      cache=cache)

  def cond(s):
    return (s.step < max_length) & ~jnp.all(s.done)

  def body(s):
    prev = _previous_tokens(s.seqs, s.step, bos_id)  # (B,)
    logits, cache = step_fn(prev, s.cache, s.step)
    logprobs, _ = _allowed_logprobs(
        logits, s.step, max_lengths, eos_id, min_length)  # (B, V)
    token = jnp.argmax(logprobs, axis=-1).astype(jnp.int32)  # (B,)
    token_logprob = jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
    token = jnp.where(s.done, PAD_ID, token)
    seqs = jax.lax.dynamic_update_index_in_dim(s.seqs, token, s.step, axis=1)
    return GreedyState(
        step=s.step + 1,
        seqs=seqs,
        logprobs=s.logprobs + jnp.where(s.done, 0.0, token_logprob),
        done=s.done | (token == eos_id),
        cache=cache)

  state = jax.lax.while_loop(cond, body, state)
  return state.seqs, state.logprobs


# ----------------------------------------------------------------------------
# Beam search.
# ----------------------------------------------------------------------------


class BeamState(NamedTuple):
  step: jax.Array  # () int32, the position being predicted
  live_seqs: jax.Array  # (B, W, L) int32, hypotheses without EOS
  live_logprobs: jax.Array  # (B, W) float32, sorted best first
  finished_seqs: jax.Array  # (B, W, L) int32, hypotheses ending with EOS
  finished_scores: jax.Array  # (B, W) float32, log P / lp, sorted best first
  done: jax.Array  # (B,) bool, the finished set can no longer change
  cache: Any  # batch leading axis of size B * W, row b * W + j


def _map_per_hypothesis(fn, cache):
  """Applies ``fn`` to every leaf of ``cache`` except those under "shared"."""
  if isinstance(cache, dict) and SHARED in cache:
    return {key: value if key == SHARED else jax.tree.map(fn, value)
            for key, value in cache.items()}
  return jax.tree.map(fn, cache)


def _gather_beams(x, indices):
  """x: (B, M, ...), indices: (B, W) into M -> (B, W, ...)."""
  return jnp.take_along_axis(
      x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(step_fn: StepFn, cache, max_lengths, *, beam_size: int,
                alpha: float, max_length: int, min_length: int = 0,
                eos_id: int = EOS_ID, bos_id: int = BOS_ID):
  """Beam search; see ``beam_search_state``. Returns (seqs, scores)."""
  state = beam_search_state(
      step_fn, cache, max_lengths, beam_size=beam_size, alpha=alpha,
      max_length=max_length, min_length=min_length, eos_id=eos_id, bos_id=bos_id)
  return state.finished_seqs, state.finished_scores


def beam_search_state(step_fn: StepFn, cache, max_lengths, *, beam_size: int,
                      alpha: float, max_length: int, min_length: int = 0,
                      eos_id: int = EOS_ID, bos_id: int = BOS_ID,
                      early_termination: bool = True):
  """Beam search with the GNMT length penalty and early termination (§6.1).

  Each step extends the W live hypotheses by every token, keeps the 2W best
  candidates by log-probability, and from them:
    * the W best that do not end in EOS become the new live hypotheses;
    * those that end in EOS and rank among the W best candidates (the ones
      that would have stayed in the beam) are scored log P / lp(|Y|) and
      merged into the W best finished hypotheses. (tensor2tensor also lets
      EOS candidates ranked W+1..2W finish; we follow fairseq here, which
      makes beam size 1 with alpha = 0 exactly greedy decoding.)
  A sentence stops when no live hypothesis can beat its worst finished one:
  log-probabilities only fall as a hypothesis grows and lp(|Y|) is largest at
  the sentence's length limit, so live_logprob / lp(limit) bounds every score
  a live hypothesis can still reach (this needs alpha >= 0). At the limit
  only EOS is allowed, so every sentence finishes.

  Args:
    step_fn: ``(tokens (B*W,), cache, step) -> (logits (B*W, V), cache)``.
    cache: pytree with batch B leading on every leaf (tiled here to B * W),
      except a dict cache's "shared" entry, which is passed through as is.
    max_lengths: (B,) int32, per-sentence limit on |Y|, in [1, max_length].
    beam_size: W.
    alpha: length penalty exponent, >= 0 (0: no length normalization).
    max_length: static L, the size of the output buffers.
    min_length: fewest real tokens before EOS, unless the sentence's limit
      is shorter (0: the paper's search). The early-termination bound still
      holds: it only needs log-probabilities that fall as hypotheses grow.
    eos_id, bos_id: special token ids.
    early_termination: False runs every sentence to its length limit (for
      tests: the result must be the same).

  Returns:
    The final BeamState: finished_seqs (B, W, L) int32 and finished_scores
    (B, W) float32, best first; seqs end with EOS followed by PAD_ID. step is
    the number of decoding steps run.
  """
  max_lengths = jnp.clip(jnp.asarray(max_lengths, jnp.int32), 1, max_length)
  batch = max_lengths.shape[0]
  cache = _map_per_hypothesis(lambda x: jnp.repeat(x, beam_size, axis=0), cache)
  lp_at_limit = length_penalty(max_lengths, alpha)  # (B,)
  state = BeamState(
      step=jnp.array(0, jnp.int32),
      live_seqs=jnp.full((batch, beam_size, max_length), PAD_ID, jnp.int32),
      # Only beam 0 is real at the start; the others are copies that must
      # never be chosen.
      live_logprobs=jnp.tile(
          jnp.array([0.0] + [NEG_INF] * (beam_size - 1), jnp.float32), (batch, 1)),
      finished_seqs=jnp.full((batch, beam_size, max_length), PAD_ID, jnp.int32),
      finished_scores=jnp.full((batch, beam_size), NEG_INF, jnp.float32),
      done=jnp.zeros((batch,), bool),
      cache=cache)

  def cond(s):
    return (s.step < max_length) & ~jnp.all(s.done)

  def body(s):
    prev = _previous_tokens(s.live_seqs, s.step, bos_id)  # (B, W)
    logits, cache = step_fn(prev.reshape(batch * beam_size), s.cache, s.step)
    vocab_size = logits.shape[-1]
    logprobs, at_limit = _allowed_logprobs(
        logits.reshape(batch, beam_size, vocab_size), s.step, max_lengths,
        eos_id, min_length)  # (B, W, V)

    # The 2W best extensions of the W live hypotheses.
    candidates = s.live_logprobs[:, :, None] + logprobs  # (B, W, V)
    cand_logprobs, flat = jax.lax.top_k(
        candidates.reshape(batch, beam_size * vocab_size), 2 * beam_size)  # (B, 2W)
    cand_beam = flat // vocab_size  # (B, 2W)
    cand_token = (flat % vocab_size).astype(jnp.int32)  # (B, 2W)
    cand_seqs = _gather_beams(s.live_seqs, cand_beam)  # (B, 2W, L)
    cand_seqs = jax.lax.dynamic_update_index_in_dim(
        cand_seqs, cand_token, s.step, axis=2)
    cand_eos = cand_token == eos_id

    # Live: the W best candidates that do not end in EOS.
    live_logprobs, live_idx = jax.lax.top_k(
        jnp.where(cand_eos, NEG_INF, cand_logprobs), beam_size)  # (B, W)
    live_seqs = _gather_beams(cand_seqs, live_idx)
    live_beam = jnp.take_along_axis(cand_beam, live_idx, axis=1)  # (B, W)

    # Finished: EOS candidates ranked among the W best, scored log P / lp.
    rank = jnp.arange(2 * beam_size)
    new_scores = jnp.where(
        cand_eos & (rank < beam_size),
        cand_logprobs / length_penalty(s.step + 1, alpha), NEG_INF)
    finished_scores, fin_idx = jax.lax.top_k(
        jnp.concatenate([s.finished_scores, new_scores], axis=1), beam_size)
    finished_seqs = _gather_beams(
        jnp.concatenate([s.finished_seqs, cand_seqs], axis=1), fin_idx)

    # Early termination: the best live bound cannot beat the worst finished.
    best_live_bound = live_logprobs[:, 0] / lp_at_limit
    done = at_limit
    if early_termination:
      done = done | (finished_scores[:, -1] > best_live_bound)

    # Sentences that were already done keep their state unchanged.
    def keep(old, new):
      return jnp.where(s.done.reshape((-1,) + (1,) * (old.ndim - 1)), old, new)

    # Reorder the cache rows to follow their live hypotheses (row b*W + j).
    rows = (jnp.arange(batch)[:, None] * beam_size + live_beam).reshape(batch * beam_size)
    # The rows are always in range; mode="clip" makes this a plain gather
    # (the default "fill" adds a select over the whole cache at every step).
    cache = _map_per_hypothesis(
        lambda x: jnp.take(x, rows, axis=0, mode="clip"), cache)
    return BeamState(
        step=s.step + 1,
        live_seqs=keep(s.live_seqs, live_seqs),
        live_logprobs=keep(s.live_logprobs, live_logprobs),
        finished_seqs=keep(s.finished_seqs, finished_seqs),
        finished_scores=keep(s.finished_scores, finished_scores),
        done=s.done | done,
        cache=cache)

  return jax.lax.while_loop(cond, body, state)


# ----------------------------------------------------------------------------
# The Transformer's key/value cache: one decoder position at a time.
# ----------------------------------------------------------------------------


def init_cache(model, encoded, inputs, max_length, beam_size=1):
  """A cache for ``decode_step``, for ``beam_size`` hypotheses per sentence.

  The decoder self-attention keys and values sit in beam_size slots per
  sentence and position: at step t, the hypothesis in row j of its sentence
  writes the key and value of its new token to slot (t, j), entry
  t * beam_size + j of the cache's slot axis. A hypothesis's prefix is a
  path through these slots, and its row of ``origin`` records which slot
  holds each of its positions. When beam search reorders the
  hypotheses it moves only ``origin`` (L integers per hypothesis), never the
  keys and values, so a step's cost does not grow with the memory it would
  take to copy the cache. The encoder-decoder keys and values are computed
  once here, per sentence.

  Letters as in transformer/model.py, with W the beam size and L
  ``max_length``. Returns:
    {"origin": (B, L) int32, per hypothesis (beam search tiles it to
     B * W rows, row b * W + j, and reorders it with the beams),
     "shared": per sentence, never reordered:
       {"encoder_mask": (B, S) bool,
        "layers": [{"self_k_t": (B, H, K, L * W), "self_v": (B, H, L * W, J),
                    "cross_k_t": (B, H, K, S), "cross_v": (B, H, S, J)}, ...]}}
    Each entry of "layers" is a decoder layer's cache as ``DecoderLayer``
    reads and writes it.
  """
  batch = encoded.shape[0]
  layers = []
  for layer in model.decoder_layers:
    cross_k, cross_v = layer.cross_attention.project_kv(encoded)
    heads, _, d_k = cross_k.shape[1:]
    d_v = cross_v.shape[3]
    slots = max_length * beam_size
    layers.append({
        # Keys are stored transposed, (..., K, slots), so that Q K^T reads
        # them as they lie instead of transposing the cache every step.
        "self_k_t": jnp.zeros((batch, heads, d_k, slots), model.dtype),
        "self_v": jnp.zeros((batch, heads, slots, d_v), model.dtype),
        "cross_k_t": cross_k.swapaxes(2, 3),
        "cross_v": cross_v,
    })
  return {"origin": jnp.zeros((batch, max_length), jnp.int32),
          SHARED: {"encoder_mask": inputs != PAD_ID, "layers": layers}}


def decode_step(model, tokens_in, cache, step):
  """One decoder position for every hypothesis: float32 logits (B * W, V).

  ``tokens_in`` (B * W,) holds each hypothesis's previous token, row
  b * W + j for hypothesis j of sentence b (W is init_cache's beam_size; 1
  for greedy decoding). ``step`` is the position being predicted (0 for the
  first token, whose input is BOS). A sentence's hypotheses run as the
  queries of one pass of the model's own decoder (``Transformer.decode_step``),
  writing their keys and values to their slots of ``step``; this function
  only keeps the slots' bookkeeping (``origin``) and the masks it gives.
  Equal, to float tolerance, to the full forward pass's logits at that
  position.
  """
  shared = cache[SHARED]
  max_length = cache["origin"].shape[1]
  beams = shared["layers"][0]["self_v"].shape[2] // max_length
  batch = tokens_in.shape[0] // beams
  # This step's key and value go to each hypothesis's own slot.
  slot = jnp.arange(batch * beams, dtype=jnp.int32) % beams
  origin = jax.lax.dynamic_update_index_in_dim(cache["origin"], slot, step, 1)
  # Hypothesis q may attend to slot (t, j) when its position t is in slot j
  # and t <= step: (B, 1, W, L * W), keys ordered t * W + j.
  on_path = (origin.reshape(batch, beams, max_length, 1)
             == jnp.arange(beams))  # (B, q, L, j)
  self_mask = (on_path & (jnp.arange(max_length) <= step)[:, None]).reshape(
      batch, 1, beams, max_length * beams)
  cross_mask = shared["encoder_mask"][:, None, None, :]  # (B, 1, 1, S)
  positions = jnp.full((batch, beams), step, jnp.int32)
  # Hypothesis j's key and value go to slot (step, j), entry step * W + j.
  logits, layers = model.decode_step(tokens_in.reshape(batch, beams), positions, self_mask,
                                     cross_mask, shared["layers"], cache_index=step * beams)
  new_shared = {"encoder_mask": shared["encoder_mask"], "layers": layers}
  return logits.reshape(batch * beams, -1), {"origin": origin, SHARED: new_shared}


# ----------------------------------------------------------------------------
# Decoding a Transformer.
# ----------------------------------------------------------------------------


def search(step_fn: StepFn, cache, max_lengths, *, beam_size: int, alpha, max_length: int,
           min_length=0):
  """Greedy search for beam_size 1, beam search otherwise: the best hypothesis
  of each sentence, (seqs (B, L) int32, scores (B,) float32)."""
  if beam_size == 1:
    return greedy_search(step_fn, cache, max_lengths, max_length=max_length,
                         min_length=min_length)
  seqs, scores = beam_search(
      step_fn, cache, max_lengths, beam_size=beam_size, alpha=alpha,
      max_length=max_length, min_length=min_length)
  return seqs[:, 0], scores[:, 0]


@functools.partial(nnx.jit, static_argnames=("beam_size", "max_length"))
def decode_padded(model, inputs, max_lengths, alpha, min_length, *, beam_size, max_length):
  """Encodes once, builds the cache and searches (``search``), on (B, S)
  inputs already padded to a compiled shape; ``translate_batch`` pads them."""
  # Deterministic (no dropout) in a view: the caller's model keeps its mode.
  model = nnx.view(model, deterministic=True)
  encoded = model.encode(inputs)  # (B, S, D)
  cache = init_cache(model, encoded, inputs, max_length, beam_size=beam_size)
  return search(functools.partial(decode_step, model), cache, max_lengths,
                beam_size=beam_size, alpha=alpha, max_length=max_length,
                min_length=min_length)


def output_limits(inputs, max_extra_length: int):
  """Per-sentence limit on |Y|: source length (EOS included) + extra (§6.1)."""
  lengths = (np.asarray(inputs) != PAD_ID).sum(axis=1)
  return np.where(lengths > 0, lengths + max_extra_length, 1).astype(np.int32)


def translate_batch(model, inputs, *, beam_size: int = _DECODE.beam_size,
                    alpha: float = _DECODE.alpha,
                    max_extra_length: int = _DECODE.max_extra_length,
                    min_length: int = _DECODE.min_length, return_scores: bool = False):
  """Translates a batch of source sentences with a Transformer.

  Args:
    model: a ``transformer.model.Transformer`` (its train/eval mode is left
      untouched; decoding is always deterministic).
    inputs: (B, S) int source ids, each sentence ending with EOS_ID, PAD_ID
      after. Rows that are all padding (filler rows) decode to just EOS.
    beam_size: W; 1 means greedy decoding (alpha is then unused).
    alpha: length penalty exponent, lp(Y) = ((5 + |Y|) / 6)^alpha.
    max_extra_length: a sentence's output has at most (its source length,
      EOS included) + max_extra_length tokens, EOS included.
    min_length: a sentence's output has at least this many tokens before EOS
      (1: never an empty translation; 0: the paper's search, which may end at
      once). The length limit wins where it is shorter.
    return_scores: also return log P(Y | X) / lp(Y) (greedy: log P(Y | X)).

  Returns:
    ids: np.ndarray (B, L) int32, the best hypothesis per row, ending with
      EOS_ID then PAD_ID; L is the longest hypothesis in the batch. Use
      ``strip_eos`` to get a row's tokens.
    scores (only with return_scores): np.ndarray (B,) float32.

  Shapes are padded to powers of two (batch and source length, see
  ``bucket``), so a whole test set compiles only a few times, and each
  sentence's result does not depend on the rest of the batch.
  """
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
  if alpha < 0:
    raise ValueError(
        f"alpha must be >= 0 (the early-termination bound needs it), got "
        f"{alpha}.")
  if min_length < 0:
    raise ValueError(f"min_length must be >= 0, got {min_length}.")
  inputs = np.asarray(inputs, np.int32)
  if inputs.ndim != 2:
    raise ValueError(f"inputs must be (B, S) token ids, got shape "
                     f"{inputs.shape}.")
  batch, _ = inputs.shape
  lengths = (inputs != PAD_ID).sum(axis=1)
  padded_len = bucket(max(int(lengths.max(initial=0)), 1))
  padded_batch = bucket(batch, minimum=1)
  padded = np.full((padded_batch, padded_len), PAD_ID, np.int32)
  for i in range(batch):
    padded[i, :lengths[i]] = inputs[i][inputs[i] != PAD_ID]
  limits = np.ones((padded_batch,), np.int32)
  limits[:batch] = output_limits(inputs, max_extra_length)
  empty = (padded != PAD_ID).sum(axis=1) == 0
  padded[empty, 0] = EOS_ID  # Filler rows: a lone EOS, decoded to one step.
  max_length = padded_len + max_extra_length
  cfg = getattr(model, "cfg", None)
  if cfg is not None and cfg.positional_encoding == "learned" and (
      max_length > cfg.max_len):
    raise ValueError(
        f"Decoding up to {max_length} positions (source bucket {padded_len} + "
        f"max_extra_length {max_extra_length}) but the learned positional "
        f"embedding has model.max_len={cfg.max_len}; shorten the inputs or "
        "lower decode.max_extra_length.")
  seqs, scores = decode_padded(
      model, padded, limits, jnp.float32(alpha), jnp.int32(min_length),
      beam_size=beam_size, max_length=max_length)
  seqs = np.asarray(seqs)[:batch]
  scores = np.asarray(scores)[:batch]
  width = max(int((seqs != PAD_ID).sum(axis=1).max(initial=0)), 1)
  seqs = seqs[:, :width]
  return (seqs, scores) if return_scores else seqs


def strip_eos(ids) -> list[int]:
  """The tokens of one output row before its first EOS (and padding)."""
  out = []
  for t in np.asarray(ids).tolist():
    if t == EOS_ID or t == PAD_ID:
      break
    out.append(int(t))
  return out
