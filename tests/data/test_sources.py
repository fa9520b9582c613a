"""Tests for transformer/data/sources.py: raw parallel text (text folders, the
generated corpus, TFDS mocked) and its errors, one clear line each."""

import gzip
import os

import pytest

from configs import common
from transformer import data
from transformer.data import synthetic

TRAIN_SIZE = 300  # The corpus_dir fixture's training pairs.


def test_text_folder_reads_plain_and_gz(corpus_dir, data_config):
  config = data_config(corpus_dir)
  sources, targets = data.load_split_text(config.data, "train")
  expected = synthetic.generate(TRAIN_SIZE, 20, 5, seed=7)["train"]
  assert len(sources) == len(targets) == TRAIN_SIZE
  assert sources[0] == expected[0][0] and targets[0] == expected[1][0]
  assert "Ä" in "".join(targets) or "ü" in "".join(targets)
  # The direction comes from the config.
  config.data.source_lang, config.data.target_lang = "de", "en"
  reverse = data.load_split_text(config.data, "train")
  assert reverse == (targets, sources)


def _bad_folder(data_config, tmp_path, files):
  for name, content in files.items():
    (tmp_path / name).write_bytes(content)
  return data_config(tmp_path)


def test_line_count_mismatch(tmp_path, data_config):
  config = _bad_folder(data_config, tmp_path, {"train.en": b"a\nb\nc\n", "train.de": b"x\ny\n"})
  with pytest.raises(ValueError, match=r"train.en has 3 lines but .*train.de has 2"):
    data.load_split_text(config.data, "train")


def test_invalid_utf8_names_file_and_line(tmp_path, data_config):
  config = _bad_folder(data_config, tmp_path, {"train.en": b"a\nb\nc\n",
                                  "train.de": b"x\ny\n\xff\xfe kaputt\n"})
  with pytest.raises(ValueError, match=r"train.de line 3 is not valid UTF-8"):
    data.load_split_text(config.data, "train")


def test_invalid_utf8_in_gz(tmp_path, data_config):
  config = _bad_folder(data_config, tmp_path, {"train.en": b"a\nb\n",
                                  "train.de.gz": gzip.compress(b"x\n\xc3(\n")})
  with pytest.raises(ValueError, match=r"train.de.gz line 2 is not valid UTF-8"):
    data.load_split_text(config.data, "train")


def test_missing_split_file(tmp_path, data_config):
  config = _bad_folder(data_config, tmp_path, {"train.en": b"a\n", "train.de": b"x\n"})
  with pytest.raises(FileNotFoundError,
                     match=r"Missing .*validation.en \(or .gz\) for split 'validation'"):
    data.load_split_text(config.data, "validation")
  config.data.target_lang = "fr"
  with pytest.raises(FileNotFoundError, match=r"train.fr"):
    data.load_split_text(config.data, "train")


def test_empty_corpus(tmp_path, data_config):
  config = _bad_folder(data_config, tmp_path, {"train.en": b"", "train.de": b""})
  with pytest.raises(ValueError, match="has no sentence pairs"):
    data.load_split_text(config.data, "train")


def test_all_pairs_dropped(tmp_path, data_config):
  config = _bad_folder(data_config, tmp_path, {"train.en": b"a\n\n" * 40,
                                  "train.de": b"\nb\n" * 40})
  config.model.vocab_size = 8
  tok = data.load_tokenizer(config.data, str(tmp_path / "w"), vocab_size=config.model.vocab_size)
  with pytest.raises(ValueError, match="80 dropped|80 empty"):
    data.make_train_iterator(config.data, tok, str(tmp_path / "w"))


def test_missing_dir(tmp_path, data_config):
  config = data_config(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load_split_text(config.data, "train")
  config.data.dir = ""
  with pytest.raises(ValueError, match="--config.data.dir"):
    data.load_split_text(config.data, "train")


def test_bad_config_values(corpus_dir, data_config):
  with pytest.raises(ValueError, match="data.source"):
    data.load_split_text(data_config(corpus_dir, source="csv").data, "train")
  with pytest.raises(ValueError, match="data.batching"):
    data.load_split_text(data_config(corpus_dir, batching="sort").data, "train")


def test_synthetic_source(tmp_path, data_config, check_batch):
  config = data_config("", source="synthetic", synthetic_train_size=200,
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
  decoded = [p for b in batches for p in check_batch(b, tok)]
  assert decoded == list(zip(*in_memory, strict=True))
  with data.make_train_iterator(config.data, tok, workdir) as iterator:
    check_batch(next(iterator), tok)


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
def test_tfds_mock_data_direction_from_config(tmp_path, epoch_pairs):
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
      decoded = epoch_pairs(iterator, tok)
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


def test_errors_name_the_line_in_any_chunk(tmp_path, monkeypatch, data_config):
  monkeypatch.setattr(data.sources, "CHUNK", 2)
  config = _bad_folder(data_config, tmp_path, {"train.en": b"a\nb\nc\nd\ne\n",
                                  "train.de": b"v\nw\nx\ny\n\xff\n"})
  with pytest.raises(ValueError, match=r"train.de line 5 is not valid UTF-8"):
    data.load_split_text(config.data, "train")
  config = _bad_folder(data_config, tmp_path, {"train.en": b"a\nb\nc\nd\ne\n",
                                  "train.de": b"v\nw\nx\n"})
  with pytest.raises(ValueError, match=r"train.en has 5 lines but .*train.de has 3"):
    data.load_split_text(config.data, "train")
  config = _bad_folder(data_config, tmp_path, {"train.en": b"a\nb\n",
                                  "train.de": b"v\nw\nx\ny\nz\n"})
  with pytest.raises(ValueError, match=r"train.en has 2 lines but .*train.de has 5"):
    data.load_split_text(config.data, "train")
