"""Tests for transformer/data/encode_worker.py: worker processes encode each
list of texts exactly as the tokenizer does in this process, answer in order,
and end with their pool. (tests/data/test_token_cache.py runs them inside the
cache build: workers killed, Ctrl-C, kill -9 of the parent.)"""

import os
import signal

import numpy as np
import pytest

from tests.data import processes
from transformer.data import encode_worker


def test_flatten_concatenates_ids_and_counts_them():
  ids, lengths = encode_worker.flatten([[5, 6, 7], [], [300], [4, 4]], np.uint16)
  np.testing.assert_array_equal(ids, [5, 6, 7, 300, 4, 4])
  np.testing.assert_array_equal(lengths, [3, 0, 1, 2])
  assert (ids.dtype, lengths.dtype) == (np.uint16, np.int64)
  ids, lengths = encode_worker.flatten([], np.int32)
  assert (ids.shape, lengths.shape, ids.dtype) == ((0,), (0,), np.int32)


def test_usable_cores_are_this_process_affinity():
  cores = encode_worker.usable_cores()
  assert 1 <= cores <= (os.cpu_count() or 1)
  if hasattr(os, "sched_getaffinity"):
    assert cores == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_workers_encode_as_this_process_does_in_order(corpus_dir, tok, dtype):
  english = (corpus_dir / "train.en").read_text("utf-8").splitlines()
  # More lists than workers (each worker takes several, in turn), an empty
  # list, an empty sentence and one the vocabulary covers poorly.
  texts_lists = [english[0:7], english[7:8], [], english[8:20], ["", "Zürich ÄÖÜ ß €"],
                 english[20:23]]
  before = processes.children()
  with encode_worker.Pool(tok, dtype, workers=2) as pool:
    assert len(processes.children() - before) == 2
    answers = list(pool.imap(texts_lists))
  assert processes.children() == before  # The workers are gone.
  assert len(answers) == len(texts_lists)
  for texts, (ids, lengths) in zip(texts_lists, answers, strict=True):
    assert (ids.dtype, lengths.dtype) == (np.dtype(dtype), np.int64)
    expected = [tok.encode(t) for t in texts]
    np.testing.assert_array_equal(lengths, [len(e) for e in expected])
    np.testing.assert_array_equal(ids, [i for e in expected for i in e])
  assert answers[4][1][0] == 0 and answers[4][1][1] > 0


def test_a_dead_worker_is_one_clear_error(tok):
  before = processes.children()
  with encode_worker.Pool(tok, np.uint16, workers=1) as pool:
    (worker,) = processes.children() - before
    os.kill(worker, signal.SIGKILL)  # As the kernel's out-of-memory killer.
    with pytest.raises(RuntimeError, match=rf"tokenization worker \(pid {worker}\) exited "
                       r"with code -9 before finishing its chunk .* usually out of memory; "
                       r"the cache was not written"):
      list(pool.imap([["The dog sees the car."], ["A cat."]]))
  assert processes.children() == before
