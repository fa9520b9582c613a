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
the sample kept), so ``decode(encode(text)) == text`` for any text made of
characters seen in training, up to runs of whitespace, which are collapsed.
"""

import hashlib
import os
import re
import tempfile

import sentencepiece as spm

from transformer import tokens


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

  def decode(self, ids):
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
  if model_type not in ("bpe", "unigram"):
    raise ValueError(
        f"Unknown data.tokenizer_type {model_type!r}; use 'bpe' or 'unigram'.")
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
