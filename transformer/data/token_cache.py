"""The token-id cache: each split tokenized once, streamed to disk, mmapped.

A split's cache is a folder ``<cache_root>/<dataset key>/<split>.<src>-<tgt>.
<tokenizer fingerprint>.v2`` of four flat binary arrays and ``meta.json``:

  source_ids.bin, target_ids.bin          every sentence's ids, no EOS,
                                          concatenated (uint16, or int32 for
                                          vocabularies over 65536)
  source_offsets.bin, target_offsets.bin  int64, num_pairs + 1: pair i is
                                          ids[offsets[i]:offsets[i + 1]]

It is built in one pass over the text, a chunk of pairs at a time, encoded
by one worker process per usable core (encode_worker.py), so memory stays
bounded by a few chunks whatever the corpus size, and written to a temporary
folder that is renamed into place only once complete: a killed build leaves
at most a ``.tmp-<host>-<pid>`` folder, which no run trusts and the next
build on that host removes.
"""

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
import time

import numpy as np
from absl import logging

from transformer import atomic
from transformer.data import encode_worker, packing
from transformer.data import sources as sources_lib

_FORMAT = "v2"
_ARRAYS = ("source_ids", "source_offsets", "target_ids", "target_offsets")


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


def _dataset_key(data_config, workdir):
  if data_config.source == "tfds":
    return "tfds-" + re.sub(r"[^A-Za-z0-9._-]", "_", data_config.tfds_name)
  directory = os.path.abspath(sources_lib.text_dir(data_config, workdir))
  # The folder's path and its files' sizes and times: edited data gets a new
  # cache.
  stamp = [directory]
  for name in sorted(os.listdir(directory)):
    stat = os.stat(os.path.join(directory, name))
    stamp.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
  digest = hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:10]
  base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(directory))
  return f"{data_config.source}-{base}-{digest}"


def _load(path):
  """The cached split at ``path``, or None if it is absent or incomplete."""
  try:
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
      meta = json.load(f)
    dtype = np.dtype(meta["dtype"])
    sizes = {"source_ids": meta["source_tokens"],
             "target_ids": meta["target_tokens"],
             "source_offsets": meta["num_pairs"] + 1,
             "target_offsets": meta["num_pairs"] + 1}
    arrays = {}
    for name, size in sizes.items():
      array_dtype = dtype if name.endswith("_ids") else np.dtype(np.int64)
      file = os.path.join(path, name + ".bin")
      if os.path.getsize(file) != size * array_dtype.itemsize:
        raise ValueError(f"{file} has {os.path.getsize(file)} bytes, "
                         f"meta.json says {size * array_dtype.itemsize}")
      arrays[name] = (np.memmap(file, array_dtype, mode="r", shape=(size,))
                      if size else np.zeros(0, array_dtype))
  except FileNotFoundError:
    if os.path.exists(path):
      logging.warning("Token cache %s is incomplete; rebuilding it.", path)
      shutil.rmtree(path, ignore_errors=True)
    return None
  except (ValueError, KeyError, TypeError, OSError) as e:
    logging.warning("Token cache %s is damaged (%s); rebuilding it.", path, e)
    shutil.rmtree(path, ignore_errors=True)
    return None
  return TokenizedSplit(**arrays)


def _remove_stale_builds(path):
  """Removes this host's temporary folders of ``path`` whose process died."""
  parent = os.path.dirname(path)
  prefix = os.path.basename(atomic.temporary_prefix(path))
  for entry in os.listdir(parent):
    if not entry.startswith(prefix):
      continue
    try:
      os.kill(int(entry[len(prefix):]), 0)
    except ProcessLookupError:
      logging.info("Removing %s, left by a killed tokenization.", entry)
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    except (ValueError, PermissionError):
      pass


def tokenize_split(data_config, tokenizer, workdir, split):
  """Token ids of a whole split (nothing filtered), from the cache or built."""
  sources_lib.check_config(data_config)
  path = os.path.join(
      sources_lib.cache_root(data_config, workdir), _dataset_key(data_config, workdir),
      f"{split}.{data_config.source_lang}-{data_config.target_lang}.{tokenizer.fingerprint}."
      f"{_FORMAT}")
  cached = _load(path)
  if cached is not None:
    return cached
  os.makedirs(os.path.dirname(path), exist_ok=True)
  _remove_stale_builds(path)
  with atomic.folder(path) as tmp:
    meta = _build(data_config, tokenizer, workdir, split, tmp)
  cached = _load(path)
  if cached is None:
    raise RuntimeError(f"The token cache {path} could not be written.")
  logging.info(
      "Tokenized %s split %r (%s->%s): %d pairs, %d tokens in %.1f s "
      "(%.0f pairs/s, reading included).", sources_lib.dataset_name(data_config),
      split, data_config.source_lang, data_config.target_lang, meta["num_pairs"],
      meta["source_tokens"] + meta["target_tokens"], meta["seconds"],
      meta["num_pairs"] / max(meta["seconds"], 1e-9))
  return cached


def _encoded_chunks(tokenizer, dtype, chunks):
  """``((ids, lengths) of the sources, (ids, lengths) of the targets)`` of each
  chunk, in order: in worker processes, one per usable core, or here for a
  split of one chunk (evaluation sets, small corpora), which would not repay
  starting them."""
  chunks = iter(chunks)
  first = list(itertools.islice(chunks, 2))
  if len(first) < 2:
    for sides in first:
      yield tuple(encode_worker.flatten(tokenizer.encode_batch(texts), dtype) for texts in sides)
    return
  with encode_worker.Pool(tokenizer, dtype) as pool:
    # Each side of each chunk is one job, to keep every worker busy to the end.
    encoded = pool.imap(itertools.chain.from_iterable(itertools.chain(first, chunks)))
    yield from zip(encoded, encoded, strict=True)  # (source, target) of each chunk.


def _build(data_config, tokenizer, workdir, split, directory):
  """Streams the split's token ids into ``directory``; returns the meta."""
  start = time.time()
  dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32)
  files = {name: open(os.path.join(directory, name + ".bin"), "wb")  # pylint: disable=consider-using-with
           for name in _ARRAYS}
  totals = {"source": 0, "target": 0}
  num_pairs = 0
  try:
    for side in totals:
      np.zeros(1, np.int64).tofile(files[side + "_offsets"])
    chunks = _encoded_chunks(tokenizer, dtype,
                             sources_lib.iter_split(data_config, split, workdir))
    with contextlib.closing(chunks):  # Ends the workers if writing fails.
      for encoded in chunks:
        for side, (ids, lengths) in zip(totals, encoded, strict=True):
          ids.tofile(files[side + "_ids"])
          (totals[side] + np.cumsum(lengths)).tofile(files[side + "_offsets"])
          totals[side] += len(ids)
        num_pairs += len(encoded[0][1])
  finally:
    for f in files.values():
      f.close()
  if not num_pairs:
    raise ValueError(
        f"Split {split!r} of {sources_lib.dataset_name(data_config)} is empty.")
  meta = {"dataset": sources_lib.dataset_name(data_config), "split": split,
          "direction": f"{data_config.source_lang}-{data_config.target_lang}",
          "tokenizer": tokenizer.path, "dtype": dtype.name,
          "num_pairs": num_pairs, "source_tokens": totals["source"],
          "target_tokens": totals["target"],
          "seconds": round(time.time() - start, 3)}
  with open(os.path.join(directory, "meta.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f)
  return meta


def eval_batches(data_config, tokenizer, workdir, split, *, batch_size):
  """Every sentence of ``split`` once, in order, in padded batches of
  ``batch_size`` rows (``packing.one_per_row_batches``): evaluation's input."""
  if batch_size < 1:
    raise ValueError(f"eval batch_size must be positive, got {batch_size}.")
  return packing.one_per_row_batches(
      tokenize_split(data_config, tokenizer, workdir, split), batch_size)
