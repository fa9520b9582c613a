"""Tests for transformer/loss.py: the label-smoothed cross-entropy of §5.4."""

import jax
import jax.numpy as jnp
import numpy as np

from transformer import loss


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
