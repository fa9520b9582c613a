"""Orbax's log lines and stray reports that say nothing to a user: what is
dropped, and why (the one place that filters them).

  quiet                          Orbax's INFO lines (one per step of every
                                 save) and its tracebacks of a failed
                                 background save; training calls it once
  quiet_missing_step_metadata    a harmless warning while one item is restored
  drop_closed_loop_reports       the "Event loop is closed" noise of a failed
                                 restore
  storage_error                  the storage's error (a full disk) in a chain
                                 of causes, as OSError or as TensorStore words it
"""

import contextlib
import logging as py_logging
import os
import re
import sys

from absl import logging


class InfoFilter(py_logging.Filter):
  """Orbax logs each step of every save at INFO level; keep its warnings."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


# A storage failure as TensorStore words it (a ValueError, not an OSError):
# '... Failed to write 1796592 bytes to file 4: No space left on device
# [os_error_code='28']'.
OS_ERROR = re.compile(r"([^:\]]+?)\s*\[os_error_code='?(\d+)'?\]")


def storage_error(e: BaseException | None) -> BaseException | None:
  """The OSError in ``e``'s chain of causes, or TensorStore's error naming an
  os_error_code; None when the failure is not the storage's."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) or OS_ERROR.search(str(e)):
      return e
    e = e.__cause__ or e.__context__
  return None


class FailedSaveFilter(py_logging.Filter):
  """A write that fails in Orbax's background save (a full disk) is logged
  by each of its threads at ERROR level with the whole traceback; the same
  failure is raised at the next save or at close, where it becomes one
  error line (``checkpoint.Checkpointer``'s save and close). Drop those."""

  def filter(self, record):
    if record.levelno < py_logging.ERROR or "/orbax/" not in record.pathname:
      return True
    error = record.exc_info[1] if record.exc_info else None
    return not (storage_error(error) or OS_ERROR.search(record.getMessage()))


def quiet():
  """Drops Orbax's INFO lines (one per step of every save) and its tracebacks
  of a failed background save from absl's log; its warnings stay. Training
  calls it once."""
  absl_logger = logging.get_absl_logger()
  for kind in (InfoFilter, FailedSaveFilter):
    if not any(isinstance(f, kind) for f in absl_logger.filters):
      absl_logger.addFilter(kind())


class _DropMissingMetadata(py_logging.Filter):
  def filter(self, record):
    return "Metadata file does not exist" not in record.getMessage()


@contextlib.contextmanager
def quiet_missing_step_metadata():
  """Silences Orbax's warning that a single item of a step has no step
  metadata file: it lives one folder up, and the item reads fine without it."""
  logger, drop = py_logging.getLogger("absl"), _DropMissingMetadata()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def _is_closed_loop_report(unraisable) -> bool:
  """A read of a failed restore that ends after Orbax closed its event loop:
  "Event loop is closed", or an Orbax coroutine finalized with its error."""
  if (isinstance(unraisable.exc_value, RuntimeError)
      and "Event loop is closed" in str(unraisable.exc_value)):
    return True
  code = getattr(unraisable.object, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _from_orbax(traceback) -> bool:
  while traceback is not None:
    if f"{os.sep}orbax{os.sep}" in traceback.tb_frame.f_code.co_filename:
      return True
    traceback = traceback.tb_next
  return False


class _DropOrbaxOrphanTasks(py_logging.Filter):
  """asyncio's "Task exception was never retrieved" for an Orbax read of a
  failed restore, logged when the task is collected (with its traceback), and
  "Future exception was never retrieved" for a TensorStore read of the same
  checkpoint (set from C++: no traceback, its message names the OCDBT file)."""

  def filter(self, record):
    if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
      return True
    _, error, traceback = record.exc_info
    from_tensorstore = traceback is None and "OCDBT database" in str(error)
    return not (_from_orbax(traceback) or from_tensorstore)


def drop_closed_loop_reports():
  """When a restore fails, Orbax closes its event loop while TensorStore reads
  of the same checkpoint are still finishing; each then reports "Event loop is
  closed" as an unraisable exception (a traceback on stderr, dozens per
  checkpoint), and unfinished Orbax reads report their errors when they are
  collected (as unraisable coroutines, or through asyncio's logger as tasks
  whose exception was never retrieved). They are harmless, and the failure itself is reported once
  (``CheckpointError`` or a warning naming the step): drop just those."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_reports", False):
    return

  def hook(unraisable):
    if not _is_closed_loop_report(unraisable):
      previous(unraisable)

  hook.drops_closed_loop_reports = True
  sys.unraisablehook = hook
  py_logging.getLogger("asyncio").addFilter(_DropOrbaxOrphanTasks())
