"""The pre-flight planner (transformer/plan.py): compiling for GPUs and TPUs
that are not there, with JAX's compile-only devices.

The compiles run in one subprocess (the CUDA plugin and libtpu must be on the
path before JAX starts), on a tiny model; they need the toolchain of
requirements-planner.txt and skip, naming it, without.
"""

import json
import os
import subprocess
import sys

import pytest

from transformer import plan, toolchain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_CUDA = toolchain.cuda_plugin() is not None
HAVE_TPU = toolchain.has_libtpu()
needs_cuda = pytest.mark.skipif(
    not HAVE_CUDA, reason=f"needs jax-cuda13-plugin (compile-only GPUs): {plan.INSTALL}")
needs_tpu = pytest.mark.skipif(
    not HAVE_TPU, reason=f"needs libtpu (compile-only TPUs): {plan.INSTALL}")

# A tiny model: 8 compile-only devices split its batch rows, and FSDP splits
# d_model (64) and the vocabulary rows 8 ways.
TINY = dict(num_layers=1, d_model=64, d_ff=128, num_heads=2, d_k=32, d_v=32, vocab_size=256)


# ---------------------------------------------------------------------------
# Without compiling.
# ---------------------------------------------------------------------------


def test_max_batch_search_finds_the_boundary_in_few_compiles():
  compiled = []

  def peak_of(rows):  # 1000 bytes of state, 37 per row: 1000 + 37 * 243 = 9991.
    compiled.append(rows)
    return 1000 + 37 * rows

  rows, exact, seen = plan.search_max_rows(peak_of, 10, peak_of(10), 10_000, 1000,
                                           log=lambda *a: None)
  assert (rows, exact) == (243, True)
  assert len(seen) <= 4, seen
  # As compiled for big on one H100: above the limit XLA rematerializes, so
  # peaks sit just above it, a little lower for more rows, and far above it
  # are cut by a seventh. The line through two such points points down (the
  # search then went 2, 4, 8, ... rows); the bracket is bisected instead.
  def rematerialized(rows):
    linear = 1000 + 37 * rows
    if linear <= 10_000:
      return linear
    return linear * 6 / 7 if linear > 13_000 else 10_100 - (linear - 10_000) / 100

  rows, exact, seen = plan.search_max_rows(rematerialized, 1562, rematerialized(1562),
                                           10_000, 1000, log=lambda *a: None)
  assert 230 <= rows <= 243 and rematerialized(rows) <= 10_000, seen
  assert len(seen) <= 9, seen
  # Not even one row fits: 0, and the search stops.
  rows, exact, _ = plan.search_max_rows(peak_of, 10, peak_of(10), 900, 1000,
                                        log=lambda *a: None)
  assert (rows, exact) == (0, True)


def test_bad_targets_and_device_counts_are_one_clear_error():
  assert plan.gpu_topology(1) == "1x1x1"
  assert plan.gpu_topology(16) == "1x2x8"
  with pytest.raises(plan.PlanError, match="multiple of 8"):
    plan.gpu_topology(12)
  with pytest.raises(plan.PlanError, match="is not one of"):
    plan.compile_only_devices("a100", 8)
  with pytest.raises(plan.PlanError, match=r"v5e slices here have \[4, 8, 16"):
    plan.compile_only_devices("v5e", 3)


def test_gpu_usable_memory_is_jax_allocator_fraction(monkeypatch):
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  usable, how = plan.usable_bytes(plan.TARGETS["h100"])
  assert usable == int(84_942_979_072 * 0.75) and "default" in how
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
  assert plan.usable_bytes(plan.TARGETS["h100"])[0] == int(84_942_979_072 * 0.9)
  assert plan.usable_bytes(plan.TARGETS["v5e"])[0] == 16 * 2**30


# ---------------------------------------------------------------------------
# Compiling (one subprocess for all the plans below).
# ---------------------------------------------------------------------------

_SCRIPT = r"""
import json, sys
from transformer import toolchain
toolchain.use()  # Before JAX starts, as the planner's entry points do.
from transformer import plan
from configs import quickstart

def config(batch_tokens=256, **overrides):
  c = quickstart.get_config()
  c.unlock()
  c.model.update(%(tiny)r)
  c.data.max_length = 32
  c.data.batch_tokens = batch_tokens
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c

fsdp = {"train.fsdp": True, "train.mesh_shape": {"data": 1, "fsdp": -1, "tensor": 1}}
runs = {}
if %(cuda)r:
  runs["h100x1"] = ("h100", 1, config())
  runs["h100x1_4x_batch"] = ("h100", 1, config(batch_tokens=1024))
  runs["h200x1"] = ("h200", 1, config())
  runs["h100x8"] = ("h100", 8, config(batch_tokens=8 * 256))
  runs["h100x8_fsdp"] = ("h100", 8, config(batch_tokens=8 * 256, **fsdp))
  runs["h100x1_cudnn"] = ("h100", 1, config(**{"model.attention_impl": "dot_product_attention"}))
  runs["h100x1_xla"] = ("h100", 1, config(**{"model.attention_impl": "xla"}))
if %(tpu)r:
  runs["v5ex4"] = ("v5e", 4, config(batch_tokens=4 * 256))
out = {}
for name, (target, n, c) in runs.items():
  try:
    out[name] = plan.make_plan(c, target, n, beam_search=name == "h100x1",
                               log=lambda *a: print(*a, file=sys.stderr))
  except Exception as e:  # Reported by the test of that run.
    out[name] = {"error": f"{type(e).__name__}: {e}"}
print("PLANS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def plans():
  if not (HAVE_CUDA or HAVE_TPU):
    pytest.skip(f"needs the compile-only toolchain: {plan.INSTALL}")
  script = _SCRIPT % {"tiny": TINY, "cuda": HAVE_CUDA, "tpu": HAVE_TPU}
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [x for x in result.stdout.splitlines() if x.startswith("PLANS ")][-1]
  return _Plans(json.loads(line[len("PLANS "):]))


class _Plans(dict):
  """The plans by run name; a run that raised fails the tests that read it."""

  def __getitem__(self, name):
    value = super().__getitem__(name)
    assert "error" not in value, f"{name}: {value.get('error')}"
    return value


@pytest.mark.slow
@needs_cuda
def test_tiny_config_compiles_for_one_and_eight_h100s(plans):
  for name, devices in (("h100x1", 1), ("h100x8", 8)):
    p = plans[name]
    assert p["devices"] == devices and p["fits"] and p["device"] == "NVIDIA H100 SXM 80GB"
    assert p["dtype"] == "bfloat16"  # "auto" on a GPU.
    m = p["memory_per_device"]
    # float32 parameters, and Adam's two float32 moments (plus its step count),
    # split over the 8 data-parallel devices (train.shard_optimizer) where the
    # shapes divide.
    assert m["parameters"] == 4 * p["num_parameters"]
    moments = 2 * m["parameters"] / devices
    assert moments <= m["optimizer_state"] <= (2 * m["parameters"] if devices > 1
                                               else moments + 64)
    assert m["peak"] >= m["parameters"] + m["optimizer_state"]
    e = p["estimate"]
    assert e["flops_per_device"] > 0 and e["bytes_accessed_per_device"] > 0
    assert e["step_seconds"] == max(e["math_seconds"], e["memory_seconds"])
  # Data parallel over 8: every device holds the whole parameters, its share of
  # Adam's moments and 1/8 of the rows; the gradients are reduce-scattered to
  # the moments and the update gathered.
  p8 = plans["h100x8"]
  assert p8["memory_per_device"]["parameters"] == plans["h100x1"]["memory_per_device"][
      "parameters"]
  assert p8["batch"]["rows_per_split"] == plans["h100x1"]["batch"]["rows"]
  assert p8["collectives"]["update"]["reduce-scatter"]["count"] >= 1
  assert p8["collectives"]["update"]["all-gather"]["count"] >= 1
  assert plans["h100x1"]["beam_search"]["memory"]["peak"] > 0


@pytest.mark.slow
@needs_cuda
def test_memory_grows_with_the_batch(plans):
  small, large = plans["h100x1"], plans["h100x1_4x_batch"]
  assert large["batch"]["rows"] == 4 * small["batch"]["rows"]
  assert large["memory_per_device"]["peak"] > small["memory_per_device"]["peak"]
  assert (large["estimate"]["flops_per_device"]
          > 3 * small["estimate"]["flops_per_device"])


@pytest.mark.slow
@needs_cuda
def test_h200_target_description_parses_and_compiles(plans):
  p = plans["h200x1"]
  assert p["device"] == "NVIDIA H200 SXM 141GB" and p["fits"]
  assert p["memory_per_device"]["device_memory"] == 150_754_820_096


@pytest.mark.slow
@needs_cuda
def test_fsdp_divides_the_state_and_gathers_instead_of_all_to_all(plans):
  # Against one device's whole state (data parallelism on a GPU splits Adam's
  # moments too, train.shard_optimizer).
  whole, fsdp = plans["h100x1"], plans["h100x8_fsdp"]
  assert fsdp["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  for key in ("parameters", "optimizer_state"):
    ratio = whole["memory_per_device"][key] / fsdp["memory_per_device"][key]
    # Every tensor with a d_model axis is split 8 ways; the FFN's d_ff biases
    # (no "embed" axis) and Adam's step count stay whole: 7.86 on this model.
    assert 7.5 <= ratio <= 8.0, (key, ratio)
  kinds = fsdp["collectives"]["update"]
  assert "all-gather" in kinds and "reduce-scatter" in kinds, kinds
  assert "all-to-all" not in kinds, kinds


@pytest.mark.slow
@needs_cuda
@pytest.mark.parametrize("run", ["h100x1_cudnn", "h100x1"])  # dot_product_attention, auto
def test_dot_product_attention_and_auto_are_cudnn_fused_attention_on_gpu(plans, run):
  if plans[run]["attention_note"]:
    # JAX >= 0.12 builds cuDNN attention while compiling, which needs a GPU: the
    # plan compiles the einsums in its place and says so.
    assert "cuDNN" in plans[run]["attention_note"] and plans[run]["attention"] == "einsum"
    assert plans[run]["attention_impl"] == ("dot_product_attention" if "cudnn" in run
                                            else "auto")
    assert not any(k.startswith("__cudnn$fmha") for k in plans[run]["custom_calls"]["update"])
    return
  calls = plans[run]["custom_calls"]["update"]
  forward = [k for k in calls if k.startswith("__cudnn$fmha") and "Backward" not in k]
  backward = [k for k in calls if k.startswith("__cudnn$fmha") and "Backward" in k]
  assert forward and backward, calls
  assert plans[run]["attention"] == "cudnn"
  # XLA's cost analysis counts nothing for a custom call; the plan adds its bytes and FLOPs.
  cost = plans[run]["estimate"]
  assert cost["custom_call_bytes_accessed"] > 0 and cost["custom_call_flops"] > 0, cost
  xla = plans["h100x1_xla"]
  assert xla["attention"] == "einsum"
  assert not any(k.startswith("__cudnn$fmha") for k in xla["custom_calls"]["update"])


@pytest.mark.slow
@needs_tpu
def test_tiny_config_compiles_for_a_tpu_v5e_slice(plans):
  p = plans["v5ex4"]
  assert p["device"] == "TPU v5e" and p["topology"] == "v5e:2x2" and p["fits"]
  assert p["memory_per_device"]["usable"] == 16 * 2**30
  assert p["memory_per_device"]["parameters"] == 4 * p["num_parameters"]


@pytest.mark.slow
@needs_cuda
def test_a_config_that_does_not_fit_exits_1_naming_the_bytes(tmp_path):
  env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION="0.0002")  # About 16 MiB.
  overrides = [f"--config.model.{k}={v}" for k, v in TINY.items()]
  result = subprocess.run(
      [sys.executable, "-m", "transformer.plan", "--config=configs/quickstart.py",
       "--target=h100", "--devices=1", "--config.data.max_length=32",
       "--config.data.batch_tokens=65536", "--nobeam_search", *overrides],
      cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 1, result.stderr[-3000:]
  error = [x for x in result.stdout.splitlines() if x.startswith("error:")]
  assert error, result.stdout[-3000:]
  assert "does not fit" in error[0] and "bytes" in error[0]
  assert "--config.data.batch_tokens=" in error[0]  # The batch that fits.
