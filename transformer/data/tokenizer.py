"""Shared source/target SentencePiece vocabulary (§5.1).

The paper encodes both languages with one byte-pair vocabulary (37000 tokens
for EN-DE, 32000 word pieces for EN-FR). We train a SentencePiece model, BPE by
default or unigram by config, on a bounded sample of the training text of both
languages, with the project's special ids (transformer/tokens.py):

  PAD_ID = 0  padding, never a real token
  EOS_ID = 1  appended to every sentence by the data pipeline (not by encode)
  UNK_ID = 2  characters outside the vocabulary
  BOS_ID = 3  decoder start token, inserted by the model's shift-right

Text is not normalized (SentencePiece's "identity" rule, every character of
the sample kept), so ``detokenize(encode(text)) == text`` for any text made of
characters seen in training, up to runs of whitespace, which are collapsed.
"""

import hashlib
import os
import re
import tempfile
import time

import numpy as np
import sentencepiece as spm
from absl import logging

from transformer import choices, tokens
from transformer.data import sources as sources_lib


class Tokenizer:
  """A SentencePiece model with the project's special ids."""

  def __init__(self, model_path):
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
      raise FileNotFoundError(
          f"SentencePiece model {model_path} does not exist (set "
          "--config.data.tokenizer_path to an existing .model file, or leave "
          "it empty to train one in the workdir).")
    with open(model_path, "rb") as f:
      proto = f.read()
    self.path = model_path
    # Names the vocabulary in token-id cache paths: a new vocabulary never
    # reuses ids cached with an old one.
    self.fingerprint = hashlib.sha256(proto).hexdigest()[:12]
    self._sp = spm.SentencePieceProcessor(model_proto=proto)
    expected = {"pad": tokens.PAD_ID, "eos": tokens.EOS_ID,
                "unk": tokens.UNK_ID, "bos": tokens.BOS_ID}
    actual = {"pad": self._sp.pad_id(), "eos": self._sp.eos_id(),
              "unk": self._sp.unk_id(), "bos": self._sp.bos_id()}
    if actual != expected:
      raise ValueError(
          f"SentencePiece model {model_path} has special ids {actual}, but the "
          f"project needs {expected} (transformer/tokens.py). Train it with "
          "pad_id=0 eos_id=1 unk_id=2 bos_id=3, or leave "
          "--config.data.tokenizer_path empty to train one in the workdir.")

  @property
  def vocab_size(self):
    return self._sp.get_piece_size()

  def serialized_model(self):
    """The model file's bytes (the model a worker process loads)."""
    return self._sp.serialized_model_proto()

  def encode(self, text):
    """Text -> token ids, without EOS."""
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts, num_threads=-1):
    """List of texts -> list of id lists (multi-threaded), without EOS."""
    return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

  def detokenize(self, ids):
    """Token ids -> text. Stops at the first EOS; drops PAD and BOS."""
    kept = []
    for i in ids:
      i = int(i)
      if i == tokens.EOS_ID:
        break
      if i not in (tokens.PAD_ID, tokens.BOS_ID):
        kept.append(i)
    return self._sp.decode(kept)

  def id_to_piece(self, i):
    return self._sp.id_to_piece(int(i))


def train_tokenizer(sentences, model_path, *, vocab_size, model_type="bpe",
                    character_coverage=1.0):
  """Trains a SentencePiece model on ``sentences`` and writes it atomically.

  Args:
    sentences: the training sample (an iterable of str, both languages).
    model_path: where the ``.model`` file goes.
    vocab_size: size of the shared vocabulary, special ids included.
    model_type: "bpe" or "unigram".
    character_coverage: fraction of the sample's characters in the vocabulary.

  Returns:
    The trained ``Tokenizer``.
  """
  if model_type not in choices.TOKENIZER_TYPES:
    raise ValueError(
        f"Unknown data.tokenizer_type {model_type!r}; use "
        + " or ".join(repr(t) for t in choices.TOKENIZER_TYPES) + ".")
  sentences = [s for s in sentences if s]
  if not sentences:
    raise ValueError("No text to train the tokenizer on: the training split "
                     "is empty.")
  directory = os.path.dirname(os.path.abspath(model_path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(dir=directory, suffix=".model.tmp")
  try:
    with os.fdopen(fd, "wb") as writer:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(sentences),
          model_writer=writer,
          vocab_size=vocab_size,
          model_type=model_type,
          pad_id=tokens.PAD_ID,
          eos_id=tokens.EOS_ID,
          unk_id=tokens.UNK_ID,
          bos_id=tokens.BOS_ID,
          character_coverage=character_coverage,
          normalization_rule_name="identity",
          input_sentence_size=0,  # The caller already sampled.
          num_threads=os.cpu_count() or 1,
          minloglevel=2,
      )
    os.replace(tmp_path, model_path)
  except RuntimeError as e:
    message = str(e)
    too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_small:
      raise ValueError(
          f"model.vocab_size={vocab_size} is too small for the tokenizer's training "
          f"text: its characters and the special ids need {too_small.group(2)} pieces. "
          f"Raise --config.model.vocab_size to at least {too_small.group(2)}, or lower "
          "data.tokenizer_character_coverage.") from e
    if "Vocabulary size" in message:
      limit = re.search(r"<= (\d+)", message)
      hint = f" (at most {limit.group(1)} for this text)" if limit else ""
      raise ValueError(
          f"The tokenizer's training text ({len(sentences)} sentences) is too "
          f"small for a {model_type} vocabulary of {vocab_size} pieces. Lower "
          f"--config.model.vocab_size{hint}, or give more text "
          f"(data.tokenizer_sample_sentences). SentencePiece said: {message}") from e
    raise
  finally:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
  return Tokenizer(model_path)


# ----------------------------------------------------------------------------
# The run's tokenizer: given, reused, or trained once on a uniform sample of
# the whole training split.
# ----------------------------------------------------------------------------


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
    tok = Tokenizer(data_config.tokenizer_path)
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
    tok = Tokenizer(path)
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
  tok = train_tokenizer(
      sentences, path, vocab_size=vocab_size,
      model_type=data_config.tokenizer_type,
      character_coverage=data_config.tokenizer_character_coverage)
  logging.info(
      "Trained a %d-piece %s tokenizer on %d sentences in %.1f s (sampling "
      "%.1f s, SentencePiece %.1f s): %s", vocab_size,
      data_config.tokenizer_type, len(sentences), time.time() - start,
      sampled - start, time.time() - sampled, path)
  return tok
