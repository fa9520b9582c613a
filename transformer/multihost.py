"""A run over several processes (hosts): joining it, and deciding together.

Every process runs the same program; where a decision depends on what one
process saw (a checkpoint it could not read, a signal it received), the
processes exchange it so that all of them take the same branch:

  initialize         join the run (``jax.distributed.initialize``)
  agree              any process's flag, on every process
  allgather_json     every process's small JSON value, in process order
  primary_first      process 0 first (one tokenizer written, say), then the rest

On one process each of them is the identity, with no collective.
"""

import json
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils


class OtherProcessFailedError(RuntimeError):
  """Process 0 of a multi-host run failed; the error is in its log."""


def initialize(coordinator_address: str = "", num_processes: int = 1, process_id: int = 0):
  """Joins a multi-process run (``jax.distributed.initialize``) when it spans
  several processes; a no-op for a single process.

  On CPU the processes exchange data with gloo collectives.
  """
  if num_processes <= 1:
    return
  if not coordinator_address:
    raise ValueError(
        f"A run over {num_processes} processes needs a coordinator address "
        "(--coordinator_address=HOST:PORT or $JAX_COORDINATOR_ADDRESS).")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process id {process_id} is not in [0, {num_processes}).")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def agree(*flags: bool) -> list[bool]:
  """The same decisions on every process: a flag is set if any process set it.
  (All processes agreeing that something holds: ``not agree(not ok)[0]``.)"""
  values = np.array([bool(f) for f in flags], np.int32)
  if jax.process_count() > 1:
    values = np.max(multihost_utils.process_allgather(values), axis=0)
  return [bool(v) for v in values]


def allgather_json(obj) -> list:
  """Every process's JSON-serializable ``obj``, in process order."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode("utf-8"))
          for row, n in zip(np.asarray(gathered), np.asarray(lengths).reshape(-1), strict=True)]


def primary_first(fn: Callable, what: str):
  """Runs ``fn`` on process 0, then on the other processes.

  Process 0 tells the others whether it succeeded, so that when it fails
  (a missing data file, say) they stop at once with an error that points to
  its log, instead of waiting at a barrier until the coordination timeout.
  """
  if jax.process_count() == 1:
    return fn()
  if jax.process_index() == 0:
    try:
      result = fn()
    except BaseException:
      multihost_utils.broadcast_one_to_all(np.int32(1))
      raise
    multihost_utils.broadcast_one_to_all(np.int32(0))
    return result
  if int(multihost_utils.broadcast_one_to_all(np.int32(0))):
    raise OtherProcessFailedError(f"Process 0 failed while {what}; its log has the error.")
  return fn()
