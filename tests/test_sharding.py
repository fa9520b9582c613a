"""Tests for transformer/sharding.py: rules, meshes, 1 vs 8 devices.

The 8-device tests run this file as a script in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (it must be set before JAX
starts), the configs given on its stdin as JSON. One trains a tiny
Transformer for a few updates on 1 device, on 8 data-parallel devices and on 8
FSDP devices, and compares the losses; the
other compiles the update step for 8 data-parallel and 8 FSDP devices and
reads the collectives and the memory of the compiled programs.
"""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from transformer import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The suite's tiny model at half its width (d_model 16, vocabulary 32), in the
# paper's base config: the overrides of conftest's tiny_config(base="paper").
NARROW = {"model.vocab_size": 32, "model.d_model": 16, "model.d_ff": 32, "model.d_k": 8,
          "model.d_v": 8, "train.warmup_steps": 4}
FSDP = {"train.fsdp": True, "train.mesh_shape": {"data": 1, "fsdp": -1, "tensor": 1}}


@pytest.fixture(scope="module")
def configs(tiny_config):
  """The narrow tiny config, data parallel and FSDP (by default the mesh is
  data parallel), as the 8-device scripts receive them."""
  return {"data": tiny_config(base="paper", **NARROW).to_dict(),
          "fsdp": tiny_config(base="paper", **NARROW, **FSDP).to_dict()}


def test_rules_data_parallel_by_default(tiny_config):
  rules = dict(sharding.logical_axis_rules(tiny_config(base="paper", **NARROW).train))
  assert rules["batch"] == ("data", "fsdp")
  assert rules["embed"] is None  # Parameters are replicated.
  assert sharding.logical_to_mesh(("vocab", "embed"), tuple(rules.items())) == P("tensor", None)


def test_rules_fsdp_shards_embed(tiny_config):
  rules = sharding.logical_axis_rules(
      tiny_config(base="paper", **NARROW, **{"train.fsdp": True}).train)
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


def _run_equivalence(configs):
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

  def run(devices, parallelism="data", shard_optimizer="none"):
    config = ml_collections.ConfigDict(configs[parallelism])
    config.train.shard_optimizer = shard_optimizer
    config.model.dropout_rate = 0.1  # Dropout masks must not depend on sharding.
    # float32: the tolerances below are float32's. With bfloat16 compute
    # (model.dtype="auto" on a CPU with AVX512-BF16 or AMX) each device's
    # partial sums of the bfloat16 LayerNorm gradients round differently from
    # one device's whole sums (0.4% apart, then Adam's amplification below).
    config.model.dtype = "float32"
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
  fsdp8, params_fsdp8, state_fsdp8 = run(jax.devices(), "fsdp")
  zero8, params_zero8, state_zero8 = run(jax.devices(), shard_optimizer="data")
  def diff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(x - y))) for x, y in pairs)

  embedding = state_fsdp8["params"]["source_embedding"]["embedding"]
  adam = [s for s in jax.tree.leaves(state_zero8["opt_state"], is_leaf=lambda x: hasattr(x, "mu"))
          if hasattr(s, "mu")]
  mu = adam[0].mu["source_embedding"]["embedding"]
  print(json.dumps({
      "one": one, "data8": data8, "fsdp8": fsdp8, "zero8": zero8,
      "param_diff_data8": diff(params_one, params_data8),
      "param_diff_fsdp8": diff(params_one, params_fsdp8),
      "param_diff_zero8": diff(params_one, params_zero8),
      "zero_moment_spec": str(mu.sharding.spec),
      "zero_moment_shard_shape": list(mu.addressable_shards[0].data.shape),
      "zero_param_spec": str(state_zero8["params"]["source_embedding"]["embedding"]
                             .sharding.spec),
      "fsdp_embedding_spec": str(embedding.sharding.spec),
      "fsdp_embedding_shard_shape": list(embedding.addressable_shards[0].data.shape),
  }))


def _compile_data_parallel_and_fsdp(configs):
  """Script body: memory and collectives of the compiled update step over 8
  devices, data parallel and FSDP (compiled only, as transformer/plan.py does)."""
  import jax

  from transformer import plan

  out = {}
  for name, parallelism in {"data8": "data", "fsdp8": "fsdp"}.items():
    config = ml_collections.ConfigDict(configs[parallelism])
    config.train.shard_optimizer = "none"  # Plain data parallelism: the gradient all-reduced.
    config.model.dtype = "bfloat16"  # As on a GPU (float32 hides the all-to-alls).
    config.data.max_length, config.data.batch_tokens = 12, 8 * 12  # 8 rows.
    mesh = sharding.make_mesh(config.train, devices=jax.devices())
    report = plan.compile_train_step(config, mesh)
    update = report["programs"]["update"]
    out[name] = {"memory": update["memory"], "collectives": update["collectives"],
                 "parameter_bytes": 4 * report["num_parameters"]}  # float32, whole.
  print(json.dumps(out))


def _run_on_eight_cpus(body, configs):
  """Runs the script body ``body`` with ``configs`` (on its stdin) over 8 CPU
  devices; the JSON it printed last."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, os.path.abspath(__file__), body], env=env,
                       cwd=REPO, input=json.dumps(configs), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fsdp_step_gathers_parameters_and_never_reshards_activations(configs):
  """FSDP's update step moves parameters and gradients only. Before the model
  pinned its activations to the batch split (sharding.constrain), XLA carried
  FSDP's split of d_model into them: this step had 18 all-to-alls, gathered 4
  times the parameters' bytes, all-reduced 5 times the gradients' and took
  1.6 times data parallelism's temporary memory."""
  result = _run_on_eight_cpus("compile", configs)
  data8, fsdp8 = result["data8"], result["fsdp8"]
  kinds = fsdp8["collectives"]
  assert "all-to-all" not in kinds and "collective-permute" not in kinds, kinds
  assert set(kinds) <= {"all-gather", "reduce-scatter", "all-reduce"}, kinds
  # Each parameter is gathered for the forward pass and at most once more for
  # the backward pass.
  assert kinds["all-gather"]["bytes"] <= 2 * fsdp8["parameter_bytes"], result
  # The gradients are reduced once (XLA's CPU backend all-reduces them and
  # keeps each device's shard, as data parallelism all-reduces them whole),
  # plus the loss's scalar sums: no partial sums of activations.
  reduced = kinds["all-reduce"]["bytes"] + kinds.get("reduce-scatter", {}).get("bytes", 0)
  assert reduced <= data8["collectives"]["all-reduce"]["bytes"] + 1024, (kinds, data8)
  # Activations take no more memory than data parallelism's; parameters and
  # Adam's moments are split 8 ways, so the peak is lower.
  assert fsdp8["memory"]["temporaries"] <= 1.05 * data8["memory"]["temporaries"], result
  assert fsdp8["memory"]["peak"] < data8["memory"]["peak"], result


@pytest.mark.slow
def test_one_device_equals_eight_devices(configs):
  result = _run_on_eight_cpus("equivalence", configs)
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
  # train.shard_optimizer: the same updates, Adam's moments split over "data"
  # (ZeRO stage 1), the parameters whole on every device.
  np.testing.assert_allclose(result["zero8"], result["one"], rtol=1e-5)
  assert result["param_diff_zero8"] < 5e-5
  # (vocab, embed): vocab is on "tensor" (of size 1 here), embed takes "data".
  assert result["zero_moment_spec"] == "P('tensor', 'data')", result
  assert result["zero_moment_shard_shape"] == [32, 2]
  assert result["zero_param_spec"] == "P('tensor', None)", result  # Whole on each device.


if __name__ == "__main__":
  {"equivalence": _run_equivalence,
   "compile": _compile_data_parallel_and_fsdp}[sys.argv[1]](json.load(sys.stdin))
