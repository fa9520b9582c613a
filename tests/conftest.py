"""The suite runs on the CPU, whatever jaxlib is installed.

With a CUDA or TPU build of jaxlib, JAX would pick the accelerator, and
``model.dtype="auto"`` would resolve to bfloat16 there: tests that hold float32
results to 1e-5 would then fail. JAX_PLATFORMS is set here, before any test
module imports jax, so that the tests and every subprocess they start (the
CLIs, the 8-device sharding run) inherit it through os.environ. Tests that set
XLA_FLAGS for a subprocess (host device counts) keep doing so; that flag is
about the CPU platform and is unaffected.
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402  (after JAX_PLATFORMS, on purpose)

# In case something imported jax before this file (a pytest plugin): the
# backend is chosen at its first use, which has not happened yet.
jax.config.update("jax_platforms", "cpu")
