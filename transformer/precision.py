"""Compute precision: which dtype a run computes in, and the matmul that uses it.

The parameters and the optimizer state are ``model.param_dtype`` (float32);
activations and matmul operands are the compute dtype, ``model.dtype``:

* ``dtype_name`` resolves "auto": bfloat16 on GPU and TPU and on a CPU with a
  bfloat16 matrix engine (``cpu_has_bf16_matmul``: AMX-BF16 or AVX512-BF16),
  float32 on other CPUs, where XLA emulates bfloat16 matmuls.
* ``matmul`` is every heavy einsum of the model and the loss: operands in the
  compute dtype, float32 accumulation and output (mixed precision), and a
  gradient of the same form.

The model (transformer/model.py) only calls ``matmul`` with the dtype it was
built for; the policy lives here and is resolved once, where the config is
(``train.resolve_config``; decoding's own, ``evaluate.decode_dtype``).
"""

import functools
import re

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Read by cpu_has_bf16_matmul (tests point it at a stand-in file).
CPUINFO = "/proc/cpuinfo"


def cpu_has_bf16_matmul():
  """Whether this CPU multiplies bfloat16 in hardware: the AMX-BF16 tile unit
  or the AVX512-BF16 dot-product instructions, read from the flags in
  /proc/cpuinfo (Linux; elsewhere False). Without them XLA emulates bfloat16
  matmuls, which are slower than float32 ones."""
  try:
    with open(CPUINFO) as f:
      flags = {flag for line in f if line.startswith("flags")
               for flag in line.split(":", 1)[1].split()}
  except OSError:
    return False
  return bool(flags & {"amx_bf16", "avx512_bf16"})


def dtype_name(name, platform=None):
  """``config.model.dtype``, with "auto" resolved for ``platform`` ("cpu",
  "gpu", "tpu"; default: JAX's default backend).

  "auto" is mixed precision where it pays: bfloat16 compute on GPU and TPU,
  and on a CPU with a bfloat16 matrix engine (``cpu_has_bf16_matmul``);
  float32 on other CPUs. Parameters and the optimizer state keep
  ``model.param_dtype`` either way.
  """
  cpu = (platform or jax.default_backend()) == "cpu"
  if name == "auto":
    return "bfloat16" if not cpu or cpu_has_bf16_matmul() else "float32"
  if name not in DTYPES:
    raise ValueError(
        f"Unknown dtype config.model.dtype={name!r}; choose one of "
        f"{sorted(DTYPES) + ['auto']} (e.g. --config.model.dtype=bfloat16).")
  if name == "float16" and cpu:
    raise ValueError(
        "config.model.dtype='float16' is not supported on CPU (no float16 "
        "matmul hardware, and float16 training would need loss scaling); use "
        "--config.model.dtype=bfloat16, float32 or auto.")
  return name


def get_dtype(name, platform=None):
  """The compute dtype for ``config.model.dtype`` ("auto", "float32", ...)."""
  return DTYPES[dtype_name(name, platform)]


# ----------------------------------------------------------------------------
# Matmuls in the compute dtype
# ----------------------------------------------------------------------------

def matmul(spec, x, y, dtype):
  """einsum(spec, x, y) with operands in the compute ``dtype`` and float32
  accumulation and output: the form a matrix engine (GPU/TPU tensor cores,
  AMX on CPU) runs fastest, and the one every heavy matmul here uses.

  The gradient's two matmuls take the same form, with the float32 cotangent
  cast to ``dtype`` first; plain autodiff would multiply it in float32, the
  slow form. Gradients come back in x's and y's own dtypes, so a float32
  parameter gets its float32-accumulated gradient, never rounded to bfloat16.
  """
  return _mixed_einsum(spec, dtype, (x.dtype, y.dtype), x, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _mixed_einsum(spec, dtype, grad_dtypes, x, y):
  del grad_dtypes  # Used by the backward pass only.
  return jnp.einsum(spec, x.astype(dtype), y.astype(dtype),
                    preferred_element_type=jnp.float32)


def _mixed_einsum_fwd(spec, dtype, grad_dtypes, x, y):
  x, y = x.astype(dtype), y.astype(dtype)  # Saved for the backward pass as cast.
  return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32), (x, y)


def _mixed_einsum_bwd(spec, dtype, grad_dtypes, residuals, g):
  # For "xy,yz->xz": dx = einsum("xz,yz->xy", g, y), dy = einsum("xy,xz->yz", x, g).
  # (Every index of an operand is in the other operand or the output.)
  x, y = residuals
  x_spec, y_spec, out_spec = re.split(",|->", spec.replace(" ", ""))
  g = g.astype(dtype)
  dx = jnp.einsum(f"{out_spec},{y_spec}->{x_spec}", g, y, preferred_element_type=jnp.float32)
  dy = jnp.einsum(f"{x_spec},{out_spec}->{y_spec}", x, g, preferred_element_type=jnp.float32)
  return dx.astype(grad_dtypes[0]), dy.astype(grad_dtypes[1])


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)
