"""Tests for transformer/data/synthetic.py: the generated EN->DE corpus."""

import os
import random
import re

import pytest

from transformer.data import synthetic


def _capitalize(text):
  return text[0].upper() + text[1:]


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
    (100, "one hundred", "einhundert"),
    (191, "one hundred and ninety-one", "einhunderteinundneunzig"),
    (342, "three hundred and forty-two", "dreihundertzweiundvierzig"),
    (705, "seven hundred and five", "siebenhundertfünf"),
    (999, "nine hundred and ninety-nine", "neunhundertneunundneunzig"),
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
  subjects = {"The dog ": "Der Hund", "The cat ": "Die Katze",
              "The child ": "Das Kind", "The old dog ": "Der alte Hund",
              "A small dog ": "Ein kleiner Hund",
              "A small house ": "Ein kleines Haus"}
  checked = 0
  for en, de in pairs:
    for en_start, de_start in subjects.items():
      if en.startswith(en_start):
        assert re.match(re.escape(de_start) + "[ ,]", de), (en, de)
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
  finite = {form for verb in synthetic.VERBS for form in verb[3:6]}
  finite |= {form for forms in synthetic.AUXILIARIES.values()
             for form in forms.values()}
  clauses = 0
  for en, de in zip(*corpus["train"], strict=True):
    introduced = any(en.startswith(_capitalize(intro))
                     for intro, _ in synthetic.INTRODUCTIONS)
    if introduced or " because " in en:
      assert re.search(r", (dass|weil) ", de), (en, de)
      assert de.rstrip(".").split()[-1] in finite, (en, de)
      clauses += 1
  assert clauses > 300


@pytest.mark.parametrize("gender, person", [("m", "3s"), ("f", "3s"),
                                            ("n", "3s"), ("p", "p")])
def test_relative_pronoun_agrees_and_verb_is_final(gender, person):
  grammar = synthetic._Grammar(random.Random(0))
  verbs_en = {form for verb in synthetic.VERBS for form in verb[:2]}
  kinds = set()
  for _ in range(60):
    en, de = grammar.relative_clause(gender, person)
    words = de.split()
    verb = next(v for v in synthetic.VERBS if words[-1] in v[3:6])
    if en.split()[1] in verbs_en:  # "that sees the cat": the subject.
      assert words[0] == synthetic.RELATIVE[gender]["nom"], (en, de)
      assert words[-1] == verb[4 if person == "3s" else 5], (en, de)
      kinds.add("subject")
    else:  # "that the cat sees": the object, in the verb's case.
      assert words[0] == synthetic.RELATIVE[gender][verb[8]], (en, de)
      kinds.add(verb[8])
  assert kinds == {"subject", "acc", "dat"}


def test_relative_clauses_are_set_off_by_commas(corpus):
  count = 0
  for en, de in zip(*corpus["train"], strict=True):
    match = re.match(r"The (?:\w+ )?(dog|cat|child) that ", en)
    if match:
      noun = {"dog": "Hund", "cat": "Katze", "child": "Kind"}[match.group(1)]
      pronoun = {"dog": "(der|den|dem)", "cat": "(die|der)",
                 "child": "(das|dem)"}[match.group(1)]
      assert re.match(rf"\w+ (\w+ )?{noun}, {pronoun} .*, \w+", de), (en, de)
      count += 1
  assert count >= 5


def test_perfect_tense_makes_a_verb_bracket(corpus):
  count = 0
  for en, de in zip(*corpus["train"], strict=True):
    match = re.search(r" (has|have) (\w+) ", en)
    if match and " that " not in en and " because " not in en:
      verb = next(v for v in synthetic.VERBS if v[2] == match.group(2))
      auxiliaries = synthetic.AUXILIARIES[verb[7]].values()
      assert de.rstrip(".").split()[-1] == verb[6], (en, de)
      assert set(de.split()) & set(auxiliaries), (en, de)
      count += 1
  assert count >= 50
  # "folgen" takes "sein": "ist ... gefolgt".
  assert any(" ist " in de and de.endswith(" gefolgt.")
             for de in corpus["train"][1])


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
