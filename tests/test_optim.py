"""Tests for transformer/optim.py: Adam and the learning rate of Eq. (3) (§5.3)."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from transformer import optim


def _train_config(**train):
  """The base model's ``config.train`` section (d_model 512), ``train`` replaced."""
  config = common.get_base_config("base")
  for k, v in train.items():
    config.train[k] = v
  return config.train


@pytest.mark.parametrize("step, expected", [
    (1, 512**-0.5 * 1 * 4000**-1.5),  # 1.747e-07, warmup start
    (4000, 512**-0.5 * 4000**-0.5),  # 6.988e-04, the peak
    (100000, 512**-0.5 * 100000**-0.5),  # 1.398e-04, end of base training
])
def test_schedule_eq3(step, expected):
  schedule = optim.learning_rate_schedule(_train_config(), 512)
  np.testing.assert_allclose(schedule(step), expected, rtol=1e-6)


def test_schedule_values_in_numbers():
  schedule = optim.learning_rate_schedule(_train_config(), 512)
  np.testing.assert_allclose(
      [schedule(1), schedule(4000), schedule(100000)],
      [1.7469e-07, 6.9877e-04, 1.3975e-04], rtol=1e-4)
  # The scale factor multiplies the whole schedule.
  scaled = optim.learning_rate_schedule(_train_config(learning_rate_scale=2.0), 512)
  np.testing.assert_allclose(scaled(4000), 2 * 6.9877e-04, rtol=1e-4)


def test_adam_first_update_uses_step_one_and_paper_hyperparameters():
  tx = optim.make_optimizer(_train_config(), 512)
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
  train_config = _train_config(grad_clip_norm=1.0, weight_decay=0.5, warmup_steps=1)
  tx = optim.make_optimizer(train_config, 512)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr1 = 512**-0.5
  # Bias vector: zero gradient and no decay -> no update.
  np.testing.assert_allclose(updates["b"], 0.0, atol=1e-12)
  # Matrix: Adam step (-lr) plus decoupled decay (-lr * 0.5 * w).
  np.testing.assert_allclose(updates["w"], -lr1 * (1.0 + 0.5), rtol=1e-4)
