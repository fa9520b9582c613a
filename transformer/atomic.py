"""Folders that appear whole or not at all (the token cache, the generated
corpus): written under a temporary name beside their place, renamed into it
once complete. A process killed while writing leaves at most its temporary
folder, ``<path>.tmp-<host>-<pid>``, which no reader trusts.
"""

import contextlib
import os
import shutil
import socket


def temporary_prefix(path: str) -> str:
  """``<path>.tmp-<host>-``: the temporary folders of ``path`` written on this
  host start with it (the writer's process id follows)."""
  return f"{path}.tmp-{socket.gethostname()}-"


@contextlib.contextmanager
def folder(path: str):
  """Yields an empty temporary folder to fill; when the block ends without an
  error it is renamed to ``path``, unless another process put ``path`` there
  first (theirs stays). The temporary folder never outlives the block."""
  tmp = f"{temporary_prefix(path)}{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    try:
      os.rename(tmp, path)
    except OSError:  # Another process wrote the same folder first.
      pass
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
