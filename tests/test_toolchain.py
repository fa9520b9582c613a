"""Where the planner's compile-only toolchain lives (transformer/toolchain.py):
found in its folder off the path, put on the path only when asked, and named
when JAX cannot load it."""

import sys

from transformer import toolchain


def _fake_toolchain(tmp_path):
  """A toolchain folder holding a CUDA 13 plugin package and libtpu."""
  plugin = tmp_path / "jax_plugins" / "xla_cuda13"
  plugin.mkdir(parents=True)
  (plugin / "__init__.py").write_text("")
  (tmp_path / "libtpu").mkdir()
  (tmp_path / "libtpu" / "__init__.py").write_text("")
  return str(tmp_path)


def test_found_in_its_folder_without_touching_the_path(tmp_path, monkeypatch):
  folder = _fake_toolchain(tmp_path)
  monkeypatch.setenv("TRANSFORMER_PLANNER_PACKAGES", folder)
  path = list(sys.path)
  assert toolchain.folder() == folder
  assert toolchain.cuda_plugin() == "jax_plugins.xla_cuda13"
  assert toolchain.has_libtpu()
  assert sys.path == path  # Looking is not loading.
  # Found but not importable: the one line names the call that fixes it.
  problem = toolchain.not_on_path("jax_plugins.xla_cuda13")
  assert problem.startswith(f"jax_plugins.xla_cuda13 is in {folder} but not on the path")
  assert "transformer.toolchain.use() before JAX is imported" in problem


def test_use_puts_the_folder_on_the_path_once(tmp_path, monkeypatch):
  folder = _fake_toolchain(tmp_path)
  monkeypatch.setenv("TRANSFORMER_PLANNER_PACKAGES", folder)
  monkeypatch.setattr(sys, "path", list(sys.path))
  toolchain.use()
  toolchain.use()
  assert sys.path.count(folder) == 1
  assert toolchain.not_on_path("libtpu") is None


def test_an_empty_or_missing_folder_has_nothing(tmp_path, monkeypatch):
  monkeypatch.setenv("TRANSFORMER_PLANNER_PACKAGES", str(tmp_path / "missing"))
  monkeypatch.setattr(sys, "path", list(sys.path))
  toolchain.use()  # A missing folder is not put on the path.
  assert str(tmp_path / "missing") not in sys.path
  assert toolchain.not_on_path("json") is None  # An importable module.
