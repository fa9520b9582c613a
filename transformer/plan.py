r"""Pre-flight planner: compile a run for GPUs or TPUs that are not there.

  python -m transformer.plan --config=configs/wmt14_ende.py:base --target=h100 --devices=8
  python -m transformer.plan --config=configs/wmt14_ende.py:big --target=h100 --devices=8 \
      --config.train.fsdp=True --config.train.mesh_shape.data=1 \
      --config.train.mesh_shape.fsdp=-1 --max_batch --json

On this CPU, it compiles the run's real train step (``train.make_update_fn``:
the same mesh, logical-axis rules, batch shape, dtype, accumulation and
donated state as training) and the cached beam-search step
(``search.decode_padded``) for N compile-only devices of the target, with
XLA's own GPU or TPU compiler, and allocates and runs nothing. Per device it
reports:

  memory       parameters, Adam state, the batch, temporaries (activations and
               everything else XLA keeps live) and the peak, against the
               memory the target gives JAX; whether it fits.
  collectives  kind, count and bytes of the step's all-gathers,
               reduce-scatters, all-reduces, all-to-alls, permutes.
  cost         FLOPs and bytes accessed from XLA's cost analysis of the
               optimised program, and a roofline lower bound on the step time
               from the target's published peak bf16 FLOP/s and memory
               bandwidth: max(FLOPs / peak, bytes / bandwidth). From it, the
               best-case MFU, target tokens/s and the time for
               ``train.num_steps``. Compile-time estimates, never measurements:
               communication is assumed hidden, GEMM tiles are XLA's defaults
               (no autotuning without a device). XLA's cost analysis counts
               nothing for a custom call: cuDNN attention's bytes (operands
               and result once) and FLOPs (from its shapes) are added. It
               counts a fused slice of a reshaped operand as a read of the
               whole operand: on a GPU those bytes are taken off again
               (``compiled.sliced_read_overcount``; the slices of merged
               matmuls).
  --max_batch  the largest ``data.batch_tokens`` whose step fits, found by
               compiling (the number of compiles is reported).

A config that does not fit exits with status 1, naming the bytes needed and
available and the largest batch that fits.

Targets: h100, h200 (a GpuTargetConfigProto in ``transformer/targets/``) and
TPU v5e, v5p, v6e (a topology of libtpu's). It needs the compile-only
toolchain of the installed JAX version, the CUDA plugin with ptxas and libtpu,
installed into ``<venv>/planner`` so that ordinary runs never load them:

  pip install --no-deps --target=.venv/planner -r requirements-planner.txt

(or on the path: a machine with ``jax[cuda13]`` or ``jax[cuda12]`` installed has them
already).
"""

import os
import sys

if __name__ == "__main__":
  # The planner starts here. Before JAX is imported: the compile-only
  # toolchain on the path, and JAX's own backend pinned to this CPU (the
  # planner runs nothing on any device).
  from transformer import toolchain
  toolchain.use()
  os.environ["JAX_PLATFORMS"] = "cpu"

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402

from transformer import checks, precision, tokens, toolchain  # noqa: E402
from transformer import compiled as compiled_lib  # noqa: E402
from transformer import search as search_lib  # noqa: E402
from transformer import sharding as sharding_lib  # noqa: E402
from transformer import train as train_lib  # noqa: E402

GiB = 2**30
INSTALL = toolchain.INSTALL
_gib = compiled_lib.format_bytes


# ---------------------------------------------------------------------------
# Targets: published figures.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  platform: str  # "cuda" or "tpu"
  memory_bytes: int  # Per device.
  peak_flops: float  # Dense bf16 FLOP/s per device (tensor cores / MXUs).
  bandwidth: float  # Memory bytes/s per device.
  spec: str = ""  # GPU: GpuTargetConfigProto text file in transformer/targets/.
  topologies: tuple = ()  # TPU: (chips, libtpu topology name) pairs.


TARGETS = {
    # NVIDIA H100 SXM5 datasheet: 989 TFLOPS dense bf16, 3.35 TB/s HBM3.
    "h100": Target("NVIDIA H100 SXM 80GB", "cuda", 84_942_979_072, 989e12, 3.35e12,
                   spec="h100_sxm.txtpb"),
    # NVIDIA H200 SXM datasheet: the same 989 TFLOPS, 4.8 TB/s HBM3e, 141 GB.
    "h200": Target("NVIDIA H200 SXM 141GB", "cuda", 150_754_820_096, 989e12, 4.8e12,
                   spec="h200_sxm.txtpb"),
    # Cloud TPU system architecture pages: per chip peak bf16, HBM, bandwidth.
    "v5e": Target("TPU v5e", "tpu", 16 * GiB, 197e12, 819e9, topologies=(
        (4, "v5e:2x2"), (8, "v5e:2x4"), (16, "v5e:4x4"),
        (32, "v5e:4x8"), (64, "v5e:8x8"), (128, "v5e:8x16"), (256, "v5e:16x16"))),
    "v5p": Target("TPU v5p", "tpu", 95 * GiB, 459e12, 2765e9, topologies=(
        (4, "v5p:2x2x1"), (8, "v5p:2x2x2"), (16, "v5p:2x2x4"), (32, "v5p:2x4x4"),
        (64, "v5p:4x4x4"))),
    "v6e": Target("TPU v6e", "tpu", 32 * GiB, 918e12, 1640e9, topologies=(
        (4, "v6e:2x2"), (8, "v6e:2x4"), (16, "v6e:4x4"),
        (32, "v6e:4x8"), (64, "v6e:8x8"), (128, "v6e:8x16"), (256, "v6e:16x16"))),
}

TARGET_DIR = os.path.join(os.path.dirname(__file__), "targets")

# The fraction of a GPU's memory that JAX's allocator takes by default.
DEFAULT_GPU_MEM_FRACTION = 0.75


class PlanError(ValueError):
  """A planner input it cannot use (target, device count, missing toolchain)."""


def usable_bytes(target: Target) -> tuple[int, str]:
  """Memory the target gives JAX per device, and how that was derived."""
  if target.platform != "cuda":
    return target.memory_bytes, "the chip's HBM"
  value = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "")
  fraction = float(value) if value else DEFAULT_GPU_MEM_FRACTION
  how = (f"XLA_PYTHON_CLIENT_MEM_FRACTION={fraction:g} of the GPU's "
         f"{target.memory_bytes / GiB:.1f} GiB" + ("" if value else " (JAX's default)"))
  return int(target.memory_bytes * fraction), how


def gpu_topology(num_devices: int) -> str:
  """slices x hosts x devices for ``num_devices`` GPUs in hosts of up to 8."""
  if num_devices <= 8:
    return f"1x1x{num_devices}"
  if num_devices % 8:
    raise PlanError(f"--devices={num_devices}: more than 8 GPUs come in hosts of 8; "
                    "use a multiple of 8.")
  return f"1x{num_devices // 8}x8"


def compile_only_devices(target_name: str, num_devices: int):
  """(devices, topology) of ``num_devices`` compile-only devices of a target."""
  if target_name not in TARGETS:
    raise PlanError(f"--target={target_name!r} is not one of {sorted(TARGETS)}.")
  if num_devices < 1:
    raise PlanError(f"--devices={num_devices} must be at least 1.")
  target = TARGETS[target_name]
  from jax.experimental import topologies
  if target.platform == "cuda":
    plugin = toolchain.cuda_plugin()
    if plugin is None:
      raise PlanError(
          f"Compiling for {target.name} needs JAX's CUDA plugin "
          f"(jax-cuda13-plugin=={jax.__version__}, with jax-cuda13-pjrt and ptxas from "
          f"nvidia-cuda-nvcc); install it with: {INSTALL}")
    if problem := toolchain.not_on_path(plugin):
      raise PlanError(problem)
    with open(os.path.join(TARGET_DIR, target.spec)) as f:
      spec = f.read()
    topology = gpu_topology(num_devices)
    try:
      devices = topologies.get_topology_desc(platform="cuda", target_config=spec,
                                             topology=topology).devices
    except Exception as e:  # The plugin failed to load (e.g. it is of another version).
      raise PlanError(
          f"JAX's CUDA plugin could not describe {num_devices} x {target.name}: "
          f"{' '.join(str(e).split())[:300]}. Install the plugin of JAX {jax.__version__}: "
          f"{INSTALL}") from e
    _stand_in_cudnn_version()
    return devices, topology
  names = dict(target.topologies)
  if num_devices not in names:
    raise PlanError(f"--devices={num_devices}: {target.name} slices here have "
                    f"{sorted(names)} chips.")
  if not toolchain.has_libtpu():
    raise PlanError(f"Compiling for {target.name} needs libtpu (the one of jax[tpu]=="
                    f"{jax.__version__}); install it with: {INSTALL}")
  if problem := toolchain.not_on_path("libtpu"):
    raise PlanError(problem)
  # Without a TPU VM's metadata libtpu warns that it cannot find the slice's
  # type and hosts; the planner names them (they do not change the compile).
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", {
      "v5e": f"v5litepod-{num_devices}", "v5p": f"v5p-{2 * num_devices}",
      "v6e": f"v6e-{num_devices}"}[target_name])
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  devices = topologies.get_topology_desc(topology_name=names[num_devices],
                                         platform="tpu").devices
  return devices, names[num_devices]


def _stand_in_cudnn_version():
  """cuDNN fused attention checks the local cuDNN library's version while
  tracing; with no GPU there is none, so stand in the version the plugin was
  built against (the kernel's own shape checks still run)."""
  from jax._src.cudnn import fused_attention_stablehlo as fused
  from jax._src.lib import cuda_versions
  try:
    fused.check_cudnn_version()
  except Exception:
    built = cuda_versions.cudnn_build_version() if cuda_versions is not None else 91000
    fused.check_cudnn_version = lambda: built


# ---------------------------------------------------------------------------
# Compiling the run's programs.
# ---------------------------------------------------------------------------


def compile_train_step(config, mesh) -> dict:
  """Compiles the update step of ``config`` on ``mesh`` (ahead of time, from
  shapes: ``train.Update.lower``); returns each program's report
  (``compiled.report``) and the state's and batch's bytes per device."""
  setup = train_lib.setup_state(config, mesh, abstract=True)
  batch = train_lib.batch_shapes(config.data, setup)
  start = time.time()
  programs = {name: lowered.compile()
              for name, lowered in train_lib.make_update_fn(setup).lower(batch).items()}
  seconds = time.time() - start
  state = setup.abstract_state
  rows, length = next(iter(batch.values())).shape
  return {"programs": {name: compiled_lib.report(c) for name, c in programs.items()},
          "compile_seconds": round(seconds, 1), "rows": rows, "length": length,
          "num_parameters": sum(math.prod(p.shape) for p in jax.tree.leaves(state["params"])),
          "parameter_bytes": compiled_lib.shard_bytes(state["params"]),
          "optimizer_bytes": compiled_lib.shard_bytes(state["opt_state"]),
          "batch_bytes": compiled_lib.shard_bytes(batch)}


def compile_beam_search(config, mesh) -> dict:
  """Compiles the cached beam search of evaluation (``search.decode_padded``)
  for ``decode.batch_size`` sentences of up to ``data.max_length`` tokens,
  parameters sharded as in training; returns its memory."""
  setup = train_lib.setup_state(config, mesh, abstract=True)
  d = config.decode
  batch = tokens.bucket(d.batch_size, minimum=1)
  source_length = tokens.bucket(config.data.max_length)
  max_length = source_length + d.max_extra_length
  replicated = sharding_lib.replicated(mesh)

  def search(params, rest, inputs, limits):
    model = nnx.merge(setup.graphdef, params, rest)
    return search_lib.decode_padded(model, inputs, limits, jnp.float32(d.alpha),
                                    jnp.int32(d.min_length), beam_size=d.beam_size,
                                    max_length=max_length)

  inputs = jax.ShapeDtypeStruct((batch, source_length), jnp.int32, sharding=replicated)
  limits = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=replicated)
  start = time.time()
  compiled = jax.jit(search, out_shardings=replicated).lower(
      setup.abstract_state["params"], setup.rest, inputs, limits).compile()
  return {"memory": compiled_lib.memory(compiled),
          "collectives": compiled_lib.collectives(compiled.as_text()),
          "sentences": batch, "source_length": source_length, "beam_size": d.beam_size,
          "max_output_length": max_length, "compile_seconds": round(time.time() - start, 1)}


# ---------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------


def _platform(target: Target) -> str:
  return "gpu" if target.platform == "cuda" else "tpu"


def _with_batch(config, batch_tokens):
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.batch_tokens = int(batch_tokens)
  return config


def roofline(train_report, config, target: Target) -> dict:
  """A lower bound on the update's time from the compiled programs' FLOPs and
  bytes accessed, and what it implies. Compile-time estimates."""
  micro_batches = config.train.accumulate_steps
  programs = train_report["programs"]
  runs = {"update": 1} if "update" in programs else {"accumulate": micro_batches, "apply": 1}
  flops = sum(programs[n]["cost"]["flops"] * r for n, r in runs.items())
  accessed = sum(programs[n]["cost"]["bytes_accessed"] * r for n, r in runs.items())
  math_s, memory_s = flops / target.peak_flops, accessed / target.bandwidth
  step_s = max(math_s, memory_s)
  # Target token slots per update.
  slots = train_report["rows"] * train_report["length"] * micro_batches
  return {
      "flops_per_device": flops, "bytes_accessed_per_device": accessed,
      "math_seconds": math_s, "memory_seconds": memory_s, "step_seconds": step_s,
      "bound": "memory" if memory_s > math_s else "math",
      "best_case_mfu": math_s / step_s if step_s else 0.0,
      "target_tokens_per_second": slots / step_s if step_s else 0.0,
      "num_steps": config.train.num_steps,
      "hours_for_num_steps": step_s * config.train.num_steps / 3600,
      "while_loops": sum(programs[n]["while_loops"] for n in runs),
      "custom_call_flops": sum(programs[n]["cost"].get("custom_call_flops", 0.0) * r
                               for n, r in runs.items()),
      "custom_call_bytes_accessed": sum(
          programs[n]["cost"].get("custom_call_bytes_accessed", 0.0) * r
          for n, r in runs.items()),
      "sliced_read_overcount": sum(
          programs[n]["cost"].get("sliced_read_overcount", 0.0) * r for n, r in runs.items()),
  }


def search_max_rows(peak_of, rows0, peak0, usable, fixed, *, budget=8, log=print):
  """The largest rows per batch split whose step fits in ``usable`` bytes,
  by compiling: a line through the measured (rows, peak) points (``fixed``,
  the state's bytes, at 0 rows before the second point) proposes the next
  size within the fitting/failing bracket, or its middle when the line
  points down or the last two compiles landed on the same side; the
  bracket closes to one row or the budget ends.

  Returns (rows or 0, exact, {rows: peak} of every compile).
  """
  seen = {rows0: peak0}
  while len(seen) - 1 < budget:
    fits = [r for r, p in seen.items() if p <= usable]
    fails = [r for r, p in seen.items() if p > usable]
    lo, hi = max(fits, default=0), min(fails, default=None)
    if hi is not None and hi - lo <= 1:
      break
    # Two line steps in a row that landed on the same side: the line creeps
    # towards the boundary one row at a time; bisect instead.
    last = [p <= usable for p in list(seen.values())[-2:]]
    stalled = len(seen) > 2 and last[0] == last[1]
    # The two measured points nearest the boundary, or the state at 0 rows.
    points = sorted(seen.items(), key=lambda rp: abs(rp[1] - usable))[:2]
    if len(points) < 2:
      points.append((0, fixed))
    (r1, p1), (r2, p2) = points
    slope = (p1 - p2) / (r1 - r2) if r1 != r2 and p1 != p2 else max(p1 - fixed, 1) / max(r1, 1)
    guess = int(r1 + (usable - p1) / slope) if slope > 0 else None
    if hi is None:
      guess = max(guess or 2 * max(lo, 1), lo + 1)
    elif guess is None or stalled:
      # The line points down, or creeps: memory is not linear there (XLA
      # rematerializes near its limit, which flattens the peaks and can lower
      # them for more rows): bisect the bracket.
      guess = (lo + hi) // 2
    else:
      guess = min(max(guess, lo + 1), hi - 1)
    if guess in seen or guess < 1:
      break
    log(f"  compiling {guess} rows per split ...")
    seen[guess] = peak_of(guess)
  fits = [r for r, p in seen.items() if p <= usable]
  fails = [r for r, p in seen.items() if p > usable]
  lo, hi = max(fits, default=0), min(fails, default=None)
  return lo, hi is not None and hi - lo <= 1, seen


def make_plan(config: ml_collections.ConfigDict, target_name: str, num_devices: int, *,
              max_batch: bool = False, beam_search: bool = True, max_batch_compiles: int = 8,
              log=print) -> dict:
  """Compiles ``config`` for ``num_devices`` compile-only devices of
  ``target_name`` and returns the plan (see the module docstring).
  ``max_batch_compiles``: the most compiles of the largest-batch search."""
  devices, topology = compile_only_devices(target_name, num_devices)
  target = TARGETS[target_name]
  config = checks.resolve_config(config, num_devices=num_devices,
                                    platform=_platform(target))
  mesh = sharding_lib.make_mesh(config.train, devices=devices)
  rules = sharding_lib.logical_axis_rules(config.train)
  divisor = sharding_lib.batch_divisor(mesh, rules)
  usable, usable_how = usable_bytes(target)
  log(f"Compiling the train step of {config.model.num_layers}-layer d_model="
      f"{config.model.d_model} for {num_devices} x {target.name} ({topology}), mesh "
      f"{dict(mesh.shape)} ...")
  attention_note, attention_impl = None, config.model.attention_impl
  try:
    train = compile_train_step(config, mesh)
  except jax.errors.JaxRuntimeError as e:
    if "deviceless cuDNN" not in str(e):
      raise
    # jax >= 0.12's XLA builds cuDNN's fused attention at compile time, which
    # needs a GPU's cuDNN handle: with none, the einsums stand in (the same
    # function; on a GPU cuDNN's kernel moves fewer bytes than this estimate).
    config.model.attention_impl = "xla"
    attention_note = ("cuDNN's fused attention does not compile without a GPU in this "
                      f"JAX ({jax.__version__}): the einsums are compiled in its place, "
                      "which move more bytes (JAX 0.11.2 compiles it: docs/gpu.md)")
    log(f"  ({attention_note})")
    train = compile_train_step(config, mesh)
  peak = compiled_lib.peak(train["programs"])
  plan = {
      "target": target_name, "device": target.name, "devices": num_devices,
      "topology": topology, "mesh": dict(mesh.shape), "dtype": config.model.dtype,
      "attention_impl": attention_impl,
      "attention": precision.fused_attention_implementation(
          config.model, _platform(target)) or "einsum",
      "attention_note": attention_note,
      "fsdp": bool(config.train.fsdp),
      "batch": {"batch_tokens": config.data.batch_tokens, "rows": train["rows"],
                "length": train["length"], "rows_per_split": train["rows"] // divisor,
                "accumulate_steps": config.train.accumulate_steps},
      "memory_per_device": {
          "parameters": train["parameter_bytes"], "optimizer_state": train["optimizer_bytes"],
          "batch": train["batch_bytes"], "programs": {
              n: p["memory"] for n, p in train["programs"].items()},
          "peak": peak, "device_memory": target.memory_bytes, "usable": usable,
          "usable_is": usable_how},
      "fits": peak <= usable,
      "num_parameters": train["num_parameters"],
      "collectives": {n: p["collectives"] for n, p in train["programs"].items()},
      "custom_calls": {n: p["custom_calls"] for n, p in train["programs"].items()},
      "largest_traffic": {n: p["largest_traffic"] for n, p in train["programs"].items()},
      "estimate": roofline(train, config, target),
      "compile_seconds": {"train_step": train["compile_seconds"]},
      "compiles": 1,
  }
  plan["estimate"]["peak_flops"] = target.peak_flops
  plan["estimate"]["bandwidth"] = target.bandwidth
  if beam_search:
    log("Compiling the beam-search step ...")
    beam = compile_beam_search(config, mesh)
    plan["beam_search"] = beam
    plan["compile_seconds"]["beam_search"] = beam["compile_seconds"]
    plan["compiles"] += 1
  if max_batch or not plan["fits"]:
    length = config.data.max_length
    rows0 = train["rows"] // divisor
    fixed = train["parameter_bytes"] + train["optimizer_bytes"]

    def peak_of(rows):
      report = compile_train_step(_with_batch(config, rows * divisor * length), mesh)
      return compiled_lib.peak(report["programs"])

    log(f"Searching the largest batch that fits in {usable / GiB:.2f} GiB per device ...")
    rows, exact, seen = search_max_rows(peak_of, rows0, peak, usable, fixed,
                                         budget=max_batch_compiles, log=log)
    plan["compiles"] += len(seen) - 1
    plan["max_batch"] = {
        "rows_per_split": rows, "batch_tokens": rows * divisor * length,
        "tokens_per_device": rows * length * divisor // num_devices,
        "exact_to_one_row": exact, "compiles": len(seen),
        "peaks": {str(r): p for r, p in sorted(seen.items())}}
  return plan


# ---------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------


def not_fit_message(plan) -> str:
  m = plan["memory_per_device"]
  best = plan.get("max_batch", {})
  if best.get("rows_per_split"):
    fix = (f"--config.data.batch_tokens={best['batch_tokens']} fits"
           + ("" if best["exact_to_one_row"] else " (the largest found)")
           + "; reach a larger batch with --config.train.accumulate_steps")
  else:
    fix = ("not even one row of data.max_length tokens per device fits; shard the "
           "parameters (--config.train.fsdp=True --config.train.mesh_shape.data=1 "
           "--config.train.mesh_shape.fsdp=-1), use more devices or lower data.max_length")
  return (f"does not fit: the step needs {_gib(m['peak'])} ({m['peak']:,} bytes) per device, "
          f"{plan['device']} gives {_gib(m['usable'])} ({m['usable']:,} bytes; "
          f"{m['usable_is']}) at data.batch_tokens={plan['batch']['batch_tokens']}; {fix}.")


def format_plan(plan) -> str:
  m, e, b = plan["memory_per_device"], plan["estimate"], plan["batch"]
  lines = [
      f"Plan: {plan['devices']} x {plan['device']} (topology {plan['topology']}), mesh "
      f"{plan['mesh']}, {plan['dtype']}, fsdp={plan['fsdp']}, attention "
      f"{plan['attention_impl']} ({plan['attention']}); {plan['num_parameters']:,} parameters."
      + (f"\n({plan['attention_note']}.)" if plan.get("attention_note") else ""),
      f"Batch: {b['rows']} rows x {b['length']} tokens per side ({b['rows_per_split']} rows "
      f"per batch split) x {b['accumulate_steps']} micro-batch(es) per update.",
      "",
      "Memory per device (compiled):",
      f"  parameters       {_gib(m['parameters']):>12}",
      f"  Adam state       {_gib(m['optimizer_state']):>12}",
      f"  batch            {_gib(m['batch']):>12}",
  ]
  for name, pm in m["programs"].items():
    lines.append(f"  {name}: temporaries {_gib(pm['temporaries'])}, peak {_gib(pm['peak'])}")
  lines += [
      f"  peak             {_gib(m['peak']):>12}  of {_gib(m['usable'])} usable "
      f"({m['usable_is']}): {'fits' if plan['fits'] else 'DOES NOT FIT'}",
      "",
      "Collectives per step (count, bytes per device):"]
  for name, found in plan["collectives"].items():
    text = ", ".join(f"{kind} {v['count']} ({_gib(v['bytes'])})"
                     for kind, v in sorted(found.items()))
    lines.append(f"  {name}: {text or 'none'}")
  cudnn = {target: n for calls in plan["custom_calls"].values() for target, n in calls.items()
           if "cudnn" in target}
  if cudnn:
    lines.append(f"  cuDNN custom calls: {cudnn}")
  lines += [
      "",
      "Compile-time estimate (a lower bound, not a measurement):",
      f"  {e['flops_per_device']:.3e} FLOPs and {e['bytes_accessed_per_device']:.3e} bytes "
      f"accessed per device per update (XLA cost analysis"
      + (f"; {e['sliced_read_overcount']:.3e} bytes of sliced reads it counts whole "
         "taken off" if e.get("sliced_read_overcount") else "") + ")",
      f"  math {e['math_seconds'] * 1e3:.2f} ms at {e['peak_flops'] / 1e12:.0f} TFLOP/s, "
      f"memory {e['memory_seconds'] * 1e3:.2f} ms at {e['bandwidth'] / 1e12:.2f} TB/s: "
      f"{e['bound']}-bound, step >= {e['step_seconds'] * 1e3:.2f} ms",
      f"  best-case MFU {100 * e['best_case_mfu']:.1f}%, <= "
      f"{e['target_tokens_per_second']:,.0f} target token slots/s, >= "
      f"{e['hours_for_num_steps']:.1f} h for {e['num_steps']:,} steps",
  ]
  for name, items in plan["largest_traffic"].items():
    lines.append(f"  largest memory traffic ({name}):")
    lines += [f"    {_gib(i['bytes']):>10}  {i['op']} from {i['from'][-90:]}" for i in items]
  if e["while_loops"]:
    lines.append(f"  (the step has {e['while_loops']} while loop(s), whose bodies the cost "
                 "analysis counts once: FLOPs and bytes are under-counted)")
  if "beam_search" in plan:
    bs = plan["beam_search"]
    lines.append(
        f"Beam search: {bs['sentences']} sentences x beam {bs['beam_size']}, source "
        f"{bs['source_length']}, output <= {bs['max_output_length']}: peak "
        f"{_gib(bs['memory']['peak'])} per device")
  if "max_batch" in plan:
    mb = plan["max_batch"]
    lines.append(
        f"Largest batch that fits: data.batch_tokens={mb['batch_tokens']} "
        f"({mb['rows_per_split']} rows per split; "
        f"{'exact to one row' if mb['exact_to_one_row'] else 'the largest found'}), "
        f"{mb['compiles']} compiles")
  lines.append(f"Compile time here: {plan['compile_seconds']} s; {plan['compiles']} compiles.")
  if not plan["fits"]:
    lines.append("error: " + not_fit_message(plan))
  return "\n".join(lines)


def main(argv):
  from absl import flags
  if len(argv) > 1:
    raise PlanError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if f.json else print
  plan = make_plan(f.config, f.target, f.devices, max_batch=f.max_batch,
                   beam_search=f.beam_search, log=log)
  if f.json:
    print(json.dumps(plan, indent=2))
  else:
    print(format_plan(plan))
  if not plan["fits"]:
    if f.json:
      print("error: " + not_fit_message(plan), file=sys.stderr)
    sys.exit(1)


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file, e.g. configs/wmt14_ende.py:base.",
      lock_config=True)
  flags.DEFINE_enum("target", None, sorted(TARGETS), "Device to compile for.")
  flags.DEFINE_integer("devices", 8, "Number of devices (TPU: chips of a slice).")
  flags.DEFINE_bool("json", False, "Print the plan as JSON.")
  flags.DEFINE_bool("max_batch", False,
                    "Also find the largest data.batch_tokens that fits, by compiling.")
  flags.DEFINE_bool("beam_search", True, "Also compile the beam-search step.")
  flags.mark_flags_as_required(["config", "target"])


if __name__ == "__main__":
  from transformer import cli

  _define_flags()

  def _main(argv):
    with cli.user_errors(PlanError, code=cli.EXIT_CONFIG):  # A target or device count.
      main(argv)

  cli.run(_main)
