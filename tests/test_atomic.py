"""Tests for transformer/atomic.py: a folder appears whole or not at all, and
its temporary folder never outlives the block that fills it."""

import os
import socket

import pytest

from transformer import atomic


def _leftovers(path):
  """Entries beside ``path`` that are its temporary folders."""
  prefix = os.path.basename(atomic.temporary_prefix(str(path)))
  return [name for name in os.listdir(os.path.dirname(path)) if name.startswith(prefix)]


def test_temporary_folder_is_beside_the_path_and_names_host_and_process(tmp_path):
  path = str(tmp_path / "cache")
  assert atomic.temporary_prefix(path) == f"{path}.tmp-{socket.gethostname()}-"
  with atomic.folder(path) as tmp:
    # Same parent, so the final rename stays on one file system.
    assert tmp == f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
    assert os.listdir(tmp) == []
    assert not os.path.exists(path)  # Nothing at the path while it is filled.


def test_a_completed_block_renames_the_folder_into_place(tmp_path):
  path = tmp_path / "cache"
  with atomic.folder(str(path)) as tmp:
    with open(os.path.join(tmp, "ids.bin"), "wb") as f:
      f.write(b"\x00\x01\xfe\xff")
    os.makedirs(os.path.join(tmp, "sub"))
  assert sorted(os.listdir(path)) == ["ids.bin", "sub"]
  assert (path / "ids.bin").read_bytes() == b"\x00\x01\xfe\xff"
  assert _leftovers(path) == []


@pytest.mark.parametrize("error", [ValueError("bad line 3"), KeyboardInterrupt()])
def test_a_failed_block_leaves_nothing(tmp_path, error):
  path = tmp_path / "cache"
  with pytest.raises(type(error)) as raised:
    with atomic.folder(str(path)) as tmp:
      with open(os.path.join(tmp, "half.bin"), "wb") as f:
        f.write(b"\x01" * 10)
      raise error
  assert raised.value is error  # Propagated as it was raised.
  assert os.listdir(tmp_path) == []  # Neither the folder nor its temporary one.


def test_a_folder_another_process_wrote_first_stays(tmp_path):
  path = tmp_path / "cache"
  with atomic.folder(str(path)) as tmp:
    path.mkdir()  # Another process finishes the same folder meanwhile.
    (path / "theirs.bin").write_bytes(b"theirs")
    with open(os.path.join(tmp, "ours.bin"), "wb") as f:
      f.write(b"ours")
  assert os.listdir(path) == ["theirs.bin"]
  assert (path / "theirs.bin").read_bytes() == b"theirs"
  assert _leftovers(path) == []


def test_a_stale_temporary_folder_of_this_process_is_emptied_first(tmp_path):
  """A folder left by an earlier process with the same id (killed; ids are
  reused) is never part of the new folder."""
  path = tmp_path / "cache"
  stale = f"{atomic.temporary_prefix(str(path))}{os.getpid()}"
  os.makedirs(stale)
  with open(os.path.join(stale, "old.bin"), "wb") as f:
    f.write(b"old")
  with atomic.folder(str(path)) as tmp:
    assert tmp == stale and os.listdir(tmp) == []
    with open(os.path.join(tmp, "new.bin"), "wb") as f:
      f.write(b"new")
  assert os.listdir(path) == ["new.bin"]
  assert _leftovers(path) == []
