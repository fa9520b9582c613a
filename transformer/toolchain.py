"""Where the planner's compile-only toolchain lives (no JAX import here).

The CUDA plugin (with PJRT and ptxas) and libtpu of requirements-planner.txt
let ``transformer/plan.py`` compile for GPUs and TPUs that are not there. They
are installed into ``<venv>/planner``, off the path, so that ordinary runs
never load them:

  pip install --no-deps --target=.venv/planner -r requirements-planner.txt

The planner's entry points (``python -m transformer.plan``,
``benchmarks/plan_table.py``) call ``use()`` before JAX is imported: JAX
finds its plugins when it starts. Nothing puts the folder on the path when it
is imported. A machine with ``jax[cuda13]`` or ``jax[cuda12]`` installed has
the CUDA plugin on the path already.
"""

import importlib.machinery
import importlib.util
import os
import sys

INSTALL = "pip install --no-deps --target=.venv/planner -r requirements-planner.txt"
CUDA_PLUGINS = ("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12")


def folder() -> str:
  """The toolchain's folder: $TRANSFORMER_PLANNER_PACKAGES, else <venv>/planner."""
  return os.environ.get("TRANSFORMER_PLANNER_PACKAGES", os.path.join(sys.prefix, "planner"))


def use() -> None:
  """Puts the toolchain's folder on sys.path (where it exists). Call it before
  JAX is imported."""
  path = folder()
  if os.path.isdir(path) and path not in sys.path:
    sys.path.append(path)


def _find(name: str) -> bool:
  """Whether module ``name`` is on sys.path or in the toolchain's folder."""
  top, _, rest = name.partition(".")
  if importlib.util.find_spec(top) is not None:  # On the path (a namespace package too).
    if not rest or importlib.util.find_spec(name) is not None:
      return True
  spec = importlib.machinery.PathFinder.find_spec(top, [folder()])
  if spec is None or not rest:
    return spec is not None
  return importlib.machinery.PathFinder.find_spec(
      name, list(spec.submodule_search_locations or [])) is not None


def cuda_plugin() -> str | None:
  """The JAX CUDA plugin module (CUDA 13 or 12) on the path or in the
  toolchain's folder, or None."""
  return next((name for name in CUDA_PLUGINS if _find(name)), None)


def has_libtpu() -> bool:
  """Whether libtpu is on the path or in the toolchain's folder."""
  return _find("libtpu")


def not_on_path(module: str) -> str | None:
  """Why ``module``, found in the toolchain's folder, cannot be loaded: the
  folder is not on the path, and JAX has started without it. None when
  ``module`` is importable."""
  try:
    if importlib.util.find_spec(module) is not None:
      return None
  except ModuleNotFoundError:  # Its parent package is not on the path either.
    pass
  return (f"{module} is in {folder()} but not on the path: call "
          "transformer.toolchain.use() before JAX is imported (python -m transformer.plan "
          "and benchmarks/plan_table.py do).")
