"""Tests for transformer/data/token_cache.py and encode_worker.py: token ids
tokenized once by worker processes, cached, never trusted half-written."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.data import processes
from transformer import data

TRAIN_SIZE = 300  # The corpus_dir fixture's training pairs.


def test_token_ids_are_cached(corpus_dir, workdir, tok, monkeypatch, data_config):
  config = data_config(corpus_dir)
  first = data.tokenize_split(config.data, tok, workdir, "train")
  def fail(*args, **kwargs):
    raise AssertionError("re-tokenized")
  monkeypatch.setattr(tok, "encode_batch", fail)
  again = data.tokenize_split(config.data, tok, workdir, "train")
  np.testing.assert_array_equal(first.source_ids, again.source_ids)
  np.testing.assert_array_equal(first.target_offsets, again.target_offsets)
  assert list(first.source(0)) == tok.encode(data.load_split_text(config.data, "train")[0][0])
  cached = os.listdir(os.path.join(workdir, "data_cache"))
  assert len(cached) == 1 and cached[0].startswith("text-corpus")
  entries = os.listdir(os.path.join(workdir, "data_cache", cached[0]))
  assert f"train.en-de.{tok.fingerprint}.v2" in entries


def _interrupted_stream(monkeypatch, at_chunk, action):
  """Makes the split's text stream run ``action`` before its chunk ``at_chunk``."""
  stream = data.sources.iter_split
  def interrupted(*args):
    for i, chunk in enumerate(stream(*args)):
      if i == at_chunk:
        action()
      yield chunk
  monkeypatch.setattr(data.sources, "iter_split", interrupted)


def test_worker_processes_encode_exactly_what_the_tokenizer_does(corpus_dir, tmp_path, tok,
                                                                 monkeypatch, data_config):
  config = data_config(corpus_dir)
  sources, targets = data.load_split_text(config.data, "train")
  # One chunk: encoded in this process.
  here = data.tokenize_split(config.data, tok, str(tmp_path / "here"), "train")
  # Several chunks: encoded by worker processes, never by this process.
  monkeypatch.setattr(data.sources, "CHUNK", 7)
  def fail(*args, **kwargs):
    raise AssertionError("encoded in this process")
  monkeypatch.setattr(tok, "encode_batch", fail)
  before = processes.children()
  pooled = data.tokenize_split(config.data, tok, str(tmp_path / "pooled"), "train")
  assert processes.children() == before  # The workers are gone.
  assert len(pooled) == len(here) == TRAIN_SIZE
  for i in range(TRAIN_SIZE):
    assert list(pooled.source(i)) == tok.encode(sources[i])
    assert list(pooled.target(i)) == tok.encode(targets[i])
  for name in ("source_ids", "source_offsets", "target_ids", "target_offsets"):
    np.testing.assert_array_equal(getattr(pooled, name), getattr(here, name))


def test_killed_tokenization_leaves_no_trusted_cache(corpus_dir, tmp_path, tok, monkeypatch,
                                                     data_config):
  config = data_config(corpus_dir)
  workdir = str(tmp_path)
  monkeypatch.setattr(data.sources, "CHUNK", 50)
  def interrupt():
    raise KeyboardInterrupt  # As Ctrl-C in the middle of the build.
  _interrupted_stream(monkeypatch, 3, interrupt)
  before = processes.children()
  with pytest.raises(KeyboardInterrupt):
    data.tokenize_split(config.data, tok, workdir, "train")
  assert processes.children() == before  # No worker outlives the build.
  monkeypatch.undo()
  root = os.path.join(workdir, "data_cache")
  (key,) = os.listdir(root)
  assert os.listdir(os.path.join(root, key)) == []  # Nothing left behind.
  # A build killed by SIGKILL leaves its temporary folder: never read, and
  # removed by the next build on the same host.
  name = f"train.en-de.{tok.fingerprint}.v2"
  stale = os.path.join(root, key, f"{name}.tmp-{socket.gethostname()}-999999999")
  os.makedirs(stale)
  with open(os.path.join(stale, "source_ids.bin"), "wb") as f:
    f.write(b"\x01\x00" * 10)
  built = data.tokenize_split(config.data, tok, workdir, "train")
  assert os.listdir(os.path.join(root, key)) == [name]
  assert len(built) == TRAIN_SIZE
  sources, _ = data.load_split_text(config.data, "train")
  assert list(built.source(TRAIN_SIZE - 1)) == tok.encode(sources[-1])
  # A damaged complete cache (a truncated file) is rebuilt, not trusted.
  expected = np.array(built.target_ids)
  ids = os.path.join(root, key, name, "target_ids.bin")
  os.truncate(ids, os.path.getsize(ids) - 2)
  again = data.tokenize_split(config.data, tok, workdir, "train")
  np.testing.assert_array_equal(again.target_ids, expected)


def test_a_killed_worker_is_one_clear_error(corpus_dir, tmp_path, tok, monkeypatch, data_config):
  config = data_config(corpus_dir)
  monkeypatch.setattr(data.sources, "CHUNK", 50)
  before = processes.children()
  def kill_a_worker():
    (worker, *_) = processes.children() - before
    os.kill(worker, signal.SIGKILL)  # As the kernel's out-of-memory killer.
  _interrupted_stream(monkeypatch, 3, kill_a_worker)
  with pytest.raises(RuntimeError, match=r"tokenization worker \(pid \d+\) exited with "
                     r"code -9 .*out of memory; the cache was not written"):
    data.tokenize_split(config.data, tok, str(tmp_path), "train")
  assert processes.children() == before
  root = os.path.join(str(tmp_path), "data_cache")
  (key,) = os.listdir(root)
  assert os.listdir(os.path.join(root, key)) == []


@pytest.mark.slow
def test_sigkilled_tokenization_takes_its_workers_and_is_rebuilt(corpus_dir, tmp_path, tok,
                                                                 data_config):
  """kill -9 of a run in the middle of its cache build: its workers end, and
  the next build removes the half-written folder and writes the whole cache."""
  workdir = str(tmp_path)
  script = f"""
import sys, time
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
import json, ml_collections
from transformer import data
from transformer.data import tokenizer
config = ml_collections.ConfigDict(json.loads({json.dumps(data_config(corpus_dir).to_dict())!r}))
data.sources.CHUNK = 50
stream = data.sources.iter_split
def stalls(*args):
  for i, chunk in enumerate(stream(*args)):
    if i == 3:
      print("building", flush=True)
      time.sleep(600)
    yield chunk
data.sources.iter_split = stalls
data.tokenize_split(config.data, tokenizer.Tokenizer({tok.path!r}), {workdir!r}, "train")
"""
  process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
  try:
    assert process.stdout.readline() == "building\n"
    workers = processes.children(process.pid)
    assert len(workers) == data.encode_worker.usable_cores()
    (key,) = os.listdir(os.path.join(workdir, "data_cache"))
    folder = os.path.join(workdir, "data_cache", key)
    (half_written,) = os.listdir(folder)
    assert ".tmp-" in half_written
  finally:
    process.kill()
    process.wait()
  deadline = time.time() + 30
  while any(map(processes.alive, workers)) and time.time() < deadline:
    time.sleep(0.1)
  assert not any(map(processes.alive, workers))
  config = data_config(corpus_dir)
  built = data.tokenize_split(config.data, tok, workdir, "train")
  assert os.listdir(folder) == [f"train.en-de.{tok.fingerprint}.v2"]
  _, targets = data.load_split_text(config.data, "train")
  assert [list(built.target(i)) for i in range(TRAIN_SIZE)] == [tok.encode(t) for t in targets]


# Evaluation's batches (eval_batches): a whole split once, in order.


def test_eval_sentences_once_in_order_untruncated(corpus_dir, workdir, tok, data_config,
                                                  check_batch):
  config = data_config(corpus_dir)
  sources, references = data.load_split_text(config.data, "validation")
  batches = data.eval_batches(config.data, tok, workdir, "validation", batch_size=8)
  assert len(batches) == 3  # 20 sentences: 8 + 8 + 4 and 4 filler rows.
  indices = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(indices, list(range(20)) + [-1] * 4)
  decoded = []
  for batch in batches:
    assert batch["inputs"].shape[0] == 8
    assert batch["inputs"].shape[1] in (8, 16, 32, 64, 128, 256)
    pairs = check_batch(batch, tok)
    filler = batch["index"] < 0
    assert not batch["inputs"][filler].any() and not batch["targets"][filler].any()
    decoded.extend(pairs)
  assert decoded == list(zip(sources, references, strict=True))
  # The over-long sentence (longer than max_length) is whole.
  assert len(tok.encode(sources[3])) + 1 > config.data.max_length
  assert decoded[3][0] == sources[3]
