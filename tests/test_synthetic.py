"""Tests for transformer/synthetic.py: the generated EN->DE corpus."""

import os
import re

import pytest

from transformer import synthetic


@pytest.fixture(scope="module")
def corpus():
  return synthetic.generate(3000, 200, 200, seed=0)


@pytest.mark.parametrize("n, english, german", [
    (1, "one", "eins"),
    (7, "seven", "sieben"),
    (12, "twelve", "zwölf"),
    (16, "sixteen", "sechzehn"),
    (20, "twenty", "zwanzig"),
    (21, "twenty-one", "einundzwanzig"),
    (30, "thirty", "dreißig"),
    (37, "thirty-seven", "siebenunddreißig"),
    (71, "seventy-one", "einundsiebzig"),
    (99, "ninety-nine", "neunundneunzig"),
])
def test_numbers_put_the_unit_before_the_ten(n, english, german):
  assert synthetic.number_en(n) == english
  assert synthetic.number_de(n) == german


def test_deterministic_by_seed(corpus):
  assert synthetic.generate(3000, 200, 200, seed=0) == corpus
  other = synthetic.generate(3000, 200, 200, seed=1)
  assert other["train"][0][:50] != corpus["train"][0][:50]


def test_sizes_and_disjoint_splits(corpus):
  sizes = {"train": 3000, "validation": 200, "test": 200}
  for split, (english, german) in corpus.items():
    assert len(english) == len(german) == sizes[split]
  train = set(corpus["train"][0])
  dev = set(corpus["validation"][0])
  test = set(corpus["test"][0])
  assert not train & dev and not train & test and not dev & test
  assert len(dev) == 200 and len(test) == 200  # Held-out sentences distinct.


def test_train_prefix_does_not_depend_on_the_other_sizes(corpus):
  small = synthetic.generate(100, 5, 5, seed=0)
  assert small["train"][0] == corpus["train"][0][:100]


def test_gender_and_case_agreement(corpus):
  pairs = list(zip(*corpus["train"], strict=True))
  subjects = {"The dog ": "Der Hund ", "The cat ": "Die Katze ",
              "The child ": "Das Kind ", "The old dog ": "Der alte Hund ",
              "A small dog ": "Ein kleiner Hund ",
              "A small house ": "Ein kleines Haus "}
  checked = 0
  for en, de in pairs:
    for en_start, de_start in subjects.items():
      if en.startswith(en_start):
        assert de.startswith(de_start), (en, de)
        checked += 1
    # Accusative and dative of masculine nouns after the verb.
    if re.search(r" sees the dog\b", en):
      assert re.search(r" den Hund\b", de), (en, de)
      checked += 1
    if re.search(r" helps the dog\b", en):
      assert re.search(r" dem Hund\b", de), (en, de)
      checked += 1
    if re.search(r" in the garden\b", en):
      assert re.search(r" im Garten\b", de), (en, de)
      checked += 1
  assert checked >= 20


def test_subordinate_clauses_are_verb_final(corpus):
  finite = {form for verb in synthetic.VERBS for form in verb[2:5]}
  clauses = 0
  for en, de in zip(*corpus["train"], strict=True):
    if " that " in en or " because " in en:
      assert re.search(r", (dass|weil) ", de), (en, de)
      assert de.rstrip(".").split()[-1] in finite, (en, de)
      clauses += 1
  assert clauses > 300


def test_numbers_appear_in_sentences(corpus):
  pairs = [(en, de) for en, de in zip(*corpus["train"], strict=True)
           if re.search(r"\btwenty-one\b", en)]
  assert pairs
  for en, de in pairs:
    assert "einundzwanzig" in de, (en, de)


def test_write_corpus_files(tmp_path):
  directory = synthetic.write_corpus(str(tmp_path / "c"), 50, 5, 5, seed=3)
  expected = synthetic.generate(50, 5, 5, seed=3)
  for split in synthetic.SPLITS:
    for lang, lines in zip(synthetic.LANGS, expected[split], strict=True):
      with open(os.path.join(directory, f"{split}.{lang}"),
                encoding="utf-8") as f:
        assert f.read().split("\n")[:-1] == lines
  # A second call reuses the folder.
  assert synthetic.write_corpus(directory, 50, 5, 5, seed=3) == directory


def test_zero_size_is_an_error():
  with pytest.raises(ValueError, match="data.synthetic_dev_size"):
    synthetic.generate(10, 0, 5)
