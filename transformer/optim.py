"""The optimizer (§5.3): Adam driven by the learning rate of Eq. (3).

The loss it minimizes is in ``transformer/loss.py``.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(train_config: ml_collections.ConfigDict,
                           d_model: int) -> Callable:
  """Eq. (3) as a function of the 1-based update number ``step``.

    lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

  It rises linearly for ``warmup_steps`` updates, then decays as step^-0.5.
  ``train_config`` is the ``config.train`` section (warmup_steps,
  learning_rate_scale); ``d_model`` is ``config.model.d_model``.
  """
  warmup = train_config.warmup_steps
  scale = train_config.learning_rate_scale
  if warmup <= 0:
    raise ValueError(f"train.warmup_steps must be positive, got {warmup}.")

  def schedule(step):
    step = jnp.maximum(jnp.asarray(step, jnp.float32), 1.0)
    return scale * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup**-1.5)

  return schedule


def make_optimizer(train_config: ml_collections.ConfigDict,
                   d_model: int) -> optax.GradientTransformation:
  """Adam(b1=0.9, b2=0.98, eps=1e-9) driven by Eq. (3) (§5.3), from the
  ``config.train`` section and the model's ``d_model``.

  Optional deviations from the paper, all off by default: global-norm gradient
  clipping (train.grad_clip_norm > 0) and decoupled weight decay on matrices
  (train.weight_decay > 0, AdamW; biases, LayerNorm and other vectors are not
  decayed).
  """
  t = train_config
  schedule = learning_rate_schedule(train_config, d_model)
  # optax counts updates from 0; Eq. (3) counts them from 1.
  def lr(count):
    return schedule(count + 1)

  parts = []
  if t.grad_clip_norm > 0:
    # Deviation from the paper: gradient clipping.
    parts.append(optax.clip_by_global_norm(t.grad_clip_norm))
  if t.weight_decay > 0:
    # Deviation from the paper: decoupled weight decay (AdamW) on matrices.
    parts.append(optax.adamw(
        lr, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps,
        weight_decay=t.weight_decay,
        mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)))
  else:
    parts.append(optax.adam(lr, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps))
  return optax.chain(*parts)
