"""How the model's arithmetic runs on a device: the compute dtype, the
mixed-precision matmul, and the kernel that computes attention.

The parameters and the optimizer state are ``model.param_dtype`` (float32);
activations and matmul operands are the compute dtype, ``model.dtype``:

* ``dtype_name`` resolves "auto": bfloat16 on GPU and TPU and on a CPU with a
  bfloat16 matrix engine (``cpu_has_bf16_matmul``: AMX-BF16 or AVX512-BF16),
  float32 on other CPUs, where XLA emulates bfloat16 matmuls.
* ``matmul`` is every heavy einsum of the model and the loss: operands in the
  compute dtype, float32 accumulation, output in float32 or, for the
  activation-sized products, in ``matmul_output_dtype`` (the compute dtype on
  a GPU), and a gradient of the same form; ``add_bias`` adds a bias in
  the product's dtype with a float32 bias gradient.

* ``decode_dtype`` is decoding's own compute dtype (``config.decode.dtype``).
* ``fused_attention_implementation`` picks what computes Eq. (1) for a
  config: cuDNN's fused kernel, XLA's attention, or the model's einsums; and
  ``fused_attention`` runs the fused kernel, or under "auto" declines the
  shapes cuDNN refuses when traced (the einsums then compute them).

The model (transformer/model.py) only calls ``matmul`` with the dtype it was
built for and ``fused_attention`` with the kernel chosen here; the policy
lives here and is resolved once, where the config is
(``checks.resolve_config``, checked by ``checks.check_config``).
"""

import functools
import re

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from transformer import choices

DTYPES = {name: getattr(jnp, name) for name in choices.DTYPES}  # transformer/choices.py's names.

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


def decode_dtype(decode_config, model_config, platform: str | None = None) -> str:
  """The compute dtype decoding runs in, from ``config.decode.dtype``.

  "auto" is float32 on a CPU and the model's compute dtype (``model.dtype``)
  elsewhere. On a CPU a decoding step multiplies a few hundred rows at a time,
  where bfloat16 does not pay even with bfloat16 instructions: beam-4
  decoding of Multi30k val took 1.2x as long in bfloat16 as in float32 on an
  AMD EPYC with AVX512-BF16 (docs/benchmarks.md). "model": ``model.dtype`` as
  trained. Parameters are the same either way.
  """
  name = decode_config.dtype
  cpu = (platform or jax.default_backend()) == "cpu"
  if name == "model" or (name == "auto" and not cpu):
    name = model_config.dtype
  elif name == "auto":
    name = "float32"
  try:
    return dtype_name(name, platform)
  except ValueError as e:
    raise ValueError(str(e).replace("config.model.dtype", "config.decode.dtype")) from None


# ----------------------------------------------------------------------------
# The attention kernel
# ----------------------------------------------------------------------------

def fused_attention_implementation(cfg, platform=None):
  """What computes Eq. (1) for ``config.model.attention_impl`` on ``platform``:
  "cudnn" (cuDNN's fused kernel, GPU), "xla" (``jax.nn.dot_product_attention``
  by XLA) or None (the model's einsums, ``scaled_dot_product_attention``).

  "auto" is cuDNN on a GPU where the model allows it (see
  ``check_fused_attention``) and, when traced, where cuDNN takes the shapes
  (``fused_attention``); the einsums elsewhere: the same function, with the
  (B, H, Q, M) weights never stored on a GPU, which makes the base train step
  move about a fifth fewer bytes on an H100 (``python -m transformer.plan``)."""
  gpu = (platform or jax.default_backend()) == "gpu"
  if cfg.attention_impl == "dot_product_attention":
    return "cudnn" if gpu else "xla"
  if cfg.attention_impl == "auto" and gpu:
    try:
      check_fused_attention(cfg, platform)
    except ValueError:
      return None
    return "cudnn"
  return None


def check_fused_attention(cfg, platform=None):
  """Raises a ``ValueError`` for what ``attention_impl="dot_product_attention"``
  cannot take. On a GPU it is cuDNN's fused kernel (``fused_attention``):
  a 16-bit compute dtype, and a head size that is a multiple of 8, at most 256
  (at most 128 before Hopper: cuDNN says so itself when it traces, and
  ``fused_attention`` passes it on)."""
  fix = "or use --config.model.attention_impl=xla"
  if cfg.d_k != cfg.d_v:
    raise ValueError(
        "config.model.attention_impl='dot_product_attention' needs d_k == d_v "
        f"(got {cfg.d_k} and {cfg.d_v}); {fix}.")
  if cfg.attention_dropout_rate > 0:
    raise ValueError(
        "config.model.attention_impl='dot_product_attention' has no attention "
        f"dropout (config.model.attention_dropout_rate={cfg.attention_dropout_rate}); "
        f"set --config.model.attention_dropout_rate=0, {fix}.")
  if (platform or jax.default_backend()) != "gpu":
    return
  dtype = dtype_name(cfg.dtype, platform)
  if dtype not in ("bfloat16", "float16"):
    raise ValueError(
        "config.model.attention_impl='dot_product_attention' is cuDNN's fused "
        f"attention on a GPU, which takes bfloat16 or float16, not {dtype} "
        f"(config.model.dtype={cfg.dtype!r}); set --config.model.dtype=bfloat16, {fix}.")
  if cfg.d_k % 8 or cfg.d_k > 256:
    raise ValueError(
        "config.model.attention_impl='dot_product_attention' is cuDNN's fused "
        "attention on a GPU, which needs a head size that is a multiple of 8, at "
        f"most 256 (config.model.d_k = d_v = {cfg.d_k}); change d_k and d_v, {fix}.")


def fused_attention(q, k, v, mask, *, implementation, attention_impl=None):
  """Eq. (1) by ``jax.nn.dot_product_attention``: cuDNN's fused kernel
  (``implementation="cudnn"``, GPU only; the (B, H, Q, M) weights are never
  stored, forward or backward) or XLA's attention ("xla"). Arguments and the
  (B, H, Q, J) output as in ``model.scaled_dot_product_attention``, no weights.

  cuDNN checks the shapes when it is traced, and refuses some that no config
  check sees (in training, odd sequence lengths). Under
  ``attention_impl="auto"`` it then returns None, for the caller's einsums;
  otherwise the refusal is one clear error."""
  batch, _, q_len, _ = q.shape
  bthk = lambda x: x.swapaxes(1, 2)  # noqa: E731  It takes (B, T, H, K).
  # cuDNN adds the mask as a bias of the whole (B, 1, Q, M) shape.
  mask = jnp.broadcast_to(mask, (batch, 1, q_len, k.shape[2]))
  try:
    out = jax.nn.dot_product_attention(bthk(q), bthk(k), bthk(v), mask=mask,
                                       implementation=implementation)
  except (ValueError, NotImplementedError, RuntimeError) as e:
    if implementation != "cudnn":
      raise
    if attention_impl == "auto":
      return None
    raise ValueError(
        "cuDNN fused attention (config.model.attention_impl='dot_product_attention' "
        f"on a GPU) cannot take queries {q.shape} (B, H, Q, K) and keys {k.shape} "
        f"(B, H, M, K) of {q.dtype}: {type(e).__name__}: {str(e).rstrip('.')}. It needs cuDNN "
        "installed (pip install 'jax[cuda12]'), and in training even sequence "
        "lengths (an even data.max_length); or use --config.model.attention_impl=xla."
    ) from e
  return bthk(out)


# ----------------------------------------------------------------------------
# Matmuls in the compute dtype
# ----------------------------------------------------------------------------

def matmul_output_dtype(cfg, platform=None):
  """The dtype the activation-sized matmul products are written in, for
  ``config.model.matmul_output``: the compute dtype (``model.dtype``) for
  "compute", and for "auto" on a GPU; float32 for "float32" and for "auto" on
  a TPU and a CPU. Chosen by the planner (docs/wmt14.md): base on 8 x H100
  moves 6% fewer bytes with compute-dtype products, on 8 x TPU v5e 2% more
  (XLA:TPU already fuses the casts into its matmuls); a CPU's programs stay
  as they were. The products are accumulated in float32 either way."""
  gpu = (platform or jax.default_backend()) == "gpu"
  if cfg.matmul_output == "compute" or (cfg.matmul_output == "auto" and gpu):
    return get_dtype(cfg.dtype, platform)
  return jnp.float32


def matmul(spec, x, y, dtype, out=jnp.float32, grads=None):
  """einsum(spec, x, y) with operands in the compute ``dtype``, accumulated in
  float32 and written in ``out``: float32 (mixed precision's classic form, and
  what Q K^T and the logits always use) or the compute dtype (an
  activation-sized product, ``matmul_output_dtype``), which halves the bytes it
  moves; the form a matrix engine (GPU/TPU tensor cores, AMX on CPU) runs
  fastest.

  The gradient's two matmuls take the same form, with the cotangent cast to
  ``dtype`` first; plain autodiff would multiply it in float32, the slow form.
  A float32 operand (a parameter) gets its float32-accumulated gradient in
  float32, never rounded to bfloat16; a narrower one (an activation) gets its
  gradient written in ``grads`` (default ``out``), then in its own dtype.
  """
  grads = out if grads is None else grads
  product = _mixed_einsum(spec, dtype, jnp.dtype(out), jnp.dtype(grads), (x.dtype, y.dtype),
                          x, y)
  # What train.remat="matmuls" keeps (model.REMAT_POLICIES); no-op otherwise.
  return checkpoint_name(product, "matmul")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _mixed_einsum(spec, dtype, out, grads, operand_dtypes, x, y):
  del grads, operand_dtypes  # Used by the backward pass only.
  return jnp.einsum(spec, x.astype(dtype), y.astype(dtype), preferred_element_type=out)


def _mixed_einsum_fwd(spec, dtype, out, grads, operand_dtypes, x, y):
  x, y = x.astype(dtype), y.astype(dtype)  # Saved for the backward pass as cast.
  return jnp.einsum(spec, x, y, preferred_element_type=out), (x, y)


def _mixed_einsum_bwd(spec, dtype, out, grads, operand_dtypes, residuals, g):
  # For "xy,yz->xz": dx = einsum("xz,yz->xy", g, y), dy = einsum("xy,xz->yz", x, g).
  # (Every index of an operand is in the other operand or the output.)
  x, y = residuals
  x_spec, y_spec, out_spec = re.split(",|->", spec.replace(" ", ""))
  g = g.astype(dtype)
  # float32 for a float32 operand (a parameter's gradient); ``grads`` for an
  # activation's, which is then cast to the activation's dtype.
  written = [jnp.float32 if d == jnp.float32 else grads for d in operand_dtypes]
  dx = jnp.einsum(f"{out_spec},{y_spec}->{x_spec}", g, y, preferred_element_type=written[0])
  dy = jnp.einsum(f"{x_spec},{out_spec}->{y_spec}", x, g, preferred_element_type=written[1])
  return dx.astype(operand_dtypes[0]), dy.astype(operand_dtypes[1])


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


@jax.custom_vjp
def add_bias(x, b):
  """x + b with the (float32) bias ``b`` cast to x's dtype: the add runs in
  the product's dtype, and b's gradient is summed in float32 (plain autodiff
  would sum a bfloat16 cotangent over every row in bfloat16)."""
  return x + b.astype(x.dtype)


def _add_bias_fwd(x, b):
  return add_bias(x, b), jnp.zeros((0,), b.dtype)  # Residual: b's dtype only.


def _add_bias_bwd(b_like, g):
  rows = tuple(range(g.ndim - 1))
  return g, jnp.sum(g, axis=rows, dtype=jnp.float32).astype(b_like.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)
