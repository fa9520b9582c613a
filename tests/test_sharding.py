"""Tests for transformer/sharding.py: rules, meshes, 1 vs 8 devices.

The 8-device test runs this file as a script in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (it must be set before JAX
starts), trains a tiny Transformer for a few updates on 1 device, on 8
data-parallel devices and on 8 FSDP devices, and compares the losses.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import common
from transformer import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config(**train):
  config = common.get_base_config("base")
  m = config.model
  m.vocab_size, m.num_layers, m.d_model, m.d_ff = 32, 1, 16, 32
  m.num_heads, m.d_k, m.d_v = 2, 8, 8
  config.train.warmup_steps = 4
  for k, v in train.items():
    config.train[k] = v
  return config


def test_rules_data_parallel_by_default():
  rules = dict(sharding.logical_axis_rules(_tiny_config().train))
  assert rules["batch"] == ("data", "fsdp")
  assert rules["embed"] is None  # Parameters are replicated.
  assert sharding.logical_to_mesh(("vocab", "embed"), tuple(rules.items())) == P("tensor", None)


def test_rules_fsdp_shards_embed():
  rules = sharding.logical_axis_rules(_tiny_config(fsdp=True).train)
  assert sharding.logical_to_mesh(("embed", "mlp"), rules) == P("fsdp", "tensor")
  assert sharding.batch_spec(rules, ndim=2) == P(("data", "fsdp"), None)


def test_resolve_mesh_shape():
  assert sharding.resolve_mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, 8) == (8, 1, 1)
  assert sharding.resolve_mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="does not divide"):
    sharding.resolve_mesh_shape({"data": 3, "fsdp": -1, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="has 4 devices but 8"):
    sharding.resolve_mesh_shape({"data": 4, "fsdp": 1, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="unknown axes"):
    sharding.resolve_mesh_shape({"model": 2}, 2)


def _run_equivalence():
  """Script body: losses of 3 updates on 1, 8 (data) and 8 (fsdp) devices."""
  import jax

  from transformer import train

  assert jax.device_count() == 8, jax.devices()
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(3):
    inputs = rng.integers(4, 32, (8, 10)).astype(np.int32)
    targets = rng.integers(4, 32, (8, 12)).astype(np.int32)
    inputs[:, -1], targets[:, -3:] = 1, [1, 0, 0]
    batches.append({"inputs": inputs, "targets": targets})

  def run(devices, **train_overrides):
    config = _tiny_config(**train_overrides)
    config.model.dropout_rate = 0.1  # Dropout masks must not depend on sharding.
    mesh = sharding.make_mesh(config.train, devices=devices)
    setup = train.setup_state(config, mesh)
    state = train.init_state(setup)
    update = train.make_update_fn(setup)
    losses = []
    for b in batches:
      state, metrics = update(state, [sharding.global_batch(b, mesh, setup.rules)])
      losses.append(float(metrics["loss"]))
    params = jax.tree.map(np.asarray, state["params"])
    return losses, params, state

  one, params_one, _ = run(jax.devices()[:1])
  data8, params_data8, _ = run(jax.devices())
  fsdp8, params_fsdp8, state_fsdp8 = run(
      jax.devices(), fsdp=True, mesh_shape={"data": 1, "fsdp": -1, "tensor": 1})
  def diff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(x - y))) for x, y in pairs)

  embedding = state_fsdp8["params"]["source_embedding"]["embedding"]
  print(json.dumps({
      "one": one, "data8": data8, "fsdp8": fsdp8,
      "param_diff_data8": diff(params_one, params_data8),
      "param_diff_fsdp8": diff(params_one, params_fsdp8),
      "fsdp_embedding_spec": str(embedding.sharding.spec),
      "fsdp_embedding_shard_shape": list(embedding.addressable_shards[0].data.shape),
  }))


@pytest.mark.slow
def test_one_device_equals_eight_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(result["data8"], result["one"], rtol=1e-5)
  np.testing.assert_allclose(result["fsdp8"], result["one"], rtol=1e-5)
  # Parameters after 3 Adam updates: sharded reductions sum in another order,
  # and Adam's m / (sqrt(v) + 1e-9) turns a last-bit difference in a near-zero
  # gradient into one of up to a learning rate. Measured max differences: data
  # 5e-7 to 1.2e-6, FSDP 1.2e-5 to 1.4e-5 on an AMD EPYC (Zen 3), under 1e-5
  # on an Intel Xeon; a sharding bug moves parameters by far more.
  assert result["param_diff_data8"] < 5e-5
  assert result["param_diff_fsdp8"] < 5e-5
  # FSDP really splits the (vocab, embed) table over the 8 devices.
  assert result["fsdp_embedding_spec"] == "P('tensor', 'fsdp')"
  assert result["fsdp_embedding_shard_shape"] == [32, 2]


if __name__ == "__main__":
  _run_equivalence()
