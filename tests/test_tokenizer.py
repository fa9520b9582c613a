"""Tests for transformer/tokenizer.py: the shared SentencePiece vocabulary."""

import pytest
import sentencepiece as spm

from transformer import tokenizer as tokenizer_lib
from transformer import tokens

GERMAN = [
    "Die Straße führt über die Brücke nach München.",
    "Größere Häuser stehen am Fluss, sagte der Bäcker.",
    "Schöne Grüße aus Köln, Düsseldorf und Nürnberg!",
    "Das Mädchen ißt süße Äpfel; die Jungen essen Brötchen.",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
    "Öl und Übel: ÄÖÜ äöü ß.",
] * 20
ENGLISH = [
    "The street leads over the bridge to Munich.",
    "Bigger houses stand by the river, said the baker.",
    "Greetings from Cologne, Dusseldorf and Nuremberg!",
] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "spm.model"
  return tokenizer_lib.train_tokenizer(GERMAN + ENGLISH, str(path),
                                       vocab_size=120, model_type="bpe")


def test_special_ids_are_the_projects(tok):
  assert tok.vocab_size == 120
  assert tok.id_to_piece(tokens.PAD_ID) == "<pad>"
  assert tok.id_to_piece(tokens.EOS_ID) == "</s>"
  assert tok.id_to_piece(tokens.UNK_ID) == "<unk>"
  assert tok.id_to_piece(tokens.BOS_ID) == "<s>"


@pytest.mark.parametrize("text", [
    "Die Straße führt über die Brücke nach München.",
    "Größere Häuser, süße Äpfel: ÄÖÜ äöü ß!",
    "Schöne Grüße aus Köln.",
])
def test_round_trips_german_with_umlauts_and_eszett(tok, text):
  ids = tok.encode(text)
  assert tokens.EOS_ID not in ids and tokens.PAD_ID not in ids
  assert tokens.UNK_ID not in ids
  assert tok.decode(ids) == text


def test_decode_stops_at_eos_and_drops_pad_and_bos(tok):
  first = tok.encode("Die Brücke.")
  second = tok.encode("Köln!")
  ids = [tokens.BOS_ID] + first + [tokens.EOS_ID] + second + [tokens.PAD_ID] * 3
  assert tok.decode(ids) == "Die Brücke."
  assert tok.decode(first + [tokens.PAD_ID, tokens.PAD_ID]) == "Die Brücke."


def test_encode_batch_equals_encode(tok):
  texts = GERMAN[:5]
  assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_unigram_round_trips(tmp_path):
  tok = tokenizer_lib.train_tokenizer(
      GERMAN + ENGLISH, str(tmp_path / "u.model"), vocab_size=100,
      model_type="unigram")
  assert tok.vocab_size == 100
  assert tok.decode(tok.encode("Größere Häuser.")) == "Größere Häuser."


def test_too_small_corpus_names_the_vocab_size_field(tmp_path):
  with pytest.raises(ValueError, match=r"--config.model.vocab_size \(at most \d+"):
    tokenizer_lib.train_tokenizer(["Grüße aus Köln."] * 3,
                                  str(tmp_path / "x.model"), vocab_size=5000)
  assert not list(tmp_path.iterdir())  # No partial model left behind.


def test_vocabulary_smaller_than_the_characters_says_how_large(tmp_path):
  # Too small for the text's characters: the message asks for more, not less.
  with pytest.raises(ValueError, match=r"vocab_size=8 is too small.*at least (\d+)"):
    tokenizer_lib.train_tokenizer(ENGLISH, str(tmp_path / "spm.model"), vocab_size=8)


def test_unknown_type_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="data.tokenizer_type"):
    tokenizer_lib.train_tokenizer(GERMAN, str(tmp_path / "x.model"),
                                  vocab_size=100, model_type="wordpiece")


def test_model_with_other_special_ids_is_rejected(tmp_path):
  prefix = str(tmp_path / "default_ids")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(GERMAN), model_prefix=prefix, vocab_size=60,
      minloglevel=2)  # SentencePiece's defaults: unk=0, bos=1, eos=2, no pad.
  with pytest.raises(ValueError, match="pad_id=0 eos_id=1 unk_id=2 bos_id=3"):
    tokenizer_lib.Tokenizer(prefix + ".model")


def test_missing_model_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer_path"):
    tokenizer_lib.Tokenizer(tmp_path / "nope.model")
