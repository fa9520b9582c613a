"""Tests for transformer/optim.py: the loss of §5.4 and Adam with Eq. (3)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from transformer import optim


def _config(**train):
  config = common.get_base_config("base")
  for k, v in train.items():
    config.train[k] = v
  return config


def test_loss_hand_computed():
  # V = 3, one sentence of two real tokens and one pad.
  logits = np.array([[[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [9.0, 9.0, 9.0]]], np.float32)
  targets = np.array([[1, 2, 0]], np.int32)  # Last position is padding.
  eps = 0.1
  sums = optim.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), eps)

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

  means = optim.summarize(sums)
  np.testing.assert_allclose(means["loss"], expected_loss / 2, rtol=1e-6)
  np.testing.assert_allclose(means["perplexity"], np.exp((-lp0[1] - lp1[2]) / 2), rtol=1e-6)
  np.testing.assert_allclose(means["accuracy"], 0.5)


def test_loss_is_zero_at_the_smoothed_distribution():
  eps, v = 0.1, 5
  q = np.full(v, eps / (v - 1))
  q[3] = 1 - eps
  logits = jnp.asarray(np.log(q)[None, None, :], jnp.float32)
  sums = optim.cross_entropy_sums(logits, jnp.array([[3]]), eps)
  np.testing.assert_allclose(sums["loss_sum"], 0.0, atol=1e-6)


def test_without_smoothing_loss_equals_nll():
  logits = jax.random.normal(jax.random.key(0), (2, 4, 7))
  targets = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]])
  sums = optim.cross_entropy_sums(logits, targets, 0.0)
  np.testing.assert_allclose(sums["loss_sum"], sums["nll_sum"], rtol=1e-6)
  assert float(sums["num_tokens"]) == 5.0


def test_extra_weights_mask_rows():
  logits = jax.random.normal(jax.random.key(1), (2, 3, 5))
  targets = jnp.array([[1, 2, 3], [4, 1, 2]])
  full = optim.cross_entropy_sums(logits[:1], targets[:1], 0.1)
  masked = optim.cross_entropy_sums(logits, targets, 0.1, weights=jnp.array([[1, 1, 1], [0, 0, 0]]))
  np.testing.assert_allclose(masked["loss_sum"], full["loss_sum"], rtol=1e-6)
  assert float(masked["num_tokens"]) == 3.0


@pytest.mark.parametrize("step, expected", [
    (1, 512**-0.5 * 1 * 4000**-1.5),  # 1.747e-07, warmup start
    (4000, 512**-0.5 * 4000**-0.5),  # 6.988e-04, the peak
    (100000, 512**-0.5 * 100000**-0.5),  # 1.398e-04, end of base training
])
def test_schedule_eq3(step, expected):
  schedule = optim.learning_rate_schedule(_config())
  np.testing.assert_allclose(schedule(step), expected, rtol=1e-6)


def test_schedule_values_in_numbers():
  schedule = optim.learning_rate_schedule(_config())
  np.testing.assert_allclose(
      [schedule(1), schedule(4000), schedule(100000)],
      [1.7469e-07, 6.9877e-04, 1.3975e-04], rtol=1e-4)
  # The scale factor multiplies the whole schedule.
  scaled = optim.learning_rate_schedule(_config(learning_rate_scale=2.0))
  np.testing.assert_allclose(scaled(4000), 2 * 6.9877e-04, rtol=1e-4)


def test_adam_first_update_uses_step_one_and_paper_hyperparameters():
  config = _config()
  tx = optim.make_optimizer(config)
  params = {"w": jnp.zeros((3,))}
  state = tx.init(params)
  grads = {"w": jnp.array([1.0, -2.0, 0.5])}
  updates, state = tx.update(grads, state, params)
  # Adam's bias-corrected first update is -lr * g / (|g| + eps) ~= -lr * sign(g).
  lr1 = 512**-0.5 * 4000**-1.5
  np.testing.assert_allclose(updates["w"], -lr1 * np.sign([1.0, -2.0, 0.5]), rtol=1e-5)
  # Moments use b1 = 0.9 and b2 = 0.98: mu = 0.1 g, nu = 0.02 g^2.
  nu = optax.tree_utils.tree_get(state, "nu")
  mu = optax.tree_utils.tree_get(state, "mu")
  np.testing.assert_allclose(nu["w"], 0.02 * np.array([1.0, 4.0, 0.25]), rtol=1e-6)
  np.testing.assert_allclose(mu["w"], 0.1 * np.array([1.0, -2.0, 0.5]), rtol=1e-6)


def test_clipping_and_weight_decay_are_opt_in():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  grads = {"w": jnp.full((2, 2), 100.0), "b": jnp.zeros((2,))}
  config = _config(grad_clip_norm=1.0, weight_decay=0.5, warmup_steps=1)
  tx = optim.make_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr1 = 512**-0.5
  # Bias vector: zero gradient and no decay -> no update.
  np.testing.assert_allclose(updates["b"], 0.0, atol=1e-12)
  # Matrix: Adam step (-lr) plus decoupled decay (-lr * 0.5 * w).
  np.testing.assert_allclose(updates["w"], -lr1 * (1.0 + 0.5), rtol=1e-4)
