"""Input pipeline: parallel text -> shared SentencePiece ids -> static batches.

Sources (``config.data.source``):
  "tfds"       a TFDS translate builder by name (``data.tfds_name``), e.g.
               ``wmt14_translate/de-en`` (train; newstest2013 = "validation";
               newstest2014 = "test"). Read from ``data.tfds_data_dir`` or
               $TFDS_DATA_DIR. Never downloads unless ``data.tfds_download``.
  "text"       a folder (``data.dir``) of ``{split}.{lang}`` files, plain or
               ``.gz``, UTF-8, one sentence per line, line N of one language
               the translation of line N of the other.
  "synthetic"  the project's generated EN->DE corpus (transformer/synthetic.py),
               written once as ``{split}.{lang}`` files under the cache dir and
               then read exactly like "text". Splits: "train", "validation",
               "test"; languages "en", "de".
The direction is always ``data.source_lang`` -> ``data.target_lang``, never
the order of TFDS's supervised keys.

API (everything a trainer or evaluator needs):

  load_tokenizer(config, workdir) -> tokenizer.Tokenizer
      Loads ``data.tokenizer_path`` or ``<workdir>/tokenizer/spm.model``; on
      the first run trains it (``model.vocab_size`` pieces, ``data.
      tokenizer_type``, on at most ``data.tokenizer_max_chars`` characters of
      training text, both languages) and reuses it on restart.

  make_train_iterator(config, tokenizer, workdir, *, process_index=0,
                      process_count=1, row_multiple=1) -> TrainIterator
      Endless, shuffled by ``data.seed`` and epoch. Each ``next()`` is this
      process's part of the global batch, a dict of int32 arrays in the batch
      format below. The global budget ``data.batch_tokens`` (per side) is
      split evenly over processes; the row count is a multiple of
      ``row_multiple`` (pass the number of local devices).
        it.batch_shape  (rows, length) of every batch ("pack"); None for
                        "bucket", where it.batch_shapes lists the shapes
                        (every process gets the same shape at each step).
        it.get_state()  small JSON-serializable dict (this process's epoch and
                        position); it.set_state(state) resumes exactly.
                        Each process saves and restores its own state.
        it.epoch, it.padding_efficiency, it.num_pairs (this process's shard).
        it.close()      stops the background prefetch thread (``data.prefetch``
                        batches ahead); also a context manager.
      Each process packs a disjoint shard of the training pairs (every
      process_count-th pair); over an epoch the shards cover every kept pair
      once.

  eval_batches(config, tokenizer, workdir, split, *, batch_size) -> list[dict]
      The whole split once, in its original order, ``batch_size`` rows per
      batch, with "index" (original sentence number; -1 on the filler rows of
      the last batch). Nothing dropped or truncated; each batch's S and T are
      the next power of two (>= 8) above its longest sentence.

  load_split_text(config, split, *, workdir=None) -> (sources, references)
      Raw text of a split, in the order of ``eval_batches``.

  padding_efficiency(batch) -> float   real tokens / slots, both sides.

  tokenize_split(config, tokenizer, workdir, split) -> TokenizedSplit
      Token ids (no EOS) of a whole split, from the cache or built once.

Batch format (numpy int32; B rows, S source and T target length):
  "inputs" (B, S), "targets" (B, T): ids, each sentence ending in EOS_ID,
      PAD_ID (0) elsewhere. The model shifts targets right itself.
  "inputs_segmentation", "targets_segmentation": 1..n for the n pairs packed
      in a row (pair k has id k on both sides), 0 on padding.
  "inputs_position", "targets_position": 0, 1, ... restarting at each
      segment, 0 on padding.

Token ids of each split are cached under ``data.cache_dir`` (default
``<workdir>/data_cache``), keyed by dataset, split, direction and tokenizer,
so restarts never re-tokenize. Training pairs with an empty side, or longer
than ``data.max_length`` tokens (EOS included) on either side, are dropped and
counted in the log.
"""

import dataclasses
import gzip
import hashlib
import heapq
import itertools
import json
import os
import queue
import re
import threading
import time

import numpy as np
from absl import logging

from transformer import synthetic, tokens
from transformer import tokenizer as tokenizer_lib

SOURCES = ("tfds", "text", "synthetic")
BATCHINGS = ("pack", "bucket")
_CHUNK = 20_000  # Pairs per tokenization chunk.
# Row lengths of data.batching="bucket" (capped at data.max_length).
_BUCKETS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


# ----------------------------------------------------------------------------
# Raw parallel text.
# ----------------------------------------------------------------------------


def _check_config(config):
  d = config.data
  if d.source not in SOURCES:
    raise ValueError(f"Unknown data.source {d.source!r}; use one of {SOURCES}.")
  if d.batching not in BATCHINGS:
    raise ValueError(
        f"Unknown data.batching {d.batching!r}; use one of {BATCHINGS}.")
  if d.source_lang == d.target_lang:
    raise ValueError(
        f"data.source_lang and data.target_lang are both {d.source_lang!r}.")
  if d.max_length < 2:
    raise ValueError(f"data.max_length={d.max_length} must be at least 2 "
                     "(one token and EOS).")
  if d.source == "synthetic":
    for lang in (d.source_lang, d.target_lang):
      if lang not in synthetic.LANGS:
        raise ValueError(
            f"The synthetic corpus has languages {synthetic.LANGS}; "
            f"data.source_lang/target_lang {lang!r} is not one of them.")


def _cache_root(config, workdir):
  if config.data.cache_dir:
    return config.data.cache_dir
  if not workdir:
    raise ValueError("Set data.cache_dir or give a workdir for the token cache.")
  return os.path.join(workdir, "data_cache")


def _synthetic_dir(config, workdir):
  """Writes the generated corpus (once) and returns its folder."""
  d = config.data
  name = (f"synthetic-seed{d.synthetic_seed}-{d.synthetic_train_size}-"
          f"{d.synthetic_dev_size}-{d.synthetic_test_size}")
  directory = os.path.join(_cache_root(config, workdir), name)
  start = time.time()
  existed = os.path.isdir(directory)
  synthetic.write_corpus(directory, d.synthetic_train_size,
                         d.synthetic_dev_size, d.synthetic_test_size,
                         d.synthetic_seed)
  if not existed:
    logging.info("Generated the synthetic corpus in %s (%.1f s).", directory,
                 time.time() - start)
  return directory


def _text_dir(config, workdir):
  """The folder of {split}.{lang} files for "text" and "synthetic"."""
  if config.data.source == "synthetic":
    return _synthetic_dir(config, workdir)
  directory = config.data.dir
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


def read_lines(path):
  """UTF-8 lines of a plain or gzipped file, stripped, split on '\\n' only."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"Cannot read {path}: {e}") from e
  lines = raw.split(b"\n")
  if lines and not lines[-1]:
    lines.pop()  # The final newline ends the last line.
  out = []
  for number, line in enumerate(lines, start=1):
    try:
      out.append(line.decode("utf-8").strip())
    except UnicodeDecodeError as e:
      raise ValueError(
          f"{path} line {number} is not valid UTF-8 ({e.reason} at byte "
          f"{e.start} of the line); the data must be UTF-8 text.") from None
  return out


def _read_text_split(directory, split, source_lang, target_lang):
  source_path = _find_file(directory, split, source_lang)
  target_path = _find_file(directory, split, target_lang)
  sources = read_lines(source_path)
  targets = read_lines(target_path)
  if len(sources) != len(targets):
    raise ValueError(
        f"{source_path} has {len(sources)} lines but {target_path} has "
        f"{len(targets)}; line N of one must be the translation of line N of "
        "the other.")
  if not sources:
    raise ValueError(f"{source_path} and {target_path} are empty: split "
                     f"{split!r} has no sentence pairs.")
  return sources, targets


def _tfds_builder(config):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = config.data.tfds_name
  try:
    return tfds.builder(name, data_dir=config.data.tfds_data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown TFDS dataset data.tfds_name={name!r}.") from e


def _prepare_command(config):
  data_dir = config.data.tfds_data_dir
  arg = f", data_dir={data_dir!r}" if data_dir else ""
  return ("python -c \"import tensorflow_datasets as tfds; "
          f"tfds.builder('{config.data.tfds_name}'{arg}).download_and_prepare()\"")


def _iter_tfds_split(config, split):
  """Yields (sources, targets) chunks of a TFDS split, in stored order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  d = config.data
  builder = _tfds_builder(config)
  languages = getattr(builder.info.features, "languages", None) or list(
      builder.info.features.keys())
  for lang in (d.source_lang, d.target_lang):
    if lang not in languages:
      raise ValueError(
          f"TFDS dataset {d.tfds_name} has languages {list(languages)}; "
          f"data.source_lang/target_lang {lang!r} is not one of them.")
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=False)
  except AssertionError as e:  # TFDS's "could not find data".
    if not d.tfds_download:
      raise FileNotFoundError(
          f"TFDS dataset {d.tfds_name} is not prepared in "
          f"{builder.data_dir_root}. Prepare it once (needs network):\n  "
          f"{_prepare_command(config)}\nor set --config.data.tfds_download="
          "True, or point data.tfds_data_dir / $TFDS_DATA_DIR at a prepared "
          "copy.") from e
    try:
      builder.download_and_prepare()
    except Exception as e2:  # pylint: disable=broad-except
      raise RuntimeError(
          f"Could not download and prepare TFDS dataset {d.tfds_name} "
          f"(network needed): {e2}. Prepare it where there is network:\n  "
          f"{_prepare_command(config)}") from e2
    dataset = builder.as_dataset(split=split, shuffle_files=False)
  except (KeyError, ValueError) as e:
    raise ValueError(
        f"TFDS dataset {d.tfds_name} has no split {split!r} (it has "
        f"{list(builder.info.splits.keys())}); check data.*_split.") from e
  sources, targets = [], []
  for example in tfds.as_numpy(dataset):
    sources.append(example[d.source_lang].decode("utf-8").strip())
    targets.append(example[d.target_lang].decode("utf-8").strip())
    if len(sources) == _CHUNK:
      yield sources, targets
      sources, targets = [], []
  if sources:
    yield sources, targets


def _iter_split(config, split, workdir):
  """Yields (sources, targets) chunks of a split, in its original order."""
  _check_config(config)
  if config.data.source == "tfds":
    yield from _iter_tfds_split(config, split)
    return
  directory = _text_dir(config, workdir)
  sources, targets = _read_text_split(directory, split, config.data.source_lang,
                                      config.data.target_lang)
  for start in range(0, len(sources), _CHUNK):
    yield sources[start:start + _CHUNK], targets[start:start + _CHUNK]


def load_split_text(config, split, *, workdir=None):
  """Raw (sources, references) of a split, in the order of eval_batches."""
  _check_config(config)
  if config.data.source == "synthetic" and not (workdir or
                                                config.data.cache_dir):
    d = config.data
    corpus = synthetic.generate(d.synthetic_train_size, d.synthetic_dev_size,
                                d.synthetic_test_size, d.synthetic_seed)
    if split not in corpus:
      raise ValueError(f"The synthetic corpus has splits {synthetic.SPLITS}; "
                       f"got {split!r}.")
    by_lang = dict(zip(synthetic.LANGS, corpus[split], strict=True))
    return list(by_lang[d.source_lang]), list(by_lang[d.target_lang])
  sources, targets = [], []
  for chunk_sources, chunk_targets in _iter_split(config, split, workdir):
    sources.extend(chunk_sources)
    targets.extend(chunk_targets)
  if not sources:
    raise ValueError(f"Split {split!r} of {_dataset_name(config)} is empty.")
  return sources, targets


def _dataset_name(config):
  d = config.data
  if d.source == "tfds":
    return d.tfds_name
  if d.source == "synthetic":
    return "the synthetic corpus"
  return d.dir


# ----------------------------------------------------------------------------
# Tokenizer.
# ----------------------------------------------------------------------------


def _tokenizer_sample(config, workdir):
  """A uniform, seeded sample of training sentences, both languages.

  Keeps the pairs of lowest random priority whose characters fit in
  data.tokenizer_max_chars, in one streaming pass (bottom-k sampling).
  """
  budget = config.data.tokenizer_max_chars
  heap = []  # (-priority, index, source, target); the max priority on top.
  total = 0
  index = 0
  for chunk, (sources, targets) in enumerate(
      _iter_split(config, config.data.train_split, workdir)):
    priorities = np.random.default_rng([config.data.seed, chunk]).random(
        len(sources))
    for priority, source, target in zip(priorities.tolist(), sources, targets, strict=True):
      size = len(source) + len(target)
      heapq.heappush(heap, (-priority, index, source, target))
      total += size
      index += 1
      while total > budget and heap:
        _, _, s, t = heapq.heappop(heap)
        total -= len(s) + len(t)
  heap.sort(key=lambda item: item[1])  # Original order, for determinism.
  sentences = []
  for _, _, source, target in heap:
    sentences.extend((source, target))
  logging.info("Tokenizer sample: %d of %d training pairs (%d characters).",
               len(heap), index, total)
  return sentences


def load_tokenizer(config, workdir):
  """The shared SentencePiece tokenizer: given, reused, or trained once.

  Training is deterministic (seeded sample, SentencePiece's own training), so
  the processes of a multi-host run that each train it get the same
  vocabulary, and on a shared workdir they write the same file.
  """
  _check_config(config)
  vocab_size = config.model.vocab_size
  if config.data.tokenizer_path:
    tok = tokenizer_lib.Tokenizer(config.data.tokenizer_path)
    if tok.vocab_size != vocab_size:
      raise ValueError(
          f"data.tokenizer_path={config.data.tokenizer_path} has "
          f"{tok.vocab_size} pieces but model.vocab_size={vocab_size}; set "
          f"--config.model.vocab_size={tok.vocab_size}.")
    return tok
  if not workdir:
    raise ValueError("load_tokenizer needs a workdir (or data.tokenizer_path).")
  path = os.path.join(workdir, "tokenizer", "spm.model")
  if os.path.isfile(path):
    tok = tokenizer_lib.Tokenizer(path)
    if tok.vocab_size != vocab_size:
      raise ValueError(
          f"The workdir's tokenizer {path} has {tok.vocab_size} pieces but "
          f"model.vocab_size={vocab_size}. Use a new workdir, or delete "
          f"{os.path.dirname(path)} to train a new vocabulary.")
    logging.info("Reusing tokenizer %s (%d pieces).", path, tok.vocab_size)
    return tok
  start = time.time()
  sentences = _tokenizer_sample(config, workdir)
  tok = tokenizer_lib.train_tokenizer(
      sentences, path, vocab_size=vocab_size,
      model_type=config.data.tokenizer_type,
      character_coverage=config.data.tokenizer_character_coverage)
  logging.info("Trained a %d-piece %s tokenizer on %d sentences in %.1f s: %s",
               vocab_size, config.data.tokenizer_type, len(sentences),
               time.time() - start, path)
  return tok


# ----------------------------------------------------------------------------
# Token-id cache.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class TokenizedSplit:
  """Token ids of one split, without EOS: pair i is
  ``source_ids[source_offsets[i]:source_offsets[i + 1]]`` and likewise for
  the target."""

  source_ids: np.ndarray
  source_offsets: np.ndarray
  target_ids: np.ndarray
  target_offsets: np.ndarray

  def __len__(self):
    return len(self.source_offsets) - 1

  @property
  def source_lengths(self):
    return np.diff(self.source_offsets)

  @property
  def target_lengths(self):
    return np.diff(self.target_offsets)

  def source(self, i):
    return self.source_ids[self.source_offsets[i]:self.source_offsets[i + 1]]

  def target(self, i):
    return self.target_ids[self.target_offsets[i]:self.target_offsets[i + 1]]


_CACHE_FILES = ("source_ids", "source_offsets", "target_ids", "target_offsets")


def _dataset_key(config, workdir):
  d = config.data
  if d.source == "tfds":
    return "tfds-" + re.sub(r"[^A-Za-z0-9._-]", "_", d.tfds_name)
  directory = os.path.abspath(_text_dir(config, workdir))
  # The folder's path and its files' sizes and times: edited data gets a new
  # cache.
  stamp = [directory]
  for name in sorted(os.listdir(directory)):
    stat = os.stat(os.path.join(directory, name))
    stamp.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
  digest = hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:10]
  base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(directory))
  return f"{d.source}-{base}-{digest}"


def tokenize_split(config, tokenizer, workdir, split):
  """Token ids of a whole split (nothing filtered), from the cache or built."""
  _check_config(config)
  d = config.data
  path = os.path.join(
      _cache_root(config, workdir), _dataset_key(config, workdir),
      f"{split}.{d.source_lang}-{d.target_lang}.{tokenizer.fingerprint}")
  if os.path.isfile(os.path.join(path, "meta.json")):
    arrays = {name: np.load(os.path.join(path, name + ".npy"), mmap_mode="r")
              for name in _CACHE_FILES}
    return TokenizedSplit(**arrays)
  start = time.time()
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
  parts = {name: [] for name in _CACHE_FILES}
  num_pairs = 0
  for sources, targets in _iter_split(config, split, workdir):
    for side, texts in (("source", sources), ("target", targets)):
      ids = tokenizer.encode_batch(texts)
      lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
      flat = np.fromiter(itertools.chain.from_iterable(ids), dtype,
                         int(lengths.sum()))
      parts[side + "_ids"].append(flat)
      parts[side + "_offsets"].append(lengths)
    num_pairs += len(sources)
  if not num_pairs:
    raise ValueError(f"Split {split!r} of {_dataset_name(config)} is empty.")
  arrays = {}
  for side in ("source", "target"):
    arrays[side + "_ids"] = np.concatenate(parts[side + "_ids"])
    lengths = np.concatenate(parts[side + "_offsets"])
    arrays[side + "_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
  seconds = time.time() - start
  num_tokens = len(arrays["source_ids"]) + len(arrays["target_ids"])
  logging.info(
      "Tokenized %s split %r (%s->%s): %d pairs, %d tokens in %.1f s "
      "(%.0f pairs/s, %.0f tokens/s, reading included).", _dataset_name(config),
      split, d.source_lang, d.target_lang, num_pairs, num_tokens, seconds,
      num_pairs / max(seconds, 1e-9), num_tokens / max(seconds, 1e-9))
  tmp = f"{path}.tmp{os.getpid()}-{threading.get_ident()}"
  os.makedirs(tmp, exist_ok=True)
  for name, array in arrays.items():
    np.save(os.path.join(tmp, name + ".npy"), array)
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump({"dataset": _dataset_name(config), "split": split,
               "direction": f"{d.source_lang}-{d.target_lang}",
               "tokenizer": tokenizer.path, "num_pairs": num_pairs,
               "num_tokens": num_tokens}, f)
  try:
    os.rename(tmp, path)
  except OSError:  # Another process wrote the same cache first.
    for name in os.listdir(tmp):
      os.remove(os.path.join(tmp, name))
    os.rmdir(tmp)
  return TokenizedSplit(**arrays)


# ----------------------------------------------------------------------------
# Batches.
# ----------------------------------------------------------------------------

FEATURES = ("inputs", "targets", "inputs_segmentation", "targets_segmentation",
            "inputs_position", "targets_position")


def _empty_batch(rows, source_length, target_length):
  shapes = {"inputs": source_length, "targets": target_length}
  return {name: np.zeros((rows, shapes[name.split("_")[0]]), np.int32)
          for name in FEATURES}


def _fill(batch, side, row, start, segment, ids):
  """Writes ``ids`` + EOS as segment ``segment`` of ``row`` at ``start``."""
  n = len(ids) + 1
  batch[side][row, start:start + n - 1] = ids
  batch[side][row, start + n - 1] = tokens.EOS_ID
  batch[side + "_segmentation"][row, start:start + n] = segment
  batch[side + "_position"][row, start:start + n] = np.arange(n)


def padding_efficiency(batch):
  """Real tokens / slots over both sides of a batch."""
  real = np.count_nonzero(batch["inputs_segmentation"]) + np.count_nonzero(
      batch["targets_segmentation"])
  return real / (batch["inputs"].size + batch["targets"].size)


def _bucket_length(n):
  for length in _BUCKETS:
    if n <= length:
      return length
  return int(2 ** np.ceil(np.log2(n)))


def _eval_length(n):
  """Power-of-two lengths (>= 8) for evaluation: few shapes to compile."""
  return max(8, int(2 ** np.ceil(np.log2(max(n, 1)))))


def eval_batches(config, tokenizer, workdir, split, *, batch_size):
  """Every sentence of ``split`` once, in order, in padded batches."""
  if batch_size < 1:
    raise ValueError(f"eval batch_size must be positive, got {batch_size}.")
  data = tokenize_split(config, tokenizer, workdir, split)
  source_lengths = data.source_lengths + 1  # EOS.
  target_lengths = data.target_lengths + 1
  batches = []
  for start in range(0, len(data), batch_size):
    indices = np.arange(start, min(start + batch_size, len(data)))
    batch = _empty_batch(batch_size,
                         _eval_length(source_lengths[indices].max()),
                         _eval_length(target_lengths[indices].max()))
    batch["index"] = np.full((batch_size,), -1, np.int32)
    for row, i in enumerate(indices):
      _fill(batch, "inputs", row, 0, 1, data.source(i))
      _fill(batch, "targets", row, 0, 1, data.target(i))
      batch["index"][row] = i
    batches.append(batch)
  return batches


# ----------------------------------------------------------------------------
# Training iterator.
# ----------------------------------------------------------------------------


class _Batcher:
  """Builds one process's batches as a pure function of the iterator state."""

  def __init__(self, data, pair_indices, *, batching, seed, process_index,
               shapes, bucket_weights=None):
    self.data = data
    self.pairs = pair_indices  # This process's shard, in corpus order.
    self.source_lengths = data.source_lengths[pair_indices].astype(np.int64) + 1
    self.target_lengths = data.target_lengths[pair_indices].astype(np.int64) + 1
    self.batching = batching
    self.seed = seed
    self.process_index = process_index
    self.shapes = list(shapes)  # (rows, length) per bucket; one for "pack".
    if batching == "bucket":
      longest = np.maximum(self.source_lengths, self.target_lengths)
      bucket_of = np.searchsorted([length for _, length in self.shapes],
                                  longest)
      self.bucket_members = [np.flatnonzero(bucket_of == b)
                             for b in range(len(self.shapes))]
      weights = np.asarray(bucket_weights, np.float64)
      self.bucket_probabilities = weights / weights.sum()
    self._orders = {}

  def order(self, epoch, bucket=-1):
    """The shuffled shard (or bucket of it) of an epoch: seed, epoch, process."""
    key = (epoch, bucket)
    if key not in self._orders:
      if len(self._orders) > 2 * len(self.shapes) + 2:
        self._orders.clear()
      rng = np.random.default_rng(
          [self.seed, epoch, self.process_index, bucket + 1])
      members = (np.arange(len(self.pairs)) if bucket < 0 else
                 self.bucket_members[bucket])
      self._orders[key] = members[rng.permutation(len(members))]
    return self._orders[key]

  def next_batch(self, state):
    """Returns (batch, state after it)."""
    state = json.loads(json.dumps(state))
    if self.batching == "pack":
      return self._next_packed(state)
    return self._next_bucketed(state)

  def _next_packed(self, state):
    """First-fit packing of the next pairs of the epoch's shuffled order.

    A batch is a contiguous run of the order: each pair goes to the first row
    with room on both sides, and the batch closes at the first pair that fits
    in no row, or at the end of the epoch (whose last batch may be part-full).
    """
    order = self.order(state["epoch"])
    (rows, length), = self.shapes
    free_source = np.full(rows, length, np.int64)
    free_target = np.full(rows, length, np.int64)
    segments = np.zeros(rows, np.int64)
    batch = _empty_batch(rows, length, length)
    position = state["position"]
    while position < len(order):
      k = order[position]
      fits = np.flatnonzero((free_source >= self.source_lengths[k]) &
                            (free_target >= self.target_lengths[k]))
      if not len(fits):
        break
      row = fits[0]
      segments[row] += 1
      pair = self.pairs[k]
      _fill(batch, "inputs", row, length - free_source[row], segments[row],
            self.data.source(pair))
      _fill(batch, "targets", row, length - free_target[row], segments[row],
            self.data.target(pair))
      free_source[row] -= self.source_lengths[k]
      free_target[row] -= self.target_lengths[k]
      position += 1
    if position == len(order):
      state["epoch"] += 1
      position = 0
    state["position"] = position
    return batch, state

  def _next_bucketed(self, state):
    """One length bucket per step, drawn from a schedule shared by all
    processes (so that their shapes agree), filled from this process's
    shuffled pairs of that bucket. Each bucket has its own epochs."""
    step = state["step"]
    bucket = int(np.random.default_rng([self.seed, step, 1 << 20]).choice(
        len(self.shapes), p=self.bucket_probabilities))
    rows, length = self.shapes[bucket]
    batch = _empty_batch(rows, length, length)
    epoch, position = state["buckets"][bucket]
    for row in range(rows):
      order = self.order(epoch, bucket)
      if position >= len(order):
        epoch, position = epoch + 1, 0
        order = self.order(epoch, bucket)
      pair = self.pairs[order[position]]
      _fill(batch, "inputs", row, 0, 1, self.data.source(pair))
      _fill(batch, "targets", row, 0, 1, self.data.target(pair))
      position += 1
    state["buckets"][bucket] = [epoch, position]
    state["step"] = step + 1
    return batch, state


def _produce(batcher, state, out, stop):
  """The prefetch thread: batches ahead into ``out`` until ``stop``."""
  try:
    while not stop.is_set():
      item = batcher.next_batch(state)
      state = item[1]
      while not stop.is_set():
        try:
          out.put(item, timeout=0.1)
          break
        except queue.Full:
          pass
  except Exception as e:  # pylint: disable=broad-except
    out.put((e, None))  # Raised in the consumer.


class TrainIterator:
  """Endless training batches of one process; see the module docstring.

  The state it reports is that of the batches already returned, not of those
  prefetched, so a checkpoint of ``get_state()`` resumes exactly.
  """

  def __init__(self, batcher, *, process_count, prefetch):
    self._batcher = batcher
    self._process_count = process_count
    self._prefetch = prefetch
    shapes = batcher.shapes
    self.batch_shape = shapes[0] if batcher.batching == "pack" else None
    self.batch_shapes = list(shapes)
    self.num_pairs = len(batcher.pairs)  # This process's shard.
    self._state = self._initial_state()
    self._real_tokens = self._slots = self._batches = 0
    self._thread = self._queue = self._stop = None
    self._start()

  # -- State ------------------------------------------------------------------

  def _initial_state(self):
    b = self._batcher
    state = {"batching": b.batching, "seed": b.seed,
             "process_index": b.process_index,
             "process_count": self._process_count, "num_pairs": len(b.pairs)}
    if b.batching == "pack":
      state.update(epoch=0, position=0)
    else:
      state.update(step=0, buckets=[[0, 0] for _ in b.shapes])
    return state

  def get_state(self):
    """Where the next batch starts (JSON-serializable, this process only)."""
    return json.loads(json.dumps(self._state))

  def set_state(self, state):
    """Resumes so that the next batches are those that followed ``state``."""
    expected = self._initial_state()
    for key in ("batching", "seed", "process_index", "process_count",
                "num_pairs"):
      if state.get(key) != expected[key]:
        raise ValueError(
            f"Cannot restore the data iterator: its saved {key}="
            f"{state.get(key)!r} differs from this run's {expected[key]!r} "
            "(the data, data.seed, data.batching, data.max_length or the "
            "number of processes changed since the checkpoint).")
    if len(state.get("buckets", ())) != len(expected.get("buckets", ())):
      raise ValueError(
          "Cannot restore the data iterator: it was saved with "
          f"{len(state['buckets'])} length buckets, this run has "
          f"{len(expected['buckets'])} (data.max_length or the data changed).")
    self._stop_thread()
    self._state = json.loads(json.dumps(state))
    self._start()

  @property
  def epoch(self):
    """Epochs completed over this process's shard (the least-advanced bucket
    for "bucket")."""
    if self._batcher.batching == "pack":
      return self._state["epoch"]
    return min(epoch for epoch, _ in self._state["buckets"])

  @property
  def padding_efficiency(self):
    """Real tokens / slots over the batches returned so far."""
    return self._real_tokens / max(self._slots, 1)

  # -- Prefetch ---------------------------------------------------------------

  def _start(self):
    if self._prefetch <= 0:
      return
    self._queue = queue.Queue(maxsize=self._prefetch)
    self._stop = threading.Event()
    # The thread holds the batcher, not the iterator, so that an iterator
    # dropped without close() is collected and its thread stopped.
    self._thread = threading.Thread(
        target=_produce, args=(self._batcher, self._state, self._queue,
                               self._stop),
        daemon=True, name="TrainIteratorPrefetch")
    self._thread.start()

  def _stop_thread(self):
    if self._thread is None:
      return
    self._stop.set()
    while True:  # Unblock the producer.
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join()
    self._thread = None

  def close(self):
    """Stops the prefetch thread."""
    self._stop_thread()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  # -- Iteration ---------------------------------------------------------------

  def __iter__(self):
    return self

  def __next__(self):
    if self._prefetch <= 0:
      batch, state = self._batcher.next_batch(self._state)
    else:
      if self._thread is None:
        self._start()
      batch, state = self._queue.get()
      if isinstance(batch, Exception):
        self._thread.join()
        self._thread = None
        raise batch
    previous_epoch = self.epoch
    self._state = state
    self._batches += 1
    self._real_tokens += np.count_nonzero(
        batch["inputs_segmentation"]) + np.count_nonzero(
            batch["targets_segmentation"])
    self._slots += batch["inputs"].size + batch["targets"].size
    if self._batches == 100 or self.epoch != previous_epoch:
      logging.info(
          "Train data (process %d): %d batches, %d epochs done, padding "
          "efficiency %.1f%% (real tokens / slots).",
          self._batcher.process_index, self._batches, self.epoch,
          100 * self.padding_efficiency)
    return batch


def _rows_for(budget, length, row_multiple, what):
  rows = budget // length // row_multiple * row_multiple
  if rows < 1:
    raise ValueError(
        f"data.batch_tokens gives {budget} tokens per process, too few for "
        f"{row_multiple} row(s) of {length} tokens ({what}); raise "
        "data.batch_tokens or lower data.max_length.")
  return rows


def make_train_iterator(config, tokenizer, workdir, *, process_index=0,
                        process_count=1, row_multiple=1):
  """This process's endless training batches; see the module docstring."""
  _check_config(config)
  d = config.data
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"[0, {process_count}).")
  data = tokenize_split(config, tokenizer, workdir, d.train_split)
  source_lengths = data.source_lengths
  target_lengths = data.target_lengths
  empty = (source_lengths == 0) | (target_lengths == 0)
  too_long = ~empty & ((source_lengths + 1 > d.max_length) |
                       (target_lengths + 1 > d.max_length))
  kept = np.flatnonzero(~empty & ~too_long)
  logging.info(
      "Training pairs of %s: %d kept, %d dropped as empty, %d dropped as "
      "longer than data.max_length=%d tokens.", _dataset_name(config),
      len(kept), int(empty.sum()), int(too_long.sum()), d.max_length)
  if len(kept) < process_count:
    raise ValueError(
        f"Only {len(kept)} of {len(data)} training pairs of "
        f"{_dataset_name(config)} remain after dropping {int(empty.sum())} "
        f"empty and {int(too_long.sum())} longer than data.max_length="
        f"{d.max_length}; need at least one per process ({process_count}).")
  shard = kept[process_index::process_count]
  budget = d.batch_tokens // process_count
  if d.batching == "pack":
    rows = _rows_for(budget, d.max_length, row_multiple, "data.max_length")
    batcher = _Batcher(data, shard, batching="pack", seed=d.seed,
                       process_index=process_index,
                       shapes=[(rows, d.max_length)])
    return TrainIterator(batcher, process_count=process_count,
                         prefetch=d.prefetch)
  # "bucket": one set of length buckets for all processes, each weighted by
  # its share of the global batches. A bucket that some process's shard lacks
  # is merged into a neighbour, so that every process can fill every shape.
  longest = np.maximum(source_lengths[kept], target_lengths[kept]) + 1
  lengths = sorted({min(_bucket_length(n), d.max_length) for n in longest})
  while True:
    bucket_of = np.searchsorted(lengths, longest)
    missing = [b for b in range(len(lengths)) if not all(
        np.any(bucket_of[p::process_count] == b) for p in range(process_count))]
    if not missing:
      break
    b = missing[0]
    del lengths[b if b < len(lengths) - 1 else b - 1]
  shapes, weights = [], []
  for b, length in enumerate(lengths):
    rows = _rows_for(budget, length, row_multiple, f"bucket of length {length}")
    shapes.append((rows, length))
    weights.append(np.count_nonzero(bucket_of == b) / rows)
  batcher = _Batcher(data, shard, batching="bucket", seed=d.seed,
                     process_index=process_index, shapes=shapes,
                     bucket_weights=weights)
  return TrainIterator(batcher, process_count=process_count,
                       prefetch=d.prefetch)
