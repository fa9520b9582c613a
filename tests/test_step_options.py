"""Tests of the train step's accelerator switches: model.matmul_output
(precision.matmul_output_dtype, precision.add_bias), train.remat,
train.xla_options. train.shard_optimizer is tested over 8 devices in
tests/test_sharding.py."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer import checks, precision, sharding, train
from transformer import model as model_lib

INPUTS = jnp.asarray(np.random.default_rng(0).integers(4, 32, (2, 7)), jnp.int32)
TARGETS = jnp.asarray(np.random.default_rng(1).integers(4, 32, (2, 6)), jnp.int32)


def _model(tiny_config, **overrides):
  config = tiny_config(base="paper", **{"model.vocab_size": 32, "model.dropout_rate": 0.0,
                                        **{f"model.{k}": v for k, v in overrides.items()}})
  model = model_lib.build_model(config.model, seed=0)
  model.eval()
  return model


def _dots(hlo):
  """(output dtype, op name) of each dot of an HLO module."""
  dots = []
  for line in hlo.splitlines():
    dot = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = (\w+)\[.* (?:dot|convolution)\(", line)
    name = re.search(r'op_name="([^"]*)"', line)
    if dot:
      dots.append((dot[1], name[1] if name else ""))
  return dots


def _gradient_hlo(model):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    return nnx.merge(graphdef, params, rest)(INPUTS, TARGETS).astype(jnp.float32).std()

  return jax.jit(jax.grad(loss)).lower(params).as_text(dialect="hlo", debug_info=True)


def test_auto_writes_products_in_the_compute_dtype_on_a_gpu_only(tiny_config):
  cfg = tiny_config(base="paper").model
  cfg.dtype = "bfloat16"
  assert precision.matmul_output_dtype(cfg, "gpu") == jnp.bfloat16
  assert precision.matmul_output_dtype(cfg, "tpu") == jnp.float32  # The planner's choice.
  assert precision.matmul_output_dtype(cfg, "cpu") == jnp.float32  # CPU programs as before.
  cfg.matmul_output = "compute"
  assert precision.matmul_output_dtype(cfg, "cpu") == jnp.bfloat16
  cfg.matmul_output = "float32"
  assert precision.matmul_output_dtype(cfg, "gpu") == jnp.float32
  cfg.matmul_output, cfg.dtype = "compute", "float32"
  assert precision.matmul_output_dtype(cfg, "gpu") == jnp.float32


def test_compute_products_are_bf16_except_q_kt_logits_and_weight_gradients(tiny_config):
  dots = _dots(_gradient_hlo(_model(tiny_config, dtype="bfloat16", matmul_output="compute")))
  assert dots
  for out, name in dots:
    weight_gradient = re.search(r"transpose\(jvp\((BTD,BTHX->DHX|BHQJ,BQD->HJD|BTD,BTF->DF|"
                                r"BTF,BTD->FD|BTD,BTV->VD|BTV,BTD->DV)\)\)", name)
    if "BHQK,BHMK->BHQM" in name and "transpose" not in name:
      assert out == "f32", name  # Q K^T: softmax's input.
    elif "transpose(jvp(BHQJ,BHMJ->BHQM))" in name:
      assert out == "f32", name  # The weights' gradient: softmax's backward input.
    elif "BTD,VD->BTV" in name and "transpose" not in name:
      assert out == "f32", name  # The logits: the loss's log-softmax.
    elif weight_gradient:
      assert out == "f32", name  # A parameter's gradient.
    else:
      assert out == "bf16", name  # Activation-sized: products, input gradients.


def test_float32_products_keep_todays_form(tiny_config):
  dots = _dots(_gradient_hlo(_model(tiny_config, dtype="bfloat16", matmul_output="float32")))
  assert dots and {out for out, _ in dots} == {"f32"}


def test_compute_products_keep_the_gradient_within_a_few_per_mille(tiny_config):
  """bfloat16 products against float32 ones, the same bfloat16 operands, with
  biases and LayerNorm made non-trivial (at initialization they are 0 and 1,
  where rounding the sum changes nothing)."""
  def gradient(matmul_output):
    model = _model(tiny_config, dtype="bfloat16", matmul_output=matmul_output)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    keys = iter(jax.random.split(jax.random.key(0), 1000))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape), params)

    def loss(params):
      logits = nnx.merge(graphdef, params, rest)(INPUTS, TARGETS)
      return -jnp.take_along_axis(jax.nn.log_softmax(logits), TARGETS[..., None], -1).sum()

    grads = jax.jit(jax.grad(loss))(params)
    return np.concatenate([np.asarray(g, np.float64).ravel() for g in jax.tree.leaves(grads)])

  reference, narrow = gradient("float32"), gradient("compute")
  cosine = reference @ narrow / np.linalg.norm(reference) / np.linalg.norm(narrow)
  assert cosine >= 0.999, cosine
  assert np.linalg.norm(narrow - reference) / np.linalg.norm(reference) < 0.05


def test_add_bias_sums_the_bias_gradient_in_float32():
  x = jnp.full((4096, 2), 1.0 + 2**-7, jnp.bfloat16)  # 1.0078125, exact in bfloat16.
  b = jnp.zeros((2,), jnp.float32)
  out, vjp = jax.vjp(precision.add_bias, x, b)
  assert out.dtype == jnp.bfloat16
  dx, db = vjp(x)
  assert dx.dtype == jnp.bfloat16 and db.dtype == jnp.float32
  # 4096 * 1.0078125 = 4128: summed in bfloat16 it would stall at 256-steps.
  np.testing.assert_array_equal(np.asarray(db), [4128.0, 4128.0])


# ---------------------------------------------------------------------------
# train.remat
# ---------------------------------------------------------------------------


def _one_update(tiny_config, **train_overrides):
  config = tiny_config(**{"model.vocab_size": 32, "model.dtype": "float32",
                          **{f"train.{k}": v for k, v in train_overrides.items()}})
  config = checks.resolve_config(config, num_devices=1)
  setup = train.setup_state(config, sharding.make_mesh(config.train))
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(4, 32, (4, 9)).astype(np.int32),
           "targets": rng.integers(4, 32, (4, 11)).astype(np.int32)}
  batch = sharding.global_batch(batch, setup.mesh, setup.rules)
  update = train.make_update_fn(setup)
  compiled = update.lower(batch)["update"].compile()
  state, metrics = update(train.init_state(setup), [batch])
  return (jax.tree.map(np.asarray, state["params"]), float(metrics["loss"]),
          compiled.memory_analysis().temp_size_in_bytes, compiled.cost_analysis()["flops"])


@pytest.mark.slow
def test_remat_policies_give_the_same_update_for_less_memory(tiny_config):
  params, loss, temp, flops = _one_update(tiny_config)  # Dropout on: the same masks.
  temps, all_flops = [temp], [flops]
  for policy in ("matmuls", "full"):
    p, policy_loss, t, f = _one_update(tiny_config, remat=policy)
    assert policy_loss == loss
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    temps.append(t)
    all_flops.append(f)
  # none > matmuls > full in memory, the other way round in FLOPs.
  assert temps[0] > temps[1] > temps[2], temps
  assert all_flops[0] < all_flops[1] < all_flops[2], all_flops


# ---------------------------------------------------------------------------
# train.xla_options
# ---------------------------------------------------------------------------


def test_xla_options_auto_none_and_overrides(tiny_config):
  t = tiny_config().train
  assert train.xla_options(t, "cpu") == {}
  gpu = train.xla_options(t, "gpu")
  assert gpu == train.XLA_OPTIONS["gpu"] and gpu
  t.xla_options = "auto,xla_gpu_enable_latency_hiding_scheduler=false,xla_gpu_foo=32"
  assert train.xla_options(t, "gpu") == {**train.XLA_OPTIONS["gpu"], "xla_gpu_foo": 32,
                                         "xla_gpu_enable_latency_hiding_scheduler": False}
  t.xla_options = "none, xla_cpu_enable_fast_math = true"
  assert train.xla_options(t, "gpu") == {"xla_cpu_enable_fast_math": True}


@pytest.mark.parametrize("value", ["", "fast", "auto,xla_gpu_x", "auto,gpu_x=1",
                                   "none,xla_gpu_x="])
def test_malformed_xla_options_are_one_clear_config_error(tiny_config, value):
  config = tiny_config(**{"train.xla_options": value})
  with pytest.raises(checks.ConfigError, match=r"train\.xla_options.*e\.g\. --config"):
    checks.check_config(config)


def test_the_train_step_is_compiled_with_the_options(tiny_config):
  """The options reach XLA: an unknown one is refused where the step compiles."""
  config = tiny_config(**{"model.vocab_size": 32,
                          "train.xla_options": "none,xla_cpu_no_such_option=1"})
  setup = train.setup_state(config, sharding.make_mesh(config.train))
  batch = train.batch_shapes(config.data, setup)
  with pytest.raises(Exception, match="xla_cpu_no_such_option"):
    train.make_update_fn(setup).lower(batch)["update"].compile()


# ---------------------------------------------------------------------------
# train.shard_optimizer (the 8-device update: tests/test_sharding.py)
# ---------------------------------------------------------------------------


def test_shard_optimizer_auto_splits_adam_on_a_gpu_only(tiny_config):
  t = tiny_config().train
  assert t.shard_optimizer == "auto"
  assert [train.shards_optimizer(t, p) for p in ("gpu", "tpu", "cpu")] == [True, False, False]
  t.shard_optimizer = "data"
  assert train.shards_optimizer(t, "cpu")
  t.shard_optimizer = "none"
  assert not train.shards_optimizer(t, "gpu")
