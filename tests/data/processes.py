"""Live child processes, for the tests of the encoding workers (Linux's /proc)."""

import os

import pytest


def children(pid=None) -> set[int]:
  """Process ids of the live children of ``pid`` (default: this process);
  skips the test where /proc does not list them."""
  pid = pid or os.getpid()
  path = f"/proc/{pid}/task/{pid}/children"
  if not os.path.exists(path):
    pytest.skip(f"{path} is not available on this system.")
  with open(path) as f:
    return {child for child in map(int, f.read().split()) if alive(child)}


def alive(pid) -> bool:
  """Whether process ``pid`` exists and is not a zombie."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False
