"""Tests for transformer/precision.py: the "auto" dtype policy and the
mixed-precision matmul (forward and gradient against float64 numpy)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import precision


def test_auto_dtype_follows_the_cpu_flags_and_the_backend(tmp_path, monkeypatch):
  epyc = tmp_path / "epyc"  # An AMD Zen 3: AVX2, no bfloat16 matrix instructions.
  epyc.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
                  "processor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n")
  xeon = tmp_path / "xeon"  # A Sapphire Rapids Xeon.
  xeon.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 "
                  "amx_tile\n")
  expected = {epyc: "float32", xeon: "bfloat16", tmp_path / "no_such_file": "float32"}
  for cpuinfo, dtype in expected.items():
    monkeypatch.setattr(precision, "CPUINFO", str(cpuinfo))
    assert precision.dtype_name("auto") == dtype, cpuinfo.name
    assert precision.dtype_name("float32") == "float32"
  monkeypatch.setattr(precision, "CPUINFO", str(epyc))
  assert precision.get_dtype("auto") == jnp.float32
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert precision.dtype_name("auto") == "bfloat16"
  assert precision.dtype_name("float16") == "float16"  # Allowed off the CPU.


@pytest.mark.parametrize("dtype,message", [
    ("fp8", "Unknown dtype config.model.dtype='fp8'"),
    ("float16", "'float16' is not supported on CPU"),
])
def test_bad_dtype_has_one_clear_error(dtype, message):
  with pytest.raises(ValueError, match=message):
    precision.dtype_name(dtype)


def test_matmul_and_its_gradient_vs_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4)).astype(np.float32)  # (B, T, D)
  w = rng.normal(size=(4, 5)).astype(np.float32)  # (D, F)
  g = rng.normal(size=(2, 3, 5)).astype(np.float32)  # cotangent of the output
  xd, wd, gd = (a.astype(np.float64) for a in (x, w, g))
  for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)):
    out, vjp = jax.vjp(functools.partial(precision.matmul, "BTD,DF->BTF", dtype=dtype),
                       x, w)
    dx, dw = vjp(jnp.asarray(g))
    assert out.dtype == dx.dtype == dw.dtype == jnp.float32
    np.testing.assert_allclose(out, xd @ wd, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, gd @ wd.T, rtol=tol, atol=tol)  # dL/dx = g W^T
    np.testing.assert_allclose(dw, np.einsum("btd,btf->df", xd, gd), rtol=tol, atol=tol)


def test_cudnn_refusal_while_tracing_is_one_clear_error():
  # float32 queries (and, on a machine without a GPU, no cuDNN library):
  # cuDNN's own error, passed on with the shapes and the fix.
  q = jnp.zeros((1, 2, 4, 8), jnp.float32)  # (B, H, Q, K)
  mask = jnp.ones((1, 1, 4, 4), bool)
  with pytest.raises(ValueError, match=r"cuDNN fused attention \(config.model.attention_impl="
                     r"'dot_product_attention' on a GPU\) cannot take queries \(1, 2, 4, 8\)"
                     r".*--config.model.attention_impl=xla") as error:
    jax.eval_shape(functools.partial(precision.fused_attention, implementation="cudnn"),
                   q, q, q, mask)
  assert error.value.__cause__ is not None
  # Under "auto" the refusal is no error: None, for the model's einsums.
  assert precision.fused_attention(q, q, q, mask, implementation="cudnn",
                                   attention_impl="auto") is None
