"""Fixtures of the input pipeline's tests: a small text corpus, its config
and tokenizer (made once per session), and checks of the batch format."""

import gzip

import numpy as np
import pytest

from configs import common
from transformer import data, tokens
from transformer.data import synthetic

TRAIN_SIZE = 300


def _write(path, lines, compress=False):
  text = ("\n".join(lines) + "\n").encode("utf-8")
  if compress:
    with gzip.open(str(path) + ".gz", "wb") as f:
      f.write(text)
  else:
    path.write_bytes(text)


@pytest.fixture(scope="session")
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


def _data_config(directory, **data_fields):
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


@pytest.fixture(scope="session")
def data_config():
  """``data_config(directory, **data_fields)``: the base config reading the
  text folder ``directory`` (vocabulary 200, max_length 64, 512 tokens a batch)."""
  return _data_config


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("workdir"))


@pytest.fixture(scope="session")
def tok(corpus_dir, workdir):
  config = _data_config(corpus_dir)
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
      pairs.append((tok.detokenize(source[segment][0]),
                    tok.detokenize(target[segment][0])))
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


@pytest.fixture(scope="session")
def check_batch():
  """``check_batch(batch, tok)``: asserts the batch format; the decoded pairs."""
  return _check_batch


@pytest.fixture(scope="session")
def epoch_pairs():
  """``epoch_pairs(iterator, tok)``: decoded pairs of the rest of an epoch."""
  return _epoch


@pytest.fixture(scope="session")
def kept_pairs():
  """``kept_pairs(config, tok)``: the training pairs the pipeline keeps."""
  return _kept_pairs
