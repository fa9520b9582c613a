"""Tests for transformer/data/train_iterator.py: shuffled, packed, resumable
training batches, per process."""

import gc
import json
import os
import threading
import time

import numpy as np
import pytest

from configs import multi30k
from transformer import data

MULTI30K = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                        "multi30k")


def test_batches_respect_budget_and_are_consistent(corpus_dir, workdir, tok, data_config,
                                                   check_batch, kept_pairs):
  config = data_config(corpus_dir)
  kept = set(kept_pairs(config, tok))
  with data.make_train_iterator(config.data, tok, workdir) as iterator:
    assert iterator.batch_shape == (512 // 64, 64)
    for _ in range(5):
      batch = next(iterator)
      rows, length = iterator.batch_shape
      for side in ("inputs", "targets"):
        assert batch[side].shape == (rows, length)
        assert batch[side].size <= config.data.batch_tokens
      pairs = check_batch(batch, tok)
      assert len(pairs) > rows  # Several pairs per row.
      assert set(pairs) <= kept
      assert data.padding_efficiency(batch) > 0.6


def test_epoch_covers_every_kept_pair_once_and_drops_the_rest(corpus_dir, workdir, tok, data_config,
                                                              epoch_pairs, kept_pairs):
  config = data_config(corpus_dir)
  with data.make_train_iterator(config.data, tok, workdir) as iterator:
    pairs = epoch_pairs(iterator, tok)
    second = epoch_pairs(iterator, tok)
  assert sorted(pairs) == sorted(kept_pairs(config, tok))
  assert sorted(second) == sorted(pairs) and second != pairs  # Reshuffled.


def test_row_multiple(corpus_dir, workdir, tok, data_config):
  config = data_config(corpus_dir, batch_tokens=64 * 7)
  with data.make_train_iterator(config.data, tok, workdir,
                                row_multiple=3) as iterator:
    assert iterator.batch_shape == (6, 64)
    assert next(iterator)["inputs"].shape == (6, 64)
  with pytest.raises(ValueError, match="raise data.batch_tokens"):
    data.make_train_iterator(config.data, tok, workdir, row_multiple=8)


def test_bucket_batches(corpus_dir, workdir, tok, data_config, check_batch, kept_pairs):
  config = data_config(corpus_dir, batching="bucket")
  kept = set(kept_pairs(config, tok))
  with data.make_train_iterator(config.data, tok, workdir,
                                row_multiple=2) as iterator:
    assert iterator.batch_shape is None
    for _ in range(6):
      batch = next(iterator)
      shape = batch["inputs"].shape
      assert shape in iterator.batch_shapes and shape[0] % 2 == 0
      assert batch["targets"].shape == shape
      assert shape[0] * shape[1] <= config.data.batch_tokens
      pairs = check_batch(batch, tok)
      assert len(pairs) == shape[0] and set(pairs) <= kept
      assert batch["inputs_segmentation"].max() == 1


def test_deterministic_by_seed(corpus_dir, workdir, tok, data_config):
  config = data_config(corpus_dir, prefetch=0)
  first = [next(data.make_train_iterator(config.data, tok, workdir))["inputs"]
           for _ in range(2)]
  np.testing.assert_array_equal(first[0], first[1])
  config.data.seed = 1
  other = next(data.make_train_iterator(config.data, tok, workdir))["inputs"]
  assert not np.array_equal(first[0], other)


@pytest.mark.parametrize("batching", ["pack", "bucket"])
def test_restored_state_reproduces_the_next_batches(corpus_dir, workdir, tok, batching,
                                                    data_config):
  config = data_config(corpus_dir, batching=batching)
  with data.make_train_iterator(config.data, tok, workdir) as iterator:
    for _ in range(7):  # Past the end of the first epoch for "pack".
      next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(12)]
  state = json.loads(json.dumps(state))  # As a checkpoint would store it.
  config.data.prefetch = 0  # Restoring works with or without prefetch.
  with data.make_train_iterator(config.data, tok, workdir) as restored:
    restored.set_state(state)
    for want in expected:
      got = next(restored)
      for name in data.FEATURES:
        np.testing.assert_array_equal(got[name], want[name])


def test_state_from_another_setup_is_rejected(corpus_dir, workdir, tok, data_config):
  config = data_config(corpus_dir)
  with data.make_train_iterator(config.data, tok, workdir) as iterator:
    state = iterator.get_state()
  with data.make_train_iterator(config.data, tok, workdir, process_index=1,
                                process_count=2) as other:
    with pytest.raises(ValueError, match="process_index"):
      other.set_state(state)


def test_two_processes_are_disjoint_and_complete(corpus_dir, workdir, tok, data_config, epoch_pairs,
                                                 kept_pairs):
  config = data_config(corpus_dir)
  halves = []
  for process_index in range(2):
    with data.make_train_iterator(config.data, tok, workdir,
                                  process_index=process_index,
                                  process_count=2) as iterator:
      # Each process holds half of the global budget.
      assert iterator.batch_shape == (512 // 2 // 64, 64)
      halves.append(epoch_pairs(iterator, tok))
  assert not set(halves[0]) & set(halves[1])
  assert sorted(halves[0] + halves[1]) == sorted(kept_pairs(config, tok))
  assert abs(len(halves[0]) - len(halves[1])) <= 1


def test_bucket_shapes_agree_across_processes(corpus_dir, workdir, tok, data_config):
  config = data_config(corpus_dir, batching="bucket", prefetch=0)
  shapes = []
  for process_index in range(2):
    iterator = data.make_train_iterator(config.data, tok, workdir,
                                        process_index=process_index,
                                        process_count=2)
    shapes.append([next(iterator)["inputs"].shape for _ in range(12)])
  assert shapes[0] == shapes[1]
  assert len(set(shapes[0])) > 1  # Several buckets in use.


def test_dropped_iterator_stops_its_prefetch_thread(corpus_dir, workdir, tok, data_config):
  def threads():
    return [t for t in threading.enumerate()
            if t.name == "TrainIteratorPrefetch" and t.is_alive()]
  before = len(threads())
  iterator = data.make_train_iterator(data_config(corpus_dir).data, tok, workdir)
  next(iterator)
  assert len(threads()) == before + 1
  del iterator
  gc.collect()
  for _ in range(50):
    if len(threads()) == before:
      break
    time.sleep(0.1)
  assert len(threads()) == before


def test_multi30k_padding_efficiency(tmp_path):
  if not os.path.isdir(MULTI30K):
    pytest.skip(f"Multi30k not found at {os.path.abspath(MULTI30K)} "
                "(../shared/data/multi30k from the project root).")
  config = multi30k.get_config()
  config.unlock()
  config.data.dir = MULTI30K
  config.data.prefetch = 0
  workdir = str(tmp_path)
  tok = data.load_tokenizer(config.data, workdir, vocab_size=config.model.vocab_size)
  assert tok.vocab_size == config.model.vocab_size
  with data.make_train_iterator(config.data, tok, workdir) as iterator:
    for _ in range(40):
      batch = next(iterator)
      assert batch["inputs"].size <= config.data.batch_tokens
  assert iterator.padding_efficiency >= 0.9


def test_resumed_iterator_equals_an_uninterrupted_one_across_epochs(corpus_dir, workdir, tok,
                                                                    data_config):
  config = data_config(corpus_dir, prefetch=0)
  with data.make_train_iterator(config.data, tok, workdir) as reference:
    states, batches = [], []
    while reference.epoch < 2:  # Two epoch boundaries.
      states.append(reference.get_state())
      batches.append(next(reference))
    states.append(reference.get_state())
  last_of_epoch = [i for i in range(len(states) - 1)
                   if states[i + 1]["epoch"] != states[i]["epoch"]]
  assert len(last_of_epoch) == 2
  # Workers and prefetch give the same batches; a restore just before an
  # epoch's last batch continues across the boundary exactly.
  config = data_config(corpus_dir, prefetch=3, workers=2)
  for i in [0] + [k - 1 for k in last_of_epoch]:
    with data.make_train_iterator(config.data, tok, workdir) as restored:
      restored.set_state(json.loads(json.dumps(states[i])))
      for want in batches[i:]:
        got = next(restored)
        for name in data.FEATURES:
          np.testing.assert_array_equal(got[name], want[name])
