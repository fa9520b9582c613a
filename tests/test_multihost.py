"""Tests for transformer/multihost.py: on one process each function is the
identity, with no collective; over several processes (simulated here by
standing in for JAX's process count and collectives) every process takes the
same branch. The real two-process runs are tests/test_train.py's
``multiprocess`` tests."""

import json

import jax
import numpy as np
import pytest

from transformer import multihost


def _no_collectives(monkeypatch):
  """Makes any collective or distributed call fail the test."""
  def collective(*args, **kwargs):
    raise AssertionError("a collective on one process")
  for name in ("process_allgather", "broadcast_one_to_all", "sync_global_devices"):
    monkeypatch.setattr(multihost.multihost_utils, name, collective)
  monkeypatch.setattr(jax.distributed, "initialize", collective)


def _processes(monkeypatch, count, index):
  """Stands in for a run of ``count`` processes, this one ``index``."""
  monkeypatch.setattr(jax, "process_count", lambda: count)
  monkeypatch.setattr(jax, "process_index", lambda: index)


# ---------------------------------------------------------------------------
# One process: the identity.
# ---------------------------------------------------------------------------

def test_the_suite_runs_on_one_process():
  assert jax.process_count() == 1 and jax.process_index() == 0


def test_one_process_joins_nothing(monkeypatch):
  _no_collectives(monkeypatch)
  assert multihost.initialize() is None
  assert multihost.initialize("localhost:1234", num_processes=1, process_id=0) is None


def test_one_process_agrees_with_itself(monkeypatch):
  _no_collectives(monkeypatch)
  assert multihost.agree(True, False, 0, 1, np.bool_(True)) == [True, False, False, True, True]
  assert multihost.agree() == []
  assert all(type(v) is bool for v in multihost.agree(np.int32(3), False))


def test_one_process_gathers_its_own_value(monkeypatch):
  _no_collectives(monkeypatch)
  value = {"epoch": 2, "position": (3, 4)}
  (gathered,) = multihost.allgather_json(value)
  assert gathered is value  # Not even a JSON round trip.


def test_one_process_primary_first_runs_once_and_returns(monkeypatch):
  _no_collectives(monkeypatch)
  calls = []
  assert multihost.primary_first(lambda: calls.append(1) or "tokenizer", "writing it") == (
      "tokenizer")
  assert calls == [1]


def test_one_process_primary_first_raises_the_error_itself(monkeypatch):
  _no_collectives(monkeypatch)
  def fail():
    raise FileNotFoundError("data/train.en does not exist")
  with pytest.raises(FileNotFoundError, match=r"^data/train.en does not exist$"):
    multihost.primary_first(fail, "reading the data")


# ---------------------------------------------------------------------------
# Joining a run of several processes: bad arguments are one clear error.
# ---------------------------------------------------------------------------

def test_several_processes_need_a_coordinator(monkeypatch):
  _no_collectives(monkeypatch)
  with pytest.raises(ValueError, match=r"over 2 processes needs a coordinator address "
                     r"\(--coordinator_address=HOST:PORT or \$JAX_COORDINATOR_ADDRESS\)"):
    multihost.initialize("", num_processes=2, process_id=0)


@pytest.mark.parametrize("process_id", [-1, 2])
def test_the_process_id_is_one_of_the_processes(monkeypatch, process_id):
  _no_collectives(monkeypatch)
  with pytest.raises(ValueError, match=rf"process id {process_id} is not in \[0, 2\)"):
    multihost.initialize("localhost:1234", num_processes=2, process_id=process_id)


# ---------------------------------------------------------------------------
# Several processes, simulated: this process and the others' values.
# ---------------------------------------------------------------------------

def test_a_flag_set_on_any_process_is_set_on_all(monkeypatch):
  _processes(monkeypatch, 3, 1)
  others = {0: [False, True, False], 2: [False, False, True]}
  def allgather(values):  # Rows in process order.
    return np.stack([np.array(others[0], np.int32), values, np.array(others[2], np.int32)])
  monkeypatch.setattr(multihost.multihost_utils, "process_allgather", allgather)
  assert multihost.agree(False, False, False) == [False, True, True]
  assert multihost.agree(True, False, False) == [True, True, True]


def test_json_values_of_different_lengths_gather_in_process_order(monkeypatch):
  _processes(monkeypatch, 2, 0)
  other = {"state": "zwölf Äpfel", "epoch": 12, "positions": [1, 2, 3, 4, 5, 6, 7]}
  other_bytes = np.frombuffer(json.dumps(other).encode("utf-8"), np.uint8)
  def allgather(x):
    if x.shape == (1,):  # The lengths.
      return np.array([[int(x[0])], [other_bytes.size]], np.int32)
    padded = np.zeros_like(x)
    padded[:other_bytes.size] = other_bytes
    return np.stack([x, padded])
  monkeypatch.setattr(multihost.multihost_utils, "process_allgather", allgather)
  mine = {"epoch": 3}
  assert multihost.allgather_json(mine) == [mine, other]


def test_the_primary_runs_first_and_tells_the_others_it_succeeded(monkeypatch):
  _processes(monkeypatch, 2, 0)
  events = []
  monkeypatch.setattr(multihost.multihost_utils, "broadcast_one_to_all",
                      lambda x: events.append(("broadcast", int(x))) or x)
  assert multihost.primary_first(lambda: events.append(("fn",)) or 7, "writing") == 7
  assert events == [("fn",), ("broadcast", 0)]


def test_a_failing_primary_tells_the_others_then_raises_its_error(monkeypatch):
  _processes(monkeypatch, 2, 0)
  sent = []
  monkeypatch.setattr(multihost.multihost_utils, "broadcast_one_to_all",
                      lambda x: sent.append(int(x)) or x)
  def fail():
    raise FileNotFoundError("data/train.en does not exist")
  with pytest.raises(FileNotFoundError, match=r"^data/train.en does not exist$"):
    multihost.primary_first(fail, "reading the data")
  assert sent == [1]


def test_the_others_run_after_the_primary_succeeded(monkeypatch):
  _processes(monkeypatch, 2, 1)
  events = []
  def broadcast(x):
    events.append("broadcast")
    return np.int32(0)  # Process 0's value: it succeeded.
  monkeypatch.setattr(multihost.multihost_utils, "broadcast_one_to_all", broadcast)
  assert multihost.primary_first(lambda: events.append("fn") or "loaded", "writing") == "loaded"
  assert events == ["broadcast", "fn"]


def test_the_others_stop_at_once_when_the_primary_failed(monkeypatch):
  _processes(monkeypatch, 2, 1)
  monkeypatch.setattr(multihost.multihost_utils, "broadcast_one_to_all",
                      lambda x: np.int32(1))  # Process 0's value: it failed.
  def never():
    raise AssertionError("ran after process 0 failed")
  with pytest.raises(multihost.OtherProcessFailedError,
                     match=r"^Process 0 failed while training the tokenizer; its log has "
                     r"the error\.$"):
    multihost.primary_first(never, "training the tokenizer")
