"""The suite runs on the CPU, whatever jaxlib is installed; shared fixtures.

With a CUDA or TPU build of jaxlib, JAX would pick the accelerator, and
``model.dtype="auto"`` would resolve to bfloat16 there: tests that hold float32
results to 1e-5 would then fail. JAX_PLATFORMS is set here, before any test
module imports jax, so that the tests and every subprocess they start (the
CLIs, the 8-device sharding run) inherit it through os.environ. Tests that set
XLA_FLAGS for a subprocess (host device counts) keep doing so; that flag is
about the CPU platform and is unaffected.
"""

import atexit
import os
import shutil
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
# One compilation cache for the session, shared with the CLIs the tests start:
# the many runs of the same tiny model compile their programs once. A cached
# executable is the compiled program itself, so results do not change; the
# folder is new for each session and removed at its end.
_CACHE = tempfile.mkdtemp(prefix="jax-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402  (after JAX_PLATFORMS, on purpose)

# In case something imported jax before this file (a pytest plugin): the
# backend is chosen at its first use, which has not happened yet.
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_compilation_cache_dir", _CACHE)

import sys  # noqa: E402

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tests.tiny_configs import TINY, make_tiny_config  # noqa: E402


def _tiny_flags(**overrides):
  return [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]


def _tiny_cli_args(workdir, **overrides):
  flags = _tiny_flags(**overrides)
  return [sys.executable, os.path.join(REPO, "train.py"),
          "--config=" + os.path.join(REPO, "configs", "quickstart.py"),
          f"--workdir={workdir}", *flags]


@pytest.fixture(scope="session")
def tiny_config():
  """``tiny_config(base="quickstart", **{"section.field": value})``: the
  tiny training config (``TINY`` over the quickstart), or the tiny model in the
  paper's base config (base="paper"), with overrides."""
  return make_tiny_config


@pytest.fixture(scope="session")
def tiny_flags():
  """``TINY`` as train.py's --config.* flags."""
  return _tiny_flags()


@pytest.fixture(scope="session")
def tiny_cli_args():
  """``tiny_cli_args(workdir, **overrides)``: train.py's command line for the
  tiny config (``TINY`` as --config.* flags over configs/quickstart.py)."""
  return _tiny_cli_args


def _train_losses(workdir):
  from transformer import metrics

  return {r["step"]: r["train/loss"] for r in metrics.read_metrics(workdir)
          if "train/loss" in r}


@pytest.fixture(scope="session")
def train_losses():
  """``train_losses(workdir)``: {step: train/loss} of a run's metrics.jsonl."""
  return _train_losses


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """A tiny run trained once for the session: 6 steps, checkpoints at 3 and
  6, its test report. Copy it before changing it."""
  from transformer import train

  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(make_tiny_config(), workdir)
  return workdir
