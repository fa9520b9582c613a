"""Tests for transformer/data/: sources, caches, batches, resume, sharding."""

import gc
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from configs import common, multi30k
from transformer import data, synthetic, tokens
from transformer import tokenizer as tokenizer_lib

MULTI30K = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                        "multi30k")
TRAIN_SIZE = 300


def _write(path, lines, compress=False):
  text = ("\n".join(lines) + "\n").encode("utf-8")
  if compress:
    with gzip.open(str(path) + ".gz", "wb") as f:
      f.write(text)
  else:
    path.write_bytes(text)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """A folder of {train,validation}.{en,de}: generated sentences, plus one
  empty pair and one over-long pair in train, one over-long pair in dev."""
  directory = tmp_path_factory.mktemp("corpus")
  pairs = synthetic.generate(TRAIN_SIZE, 20, 5, seed=7)
  en, de = (list(x) for x in pairs["train"])
  en[10], de[10] = "", ""  # Dropped as empty.
  long_en = " ".join(["The old dog sees twenty-one cats."] * 12)
  long_de = " ".join(["Der alte Hund sieht einundzwanzig Katzen."] * 12)
  en[20], de[20] = long_en, long_de  # Dropped as longer than max_length.
  _write(directory / "train.en", en)
  _write(directory / "train.de", de, compress=True)  # Mixed plain and .gz.
  dev_en, dev_de = (list(x) for x in pairs["validation"])
  dev_en[3], dev_de[3] = long_en, long_de  # Kept whole in evaluation.
  _write(directory / "validation.en", dev_en)
  _write(directory / "validation.de", dev_de)
  return directory


def _config(directory, **data_fields):
  config = common.get_base_config("base")
  config.model.vocab_size = 200
  d = config.data
  d.source = "text"
  d.dir = str(directory)
  d.max_length = 64
  d.batch_tokens = 512
  d.prefetch = 2
  for key, value in data_fields.items():
    d[key] = value
  return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("workdir"))


@pytest.fixture(scope="module")
def tok(corpus_dir, workdir):
  config = _config(corpus_dir)
  return data.load_tokenizer(config.data, workdir, vocab_size=config.model.vocab_size)


def _segments(batch, row, side):
  """The (ids, positions) of each segment of a row, by segment id."""
  ids = batch[side][row]
  segmentation = batch[side + "_segmentation"][row]
  positions = batch[side + "_position"][row]
  out = {}
  for segment in np.unique(segmentation[segmentation > 0]):
    where = np.flatnonzero(segmentation == segment)
    out[int(segment)] = (ids[where], positions[where], where)
  return out


def _check_batch(batch, tok):
  """Masks, segments and positions are consistent; returns the decoded pairs."""
  pairs = []
  assert set(batch) >= set(data.FEATURES)
  for name in data.FEATURES:
    assert batch[name].dtype == np.int32
  for side in ("inputs", "targets"):
    # Tokens exactly where segment ids are, and position 0 on padding.
    np.testing.assert_array_equal(batch[side] != tokens.PAD_ID,
                                  batch[side + "_segmentation"] > 0)
    assert not batch[side + "_position"][batch[side] == tokens.PAD_ID].any()
  for row in range(batch["inputs"].shape[0]):
    source = _segments(batch, row, "inputs")
    target = _segments(batch, row, "targets")
    assert sorted(source) == sorted(target) == list(range(1, len(source) + 1))
    for segment in source:
      for ids, positions, where in (source[segment], target[segment]):
        np.testing.assert_array_equal(where, np.arange(where[0], where[-1] + 1))
        np.testing.assert_array_equal(positions, np.arange(len(ids)))
        assert ids[-1] == tokens.EOS_ID and tokens.EOS_ID not in ids[:-1]
      pairs.append((tok.decode(source[segment][0]),
                    tok.decode(target[segment][0])))
  return pairs


def _epoch(iterator, tok):
  """Decoded pairs of the rest of the iterator's current epoch."""
  epoch = iterator.get_state()["epoch"]
  pairs = []
  while iterator.get_state()["epoch"] == epoch:
    pairs.extend(_check_batch(next(iterator), tok))
  return pairs


def _kept_pairs(config, tok):
  """Training pairs with both sides non-empty and at most max_length tokens
  (EOS included): not pair 10 (empty) nor pair 20 (too long)."""
  sources, targets = data.load_split_text(config.data, "train")
  kept = [(s, t) for s, t in zip(sources, targets, strict=True)
          if s and t and max(len(tok.encode(s)), len(tok.encode(t))) + 1
          <= config.data.max_length]
  assert (sources[10], targets[10]) not in kept
  assert (sources[20], targets[20]) not in kept
  assert len(kept) > 0.9 * len(sources)
  return kept


# ---------------------------------------------------------------------------
# Sources.


def test_text_folder_reads_plain_and_gz(corpus_dir):
  config = _config(corpus_dir)
  sources, targets = data.load_split_text(config.data, "train")
  expected = synthetic.generate(TRAIN_SIZE, 20, 5, seed=7)["train"]
  assert len(sources) == len(targets) == TRAIN_SIZE
  assert sources[0] == expected[0][0] and targets[0] == expected[1][0]
  assert "Ä" in "".join(targets) or "ü" in "".join(targets)
  # The direction comes from the config.
  config.data.source_lang, config.data.target_lang = "de", "en"
  reverse = data.load_split_text(config.data, "train")
  assert reverse == (targets, sources)


def test_batches_respect_budget_and_are_consistent(corpus_dir, workdir, tok):
  config = _config(corpus_dir)
  kept = set(_kept_pairs(config, tok))
  with data.make_train_iterator(config.data, tok, workdir) as iterator:
    assert iterator.batch_shape == (512 // 64, 64)
    for _ in range(5):
      batch = next(iterator)
      rows, length = iterator.batch_shape
      for side in ("inputs", "targets"):
        assert batch[side].shape == (rows, length)
        assert batch[side].size <= config.data.batch_tokens
      pairs = _check_batch(batch, tok)
      assert len(pairs) > rows  # Several pairs per row.
      assert set(pairs) <= kept
      assert data.padding_efficiency(batch) > 0.6


def test_epoch_covers_every_kept_pair_once_and_drops_the_rest(
    corpus_dir, workdir, tok):
  config = _config(corpus_dir)
  with data.make_train_iterator(config.data, tok, workdir) as iterator:
    pairs = _epoch(iterator, tok)
    second = _epoch(iterator, tok)
  assert sorted(pairs) == sorted(_kept_pairs(config, tok))
  assert sorted(second) == sorted(pairs) and second != pairs  # Reshuffled.


def test_row_multiple(corpus_dir, workdir, tok):
  config = _config(corpus_dir, batch_tokens=64 * 7)
  with data.make_train_iterator(config.data, tok, workdir,
                                row_multiple=3) as iterator:
    assert iterator.batch_shape == (6, 64)
    assert next(iterator)["inputs"].shape == (6, 64)
  with pytest.raises(ValueError, match="raise data.batch_tokens"):
    data.make_train_iterator(config.data, tok, workdir, row_multiple=8)


def test_bucket_batches(corpus_dir, workdir, tok):
  config = _config(corpus_dir, batching="bucket")
  kept = set(_kept_pairs(config, tok))
  with data.make_train_iterator(config.data, tok, workdir,
                                row_multiple=2) as iterator:
    assert iterator.batch_shape is None
    for _ in range(6):
      batch = next(iterator)
      shape = batch["inputs"].shape
      assert shape in iterator.batch_shapes and shape[0] % 2 == 0
      assert batch["targets"].shape == shape
      assert shape[0] * shape[1] <= config.data.batch_tokens
      pairs = _check_batch(batch, tok)
      assert len(pairs) == shape[0] and set(pairs) <= kept
      assert batch["inputs_segmentation"].max() == 1


def test_deterministic_by_seed(corpus_dir, workdir, tok):
  config = _config(corpus_dir, prefetch=0)
  first = [next(data.make_train_iterator(config.data, tok, workdir))["inputs"]
           for _ in range(2)]
  np.testing.assert_array_equal(first[0], first[1])
  config.data.seed = 1
  other = next(data.make_train_iterator(config.data, tok, workdir))["inputs"]
  assert not np.array_equal(first[0], other)


@pytest.mark.parametrize("batching", ["pack", "bucket"])
def test_restored_state_reproduces_the_next_batches(corpus_dir, workdir, tok,
                                                    batching):
  config = _config(corpus_dir, batching=batching)
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


def test_state_from_another_setup_is_rejected(corpus_dir, workdir, tok):
  config = _config(corpus_dir)
  with data.make_train_iterator(config.data, tok, workdir) as iterator:
    state = iterator.get_state()
  with data.make_train_iterator(config.data, tok, workdir, process_index=1,
                                process_count=2) as other:
    with pytest.raises(ValueError, match="process_index"):
      other.set_state(state)


def test_two_processes_are_disjoint_and_complete(corpus_dir, workdir, tok):
  config = _config(corpus_dir)
  halves = []
  for process_index in range(2):
    with data.make_train_iterator(config.data, tok, workdir,
                                  process_index=process_index,
                                  process_count=2) as iterator:
      # Each process holds half of the global budget.
      assert iterator.batch_shape == (512 // 2 // 64, 64)
      halves.append(_epoch(iterator, tok))
  assert not set(halves[0]) & set(halves[1])
  assert sorted(halves[0] + halves[1]) == sorted(_kept_pairs(config, tok))
  assert abs(len(halves[0]) - len(halves[1])) <= 1


def test_bucket_shapes_agree_across_processes(corpus_dir, workdir, tok):
  config = _config(corpus_dir, batching="bucket", prefetch=0)
  shapes = []
  for process_index in range(2):
    iterator = data.make_train_iterator(config.data, tok, workdir,
                                        process_index=process_index,
                                        process_count=2)
    shapes.append([next(iterator)["inputs"].shape for _ in range(12)])
  assert shapes[0] == shapes[1]
  assert len(set(shapes[0])) > 1  # Several buckets in use.


def test_dropped_iterator_stops_its_prefetch_thread(corpus_dir, workdir, tok):
  def threads():
    return [t for t in threading.enumerate()
            if t.name == "TrainIteratorPrefetch" and t.is_alive()]
  before = len(threads())
  iterator = data.make_train_iterator(_config(corpus_dir).data, tok, workdir)
  next(iterator)
  assert len(threads()) == before + 1
  del iterator
  gc.collect()
  for _ in range(50):
    if len(threads()) == before:
      break
    time.sleep(0.1)
  assert len(threads()) == before


# ---------------------------------------------------------------------------
# Evaluation.


def test_eval_sentences_once_in_order_untruncated(corpus_dir, workdir, tok):
  config = _config(corpus_dir)
  sources, references = data.load_split_text(config.data, "validation")
  batches = data.eval_batches(config.data, tok, workdir, "validation", batch_size=8)
  assert len(batches) == 3  # 20 sentences: 8 + 8 + 4 and 4 filler rows.
  indices = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(indices, list(range(20)) + [-1] * 4)
  decoded = []
  for batch in batches:
    assert batch["inputs"].shape[0] == 8
    assert batch["inputs"].shape[1] in (8, 16, 32, 64, 128, 256)
    pairs = _check_batch(batch, tok)
    filler = batch["index"] < 0
    assert not batch["inputs"][filler].any() and not batch["targets"][filler].any()
    decoded.extend(pairs)
  assert decoded == list(zip(sources, references, strict=True))
  # The over-long sentence (longer than max_length) is whole.
  assert len(tok.encode(sources[3])) + 1 > config.data.max_length
  assert decoded[3][0] == sources[3]


# ---------------------------------------------------------------------------
# Tokenizer and token cache.


def test_tokenizer_is_reused_on_restart(corpus_dir, workdir, tok, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("retrained")
  monkeypatch.setattr(tokenizer_lib, "train_tokenizer", fail)
  config = _config(corpus_dir)
  again = data.load_tokenizer(config.data, workdir, vocab_size=config.model.vocab_size)
  assert again.fingerprint == tok.fingerprint
  with pytest.raises(ValueError, match="model.vocab_size=300"):
    config = _config(corpus_dir)
    config.model.vocab_size = 300
    data.load_tokenizer(config.data, workdir, vocab_size=config.model.vocab_size)


def test_given_tokenizer_path(corpus_dir, tmp_path, tok):
  config = _config(corpus_dir, tokenizer_path=tok.path)
  given = data.load_tokenizer(config.data, str(tmp_path), vocab_size=config.model.vocab_size)
  assert given.fingerprint == tok.fingerprint
  config.model.vocab_size = 150
  with pytest.raises(ValueError, match="--config.model.vocab_size=200"):
    data.load_tokenizer(config.data, str(tmp_path), vocab_size=config.model.vocab_size)


def test_vocab_too_large_for_corpus_names_the_field(corpus_dir, tmp_path):
  config = _config(corpus_dir)
  config.model.vocab_size = 50_000
  with pytest.raises(ValueError, match="config.model.vocab_size"):
    data.load_tokenizer(config.data, str(tmp_path), vocab_size=config.model.vocab_size)


def test_token_ids_are_cached(corpus_dir, workdir, tok, monkeypatch):
  config = _config(corpus_dir)
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


# ---------------------------------------------------------------------------
# Bad input: one clear error each.


def _bad_folder(tmp_path, files):
  for name, content in files.items():
    (tmp_path / name).write_bytes(content)
  return _config(tmp_path)


def test_line_count_mismatch(tmp_path):
  config = _bad_folder(tmp_path, {"train.en": b"a\nb\nc\n", "train.de": b"x\ny\n"})
  with pytest.raises(ValueError, match=r"train.en has 3 lines but .*train.de has 2"):
    data.load_split_text(config.data, "train")


def test_invalid_utf8_names_file_and_line(tmp_path):
  config = _bad_folder(tmp_path, {"train.en": b"a\nb\nc\n",
                                  "train.de": b"x\ny\n\xff\xfe kaputt\n"})
  with pytest.raises(ValueError, match=r"train.de line 3 is not valid UTF-8"):
    data.load_split_text(config.data, "train")


def test_invalid_utf8_in_gz(tmp_path):
  config = _bad_folder(tmp_path, {"train.en": b"a\nb\n",
                                  "train.de.gz": gzip.compress(b"x\n\xc3(\n")})
  with pytest.raises(ValueError, match=r"train.de.gz line 2 is not valid UTF-8"):
    data.load_split_text(config.data, "train")


def test_missing_split_file(tmp_path):
  config = _bad_folder(tmp_path, {"train.en": b"a\n", "train.de": b"x\n"})
  with pytest.raises(FileNotFoundError,
                     match=r"Missing .*validation.en \(or .gz\) for split 'validation'"):
    data.load_split_text(config.data, "validation")
  config.data.target_lang = "fr"
  with pytest.raises(FileNotFoundError, match=r"train.fr"):
    data.load_split_text(config.data, "train")


def test_empty_corpus(tmp_path):
  config = _bad_folder(tmp_path, {"train.en": b"", "train.de": b""})
  with pytest.raises(ValueError, match="has no sentence pairs"):
    data.load_split_text(config.data, "train")


def test_all_pairs_dropped(tmp_path):
  config = _bad_folder(tmp_path, {"train.en": b"a\n\n" * 40,
                                  "train.de": b"\nb\n" * 40})
  config.model.vocab_size = 8
  tok = data.load_tokenizer(config.data, str(tmp_path / "w"), vocab_size=config.model.vocab_size)
  with pytest.raises(ValueError, match="80 dropped|80 empty"):
    data.make_train_iterator(config.data, tok, str(tmp_path / "w"))


def test_missing_dir(tmp_path):
  config = _config(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load_split_text(config.data, "train")
  config.data.dir = ""
  with pytest.raises(ValueError, match="--config.data.dir"):
    data.load_split_text(config.data, "train")


def test_bad_config_values(corpus_dir):
  with pytest.raises(ValueError, match="data.source"):
    data.load_split_text(_config(corpus_dir, source="csv").data, "train")
  with pytest.raises(ValueError, match="data.batching"):
    data.load_split_text(_config(corpus_dir, batching="sort").data, "train")


# ---------------------------------------------------------------------------
# The generated corpus goes through the text path.


def test_synthetic_source(tmp_path):
  config = _config("", source="synthetic", synthetic_train_size=200,
                   synthetic_dev_size=10, synthetic_test_size=10)
  workdir = str(tmp_path)
  tok = data.load_tokenizer(config.data, workdir, vocab_size=config.model.vocab_size)
  in_memory = data.load_split_text(config.data, "test")
  assert data.load_split_text(config.data, "test", workdir=workdir) == in_memory
  assert len(in_memory[0]) == 10
  folder = [n for n in os.listdir(os.path.join(workdir, "data_cache"))
            if n.startswith("synthetic-")]
  assert folder == ["synthetic-seed0-200-10-10"]
  batches = data.eval_batches(config.data, tok, workdir, "test", batch_size=4)
  decoded = [p for b in batches for p in _check_batch(b, tok)]
  assert decoded == list(zip(*in_memory, strict=True))
  with data.make_train_iterator(config.data, tok, workdir) as iterator:
    _check_batch(next(iterator), tok)


# ---------------------------------------------------------------------------
# TFDS (mocked: no download).


def _tfds_config(**fields):
  config = common.get_base_config("base")
  config.model.vocab_size = 60
  config.data.source = "tfds"
  config.data.tfds_name = "wmt14_translate/de-en"
  config.data.max_length = 128
  config.data.batch_tokens = 512
  for key, value in fields.items():
    config.data[key] = value
  return config


@pytest.mark.slow
def test_tfds_mock_data_direction_from_config(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  import tensorflow as tf

  pairs = synthetic.generate(40, 5, 5, seed=1)["train"]

  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    # TFDS's supervised keys for wmt14 de-en are (de, en); ours is en->de.
    return tf.data.Dataset.from_tensor_slices(
        {"de": list(pairs[1]), "en": list(pairs[0])})

  config = _tfds_config()
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    sources, targets = data.load_split_text(config.data, "validation")
    assert (sources, targets) == (list(pairs[0]), list(pairs[1]))
    tok = data.load_tokenizer(config.data, str(tmp_path), vocab_size=config.model.vocab_size)
    with data.make_train_iterator(config.data, tok, str(tmp_path)) as iterator:
      decoded = _epoch(iterator, tok)
  assert sorted(decoded) == sorted(zip(*pairs, strict=True))
  assert os.listdir(tmp_path / "data_cache") == ["tfds-wmt14_translate_de-en"]


def test_tfds_not_prepared_names_dataset_and_command(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  config = _tfds_config(tfds_data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError,
                     match=r"wmt14_translate/de-en is not prepared(.|\n)*"
                     r"download_and_prepare"):
    data.load_split_text(config.data, "validation")
  config.data.source_lang = "fr"
  with pytest.raises(ValueError, match="'fr' is not one of them"):
    data.load_split_text(config.data, "validation")


# ---------------------------------------------------------------------------
# Multi30k (real data, when present).


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


# ---------------------------------------------------------------------------
# The compiled packer, held against a plain-Python first fit.


def _reference_first_fit(source_lengths, target_lengths, start, rows, length):
  """First fit as the paper-era loop: each pair to the first row with room on
  both sides; the batch closes at the first pair that fits in no row."""
  free = [[length, length] for _ in range(rows)]
  placed = []
  for k in range(start, len(source_lengths)):
    s, t = int(source_lengths[k]), int(target_lengths[k])
    for row, (fs, ft) in enumerate(free):
      if fs >= s and ft >= t:
        placed.append((row, length - fs, length - ft))
        free[row] = [fs - s, ft - t]
        break
    else:
      break
  return start + len(placed), placed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_fit_matches_a_plain_python_first_fit(seed):
  rng = np.random.default_rng(seed)
  n, rows, length = 3000, 7, 64
  source_lengths = rng.integers(2, length + 1, n) // rng.integers(1, 6, n) + 2
  source_lengths = np.minimum(source_lengths, length).astype(np.int64)
  target_lengths = np.clip(source_lengths + rng.integers(-3, 4, n), 2,
                           length).astype(np.int64)
  start = 0
  while start < n:
    want_end, want = _reference_first_fit(source_lengths, target_lengths,
                                          start, rows, length)
    end, row_of, source_start, target_start, segment_of = data.packing.first_fit(
        source_lengths, target_lengths, start, rows, length)
    assert end == want_end > start
    assert list(zip(row_of.tolist(), source_start.tolist(),
                    target_start.tolist(), strict=True)) == want
    for row in range(rows):  # Segments count 1, 2, ... along each row.
      np.testing.assert_array_equal(segment_of[row_of == row],
                                    np.arange(1, np.sum(row_of == row) + 1))
    start = end


def test_resumed_iterator_equals_an_uninterrupted_one_across_epochs(
    corpus_dir, workdir, tok):
  config = _config(corpus_dir, prefetch=0)
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
  config = _config(corpus_dir, prefetch=3, workers=2)
  for i in [0] + [k - 1 for k in last_of_epoch]:
    with data.make_train_iterator(config.data, tok, workdir) as restored:
      restored.set_state(json.loads(json.dumps(states[i])))
      for want in batches[i:]:
        got = next(restored)
        for name in data.FEATURES:
          np.testing.assert_array_equal(got[name], want[name])


# ---------------------------------------------------------------------------
# Streaming: the token cache and the tokenizer sample.


def _children(pid=None):
  """Process ids of the live children of ``pid`` (default: this process; Linux)."""
  pid = pid or os.getpid()
  path = f"/proc/{pid}/task/{pid}/children"
  if not os.path.exists(path):
    pytest.skip(f"{path} is not available on this system.")
  with open(path) as f:
    return {child for child in map(int, f.read().split()) if _alive(child)}


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # Not a zombie.
  except FileNotFoundError:
    return False


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
                                                                 monkeypatch):
  config = _config(corpus_dir)
  sources, targets = data.load_split_text(config.data, "train")
  # One chunk: encoded in this process.
  here = data.tokenize_split(config.data, tok, str(tmp_path / "here"), "train")
  # Several chunks: encoded by worker processes, never by this process.
  monkeypatch.setattr(data.sources, "CHUNK", 7)
  def fail(*args, **kwargs):
    raise AssertionError("encoded in this process")
  monkeypatch.setattr(tok, "encode_batch", fail)
  before = _children()
  pooled = data.tokenize_split(config.data, tok, str(tmp_path / "pooled"), "train")
  assert _children() == before  # The workers are gone.
  assert len(pooled) == len(here) == TRAIN_SIZE
  for i in range(TRAIN_SIZE):
    assert list(pooled.source(i)) == tok.encode(sources[i])
    assert list(pooled.target(i)) == tok.encode(targets[i])
  for name in ("source_ids", "source_offsets", "target_ids", "target_offsets"):
    np.testing.assert_array_equal(getattr(pooled, name), getattr(here, name))


def test_killed_tokenization_leaves_no_trusted_cache(corpus_dir, tmp_path, tok,
                                                     monkeypatch):
  config = _config(corpus_dir)
  workdir = str(tmp_path)
  monkeypatch.setattr(data.sources, "CHUNK", 50)
  def interrupt():
    raise KeyboardInterrupt  # As Ctrl-C in the middle of the build.
  _interrupted_stream(monkeypatch, 3, interrupt)
  before = _children()
  with pytest.raises(KeyboardInterrupt):
    data.tokenize_split(config.data, tok, workdir, "train")
  assert _children() == before  # No worker outlives the build.
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


def test_a_killed_worker_is_one_clear_error(corpus_dir, tmp_path, tok, monkeypatch):
  config = _config(corpus_dir)
  monkeypatch.setattr(data.sources, "CHUNK", 50)
  before = _children()
  def kill_a_worker():
    (worker, *_) = _children() - before
    os.kill(worker, signal.SIGKILL)  # As the kernel's out-of-memory killer.
  _interrupted_stream(monkeypatch, 3, kill_a_worker)
  with pytest.raises(RuntimeError, match=r"tokenization worker \(pid \d+\) exited with "
                     r"code -9 .*out of memory; the cache was not written"):
    data.tokenize_split(config.data, tok, str(tmp_path), "train")
  assert _children() == before
  root = os.path.join(str(tmp_path), "data_cache")
  (key,) = os.listdir(root)
  assert os.listdir(os.path.join(root, key)) == []


@pytest.mark.slow
def test_sigkilled_tokenization_takes_its_workers_and_is_rebuilt(corpus_dir, tmp_path, tok):
  """kill -9 of a run in the middle of its cache build: its workers end, and
  the next build removes the half-written folder and writes the whole cache."""
  workdir = str(tmp_path)
  script = f"""
import sys, time
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from tests import test_data
from transformer import data, tokenizer
config = test_data._config({str(corpus_dir)!r})
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
    workers = _children(process.pid)
    assert len(workers) == data.encode_worker.usable_cores()
    (key,) = os.listdir(os.path.join(workdir, "data_cache"))
    folder = os.path.join(workdir, "data_cache", key)
    (half_written,) = os.listdir(folder)
    assert ".tmp-" in half_written
  finally:
    process.kill()
    process.wait()
  deadline = time.time() + 30
  while any(map(_alive, workers)) and time.time() < deadline:
    time.sleep(0.1)
  assert not any(map(_alive, workers))
  config = _config(corpus_dir)
  built = data.tokenize_split(config.data, tok, workdir, "train")
  assert os.listdir(folder) == [f"train.en-de.{tok.fingerprint}.v2"]
  _, targets = data.load_split_text(config.data, "train")
  assert [list(built.target(i)) for i in range(TRAIN_SIZE)] == [tok.encode(t) for t in targets]


def test_errors_name_the_line_in_any_chunk(tmp_path, monkeypatch):
  monkeypatch.setattr(data.sources, "CHUNK", 2)
  config = _bad_folder(tmp_path, {"train.en": b"a\nb\nc\nd\ne\n",
                                  "train.de": b"v\nw\nx\ny\n\xff\n"})
  with pytest.raises(ValueError, match=r"train.de line 5 is not valid UTF-8"):
    data.load_split_text(config.data, "train")
  config = _bad_folder(tmp_path, {"train.en": b"a\nb\nc\nd\ne\n",
                                  "train.de": b"v\nw\nx\n"})
  with pytest.raises(ValueError, match=r"train.en has 5 lines but .*train.de has 3"):
    data.load_split_text(config.data, "train")
  config = _bad_folder(tmp_path, {"train.en": b"a\nb\n",
                                  "train.de": b"v\nw\nx\ny\nz\n"})
  with pytest.raises(ValueError, match=r"train.en has 2 lines but .*train.de has 5"):
    data.load_split_text(config.data, "train")


def test_tokenizer_sample_is_uniform_seeded_and_in_corpus_order(
    corpus_dir, monkeypatch):
  config = _config(corpus_dir, tokenizer_sample_sentences=100)
  sources, targets = data.load_split_text(config.data, "train")
  sample = data.vocabulary.tokenizer_sample(config.data, None)
  assert len(sample) == 100
  pairs = list(zip(sample[::2], sample[1::2], strict=True))
  where = [sources.index(s) for s, _ in pairs]
  assert where == sorted(where) and len(set(where)) == 50
  assert all(targets[i] == t for i, (_, t) in zip(where, pairs, strict=True))
  assert max(where) > 0.7 * TRAIN_SIZE  # Drawn from the whole split.
  monkeypatch.setattr(data.sources, "CHUNK", 7)  # Same chunks' seeds differ,
  other_chunking = data.vocabulary.tokenizer_sample(config.data, None)
  assert len(other_chunking) == 100 and other_chunking != sample
  monkeypatch.setattr(data.sources, "CHUNK", 20_000)
  assert data.vocabulary.tokenizer_sample(config.data, None) == sample  # Seeded.
  config.data.seed = 1
  assert data.vocabulary.tokenizer_sample(config.data, None) != sample
  config.data.tokenizer_sample_sentences = 10 * TRAIN_SIZE  # All of it.
  whole = data.vocabulary.tokenizer_sample(config.data, None)
  assert whole == [x for pair in zip(sources, targets, strict=True) for x in pair]
