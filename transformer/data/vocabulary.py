"""The shared SentencePiece vocabulary: given, reused, or trained once on a
uniform sample of the whole training split."""

import os
import time

import numpy as np
from absl import logging

from transformer import tokenizer as tokenizer_lib
from transformer.data import sources as sources_lib


def tokenizer_sample(data_config, workdir):
  """A uniform, seeded sample of training pairs, as sentences of both sides.

  One streaming pass over the whole split keeps the ``data.tokenizer_sample_
  sentences // 2`` pairs of lowest random priority (bottom-k sampling: a
  uniform sample without replacement, decided by ``data.seed`` alone), and
  returns them in corpus order. A split smaller than that is used whole.
  """
  capacity = max(1, data_config.tokenizer_sample_sentences // 2)
  kept_priorities = np.empty(0)
  kept_pairs = []  # (index, source, target), aligned with kept_priorities.
  threshold = np.inf  # The capacity-th smallest priority so far.
  index = 0
  for chunk, (sources, targets) in enumerate(
      sources_lib.iter_split(data_config, data_config.train_split, workdir)):
    priorities = np.random.default_rng([data_config.seed, chunk]).random(
        len(sources))
    candidates = np.flatnonzero(priorities < threshold)
    kept_priorities = np.concatenate([kept_priorities, priorities[candidates]])
    kept_pairs.extend((index + i, sources[i], targets[i])
                      for i in candidates.tolist())
    index += len(sources)
    if len(kept_pairs) >= 2 * capacity:  # Compact to the best `capacity`.
      best = np.argpartition(kept_priorities, capacity - 1)[:capacity]
      kept_priorities = kept_priorities[best]
      kept_pairs = [kept_pairs[i] for i in best.tolist()]
      threshold = kept_priorities.max()
  if len(kept_pairs) > capacity:
    best = np.argpartition(kept_priorities, capacity - 1)[:capacity]
    kept_pairs = [kept_pairs[i] for i in best.tolist()]
  kept_pairs.sort()  # Corpus order: the sample does not depend on chunking.
  sentences = []
  for _, source, target in kept_pairs:
    sentences.extend((source, target))
  logging.info("Tokenizer sample: %d of %d training pairs (%d characters).",
               len(kept_pairs), index, sum(map(len, sentences)))
  return sentences


def load_tokenizer(data_config, workdir, *, vocab_size):
  """The shared SentencePiece tokenizer: given, reused, or trained once.

  Training is deterministic (seeded sample, SentencePiece's own training), so
  the processes of a multi-host run that each train it get the same
  vocabulary, and on a shared workdir they write the same file.
  ``vocab_size`` is ``model.vocab_size``: the pieces a trained
  tokenizer gets, and those a given or reused one must have.
  """
  sources_lib.check_config(data_config)
  if data_config.tokenizer_path:
    tok = tokenizer_lib.Tokenizer(data_config.tokenizer_path)
    if tok.vocab_size != vocab_size:
      raise ValueError(
          f"data.tokenizer_path={data_config.tokenizer_path} has "
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
  if data_config.tokenizer_sample_sentences < 2:
    raise ValueError(
        "data.tokenizer_sample_sentences="
        f"{data_config.tokenizer_sample_sentences} must be at least 2 (one "
        "pair).")
  start = time.time()
  sentences = tokenizer_sample(data_config, workdir)
  sampled = time.time()
  tok = tokenizer_lib.train_tokenizer(
      sentences, path, vocab_size=vocab_size,
      model_type=data_config.tokenizer_type,
      character_coverage=data_config.tokenizer_character_coverage)
  logging.info(
      "Trained a %d-piece %s tokenizer on %d sentences in %.1f s (sampling "
      "%.1f s, SentencePiece %.1f s): %s", vocab_size,
      data_config.tokenizer_type, len(sentences), time.time() - start,
      sampled - start, time.time() - sampled, path)
  return tok
