"""Raw parallel text: TFDS, a folder of text files, or the generated corpus.

Every source is read as a stream of (sources, targets) chunks of at most
``CHUNK`` pairs, in the split's stored order, so that a 36M-pair training
split never has to be held in memory. ``load_split_text`` collects a whole
(evaluation-sized) split.
"""

import gzip
import itertools
import os
import time

from absl import logging

from transformer import choices
from transformer.data import synthetic

CHUNK = 20_000  # Pairs per chunk of the stream.


def check_config(data_config):
  """The data fields every entry point of the pipeline relies on."""
  if data_config.source not in choices.SOURCES:
    raise ValueError(f"Unknown data.source {data_config.source!r}; use one of {choices.SOURCES}.")
  if data_config.batching not in choices.BATCHINGS:
    raise ValueError(
        f"Unknown data.batching {data_config.batching!r}; use one of {choices.BATCHINGS}.")
  if data_config.source_lang == data_config.target_lang:
    raise ValueError(
        f"data.source_lang and data.target_lang are both {data_config.source_lang!r}.")
  if data_config.max_length < 2:
    raise ValueError(f"data.max_length={data_config.max_length} must be at least 2 "
                     "(one token and EOS).")
  if data_config.source == "synthetic":
    for lang in (data_config.source_lang, data_config.target_lang):
      if lang not in synthetic.LANGS:
        raise ValueError(
            f"The synthetic corpus has languages {synthetic.LANGS}; "
            f"data.source_lang/target_lang {lang!r} is not one of them.")


def cache_root(data_config, workdir):
  """Where token ids and the generated corpus are cached."""
  if data_config.cache_dir:
    return data_config.cache_dir
  if not workdir:
    raise ValueError("Set data.cache_dir or give a workdir for the token cache.")
  return os.path.join(workdir, "data_cache")


def dataset_name(data_config):
  if data_config.source == "tfds":
    return data_config.tfds_name
  if data_config.source == "synthetic":
    return "the synthetic corpus"
  return data_config.dir


# ----------------------------------------------------------------------------
# Text folders ("text", and "synthetic" once written).
# ----------------------------------------------------------------------------


def _synthetic_dir(data_config, workdir):
  """Writes the generated corpus (once) and returns its folder."""
  name = (f"synthetic-seed{data_config.synthetic_seed}-{data_config.synthetic_train_size}-"
          f"{data_config.synthetic_dev_size}-{data_config.synthetic_test_size}")
  directory = os.path.join(cache_root(data_config, workdir), name)
  start = time.time()
  existed = os.path.isdir(directory)
  synthetic.write_corpus(directory, data_config.synthetic_train_size,
                         data_config.synthetic_dev_size, data_config.synthetic_test_size,
                         data_config.synthetic_seed)
  if not existed:
    logging.info("Generated the synthetic corpus in %s (%.1f s).", directory,
                 time.time() - start)
  return directory


def text_dir(data_config, workdir):
  """The folder of {split}.{lang} files for "text" and "synthetic"."""
  if data_config.source == "synthetic":
    return _synthetic_dir(data_config, workdir)
  directory = data_config.dir
  if not directory:
    raise ValueError(
        "data.source='text' needs a folder of {split}.{lang} files: set "
        "--config.data.dir=/path/to/folder (for Multi30k, e.g. "
        "--config.data.dir=../shared/data/multi30k).")
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"data.dir={directory!r} does not exist or is not a folder "
        "(it should hold {split}.{lang} files such as train.en, train.de).")
  return directory


def _find_file(directory, split, lang):
  for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  present = sorted(os.listdir(directory))
  raise FileNotFoundError(
      f"Missing {os.path.join(directory, f'{split}.{lang}')} (or .gz) for "
      f"split {split!r}, language {lang!r}. Files in {directory}: {present}. "
      "Check data.dir, data.*_split and data.source_lang/target_lang.")


def _decode(path, raw_lines, first_number):
  """Decoded, stripped lines; a line that is not UTF-8 is named in the error."""
  try:
    # One decode per chunk: a per-line decode costs more than the reading.
    text = b"".join(raw_lines).decode("utf-8")
  except UnicodeDecodeError:
    for number, line in enumerate(raw_lines, start=first_number):
      try:
        line.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} line {number} is not valid UTF-8 ({e.reason} at byte "
            f"{e.start} of the line); the data must be UTF-8 text.") from None
    raise
  lines = text.split("\n")
  if raw_lines[-1].endswith(b"\n"):
    lines.pop()  # The final newline ends the last line.
  return [line.strip() for line in lines]


def iter_lines(path, chunk=None):
  """Lists of at most ``chunk`` (default CHUNK) UTF-8 lines of a plain or
  gzipped file, stripped, split on '\\n' only."""
  chunk = chunk or CHUNK
  opener = gzip.open if path.endswith(".gz") else open
  number = 1
  try:
    with opener(path, "rb") as f:
      while True:
        raw_lines = list(itertools.islice(f, chunk))
        if not raw_lines:
          return
        yield _decode(path, raw_lines, number)
        number += len(raw_lines)
  except (OSError, EOFError) as e:
    raise ValueError(f"Cannot read {path}: {e}") from e


def read_lines(path):
  """All lines of a file (see iter_lines)."""
  return [line for lines in iter_lines(path) for line in lines]


def _iter_text_split(directory, split, source_lang, target_lang):
  source_path = _find_file(directory, split, source_lang)
  target_path = _find_file(directory, split, target_lang)
  source_chunks = iter_lines(source_path)
  target_chunks = iter_lines(target_path)
  num_pairs = 0
  for sources in source_chunks:
    targets = next(target_chunks, [])
    if len(targets) != len(sources):
      break
    num_pairs += len(sources)
    yield sources, targets
  else:
    targets = next(target_chunks, [])
    if not targets:
      if not num_pairs:
        raise ValueError(f"{source_path} and {target_path} are empty: split "
                         f"{split!r} has no sentence pairs.")
      return
    sources = []
  # The files differ in length: count both to say by how much.
  num_sources = num_pairs + len(sources) + sum(map(len, source_chunks))
  num_targets = num_pairs + len(targets) + sum(map(len, target_chunks))
  raise ValueError(
      f"{source_path} has {num_sources} lines but {target_path} has "
      f"{num_targets}; line N of one must be the translation of line N of "
      "the other.")


# ----------------------------------------------------------------------------
# TFDS.
# ----------------------------------------------------------------------------


def _tfds_builder(data_config):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = data_config.tfds_name
  try:
    return tfds.builder(name, data_dir=data_config.tfds_data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown TFDS dataset data.tfds_name={name!r}.") from e


def _prepare_command(data_config):
  data_dir = data_config.tfds_data_dir
  arg = f", data_dir={data_dir!r}" if data_dir else ""
  return ("python -c \"import tensorflow_datasets as tfds; "
          f"tfds.builder('{data_config.tfds_name}'{arg}).download_and_prepare()\"")


def _iter_tfds_split(data_config, split):
  """Yields (sources, targets) chunks of a TFDS split, in stored order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _tfds_builder(data_config)
  languages = getattr(builder.info.features, "languages", None) or list(
      builder.info.features.keys())
  for lang in (data_config.source_lang, data_config.target_lang):
    if lang not in languages:
      raise ValueError(
          f"TFDS dataset {data_config.tfds_name} has languages {list(languages)}; "
          f"data.source_lang/target_lang {lang!r} is not one of them.")
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=False)
  except AssertionError as e:  # TFDS's "could not find data".
    if not data_config.tfds_download:
      raise FileNotFoundError(
          f"TFDS dataset {data_config.tfds_name} is not prepared in "
          f"{builder.data_dir_root}. Prepare it once (needs network):\n  "
          f"{_prepare_command(data_config)}\nor set --config.data.tfds_download="
          "True, or point data.tfds_data_dir / $TFDS_DATA_DIR at a prepared "
          "copy.") from e
    try:
      builder.download_and_prepare()
    except Exception as e2:  # pylint: disable=broad-except
      raise RuntimeError(
          f"Could not download and prepare TFDS dataset {data_config.tfds_name} "
          f"(network needed): {e2}. Prepare it where there is network:\n  "
          f"{_prepare_command(data_config)}") from e2
    dataset = builder.as_dataset(split=split, shuffle_files=False)
  except (KeyError, ValueError) as e:
    raise ValueError(
        f"TFDS dataset {data_config.tfds_name} has no split {split!r} (it has "
        f"{list(builder.info.splits.keys())}); check data.*_split.") from e
  sources, targets = [], []
  for example in tfds.as_numpy(dataset):
    sources.append(example[data_config.source_lang].decode("utf-8").strip())
    targets.append(example[data_config.target_lang].decode("utf-8").strip())
    if len(sources) == CHUNK:
      yield sources, targets
      sources, targets = [], []
  if sources:
    yield sources, targets


# ----------------------------------------------------------------------------
# Any source.
# ----------------------------------------------------------------------------


def iter_split(data_config, split, workdir):
  """Yields (sources, targets) chunks of a split, in its original order."""
  check_config(data_config)
  if data_config.source == "tfds":
    yield from _iter_tfds_split(data_config, split)
    return
  yield from _iter_text_split(text_dir(data_config, workdir), split,
                              data_config.source_lang, data_config.target_lang)


def load_split_text(data_config, split, *, workdir=None):
  """Raw (sources, references) of a split, in the order of eval_batches."""
  check_config(data_config)
  if data_config.source == "synthetic" and not (workdir or
                                                data_config.cache_dir):
    corpus = synthetic.generate(data_config.synthetic_train_size, data_config.synthetic_dev_size,
                                data_config.synthetic_test_size, data_config.synthetic_seed)
    if split not in corpus:
      raise ValueError(f"The synthetic corpus has splits {synthetic.SPLITS}; "
                       f"got {split!r}.")
    by_lang = dict(zip(synthetic.LANGS, corpus[split], strict=True))
    return list(by_lang[data_config.source_lang]), list(by_lang[data_config.target_lang])
  sources, targets = [], []
  for chunk_sources, chunk_targets in iter_split(data_config, split, workdir):
    sources.extend(chunk_sources)
    targets.extend(chunk_targets)
  if not sources:
    raise ValueError(f"Split {split!r} of {dataset_name(data_config)} is empty.")
  return sources, targets
