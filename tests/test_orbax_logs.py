"""Tests for transformer/orbax_logs.py: Orbax's noise is dropped, nothing else."""

import logging
import os

from transformer import orbax_logs


def test_orbax_tracebacks_of_a_failed_background_save_are_dropped():
  storage = ValueError("Failed to write 9 bytes to file 4: No space left on device "
                       "[os_error_code='28']")
  other = ValueError("a bug")

  def record(path, level, error, message="_SignalingThread.run() raised an exception"):
    return logging.LogRecord("absl", level, path, 1, message, (),
                             (type(error), error, None) if error else None)

  drop = orbax_logs.FailedSaveFilter()
  orbax = os.path.join(os.sep, "x", "orbax", "checkpoint", "future.py")
  assert not drop.filter(record(orbax, logging.ERROR, storage))
  assert not drop.filter(record(orbax, logging.ERROR, None, "Save Finalize thread failed: "
                                + str(storage)))
  assert drop.filter(record(orbax, logging.ERROR, other))  # Not the storage's: kept.
  assert drop.filter(record(os.path.join(os.sep, "x", "mine.py"), logging.ERROR, storage))
  assert drop.filter(record(orbax, logging.WARNING, storage))


def test_orphaned_orbax_task_errors_are_not_logged_but_others_are(caplog):
  # Orbax's reads of a failed restore can end after it gave up on them; asyncio
  # then logs "Task exception was never retrieved" with their traceback.
  orbax_logs.drop_closed_loop_reports()
  namespace = {}
  for name, filename in (("orbax_read", os.path.join(os.sep, "x", "orbax", "read.py")),
                         ("user_code", os.path.join(os.sep, "x", "mine.py"))):
    exec(compile(f"def {name}():\n  raise OSError('truncated')\n", filename, "exec"),
         namespace)
  logger = logging.getLogger("asyncio")
  for name in ("orbax_read", "user_code"):
    try:
      namespace[name]()
    except OSError as e:
      with caplog.at_level(logging.ERROR, logger="asyncio"):
        logger.error("Task exception was never retrieved\nfuture: <Task %s>", name,
                     exc_info=(type(e), e, e.__traceback__))
  logged = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
  assert len(logged) == 1 and "user_code" in logged[0]


def test_orphan_tensorstore_read_errors_of_a_failed_restore_are_dropped():
  """asyncio's report of an unfinished TensorStore read (no traceback, the
  OCDBT file in its message) is dropped; other unretrieved errors are not."""
  drop = orbax_logs._DropOrbaxOrphanTasks()

  def record(error):
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                             "Future exception was never retrieved", (),
                             (type(error), error, None))

  assert not drop.filter(record(ValueError(
      'OUT_OF_RANGE: Error reading "w_o/0.0.0" in OCDBT database at local file "/x"')))
  assert drop.filter(record(ValueError("something else")))
