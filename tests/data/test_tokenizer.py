"""Tests for transformer/data/tokenizer.py: the shared SentencePiece vocabulary."""

import pytest
import sentencepiece as spm

from transformer import data, tokens
from transformer.data import tokenizer as tokenizer_lib

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
def bilingual_tok(tmp_path_factory):
  path = tmp_path_factory.mktemp("bilingual_tok") / "spm.model"
  return tokenizer_lib.train_tokenizer(GERMAN + ENGLISH, str(path),
                                       vocab_size=120, model_type="bpe")


def test_special_ids_are_the_projects(bilingual_tok):
  assert bilingual_tok.vocab_size == 120
  assert bilingual_tok.id_to_piece(tokens.PAD_ID) == "<pad>"
  assert bilingual_tok.id_to_piece(tokens.EOS_ID) == "</s>"
  assert bilingual_tok.id_to_piece(tokens.UNK_ID) == "<unk>"
  assert bilingual_tok.id_to_piece(tokens.BOS_ID) == "<s>"


@pytest.mark.parametrize("text", [
    "Die Straße führt über die Brücke nach München.",
    "Größere Häuser, süße Äpfel: ÄÖÜ äöü ß!",
    "Schöne Grüße aus Köln.",
])
def test_round_trips_german_with_umlauts_and_eszett(bilingual_tok, text):
  ids = bilingual_tok.encode(text)
  assert tokens.EOS_ID not in ids and tokens.PAD_ID not in ids
  assert tokens.UNK_ID not in ids
  assert bilingual_tok.detokenize(ids) == text


def test_decode_stops_at_eos_and_drops_pad_and_bos(bilingual_tok):
  first = bilingual_tok.encode("Die Brücke.")
  second = bilingual_tok.encode("Köln!")
  ids = [tokens.BOS_ID] + first + [tokens.EOS_ID] + second + [tokens.PAD_ID] * 3
  assert bilingual_tok.detokenize(ids) == "Die Brücke."
  assert bilingual_tok.detokenize(first + [tokens.PAD_ID, tokens.PAD_ID]) == "Die Brücke."


def test_encode_batch_equals_encode(bilingual_tok):
  texts = GERMAN[:5]
  assert bilingual_tok.encode_batch(texts) == [bilingual_tok.encode(t) for t in texts]


def test_unigram_round_trips(tmp_path):
  bilingual_tok = tokenizer_lib.train_tokenizer(
      GERMAN + ENGLISH, str(tmp_path / "u.model"), vocab_size=100,
      model_type="unigram")
  assert bilingual_tok.vocab_size == 100
  assert bilingual_tok.detokenize(bilingual_tok.encode("Größere Häuser.")) == "Größere Häuser."


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


# ---------------------------------------------------------------------------
# The run's tokenizer, from a corpus: given, reused, or trained on a sample.
# ---------------------------------------------------------------------------

TRAIN_SIZE = 300  # The corpus_dir fixture's training pairs.


def test_tokenizer_is_reused_on_restart(corpus_dir, workdir, tok, monkeypatch, data_config):
  def fail(*args, **kwargs):
    raise AssertionError("retrained")
  monkeypatch.setattr(tokenizer_lib, "train_tokenizer", fail)
  config = data_config(corpus_dir)
  again = data.load_tokenizer(config.data, workdir, vocab_size=config.model.vocab_size)
  assert again.fingerprint == tok.fingerprint
  with pytest.raises(ValueError, match="model.vocab_size=300"):
    config = data_config(corpus_dir)
    config.model.vocab_size = 300
    data.load_tokenizer(config.data, workdir, vocab_size=config.model.vocab_size)


def test_given_tokenizer_path(corpus_dir, tmp_path, tok, data_config):
  config = data_config(corpus_dir, tokenizer_path=tok.path)
  given = data.load_tokenizer(config.data, str(tmp_path), vocab_size=config.model.vocab_size)
  assert given.fingerprint == tok.fingerprint
  config.model.vocab_size = 150
  with pytest.raises(ValueError, match="--config.model.vocab_size=200"):
    data.load_tokenizer(config.data, str(tmp_path), vocab_size=config.model.vocab_size)


def test_vocab_too_large_for_corpus_names_the_field(corpus_dir, tmp_path, data_config):
  config = data_config(corpus_dir)
  config.model.vocab_size = 50_000
  with pytest.raises(ValueError, match="config.model.vocab_size"):
    data.load_tokenizer(config.data, str(tmp_path), vocab_size=config.model.vocab_size)


def test_tokenizer_sample_is_uniform_seeded_and_in_corpus_order(corpus_dir, monkeypatch,
                                                                data_config):
  config = data_config(corpus_dir, tokenizer_sample_sentences=100)
  sources, targets = data.load_split_text(config.data, "train")
  sample = data.tokenizer.tokenizer_sample(config.data, None)
  assert len(sample) == 100
  pairs = list(zip(sample[::2], sample[1::2], strict=True))
  where = [sources.index(s) for s, _ in pairs]
  assert where == sorted(where) and len(set(where)) == 50
  assert all(targets[i] == t for i, (_, t) in zip(where, pairs, strict=True))
  assert max(where) > 0.7 * TRAIN_SIZE  # Drawn from the whole split.
  monkeypatch.setattr(data.sources, "CHUNK", 7)  # Same chunks' seeds differ,
  other_chunking = data.tokenizer.tokenizer_sample(config.data, None)
  assert len(other_chunking) == 100 and other_chunking != sample
  monkeypatch.setattr(data.sources, "CHUNK", 20_000)
  assert data.tokenizer.tokenizer_sample(config.data, None) == sample  # Seeded.
  config.data.seed = 1
  assert data.tokenizer.tokenizer_sample(config.data, None) != sample
  config.data.tokenizer_sample_sentences = 10 * TRAIN_SIZE  # All of it.
  whole = data.tokenizer.tokenizer_sample(config.data, None)
  assert whole == [x for pair in zip(sources, targets, strict=True) for x in pair]
