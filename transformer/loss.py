"""The training objective: label-smoothed cross-entropy (§5.4).

The loss functions return *sums* over target tokens together with the token
count, never means. Gradient accumulation sums these over micro-batches and
divides once (see ``transformer/train.py``), so k micro-batches of B tokens
give the same update as one batch of kB tokens.

  cross_entropy_sums          the loss of given logits (B, T, V): the formula
  chunked_cross_entropy_sums  the same sums from the decoder's output (B, T, D)
                              and the pre-softmax weights, a chunk of target
                              positions at a time, so that float32 logits are
                              never held for the whole batch (training)
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from transformer.tokens import PAD_ID


def smoothed_targets_entropy(vocab_size: int, label_smoothing: float) -> float:
  """Entropy H(q) of the label-smoothed target distribution q (a constant)."""
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  entropy = -confidence * np.log(confidence) if confidence > 0 else 0.0
  if low_confidence > 0:
    entropy -= (vocab_size - 1) * low_confidence * np.log(low_confidence)
  return float(entropy)


def cross_entropy_sums(
    logits: jax.Array,
    targets: jax.Array,
    label_smoothing: float,
    weights: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Label-smoothed cross-entropy (§5.4), summed over real target tokens.

  The smoothed target distribution q puts 1 - eps_ls on the reference token
  and eps_ls / (V - 1) on each of the other V - 1 tokens (tensor2tensor's
  form). The training loss is the cross-entropy against the whole of q,

    loss = -sum_v q(v) log p(v) - H(q),

  where subtracting the constant entropy H(q) leaves the gradient unchanged
  and makes the loss a KL divergence that is 0 for a perfect fit (so logged
  losses are comparable across eps_ls). The unsmoothed NLL -log p(y) and the
  argmax accuracy are returned too.

  Args:
    logits: (B, T, V) float32 pre-softmax scores.
    targets: (B, T) int reference ids, PAD_ID on padding.
    label_smoothing: eps_ls in [0, 1).
    weights: optional (B, T) extra mask (e.g. filler rows of an eval batch);
      padding (targets == PAD_ID) is always masked.

  Returns:
    Scalars (float32): "loss_sum", "nll_sum", "correct" (summed over real
    tokens) and "num_tokens" (the count of real tokens).
  """
  return _cross_entropy(logits, targets, label_smoothing, weights)[0]


def _cross_entropy(logits, targets, label_smoothing, weights, one_pass=False):
  """``cross_entropy_sums``, and what its gradient needs: (sums, lse, rows),
  lse the (B T,) log-normalizers, rows = (logits (B T, V), targets, mask).
  ``one_pass``: the row statistics from ``_row_statistics`` (not
  differentiable: ``_loss_sum_and_logit_grad`` gives the gradient)."""
  vocab_size = logits.shape[-1]
  mask = (targets != PAD_ID).astype(jnp.float32)  # (B, T)
  if weights is not None:
    mask = mask * weights.astype(jnp.float32)
  # One row per token, (B T, V): compiled for a GPU, the gradient's matmuls
  # then read the logits' gradient as it is, not a padded copy of it.
  logits = logits.astype(jnp.float32).reshape(-1, vocab_size)
  targets, mask = targets.reshape(-1), mask.reshape(-1)
  if one_pass:
    max_logit, lse, logit_sum, target_logit = _row_statistics(logits, targets)
  else:
    # Everything below is written with log p(v) = logit_v - logsumexp(logits),
    # so that no (B, T, V) log-probability array is materialized: on a 37000
    # vocabulary this makes the loss's forward and backward about 2.5x faster.
    max_logit = jax.lax.stop_gradient(jnp.max(logits, axis=-1))  # (B T,)
    lse = max_logit + jnp.log(jnp.sum(jnp.exp(logits - max_logit[:, None]), axis=-1))
    target_logit = _take_target(logits, targets)  # (B T,)
    logit_sum = jnp.sum(logits, axis=-1)
  sums = _sums(vocab_size, label_smoothing, max_logit, lse, logit_sum, target_logit, mask)
  return sums, lse, (logits, targets, mask)


def _sums(vocab_size, label_smoothing, max_logit, lse, logit_sum, target_logit, mask):
  """The summed loss, NLL, correct count and token count from each row's
  max, logsumexp, sum of logits and target logit (B T,)."""
  nll = lse - target_logit  # -log p(y)
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  # -sum_v q(v) log p(v) = confidence * nll + low_confidence * sum_{v != y} -log p(v),
  # sum_{v != y} -log p(v) = (V - 1) lse - (sum_v logit_v - logit_y).
  others = (vocab_size - 1) * lse - (logit_sum - target_logit)
  smoothed = confidence * nll + low_confidence * others
  loss = smoothed - smoothed_targets_entropy(vocab_size, label_smoothing)  # (B T,)
  # The reference is the argmax (ties, measure zero for float logits, count as correct).
  correct = (target_logit >= max_logit).astype(jnp.float32)  # (B T,)
  return {
      "loss_sum": jnp.sum(loss * mask),
      "nll_sum": jnp.sum(nll * mask),
      "correct": jnp.sum(correct * mask),
      "num_tokens": jnp.sum(mask),
  }


def _row_statistics(logits, targets):
  """(max, logsumexp, sum, target logit) of each row of logits (N, V) in one
  read of the logits: a variadic reduction whose running state is (max,
  sum of exp(x - max), sum, target), the sum of exponentials rescaled when
  the max grows (the online softmax normalizer)."""
  is_target = jnp.arange(logits.shape[1]) == targets[:, None]

  def combine(a, b):
    (m_a, s_a, sum_a, t_a), (m_b, s_b, sum_b, t_b) = a, b
    m = jnp.maximum(m_a, m_b)
    return m, s_a * jnp.exp(m_a - m) + s_b * jnp.exp(m_b - m), sum_a + sum_b, t_a + t_b

  lowest = jnp.finfo(jnp.float32).min  # Finite: exp(lowest - lowest) is 1, not NaN.
  max_logit, exp_sum, logit_sum, target_logit = jax.lax.reduce(
      (logits, jnp.ones_like(logits), logits, jnp.where(is_target, logits, 0.0)),
      (jnp.float32(lowest), jnp.float32(0), jnp.float32(0), jnp.float32(0)),
      combine, (1,))
  return max_logit, max_logit + jnp.log(exp_sum), logit_sum, target_logit


def _loss_sum_and_logit_grad(logits, targets, label_smoothing, weights):
  """``cross_entropy_sums`` and d loss_sum / d logits (B T, V), written out:

    d loss / d logit_v = (c + e (V - 1)) p(v) - e - (c - e) [v = y]

  per real token (c = 1 - eps_ls, e = eps_ls / (V - 1)): one elementwise pass
  over the logits. The sums read the logits once (``_row_statistics``)
  instead of once for each of the max, the normalizer, the sum of the logits
  and the target logit: on a GPU or TPU, where this loss is bound by memory
  traffic (float32 (B T, V)), that is most of the loss's bytes; a CPU keeps
  the autodiff form (two exponentials per logit here)."""
  vocab_size = logits.shape[-1]
  sums, lse, (logits, targets, mask) = _cross_entropy(logits, targets, label_smoothing,
                                                      weights, one_pass=True)
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  probs = jnp.exp(logits - lse[:, None])
  is_target = jnp.arange(vocab_size) == targets[:, None]
  grad = ((confidence + low_confidence * (vocab_size - 1)) * probs - low_confidence
          - jnp.where(is_target, confidence - low_confidence, 0.0))
  return sums, grad * mask[:, None]


@jax.custom_vjp
def _take_target(logits, targets):
  """logits[n, targets[n]] of logits (N, V): a gather of N values, whose
  gradient is written as a one-hot select (N, V), which XLA fuses into the
  loss's other elementwise gradient instead of scattering into zeros."""
  return jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]


def _take_target_fwd(logits, targets):
  return _take_target(logits, targets), (jnp.zeros((0, logits.shape[1]), logits.dtype),
                                         targets)


def _take_target_bwd(residuals, g):
  empty, targets = residuals  # empty (0, V) carries V.
  is_target = jnp.arange(empty.shape[1]) == targets[:, None]  # (N, V)
  return jnp.where(is_target, g[:, None], 0.0).astype(empty.dtype), None


_take_target.defvjp(_take_target_fwd, _take_target_bwd)


def chunked_cross_entropy_sums(
    hidden: jax.Array,
    w: jax.Array,
    project: Callable[[jax.Array, jax.Array], jax.Array],
    targets: jax.Array,
    label_smoothing: float,
    weights: jax.Array | None = None,
    *,
    chunk_tokens: int = 0,
    one_pass: bool = False,
) -> dict[str, jax.Array]:
  """``cross_entropy_sums(project(w, hidden), ...)``, one chunk of target
  positions at a time.

  The logits of a whole batch are its largest array: float32 (B, T, V), 148
  kB per token with a 37000 vocabulary, written and read several times by
  the loss and its gradient. Here the positions are cut into chunks of
  columns, (B, T_c) with B T_c <= ``chunk_tokens``, and ``lax.scan`` computes
  one chunk at a time: its logits, its sums by ``cross_entropy_sums`` and,
  when differentiated, the gradients of its "loss_sum" with respect to
  ``hidden`` and ``w`` (autodiff, or with ``one_pass`` the logits' gradient
  written out, then autodiff of ``project``), then drops its logits. Since
  the loss is a sum over positions, the backward pass only scales these
  gradients by the incoming cotangent: the logits are computed once per chunk
  and never held for more than one chunk.

  Only "loss_sum", the training objective, is differentiable: "nll_sum",
  "correct" and "num_tokens" have zero gradient.

  Args:
    hidden: (B, T, D) decoder output, before the pre-softmax projection.
    w: the pre-softmax weights, differentiated along with ``hidden``.
    project: ``project(w, h)``, float32 logits (B, T_c, V) of h (B, T_c, D).
    targets, label_smoothing, weights: as for ``cross_entropy_sums``.
    chunk_tokens: at most this many positions per chunk (but at least one
      column of B positions); 0: the whole batch in one chunk.
    one_pass: read each chunk's logits once for all its row statistics
      (``_row_statistics``) and write the logits' gradient out: for GPUs and
      TPUs, where the loss is bound by memory traffic. Equal to rounding.

  Returns:
    The sums of ``cross_entropy_sums`` over all chunks.
  """
  batch, length = targets.shape
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  columns = min(max(chunk_tokens // batch, 1), length) if chunk_tokens > 0 else length
  num_chunks = math.ceil(length / columns)

  def chunks(x, fill):  # (B, T, ...) -> (num_chunks, B, T_c, ...), padded with fill.
    chunk_length = math.ceil(length / num_chunks)
    pad = [(0, 0), (0, num_chunks * chunk_length - length)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad, constant_values=fill)
    return jnp.moveaxis(x.reshape(batch, num_chunks, chunk_length, *x.shape[2:]), 1, 0)

  # Padded positions have target PAD_ID: masked like any padding.
  return _sums_over_chunks(project, label_smoothing, one_pass, w, chunks(hidden, 0),
                           chunks(targets, PAD_ID), chunks(weights, 0))


def _zero_sums():
  return {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "nll_sum", "correct",
                                                   "num_tokens")}


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _sums_over_chunks(project, label_smoothing, one_pass, w, hidden, targets, weights):
  """The sums over chunks hidden (C, B, T_c, D), targets and weights (C, B, T_c)."""
  def step(total, chunk):
    h, t, m = chunk
    sums = _cross_entropy(project(w, h), t, label_smoothing, m, one_pass)[0]
    return _add(total, sums), None

  return jax.lax.scan(step, _zero_sums(), (hidden, targets, weights))[0]


def _sums_over_chunks_fwd(project, label_smoothing, one_pass, w, hidden, targets, weights):
  def chunk_loss(w, h, t, m):
    sums = cross_entropy_sums(project(w, h), t, label_smoothing, m)
    return sums["loss_sum"], sums

  def chunk(h, t, m):  # Its sums and d loss_sum / d w, d loss_sum / d h.
    if not one_pass:  # Autodiff of the formula: the CPU's program, as before one_pass.
      (_, sums), (g_w, g_h) = jax.value_and_grad(chunk_loss, argnums=(0, 1),
                                                 has_aux=True)(w, h, t, m)
      return sums, g_w, g_h
    logits, project_vjp = jax.vjp(project, w, h)
    sums, grad_logits = _loss_sum_and_logit_grad(logits, t, label_smoothing, m)
    g_w, g_h = project_vjp(grad_logits.reshape(logits.shape).astype(logits.dtype))
    return sums, g_w, g_h

  if hidden.shape[0] == 1:  # No loop, and no sum of d w over chunks.
    sums, grad_w, grad_h = chunk(hidden[0], targets[0], weights[0])
    return sums, (grad_w, grad_h[None])

  def step(carry, xs):
    total, grad_w = carry
    sums, g_w, g_h = chunk(*xs)
    return (_add(total, sums), grad_w + g_w), g_h

  (total, grad_w), grad_hidden = jax.lax.scan(
      step, (_zero_sums(), jnp.zeros_like(w)), (hidden, targets, weights))
  return total, (grad_w, grad_hidden)


def _sums_over_chunks_bwd(project, label_smoothing, one_pass, residuals, cotangent):
  del project, label_smoothing, one_pass
  grad_w, grad_hidden = residuals  # d loss_sum / d w, d loss_sum / d hidden.
  g = cotangent["loss_sum"]
  return ((g * grad_w).astype(grad_w.dtype), (g * grad_hidden).astype(grad_hidden.dtype),
          None, None)


_sums_over_chunks.defvjp(_sums_over_chunks_fwd, _sums_over_chunks_bwd)


def summarize(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-token means from ``cross_entropy_sums`` outputs (possibly summed).

  Returns "loss" (label-smoothed, per token), "nll" (unsmoothed, per token),
  "perplexity" (exp of nll) and "accuracy" (token accuracy); all 0 when there
  are no tokens.
  """
  n = jnp.maximum(sums["num_tokens"], 1.0)
  nll = sums["nll_sum"] / n
  return {
      "loss": sums["loss_sum"] / n,
      "nll": nll,
      "perplexity": jnp.exp(nll),
      "accuracy": sums["correct"] / n,
  }
