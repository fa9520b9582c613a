"""Readers of compiled programs (transformer/compiled.py): collectives,
traffic and custom calls from HLO text written here, and memory and cost of a
program compiled on this CPU, against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np

from transformer import compiled


def test_collectives_are_counted_with_their_result_bytes():
  hlo = "\n".join([
      "  %all-gather-start.1 = (bf16[8,64]{1,0}, bf16[64,64]{1,0}) all-gather-start("
      "bf16[8,64]{1,0} %p), channel_id=1",
      "  %all-gather-done.1 = bf16[64,64]{1,0} all-gather-done(%all-gather-start.1)",
      "  %reduce-scatter.2 = f32[8,64]{1,0} reduce-scatter(f32[64,64]{1,0} %g)",
      "  ROOT %all-reduce.3 = f32[] all-reduce(f32[] %x), to_apply=%add",
      "  %all-reduce-start.4 = (f32[10]{0}, f32[6]{0}) all-reduce-start(%a, %b)",
      "  %fusion.5 = f32[64,64]{1,0} fusion(%p), kind=kLoop, calls=%all-to-all-like",
  ])
  found = compiled.collectives(hlo)
  assert found == {
      "all-gather": {"count": 1, "bytes": 64 * 64 * 2},
      "reduce-scatter": {"count": 1, "bytes": 8 * 64 * 4},
      "all-reduce": {"count": 2, "bytes": 4 + 16 * 4},
  }


_MODULE = "\n".join([
    "HloModule m",
    "%fused (p: f32[4,8]) -> f32[4,8] {",
    "  %p = f32[4,8]{1,0} parameter(0)",
    "  ROOT %n = f32[4,8]{1,0} negate(%p)",
    "}",
    "ENTRY %main (a: f32[4,8], b: bf16[8,16]) -> f32[4,16] {",
    "  %a = f32[4,8]{1,0} parameter(0)",
    "  %b = bf16[8,16]{1,0} parameter(1)",
    '  %fusion = f32[4,8]{1,0} fusion(%a), kind=kLoop, calls=%fused, '
    'metadata={op_name="jit(f)/neg"}',
    '  %cc = (f32[4,16]{1,0}, s8[4194304]{0}) custom-call(%fusion, %b), '
    'custom_call_target="__cublas$gemm", metadata={op_name="jit(f)/dot_general"}, '
    'backend_config={"gemm_backend_config":{"dot_dimension_numbers":{'
    '"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],'
    '"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}',
    "  %g = f32[4,16]{1,0} get-tuple-element(%cc), index=0",
    "  ROOT %t = (f32[4,16]{1,0}) tuple(%g)",
    "}",
])


def test_traffic_counts_operands_and_result_of_entry_instructions():
  items = compiled.traffic(_MODULE, top=None)
  # The custom call reads f32[4,8] and bf16[8,16] and writes f32[4,16] (its
  # workspace is scratch); the fusion reads and writes f32[4,8]; parameters
  # and tuples move nothing.
  assert items == [
      {"bytes": 4 * 32 + 2 * 128 + 4 * 64, "instruction": "cc", "op": "custom-call",
       "from": "jit(f)/dot_general"},
      {"bytes": 2 * 4 * 32, "instruction": "fusion", "op": "fusion", "from": "jit(f)/neg"},
  ]
  assert compiled.custom_calls(_MODULE) == {"__cublas$gemm": 1}
  extra = compiled.custom_call_cost(_MODULE)
  # cuBLAS's GEMM: 2 x (4 x 16) results x 8 contracted.
  assert extra == {"flops": 2.0 * 4 * 16 * 8, "bytes_accessed": 4 * 32 + 2 * 128 + 4 * 64,
                   "count": 1}


def test_memory_and_cost_of_a_matmul_compiled_here():
  m, k, n = 32, 64, 16
  a = jax.ShapeDtypeStruct((m, k), jnp.float32)
  b = jax.ShapeDtypeStruct((k, n), jnp.float32)
  program = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
  report = compiled.report(program)
  mem = report["memory"]
  assert mem["arguments"] == 4 * (m * k + k * n) and mem["outputs"] == 4 * m * n
  assert mem["peak"] == mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temporaries"]
  assert report["cost"]["flops"] == 2 * m * k * n
  assert report["collectives"] == {} and report["while_loops"] == 0
  assert compiled.peak({"a": report, "b": {"memory": {"peak": mem["peak"] + 1}}}) == mem["peak"] + 1


def test_shard_bytes_are_per_device():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  spec = jax.sharding.PartitionSpec("data")
  leaf = jax.ShapeDtypeStruct((8, 4), jnp.bfloat16,
                              sharding=jax.sharding.NamedSharding(mesh, spec))
  assert compiled.shard_bytes({"x": leaf, "y": jax.ShapeDtypeStruct((3,), jnp.int32)}) == (
      8 * 4 * 2 + 3 * 4)
  assert compiled.format_bytes(3 * 2**30) == "3.00 GiB"
  assert compiled.format_bytes(3 * 2**20) == "3.0 MiB"


def test_sliced_reads_of_a_reshaped_operand_are_counted_at_the_slices_size():
  # XLA's HLO cost analysis counts a fused slice of a parameter at the
  # slice's size, and a slice of a reshape (bitcast) of it at the whole
  # parameter's: the kernel reads the slice either way.
  x = jax.ShapeDtypeStruct((96, 192), jnp.bfloat16)
  direct = jax.jit(lambda x: x[:, :16] * 2).lower(x).compile()
  reshaped = jax.jit(lambda x: (x.reshape(4, 24, 192)[..., :16] * 2,
                                x.reshape(4, 24, 192)[..., 16:32] * 3)).lower(x).compile()
  assert compiled.sliced_read_overcount(direct.as_text()) == 0
  slice_bytes = 96 * 16 * 2  # each output is its slice's size
  counted = reshaped.cost_analysis()["bytes accessed"]
  overcount = compiled.sliced_read_overcount(reshaped.as_text())
  # Each fusion reads its slice and writes it (and the output tuple's 8 bytes).
  assert abs(counted - overcount - 2 * (slice_bytes + slice_bytes)) <= 16
  assert overcount == 2 * (96 * 192 * 2 - slice_bytes)
  # No slice: nothing is taken off.
  whole = jax.jit(lambda x: x.reshape(4, 24, 192) * 2).lower(x).compile()
  assert compiled.sliced_read_overcount(whole.as_text()) == 0
