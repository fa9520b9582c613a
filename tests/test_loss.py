"""Tests for transformer/loss.py: the label-smoothed cross-entropy of §5.4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import loss, precision


def test_loss_hand_computed():
  # V = 3, one sentence of two real tokens and one pad.
  logits = np.array([[[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [9.0, 9.0, 9.0]]], np.float32)
  targets = np.array([[1, 2, 0]], np.int32)  # Last position is padding.
  eps = 0.1
  sums = loss.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), eps)

  # By hand: q = 0.9 on the reference, 0.05 on each of the two others.
  def log_softmax(row):
    return row - np.log(np.sum(np.exp(row)))

  lp0, lp1 = log_softmax(logits[0, 0]), log_softmax(logits[0, 1])
  q0 = np.array([0.05, 0.9, 0.05])
  q1 = np.array([0.05, 0.05, 0.9])
  entropy = -(0.9 * np.log(0.9) + 2 * 0.05 * np.log(0.05))
  expected_loss = (-(q0 * lp0).sum() - entropy) + (-(q1 * lp1).sum() - entropy)
  np.testing.assert_allclose(sums["loss_sum"], expected_loss, rtol=1e-6)
  np.testing.assert_allclose(sums["nll_sum"], -lp0[1] - lp1[2], rtol=1e-6)
  assert float(sums["num_tokens"]) == 2.0
  # Token 0 predicts 0 (wrong), token 1 predicts 2 (right).
  assert float(sums["correct"]) == 1.0

  means = loss.summarize(sums)
  np.testing.assert_allclose(means["loss"], expected_loss / 2, rtol=1e-6)
  np.testing.assert_allclose(means["perplexity"], np.exp((-lp0[1] - lp1[2]) / 2), rtol=1e-6)
  np.testing.assert_allclose(means["accuracy"], 0.5)


def test_loss_is_zero_at_the_smoothed_distribution():
  eps, v = 0.1, 5
  q = np.full(v, eps / (v - 1))
  q[3] = 1 - eps
  logits = jnp.asarray(np.log(q)[None, None, :], jnp.float32)
  sums = loss.cross_entropy_sums(logits, jnp.array([[3]]), eps)
  np.testing.assert_allclose(sums["loss_sum"], 0.0, atol=1e-6)


def test_without_smoothing_loss_equals_nll():
  logits = jax.random.normal(jax.random.key(0), (2, 4, 7))
  targets = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]])
  sums = loss.cross_entropy_sums(logits, targets, 0.0)
  np.testing.assert_allclose(sums["loss_sum"], sums["nll_sum"], rtol=1e-6)
  assert float(sums["num_tokens"]) == 5.0


def test_extra_weights_mask_rows():
  logits = jax.random.normal(jax.random.key(1), (2, 3, 5))
  targets = jnp.array([[1, 2, 3], [4, 1, 2]])
  full = loss.cross_entropy_sums(logits[:1], targets[:1], 0.1)
  masked = loss.cross_entropy_sums(logits, targets, 0.1, weights=jnp.array([[1, 1, 1], [0, 0, 0]]))
  np.testing.assert_allclose(masked["loss_sum"], full["loss_sum"], rtol=1e-6)
  assert float(masked["num_tokens"]) == 3.0


# ---------------------------------------------------------------------------
# The chunked loss: the same sums and gradients from hidden states.
# ---------------------------------------------------------------------------

# B, T, D, V: 21 positions, so chunks of 2 columns (6 tokens for B = 3) and
# of 4 columns (chunk_tokens=14 -> 12 tokens) do not divide them.
B, T, D, V = 3, 7, 4, 9
EPS = 0.1


def _reference_sums_and_grads(h, w, targets, weights):
  """Float64 numpy: §5.4's loss of logits = h w^T, and its gradients by hand
  (d loss / d logits = softmax - q on real tokens)."""
  h, w = h.astype(np.float64), w.astype(np.float64)
  logits = h @ w.T  # (B, T, V)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  q = np.full(logits.shape, EPS / (V - 1))
  np.put_along_axis(q, targets[..., None], 1 - EPS, axis=-1)
  entropy = -(q * np.log(q)).sum(-1)
  mask = (targets != 0) * weights
  loss = (-(q * log_p).sum(-1) - entropy) * mask
  nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0] * mask
  correct = (logits.argmax(-1) == targets) * mask
  d_logits = (np.exp(log_p) - q) * mask[..., None]
  sums = {"loss_sum": loss.sum(), "nll_sum": nll.sum(), "correct": correct.sum(),
          "num_tokens": mask.sum()}
  return sums, np.einsum("btv,vd->btd", d_logits, w), np.einsum("btv,btd->vd", d_logits, h)


def _problem():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(B, T, D)).astype(np.float32)
  w = rng.normal(size=(V, D)).astype(np.float32)
  targets = rng.integers(1, V, (B, T)).astype(np.int32)
  targets[0, 5:], targets[2, 3:] = 0, 0  # Padding.
  weights = np.ones((B, T), np.float32)
  weights[1] = 0.0  # A filler row.
  return h, w, targets, weights


def _project(w, h):  # Tied layout, float32: logits = h w^T.
  return jnp.einsum("btd,vd->btv", h, w)


@pytest.mark.parametrize("one_pass", [False, True])
@pytest.mark.parametrize("chunk_tokens", [0, 1, 6, 14, 1000])
def test_chunked_loss_vs_float64_reference(chunk_tokens, one_pass):
  h, w, targets, weights = _problem()
  expected, d_h, d_w = _reference_sums_and_grads(h, w, targets, weights)

  def sums(w, h):
    return loss.chunked_cross_entropy_sums(h, w, _project, targets, EPS, weights,
                                           chunk_tokens=chunk_tokens, one_pass=one_pass)

  got = jax.jit(sums)(w, h)
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=key)
  # The gradient of loss_sum (times a cotangent that is not 1).
  grad_w, grad_h = jax.jit(jax.grad(lambda w, h: 3.0 * sums(w, h)["loss_sum"],
                                    argnums=(0, 1)))(w, h)
  np.testing.assert_allclose(grad_h, 3.0 * d_h, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad_w, 3.0 * d_w, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_chunked_loss_equals_the_loss_of_whole_logits():
  """Same sums and gradients as cross_entropy_sums of project(w, h), with
  mixed precision (bfloat16 hidden states, float32 weights) and chunks."""
  h, w, targets, weights = _problem()
  h = jnp.asarray(h, jnp.bfloat16)
  project = lambda w, h: precision.matmul("BTD,VD->BTV", h, w, jnp.bfloat16)  # noqa: E731

  def whole(w, h):
    return loss.cross_entropy_sums(project(w, h), targets, EPS, weights)

  def chunked(w, h):
    return loss.chunked_cross_entropy_sums(h, w, project, targets, EPS, weights,
                                           chunk_tokens=6)

  for key, value in whole(w, h).items():
    np.testing.assert_allclose(chunked(w, h)[key], value, rtol=1e-6, err_msg=key)
  grad = lambda f: jax.grad(lambda w, h: f(w, h)["loss_sum"], argnums=(0, 1))(w, h)  # noqa: E731
  (w_whole, h_whole), (w_chunked, h_chunked) = grad(whole), grad(chunked)
  assert w_chunked.dtype == jnp.float32 and h_chunked.dtype == jnp.bfloat16
  np.testing.assert_allclose(w_chunked, w_whole, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h_chunked.astype(np.float32), h_whole.astype(np.float32),
                             rtol=1e-2)


def test_one_pass_row_statistics_with_large_and_equal_logits():
  """The online normalizer of one_pass: rows whose max comes late, huge
  logits (exp would overflow without the shift), equal logits, and rows of
  one value repeated, against max / logsumexp / sum / take of numpy."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 1000)).astype(np.float32) * 3
  logits[1] += 1e4  # exp(1e4) overflows float32.
  logits[2, -1] = 80.0  # The max is the row's last element.
  logits[3] = 0.5  # All equal.
  logits[4] = np.linspace(-1e3, 1e3, 1000)
  logits[5] = -3e4
  targets = np.array([0, 3, 999, 7, 500, 2], np.int32)
  got = jax.jit(loss._row_statistics)(jnp.asarray(logits), jnp.asarray(targets))
  x = logits.astype(np.float64)
  m = x.max(-1)
  lse = m + np.log(np.exp(x - m[:, None]).sum(-1))
  # Float32 rounding: relative, and for the sum relative to the sum of |x|.
  tolerance = 1e-4 + 1e-6 * np.abs(x).sum(-1)
  for g, want in zip(got, (m, lse, x.sum(-1), x[np.arange(6), targets]), strict=True):
    error = np.abs(np.asarray(g, np.float64) - want)
    assert np.all(error <= 1e-5 * np.abs(want) + tolerance), (g, want)
