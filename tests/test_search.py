"""Tests for transformer/search.py: greedy and beam search (§6.1).

The search algorithms are first checked on hand-made step functions whose
next-token distribution depends on the whole prefix (through a hash carried in
the cache), against an exhaustive search over every possible output.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import search
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID

VOCAB = 7  # PAD, EOS, UNK, BOS and three more; PAD and BOS are never emitted.
EMITTABLE = [t for t in range(VOCAB) if t not in (PAD_ID, BOS_ID)]
MODULUS = 10007


def toy_step_fn(table):
  """Logits depend on the source id and the whole prefix through a hash."""

  def step_fn(tokens, cache, step):
    del step
    h = (cache["h"] * 31 + tokens + 1) % MODULUS  # (N,)
    return table[h], {"h": h}

  return step_fn


def toy_table(seed, scale=2.0, eos_bias=0.0):
  table = scale * jax.random.normal(jax.random.key(seed), (MODULUS, VOCAB))
  return table.at[:, EOS_ID].add(eos_bias)


def toy_cache(sources):
  return {"h": jnp.asarray(sources, jnp.int32)}


def sequence_logprob(table, source, seq):
  """log P(seq | source) under the toy model, with decode's masking rules."""
  step_fn = toy_step_fn(table)
  cache = toy_cache([source])
  prev, total = BOS_ID, 0.0
  for t, token in enumerate(seq):
    logits, cache = step_fn(jnp.array([prev]), cache, t)
    logprobs = np.asarray(jax.nn.log_softmax(logits[0]))
    total += float(logprobs[token])
    prev = token
  return total


def exhaustive_best(table, source, limit, alpha, min_length=0):
  """Best (sequence, score) over every Y ending in EOS with |Y| <= limit and
  at least min_length tokens before EOS (fewer only where the limit forces)."""
  best = (None, -math.inf)
  for length in range(min(min_length + 1, limit), limit + 1):
    for body in itertools.product(
        [t for t in EMITTABLE if t != EOS_ID], repeat=length - 1):
      seq = list(body) + [EOS_ID]
      score = sequence_logprob(table, source, seq) / (
          ((5 + length) / 6) ** alpha)
      if score > best[1]:
        best = (seq, score)
  return best


def run_beam(table, sources, limits, beam_size, alpha, max_length,
             early_termination=True, min_length=0):
  fn = jax.jit(functools.partial(
      search.beam_search_state, toy_step_fn(table), beam_size=beam_size,
      alpha=alpha, max_length=max_length, early_termination=early_termination,
      min_length=min_length))
  return fn(toy_cache(sources), jnp.asarray(limits, jnp.int32))


def run_greedy(table, sources, limits, max_length, min_length=0):
  fn = jax.jit(functools.partial(
      search.greedy_search, toy_step_fn(table), max_length=max_length,
      min_length=min_length))
  return fn(toy_cache(sources), jnp.asarray(limits, jnp.int32))


def strip(row):
  return [int(t) for t in row if t != PAD_ID]


def test_length_penalty_formula():
  np.testing.assert_allclose(search.length_penalty(1, 0.6), 1.0)
  np.testing.assert_allclose(
      search.length_penalty(7, 0.6), (12 / 6) ** 0.6, rtol=1e-6)
  np.testing.assert_allclose(search.length_penalty(20, 0.0), 1.0)


def test_bucket():
  assert [search.bucket(n) for n in (0, 1, 8, 9, 16, 17, 100)] == [
      8, 8, 8, 16, 16, 32, 128]
  assert [search.bucket(n, minimum=1) for n in (1, 2, 3, 5)] == [1, 2, 4, 8]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_equals_exhaustive_search(alpha):
  # With 5 emittable tokens (4 + EOS) and |Y| <= 4, at most 5 * 4^2 = 80
  # candidates exist at a step, so a beam of 128 keeps them all: beam search
  # must then find the exhaustive optimum, for every sentence of the batch.
  table = toy_table(0)
  sources, limits = [5, 11, 12], [4, 3, 1]
  state = run_beam(table, sources, limits, beam_size=128, alpha=alpha,
                   max_length=6)
  for i, (source, limit) in enumerate(zip(sources, limits, strict=True)):
    want_seq, want_score = exhaustive_best(table, source, limit, alpha)
    assert strip(state.finished_seqs[i, 0]) == want_seq
    np.testing.assert_allclose(state.finished_scores[i, 0], want_score,
                               rtol=1e-5)


@pytest.mark.slow
def test_beam_4_finds_exhaustive_best_and_beats_greedy():
  # On these toy sentences beam 4 finds the exhaustive optimum, and for at
  # least one of them greedy does not.
  table = toy_table(1)
  sources, limits = list(range(20, 30)), [4] * 10
  state = run_beam(table, sources, limits, beam_size=4, alpha=0.6,
                   max_length=4)
  greedy_seqs, _ = run_greedy(table, sources, limits, max_length=4)
  greedy_worse = 0
  for i, source in enumerate(sources):
    want_seq, want_score = exhaustive_best(table, source, 4, 0.6)
    assert strip(state.finished_seqs[i, 0]) == want_seq
    np.testing.assert_allclose(state.finished_scores[i, 0], want_score,
                               rtol=1e-5)
    greedy_worse += strip(greedy_seqs[i]) != want_seq
  assert greedy_worse >= 1


def test_greedy_picks_argmax_until_eos():
  table = toy_table(2)
  seqs, logprobs = run_greedy(table, [3, 4], [6, 2], max_length=8)
  for i, (source, limit) in enumerate(zip([3, 4], [6, 2], strict=True)):
    step_fn, cache = toy_step_fn(table), toy_cache([source])
    prev, want, total = BOS_ID, [], 0.0
    for t in range(limit):
      logits, cache = step_fn(jnp.array([prev]), cache, t)
      lp = np.array(jax.nn.log_softmax(logits[0]))
      lp[[PAD_ID, BOS_ID]] = -np.inf
      if t == limit - 1:
        lp[[x for x in range(VOCAB) if x != EOS_ID]] = -np.inf
      prev = int(np.argmax(lp))
      want.append(prev)
      total += lp[prev]
      if prev == EOS_ID:
        break
    assert strip(seqs[i]) == want
    assert want[-1] == EOS_ID
    np.testing.assert_allclose(logprobs[i], total, rtol=1e-5)


def test_beam_1_alpha_0_equals_greedy():
  table = toy_table(3)
  sources = list(range(40, 56))
  limits = [1, 2, 5, 9] * 4
  state = run_beam(table, sources, limits, beam_size=1, alpha=0.0,
                   max_length=10)
  greedy_seqs, greedy_logprobs = run_greedy(table, sources, limits,
                                            max_length=10)
  np.testing.assert_array_equal(state.finished_seqs[:, 0], greedy_seqs)
  np.testing.assert_allclose(state.finished_scores[:, 0], greedy_logprobs,
                             rtol=1e-6)


def step_table_fn(probs_by_step):
  """A step function whose distribution depends only on the step."""
  logits = jnp.log(jnp.asarray(probs_by_step, jnp.float32) + 1e-30)

  def step_fn(tokens, cache, step):
    return jnp.broadcast_to(logits[step], (tokens.shape[0], VOCAB)), cache

  return step_fn


def test_length_penalty_changes_the_choice_as_the_formula_says():
  # Step 0: P(EOS) = P(a) = 0.5. Step 1: P(EOS) = 0.9, P(a) = 0.1. Then EOS.
  # Y1 = [EOS]:    log 0.5 / lp(1)
  # Y2 = [a, EOS]: (log 0.5 + log 0.9) / lp(2)
  # Y2 wins once lp(2) / lp(1) = (7/6)^alpha > log(0.45) / log(0.5).
  a = 4
  probs = np.zeros((4, VOCAB))
  probs[0, [EOS_ID, a]] = 0.5
  probs[1, [EOS_ID, a]] = [0.9, 0.1]
  probs[2:, EOS_ID] = 1.0
  step_fn = step_table_fn(probs)
  threshold = math.log(math.log(0.45) / math.log(0.5)) / math.log(7 / 6)
  assert 0.9 < threshold < 0.95  # 0.9163...

  def best(alpha):
    fn = jax.jit(functools.partial(
        search.beam_search, step_fn, beam_size=2, alpha=alpha, max_length=4))
    seqs, scores = fn({"dummy": jnp.zeros((1,))}, jnp.array([4]))
    return strip(seqs[0, 0]), float(scores[0, 0])

  seq, score = best(threshold - 0.05)
  assert seq == [EOS_ID]
  np.testing.assert_allclose(score, math.log(0.5), rtol=1e-5)
  seq, score = best(threshold + 0.05)
  assert seq == [a, EOS_ID]
  np.testing.assert_allclose(
      score, math.log(0.45) / (7 / 6) ** (threshold + 0.05), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_early_termination_equals_running_to_max_length(alpha):
  table = toy_table(4, eos_bias=2.0)  # EOS likely: sentences finish early.
  sources = list(range(60, 68))
  limits = [12] * 8
  early = run_beam(table, sources, limits, beam_size=4, alpha=alpha,
                   max_length=12)
  full = run_beam(table, sources, limits, beam_size=4, alpha=alpha,
                  max_length=12, early_termination=False)
  np.testing.assert_array_equal(early.finished_seqs, full.finished_seqs)
  np.testing.assert_allclose(early.finished_scores, full.finished_scores)
  assert int(full.step) == 12
  assert int(early.step) < 12  # It did stop early.


@pytest.mark.slow
def test_sentence_decodes_the_same_alone_and_in_a_batch():
  table = toy_table(5)
  sources = [70, 71, 72, 73, 74]
  limits = [3, 9, 5, 1, 7]
  batch = run_beam(table, sources, limits, beam_size=4, alpha=0.6,
                   max_length=16)
  greedy_batch, _ = run_greedy(table, sources, limits, max_length=16)
  for i, (source, limit) in enumerate(zip(sources, limits, strict=True)):
    alone = run_beam(table, [source], [limit], beam_size=4, alpha=0.6,
                     max_length=limit)
    np.testing.assert_array_equal(
        batch.finished_seqs[i, :, :limit], alone.finished_seqs[0])
    np.testing.assert_array_equal(batch.finished_scores[i],
                                  alone.finished_scores[0])
    greedy_alone, _ = run_greedy(table, [source], [limit], max_length=limit)
    np.testing.assert_array_equal(greedy_batch[i, :limit], greedy_alone[0])


def test_output_respects_per_sentence_limit_and_never_emits_pad_or_bos():
  table = toy_table(6, scale=0.1)  # Nearly uniform: EOS is rarely chosen.
  limits = [1, 2, 3, 6]
  state = run_beam(table, [1, 2, 3, 4], limits, beam_size=3, alpha=0.6,
                   max_length=6)
  # With |Y| <= 1 only [EOS] exists: the other two slots stay empty.
  np.testing.assert_array_equal(state.finished_scores[0, 1:], search.NEG_INF)
  for i, limit in enumerate(limits):
    for k in range(1 if limit == 1 else 3):
      seq = strip(state.finished_seqs[i, k])
      assert 1 <= len(seq) <= limit
      assert seq[-1] == EOS_ID and EOS_ID not in seq[:-1]
      assert BOS_ID not in seq
    assert np.all(np.diff(np.asarray(state.finished_scores[i])) <= 0)


# ----------------------------------------------------------------------------
# decode.min_length: no empty translation (a deviation from the paper's search).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("min_length", [1, 2])
def test_min_length_beam_equals_exhaustive_search_over_long_enough_outputs(min_length):
  # EOS has most of the mass at every step: the paper's search (min_length 0)
  # ends at once, min_length forbids EOS before that many tokens, and the
  # wide beam finds the exhaustive optimum among the outputs it allows.
  table = toy_table(7, eos_bias=6.0)
  sources, limits = [5, 11, 12], [4, 3, 1]
  paper = run_beam(table, sources, limits, beam_size=128, alpha=0.6, max_length=6)
  state = run_beam(table, sources, limits, beam_size=128, alpha=0.6, max_length=6,
                   min_length=min_length)
  for i, (source, limit) in enumerate(zip(sources, limits, strict=True)):
    assert strip(paper.finished_seqs[i, 0]) == [EOS_ID]
    want_seq, want_score = exhaustive_best(table, source, limit, 0.6, min_length)
    assert strip(state.finished_seqs[i, 0]) == want_seq
    np.testing.assert_allclose(state.finished_scores[i, 0], want_score, rtol=1e-5)
    # The limit wins over min_length: |Y| <= 1 leaves only [EOS].
    assert len(want_seq) == min(min_length + 1, limit)


@pytest.mark.parametrize("min_length", [0, 1, 3])
def test_min_length_greedy_and_beam_1_follow_the_same_rule(min_length):
  table = toy_table(8, eos_bias=4.0)
  sources, limits = list(range(30, 38)), [6, 6, 6, 6, 2, 1, 6, 6]
  greedy, logprobs = run_greedy(table, sources, limits, max_length=6,
                                min_length=min_length)
  beam = run_beam(table, sources, limits, beam_size=1, alpha=0.0, max_length=6,
                  min_length=min_length)
  np.testing.assert_array_equal(beam.finished_seqs[:, 0], greedy)
  np.testing.assert_allclose(beam.finished_scores[:, 0], logprobs, rtol=1e-5)
  for i, limit in enumerate(limits):
    seq = strip(greedy[i])
    assert len(seq) - 1 >= min(min_length, limit - 1)
    np.testing.assert_allclose(logprobs[i], sequence_logprob(table, sources[i], seq),
                               rtol=1e-5)
  if min_length == 0:  # With this EOS bias the paper's greedy search ends at once.
    assert sum(strip(g) == [EOS_ID] for g in greedy) >= 4


def eos_loving_model():
  """A tiny Transformer whose decoder output is the same vector u at every
  position, with EOS's output column equal to u: EOS has nearly all the mass
  at every step, as in a small model that learned to end early."""
  model = tiny_model(share_output_embedding=False)
  norm = model.decoder_layers[-1].residual_3.norm  # Post-LN: the decoder's last op.
  norm.scale[...] = jnp.zeros_like(norm.scale[...])
  norm.bias[...] = jnp.ones_like(norm.bias[...])  # u = 1.
  model.output_projection[...] = model.output_projection[...].at[:, EOS_ID].set(1.0)
  return model


@pytest.mark.slow
@pytest.mark.parametrize("beam_size", [1, 4])
def test_model_that_prefers_eos_gives_no_empty_translation_by_default(beam_size):
  model = eos_loving_model()
  inputs = np.array([[4, 5, 6, EOS_ID], [6, EOS_ID, PAD_ID, PAD_ID]])
  first = jax.nn.softmax(_forward(model, inputs, np.full((2, 1), EOS_ID))[:, 0])
  assert np.all(np.asarray(first)[:, EOS_ID] > 0.99)  # Most of the first-step mass.
  paper = search.translate_batch(model, inputs, beam_size=beam_size, min_length=0)
  assert [search.strip_eos(row) for row in paper] == [[], []]
  default = search.translate_batch(model, inputs, beam_size=beam_size)
  # One real token (the most probable one after EOS), then EOS.
  assert [len(search.strip_eos(row)) for row in default] == [1, 1]
  two = search.translate_batch(model, inputs, beam_size=beam_size, min_length=2)
  assert [len(search.strip_eos(row)) for row in two] == [2, 2]


def test_output_limits_and_strip_eos():
  inputs = np.array([[5, 6, EOS_ID, 0], [EOS_ID, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(search.output_limits(inputs, 50), [53, 51, 1])
  assert search.strip_eos([7, 8, EOS_ID, 0, 0]) == [7, 8]
  assert search.strip_eos([EOS_ID, 0]) == []


# ----------------------------------------------------------------------------
# On a tiny real Transformer (random weights).
# ----------------------------------------------------------------------------

MODEL_VOCAB = 7  # Emittable: EOS and 4 word pieces (PAD and BOS never are).


def tiny_model(vocab_size=MODEL_VOCAB, seed=0, **overrides):
  from flax import nnx

  from configs import common
  from transformer import model as model_lib

  cfg = common.model_config("base")
  cfg.update(dict(vocab_size=vocab_size, num_layers=2, d_model=16, d_ff=32,
                  num_heads=2, d_k=4, d_v=4, max_len=128))
  cfg.update(overrides)
  return model_lib.Transformer(cfg, rngs=nnx.Rngs(seed))


def _forward(model, inputs, targets):
  from flax import nnx

  return nnx.jit(lambda m, i, t: m(i, t))(model, jnp.asarray(inputs), jnp.asarray(targets))


def model_exhaustive_best(model, source, limit, alpha, min_length=0):
  """Best (sequence, score) over every Y with |Y| <= limit and at least
  min_length tokens before EOS, scored by the teacher-forced forward pass (no
  cache)."""
  words = [t for t in range(MODEL_VOCAB) if t not in (PAD_ID, BOS_ID, EOS_ID)]
  seqs = [list(body) + [EOS_ID] for n in range(min(min_length, limit - 1), limit)
          for body in itertools.product(words, repeat=n)]
  targets = np.zeros((len(seqs), 4), np.int32)  # One shape: one compilation.
  for i, s in enumerate(seqs):
    targets[i, :len(s)] = s
  inputs = np.tile(np.asarray(source, np.int32), (len(seqs), 1))
  model.eval()
  logprobs = jax.nn.log_softmax(_forward(model, inputs, targets))
  token_lp = np.take_along_axis(np.asarray(logprobs), targets[..., None], -1)[..., 0]
  totals = np.where(targets != PAD_ID, token_lp, 0.0).sum(axis=1)
  lengths = (targets != PAD_ID).sum(axis=1)
  scores = totals / ((5 + lengths) / 6) ** alpha
  best = int(np.argmax(scores))
  return seqs[best], float(scores[best])


def model_search(model, inputs, limits, search_fn, max_length, **kwargs):
  """Runs a search function of search.py on the model's cache directly."""
  model.eval()
  inputs = jnp.asarray(inputs, jnp.int32)
  cache = search.init_cache(model, model.encode(inputs), inputs, max_length,
                            beam_size=kwargs.get("beam_size", 1))
  step_fn = functools.partial(search.decode_step, model)
  fn = jax.jit(functools.partial(search_fn, step_fn, max_length=max_length, **kwargs))
  return fn(cache, jnp.asarray(limits, jnp.int32))


@pytest.mark.parametrize("alpha,min_length", [(0.0, 0), (0.6, 0), (3.0, 0), (0.0, 1),
                                              (0.6, 2)])
@pytest.mark.slow
def test_model_wide_beam_equals_exhaustive_search(alpha, min_length):
  # Limits |Y| <= 4 and 3: at most 16 live prefixes and 80 candidates per
  # step, so a beam of 128 is exhaustive.
  model = tiny_model()
  inputs = np.array([[4, 5, EOS_ID], [6, EOS_ID, PAD_ID]])
  ids, scores = search.translate_batch(
      model, inputs, beam_size=128, alpha=alpha, max_extra_length=1,
      min_length=min_length, return_scores=True)
  for i, (source, limit) in enumerate([(inputs[0], 4), (inputs[1], 3)]):
    want_seq, want_score = model_exhaustive_best(model, source, limit, alpha, min_length)
    assert search.strip_eos(ids[i]) + [EOS_ID] == want_seq
    np.testing.assert_allclose(scores[i], want_score, rtol=1e-5)


@pytest.mark.slow
def test_model_length_penalty_moves_the_choice_to_longer_outputs():
  model = tiny_model()
  inputs = np.array([[4, 5, EOS_ID], [6, EOS_ID, PAD_ID]])
  lengths = {}
  for alpha in (0.0, 3.0):
    ids = search.translate_batch(model, inputs, beam_size=128, alpha=alpha,
                                 max_extra_length=1)
    lengths[alpha] = [len(search.strip_eos(row)) for row in ids]
  # Bigger alpha divides long hypotheses' (negative) log-probabilities more.
  assert all(a <= b for a, b in zip(lengths[0.0], lengths[3.0], strict=True))
  assert lengths[0.0] != lengths[3.0]


@pytest.mark.slow
def test_model_beam_1_alpha_0_equals_greedy():
  model = tiny_model(vocab_size=19, seed=1)
  rng = np.random.default_rng(0)
  inputs = rng.integers(4, 19, size=(6, 5)).astype(np.int32)
  inputs[:, -1] = EOS_ID
  inputs[3, 2:] = [EOS_ID, 0, 0]
  limits = search.output_limits(inputs, 10)
  seqs, scores = model_search(model, inputs, limits, search.beam_search,
                              max_length=15, beam_size=1, alpha=0.0)
  greedy, logprobs = model_search(model, inputs, limits, search.greedy_search,
                                  max_length=15)
  np.testing.assert_array_equal(seqs[:, 0], greedy)
  np.testing.assert_allclose(scores[:, 0], logprobs, rtol=1e-5)
  # translate_batch with beam_size=1 is this greedy decoding.
  ids = search.translate_batch(model, inputs, beam_size=1, max_extra_length=10,
                               min_length=0)
  np.testing.assert_array_equal(ids, np.asarray(greedy)[:, :ids.shape[1]])


@pytest.mark.slow
def test_model_early_termination_equals_running_to_max_length():
  model = tiny_model(vocab_size=19, seed=2)
  rng = np.random.default_rng(1)
  inputs = rng.integers(4, 19, size=(4, 4)).astype(np.int32)
  inputs[:, -1] = EOS_ID
  limits = search.output_limits(inputs, 8)
  runs = [model_search(model, inputs, limits, search.beam_search_state,
                       max_length=12, beam_size=4, alpha=0.6,
                       early_termination=early) for early in (True, False)]
  np.testing.assert_array_equal(runs[0].finished_seqs, runs[1].finished_seqs)
  np.testing.assert_allclose(runs[0].finished_scores, runs[1].finished_scores)
  assert int(runs[1].step) == 12


@pytest.mark.slow
@pytest.mark.parametrize("beam_size", [1, 4])
def test_model_sentence_decodes_the_same_alone_and_in_a_padded_batch(beam_size):
  model = tiny_model(vocab_size=19, seed=3)
  rng = np.random.default_rng(2)
  lengths = [3, 12, 1]  # Source lengths, EOS included: buckets 8 and 16.
  inputs = np.zeros((4, 14), np.int32)  # Row 3 is an all-padding filler row.
  for i, n in enumerate(lengths):
    inputs[i, :n - 1] = rng.integers(4, 19, size=n - 1)
    inputs[i, n - 1] = EOS_ID
  batch = search.translate_batch(model, inputs, beam_size=beam_size,
                                 max_extra_length=6)
  assert search.strip_eos(batch[3]) == [] and batch[3, 0] == EOS_ID
  for i, n in enumerate(lengths):
    alone = search.translate_batch(model, inputs[i:i + 1, :n],
                                   beam_size=beam_size, max_extra_length=6)
    assert search.strip_eos(batch[i]) == search.strip_eos(alone[0])
    assert len(search.strip_eos(alone[0])) < n + 6


@pytest.mark.slow
def test_translate_batch_is_deterministic_and_keeps_the_model_mode():
  model = tiny_model(vocab_size=19, seed=4, dropout_rate=0.5)
  inputs = np.array([[5, 6, 7, EOS_ID]])
  model.eval()
  want = search.translate_batch(model, inputs, beam_size=4)
  model.train()  # Dropout on: decoding must still not use it.
  np.testing.assert_array_equal(search.translate_batch(model, inputs, beam_size=4), want)
  assert model.source_dropout.deterministic is False


@pytest.mark.slow
def test_translate_batch_rejects_bad_arguments():
  model = tiny_model()
  with pytest.raises(ValueError, match="beam_size must be >= 1"):
    search.translate_batch(model, np.array([[4, EOS_ID]]), beam_size=0)
  with pytest.raises(ValueError, match="alpha must be >= 0"):
    search.translate_batch(model, np.array([[4, EOS_ID]]), alpha=-1.0)
  with pytest.raises(ValueError, match="min_length"):
    search.translate_batch(model, np.array([[4, EOS_ID]]), min_length=-1)
  learned = tiny_model(positional_encoding="learned", max_len=16)
  with pytest.raises(ValueError, match="model.max_len=16"):
    search.translate_batch(learned, np.array([[4, EOS_ID]]), max_extra_length=50)


def test_beam_search_neither_tiles_nor_reorders_the_shared_cache_entry():
  batch, beams, vocab = 2, 3, 6
  seen = []

  def step_fn(tokens, cache, step):
    seen.append((cache["per_row"].shape, cache["shared"].shape))
    logits = jnp.zeros((tokens.shape[0], vocab)).at[:, EOS_ID].set(1.0)
    return logits, {"per_row": cache["per_row"] + 1, "shared": cache["shared"] + 1}

  cache = {"per_row": jnp.zeros((batch, 5)), "shared": jnp.zeros((batch, 7))}
  search.beam_search(step_fn, cache, jnp.array([3, 3]), beam_size=beams, alpha=0.6,
                     max_length=4)
  assert seen and all(shapes == ((batch * beams, 5), (batch, 7)) for shapes in seen)
