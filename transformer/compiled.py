"""What a compiled XLA program holds: memory, collectives, cost, traffic.

Readers of ``jax.stages.Compiled`` programs (and of their optimised HLO text),
for any platform: the planner (``transformer/plan.py``), training's memory
check (``train.check_memory``) and ``benchmarks/gpu_check.py`` use them. It
imports nothing of the model or of training.

  memory            arguments, outputs, temporaries and peak per device
  collectives       kind, count and bytes of the collectives per device
  cost              FLOPs and bytes accessed (XLA's cost analysis, plus what it
                    leaves out for custom calls: ``custom_call_cost``)
  traffic           the instructions that move the most bytes, and the JAX
                    operation each came from
  custom_calls      the custom calls (cuBLAS, cuDNN) by target
  report            all of the above for one program
"""

import math
import re

import jax
import numpy as np

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
          "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
               "collective-permute", "ragged-all-to-all")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s([a-z][a-z0-9-]*)\(")


def _array_bytes(shape_text: str) -> list[int]:
  return [_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
          for dt, dims in _ARRAY.findall(shape_text)]


def collectives(hlo_text: str) -> dict:
  """{kind: {"count", "bytes"}} of the collectives in an optimised HLO module
  (per device: the bytes of each op's result; an async ``-start`` counts once)."""
  found = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    shape, op = m.groups()
    kind = op.removesuffix("-start")
    if kind not in COLLECTIVES:
      continue
    sizes = _array_bytes(shape)
    if op == "all-gather-start" and len(sizes) > 1:  # (operands..., results...)
      sizes = sizes[len(sizes) // 2:]
    entry = found.setdefault(kind, {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += sum(sizes)
  return found


_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%([^\s=]+)\s*=\s*(.*?)\s([a-z][a-z0-9-]*)\((.*)$")
_NO_TRAFFIC = ("parameter", "constant", "get-tuple-element", "bitcast", "tuple", "after-all",
               "opt-barrier", "partition-id", "replica-id")


def _scratch_bytes(shape_text: str) -> int:
  """The bytes of a custom call's scratch buffer: the trailing s8/u8 array of
  its result tuple, which XLA allocates for cuBLAS (its workspace, 4 MiB) and
  cuDNN; no operand or result of the operation, so no traffic of it."""
  arrays = _ARRAY.findall(shape_text)
  if len(arrays) < 2 or arrays[-1][0] not in ("s8", "u8"):
    return 0
  return _array_bytes("{}[{}]".format(*arrays[-1]))[0]


def traffic(hlo_text: str, top: int | None = 5) -> list[dict]:
  """The ``top`` instructions of an optimised module's entry computation by
  memory traffic (bytes of their operands and result, per device), each with
  the JAX operation it came from: where a step's bytes accessed go."""
  shapes, entry, in_entry = {}, [], False
  for line in hlo_text.splitlines():
    if line.startswith("ENTRY "):
      in_entry = True
      continue
    if in_entry and line.startswith("}"):
      in_entry = False
    m = _DEFINITION.match(line)
    if not m:
      continue
    name, shape, op, rest = m.groups()
    shapes[name] = sum(_array_bytes(shape)) - (_scratch_bytes(shape) if op == "custom-call" else 0)
    if in_entry and op not in _NO_TRAFFIC and not op.endswith("-done"):
      operands = re.findall(r"%([^\s,)]+)", rest.split(")", 1)[0])
      source = re.search(r'op_name="([^"]*)"', line)
      entry.append((name, op, shapes[name], operands, source.group(1) if source else ""))
  items = [{"bytes": result + sum(shapes.get(o, 0) for o in operands), "instruction": name,
            "op": op, "from": source} for name, op, result, operands, source in entry]
  return sorted(items, key=lambda item: -item["bytes"])[:top]  # top None: all.


_HEADER = re.compile(r"^(ENTRY\s+)?%(\S+)\s.*\{\s*$")


def _computations(hlo_text: str) -> dict:
  """{name: [instruction lines]} of an HLO module's computations."""
  computations, name = {}, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      name = header.group(2)
      computations[name] = []
    elif line.startswith("}"):
      name = None
    elif name is not None:
      computations[name].append(line)
  return computations


def sliced_read_overcount(hlo_text: str) -> int:
  """Bytes that XLA's HLO cost analysis counts and a fused kernel never reads:
  a fusion parameter that reaches only ``slice`` ops, through a ``bitcast``
  (a reshape), is counted whole, where a parameter sliced directly is counted
  at the slices' size; the kernel reads the slices either way. XLA:GPU writes
  this pattern for the slices of merged matmuls (``dot_merger``: the 12
  cross-attention K and V projections of base become one product and 24
  slices). Summed over the fusions of the module's unfused computations (a
  while loop's body once, as the analysis counts it)."""
  computations = _computations(hlo_text)
  fused = set()
  for lines in computations.values():
    for line in lines:
      m = _DEFINITION.match(line)
      if m and m.group(3) == "fusion":
        fused.update(re.findall(r"calls=%([^\s,}]+)", m.group(4)))
  overcount = {}
  for name in fused & computations.keys():
    shapes, ops, users = {}, {}, {}
    for line in computations[name]:
      m = _DEFINITION.match(line)
      if not m:
        continue
      inst, shape, op, rest = m.groups()
      shapes[inst], ops[inst] = sum(_array_bytes(shape)), op
      for operand in re.findall(r"%([^\s,)]+)", rest.split(")", 1)[0]):
        users.setdefault(operand, []).append(inst)
    extra = 0
    for param in (i for i, op in ops.items() if op == "parameter"):
      frontier, slices, through_bitcast, ok = list(users.get(param, [])), 0, False, True
      while frontier and ok:
        user = frontier.pop()
        if ops[user] == "bitcast":
          through_bitcast = True
          frontier.extend(users.get(user, []))
        elif ops[user] == "slice":
          slices += shapes[user]
        else:
          ok = False
      if ok and through_bitcast and slices < shapes[param]:
        extra += shapes[param] - slices
    if extra:
      overcount[name] = extra
  total = 0
  for name, lines in computations.items():
    if name in fused:
      continue
    for line in lines:
      m = _DEFINITION.match(line)
      if m and m.group(3) == "fusion":
        total += sum(overcount.get(c, 0) for c in re.findall(r"calls=%([^\s,}]+)", m.group(4)))
  return total


def custom_call_cost(hlo_text: str) -> dict:
  """What XLA's HLO cost analysis leaves out: it counts a custom call's FLOPs
  and bytes as unknown (nothing). Bytes: each custom call of the entry
  computation reads its operands and writes its result once (a lower bound).
  A scratch buffer (cuBLAS's workspace) is neither (``_scratch_bytes``).
  FLOPs: cuDNN's fused attention (``__cudnn$fmha...``), from the query (B, Q,
  H, K) and key (B, M, H, K) shapes, 4 B H Q M K forward (two matmuls) and
  2.5 times that backward (five); a cuBLAS GEMM (``__cublas$gemm``,
  ``__cublas$lt$matmul``: ``xla_gpu_enable_triton_gemm=false``), 2 x its
  result's elements x its contracting size, from the left operand's shape and
  the GEMM's dimension numbers; other custom calls none."""
  flops = 0.0
  dims_of = {}
  for line in hlo_text.splitlines():
    m = _DEFINITION.match(line)
    if m:
      found = _ARRAY.findall(m.group(2))
      dims_of[m.group(1)] = [int(d) for d in found[0][1].split(",") if d] if found else []
  for line in hlo_text.split("\nENTRY ", 1)[-1].splitlines():
    gemm = re.search(r'custom_call_target="__cublas\$(?:gemm|lt\$matmul)"', line)
    m = _DEFINITION.match(line)
    if gemm and m:
      operands = re.findall(r"%([^\s,)]+)", m.group(4).split(")", 1)[0])
      contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', line)
      lhs = dims_of.get(operands[0]) if operands else None
      if lhs is not None and contracting:
        k = math.prod(lhs[int(d.strip('" '))] for d in contracting.group(1).split(",")
                      if d.strip())
        flops += 2.0 * math.prod(dims_of[m.group(1)]) * k
      continue
    target = re.search(r'custom_call_target="([^"]*fmha[^"]*)"', line)
    if not target or "operand_layout_constraints=" not in line:
      continue
    constraints = line.split("operand_layout_constraints=", 1)[1].split("}},", 1)[0]
    dims = [[int(d) for d in m.split(",")] for m in re.findall(r"\w+\[([\d,]+)\]", constraints)]
    (b, q, h, k), (_, m, _, _) = dims[0], dims[1]
    flops += 4.0 * b * h * q * m * k * (2.5 if "Backward" in target.group(1) else 1.0)
  calls = [item for item in traffic(hlo_text, top=None) if item["op"] == "custom-call"]
  return {"flops": flops, "bytes_accessed": float(sum(item["bytes"] for item in calls)),
          "count": len(calls)}


def custom_calls(hlo_text: str) -> dict:
  """{target: count} of the custom calls (cuBLAS, cuDNN, ...) in a module."""
  counts = {}
  for target in re.findall(r'custom_call_target="([^"]+)"', hlo_text):
    counts[target] = counts.get(target, 0) + 1
  return counts


def cost(compiled, hlo_text: str | None = None) -> dict:
  """FLOPs and bytes accessed per device of a compiled program: the
  compiler's cost analysis where it gives one (TPU), else XLA's HLO cost
  analysis of the optimised module (GPU compile-only clients return None)
  plus ``custom_call_cost`` (cuDNN attention), which it leaves out, less
  ``sliced_read_overcount``, which it counts and no kernel reads.
  ``hlo_text``: the program's ``as_text()``, where the caller has it already.
  A while loop's body is counted once, whatever its trip count."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else None
  if analysis and "flops" in analysis:
    return {"flops": float(analysis.get("flops", 0.0)),
            "bytes_accessed": float(analysis.get("bytes accessed", 0.0)), "source": "compiler"}
  from jax._src.lib import _jax
  module = compiled.runtime_executable().hlo_modules()[0]
  analysis = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
  text = hlo_text if hlo_text is not None else compiled.as_text()
  extra, overcount = custom_call_cost(text), sliced_read_overcount(text)
  out = {"flops": float(analysis.get("flops", 0.0)) + extra["flops"],
         "bytes_accessed": float(analysis.get("bytes accessed", 0.0))
         + extra["bytes_accessed"] - overcount,
         "source": "hlo_cost_analysis"}
  if extra["count"]:
    out["source"] += " + custom calls"
    out["custom_call_flops"] = extra["flops"]
    out["custom_call_bytes_accessed"] = extra["bytes_accessed"]
  if overcount:
    out["source"] += " - sliced reads"
    out["sliced_read_overcount"] = float(overcount)
  return out


def shard_bytes(tree) -> int:
  """Bytes per device of a tree of ShapeDtypeStructs with shardings."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def memory(compiled) -> dict:
  """Per-device bytes of a compiled program: its arguments, outputs not
  aliased to (donated) arguments, temporaries, and the peak (their sum)."""
  m = compiled.memory_analysis()
  out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
         "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes)}
  out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return out


def format_bytes(n: int) -> str:
  """``n`` bytes as GiB, or MiB below a quarter GiB."""
  return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def report(compiled) -> dict:
  """Memory, collectives, cost, custom calls, the largest traffic and the
  number of while loops (whose bodies the cost analysis counts once) of a
  compiled program."""
  text = compiled.as_text()
  return {"memory": memory(compiled), "collectives": collectives(text),
          "cost": cost(compiled, text), "custom_calls": custom_calls(text),
          "largest_traffic": traffic(text),
          "while_loops": len(re.findall(r"\swhile\(", text))}


def peak(reports: dict) -> int:
  """The highest peak of ``{name: report}``: programs of one step run one at
  a time, so the step needs the largest."""
  return max(r["memory"]["peak"] for r in reports.values())
