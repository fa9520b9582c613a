"""A generated English->German corpus, for the offline quickstart and tests.

Sentences come from a small grammar whose German side needs what makes
translation more than word substitution:

* gender and case agreement: the article and the adjective ending depend on
  the German noun's gender (invisible in English) and on its case
  ("the old dog sees the old dog" -> "Der alte Hund sieht den alten Hund"),
  with dative after prepositions and after verbs such as "helfen", and the
  contractions "im" and "vom";
* numbers written out, German putting the unit before the ten
  ("twenty-one" -> "einundzwanzig", "ninety-seven" -> "siebenundneunzig"),
  with strong plural adjective endings after them;
* verb-final subordinate clauses ("... that the dog sees the car" ->
  "..., dass der Hund das Auto sieht") and verb agreement with the subject.

The corpus is deterministic by seed. Splits are assigned by a hash of the
English sentence, so train, validation and test never share a source sentence.
``write_corpus`` writes ``{split}.{en,de}`` files so that the generated corpus
goes through the same text-folder path as real data.

The first training pairs of seed 0 (``python -m transformer.synthetic --num=3``):
  His black flower is sad because a table thanks the teacher.
  Seine schwarze Blume ist traurig, weil ein Tisch dem Lehrer dankt.

  The happy apple is hungry because the green teachers find my clever child.
  Der glückliche Apfel ist hungrig, weil die grünen Lehrer mein kluges Kind finden.

  We follow the cars.
  Wir folgen den Autos.

Sentences are 4-18 words (about 10 SentencePiece tokens with a 1000-piece
vocabulary); 50000 training pairs are generated in about a second.
"""

import hashlib
import os
import random

SPLITS = ("train", "validation", "test")
LANGS = ("en", "de")

# Nouns: English singular, English plural, German singular, German plural,
# German gender (m, f, n).
NOUNS = (
    ("dog", "dogs", "Hund", "Hunde", "m"),
    ("man", "men", "Mann", "Männer", "m"),
    ("bird", "birds", "Vogel", "Vögel", "m"),
    ("teacher", "teachers", "Lehrer", "Lehrer", "m"),
    ("apple", "apples", "Apfel", "Äpfel", "m"),
    ("tree", "trees", "Baum", "Bäume", "m"),
    ("table", "tables", "Tisch", "Tische", "m"),
    ("friend", "friends", "Freund", "Freunde", "m"),
    ("letter", "letters", "Brief", "Briefe", "m"),
    ("garden", "gardens", "Garten", "Gärten", "m"),
    ("cat", "cats", "Katze", "Katzen", "f"),
    ("woman", "women", "Frau", "Frauen", "f"),
    ("door", "doors", "Tür", "Türen", "f"),
    ("flower", "flowers", "Blume", "Blumen", "f"),
    ("city", "cities", "Stadt", "Städte", "f"),
    ("bottle", "bottles", "Flasche", "Flaschen", "f"),
    ("street", "streets", "Straße", "Straßen", "f"),
    ("child", "children", "Kind", "Kinder", "n"),
    ("house", "houses", "Haus", "Häuser", "n"),
    ("girl", "girls", "Mädchen", "Mädchen", "n"),
    ("book", "books", "Buch", "Bücher", "n"),
    ("car", "cars", "Auto", "Autos", "n"),
    ("horse", "horses", "Pferd", "Pferde", "n"),
    ("window", "windows", "Fenster", "Fenster", "n"),
)

# Attributive adjectives: English, German stem.
ADJECTIVES = (
    ("small", "klein"), ("big", "groß"), ("old", "alt"), ("young", "jung"),
    ("red", "rot"), ("green", "grün"), ("beautiful", "schön"), ("new", "neu"),
    ("black", "schwarz"), ("white", "weiß"), ("tired", "müde"),
    ("happy", "glücklich"), ("fast", "schnell"), ("clever", "klug"),
)

# Predicative adjectives (uninflected in German): "X is tired because ...".
PREDICATES = (("tired", "müde"), ("happy", "glücklich"), ("hungry", "hungrig"),
              ("sad", "traurig"), ("angry", "wütend"))

# Verbs: English base, English 3rd singular, German 1st singular,
# 3rd singular, plural (1st and 3rd), case of the object.
VERBS = (
    ("see", "sees", "sehe", "sieht", "sehen", "acc"),
    ("like", "likes", "mag", "mag", "mögen", "acc"),
    ("buy", "buys", "kaufe", "kauft", "kaufen", "acc"),
    ("find", "finds", "finde", "findet", "finden", "acc"),
    ("have", "has", "habe", "hat", "haben", "acc"),
    ("carry", "carries", "trage", "trägt", "tragen", "acc"),
    ("paint", "paints", "male", "malt", "malen", "acc"),
    ("visit", "visits", "besuche", "besucht", "besuchen", "acc"),
    ("know", "knows", "kenne", "kennt", "kennen", "acc"),
    ("watch", "watches", "beobachte", "beobachtet", "beobachten", "acc"),
    ("help", "helps", "helfe", "hilft", "helfen", "dat"),
    ("follow", "follows", "folge", "folgt", "folgen", "dat"),
    ("thank", "thanks", "danke", "dankt", "danken", "dat"),
)

# Subject pronouns: English, German, person ("1s", "3s", "p" = plural).
PRONOUNS = (("I", "ich", "1s"), ("he", "er", "3s"), ("she", "sie", "3s"),
            ("we", "wir", "p"), ("they", "sie", "p"))

# Prepositions taking the dative: English, German.
PREPOSITIONS = (("in", "in"), ("with", "mit"), ("next to", "neben"),
                ("behind", "hinter"), ("from", "von"), ("under", "unter"))
CONTRACTIONS = {("in", "dem"): "im", ("von", "dem"): "vom"}

# Main clauses introducing a "that" clause: English, German.
INTRODUCTIONS = (
    ("I think that", "ich glaube, dass"), ("she says that", "sie sagt, dass"),
    ("we know that", "wir wissen, dass"), ("he hopes that", "er hofft, dass"),
    ("they believe that", "sie glauben, dass"),
    ("it is clear that", "es ist klar, dass"),
)

EN_ONES = ("", "one", "two", "three", "four", "five", "six", "seven", "eight",
           "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
           "sixteen", "seventeen", "eighteen", "nineteen")
EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy",
           "eighty", "ninety")
DE_ONES = ("", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht",
           "neun", "zehn", "elf", "zwölf", "dreizehn", "vierzehn", "fünfzehn",
           "sechzehn", "siebzehn", "achtzehn", "neunzehn")
DE_TENS = ("", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig",
           "siebzig", "achtzig", "neunzig")

# German articles by determiner, gender (or "p" for plural) and case.
DEFINITE = {
    "m": {"nom": "der", "acc": "den", "dat": "dem"},
    "f": {"nom": "die", "acc": "die", "dat": "der"},
    "n": {"nom": "das", "acc": "das", "dat": "dem"},
    "p": {"nom": "die", "acc": "die", "dat": "den"},
}
# "ein" and the possessives "mein", "sein" decline alike.
INDEFINITE_ENDINGS = {
    "m": {"nom": "", "acc": "en", "dat": "em"},
    "f": {"nom": "e", "acc": "e", "dat": "er"},
    "n": {"nom": "", "acc": "", "dat": "em"},
    "p": {"nom": "e", "acc": "e", "dat": "en"},
}
# Adjective endings after the definite article (weak declension).
WEAK = {
    "m": {"nom": "e", "acc": "en", "dat": "en"},
    "f": {"nom": "e", "acc": "e", "dat": "en"},
    "n": {"nom": "e", "acc": "e", "dat": "en"},
    "p": {"nom": "en", "acc": "en", "dat": "en"},
}
# After "ein"/"mein"/"sein" (mixed declension).
MIXED = {
    "m": {"nom": "er", "acc": "en", "dat": "en"},
    "f": {"nom": "e", "acc": "e", "dat": "en"},
    "n": {"nom": "es", "acc": "es", "dat": "en"},
    "p": {"nom": "en", "acc": "en", "dat": "en"},
}
# Plural after a number: no article (strong declension).
STRONG_PLURAL = {"nom": "e", "acc": "e", "dat": "en"}
POSSESSIVES = (("my", "mein"), ("his", "sein"))


def number_en(n):
  """1..99 in English words: 21 -> "twenty-one"."""
  if n < 20:
    return EN_ONES[n]
  tens, unit = divmod(n, 10)
  return EN_TENS[tens] + ("-" + EN_ONES[unit] if unit else "")


def number_de(n):
  """1..99 in German words, unit before ten: 21 -> "einundzwanzig"."""
  if n < 20:
    return DE_ONES[n]
  tens, unit = divmod(n, 10)
  if not unit:
    return DE_TENS[tens]
  unit_word = "ein" if unit == 1 else DE_ONES[unit]
  return unit_word + "und" + DE_TENS[tens]


def _inflect(stem, ending):
  if stem.endswith("e") and ending.startswith("e"):
    return stem + ending[1:]
  return stem + ending


def _dative_plural(noun):
  return noun if noun.endswith(("n", "s")) else noun + "n"


class _Grammar:
  """Draws one (English, German) sentence pair at a time."""

  def __init__(self, rng):
    self.rng = rng

  def noun_phrase(self, case):
    """Returns (english, german, person) of a random noun phrase."""
    rng = self.rng
    en_sg, en_pl, de_sg, de_pl, gender = rng.choice(NOUNS)
    adjective = rng.choice(ADJECTIVES) if rng.random() < 0.5 else None
    kind = rng.choices(("the", "a", "poss", "the_pl", "number", "poss_pl"),
                       weights=(4, 3, 2, 2, 3, 1))[0]
    plural = kind in ("the_pl", "number", "poss_pl")
    g = "p" if plural else gender
    noun_de = de_pl if plural else de_sg
    if plural and case == "dat":
      noun_de = _dative_plural(noun_de)
    en_words, de_words = [], []
    if kind in ("the", "the_pl"):
      en_words.append("the")
      de_words.append(DEFINITE[g][case])
      declension = WEAK
    elif kind == "a":
      first = adjective[0] if adjective else en_sg
      en_words.append("an" if first[0] in "aeiou" else "a")
      de_words.append("ein" + INDEFINITE_ENDINGS[g][case])
      declension = MIXED
    elif kind in ("poss", "poss_pl"):
      en_poss, de_poss = rng.choice(POSSESSIVES)
      en_words.append(en_poss)
      de_words.append(de_poss + INDEFINITE_ENDINGS[g][case])
      declension = MIXED
    else:  # A written-out number, 2..99.
      n = rng.randint(2, 99)
      en_words.append(number_en(n))
      de_words.append(number_de(n))
      declension = None
    if adjective:
      en_words.append(adjective[0])
      ending = STRONG_PLURAL[case] if declension is None else declension[g][case]
      de_words.append(_inflect(adjective[1], ending))
    en_words.append(en_pl if plural else en_sg)
    de_words.append(noun_de)
    return " ".join(en_words), " ".join(de_words), "p" if plural else "3s"

  def subject(self):
    if self.rng.random() < 0.25:
      en, de, person = self.rng.choice(PRONOUNS)
      return en, de, person
    return self.noun_phrase("nom")

  def prepositional_phrase(self):
    en_prep, de_prep = self.rng.choice(PREPOSITIONS)
    en, de, _ = self.noun_phrase("dat")
    article, _, rest = de.partition(" ")
    contracted = CONTRACTIONS.get((de_prep, article))
    de = f"{contracted} {rest}" if contracted else f"{de_prep} {de}"
    return f"{en_prep} {en}", de

  def clause(self):
    """Returns (english, german_main_order, german_verb_final) of a clause."""
    rng = self.rng
    en_subj, de_subj, person = self.subject()
    en_base, en_3s, de_1s, de_3s, de_pl, case = rng.choice(VERBS)
    en_verb = en_3s if person == "3s" else en_base
    de_verb = {"1s": de_1s, "3s": de_3s, "p": de_pl}[person]
    en_obj, de_obj, _ = self.noun_phrase(case)
    en_pp, de_pp = self.prepositional_phrase() if rng.random() < 0.35 else ("", "")
    en = " ".join(w for w in (en_subj, en_verb, en_obj, en_pp) if w)
    main = " ".join(w for w in (de_subj, de_verb, de_obj, de_pp) if w)
    final = " ".join(w for w in (de_subj, de_obj, de_pp, de_verb) if w)
    return en, main, final

  def sentence(self):
    rng = self.rng
    kind = rng.choices(("main", "that", "because"), weights=(5, 2, 2))[0]
    if kind == "main":
      en, de, _ = self.clause()
    elif kind == "that":
      en_intro, de_intro = rng.choice(INTRODUCTIONS)
      en_clause, _, de_clause = self.clause()
      en, de = f"{en_intro} {en_clause}", f"{de_intro} {de_clause}"
    else:
      en_subj, de_subj, person = self.subject()
      en_be = {"1s": "am", "3s": "is", "p": "are"}[person]
      de_be = {"1s": "bin", "3s": "ist", "p": "sind"}[person]
      en_pred, de_pred = rng.choice(PREDICATES)
      en_clause, _, de_clause = self.clause()
      en = f"{en_subj} {en_be} {en_pred} because {en_clause}"
      de = f"{de_subj} {de_be} {de_pred}, weil {de_clause}"
    return _capitalize(en) + ".", _capitalize(de) + "."


def _capitalize(text):
  return text[0].upper() + text[1:]


def _split_of(english):
  """Hash-based split: about 2% validation, 2% test, the rest train."""
  bucket = int.from_bytes(
      hashlib.blake2b(english.encode("utf-8"), digest_size=4).digest(), "big")
  bucket %= 100
  if bucket < 2:
    return "test"
  if bucket < 4:
    return "validation"
  return "train"


def generate(train_size, dev_size, test_size, seed=0):
  """Returns {split: (english_sentences, german_sentences)}.

  Deterministic by ``seed`` and the sizes. Validation and test hold distinct
  sentences; no English sentence is in two splits.
  """
  sizes = {"train": train_size, "validation": dev_size, "test": test_size}
  fields = {"train": "train", "validation": "dev", "test": "test"}
  for split, size in sizes.items():
    if size < 1:
      raise ValueError(
          f"The synthetic {split} split needs at least one sentence; got "
          f"{size} (data.synthetic_{fields[split]}_size).")
  grammar = _Grammar(random.Random(seed))
  out = {split: ([], []) for split in SPLITS}
  seen = set()  # Held-out sentences are distinct.
  remaining = sum(sizes.values())
  attempts = 0
  while remaining:
    attempts += 1
    if attempts > 200 * sum(sizes.values()) + 100_000:
      raise ValueError("Could not draw enough distinct synthetic sentences; "
                       "lower data.synthetic_dev_size / synthetic_test_size.")
    en, de = grammar.sentence()
    split = _split_of(en)
    english, german = out[split]
    if len(english) >= sizes[split]:
      continue
    if split != "train":
      if en in seen:
        continue
      seen.add(en)
    english.append(en)
    german.append(de)
    remaining -= 1
  return out


def write_corpus(directory, train_size, dev_size, test_size, seed=0):
  """Writes ``{train,validation,test}.{en,de}`` into ``directory`` (once).

  Returns the directory. Files are written to a temporary folder and renamed,
  so a crash never leaves a partial corpus behind.
  """
  if os.path.isfile(os.path.join(directory, "COMPLETE")):
    return directory
  corpus = generate(train_size, dev_size, test_size, seed)
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = f"{directory}.tmp{os.getpid()}"
  os.makedirs(tmp, exist_ok=True)
  for split, (english, german) in corpus.items():
    for lang, lines in zip(LANGS, (english, german), strict=True):
      with open(os.path.join(tmp, f"{split}.{lang}"), "w",
                encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
  with open(os.path.join(tmp, "COMPLETE"), "w") as f:
    f.write("")
  try:
    os.rename(tmp, directory)
  except OSError:  # Another process finished first.
    for name in os.listdir(tmp):
      os.remove(os.path.join(tmp, name))
    os.rmdir(tmp)
  return directory


def main():
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--split", default="train", choices=SPLITS)
  args = parser.parse_args()
  corpus = generate(max(args.num, 1), 1 if args.split != "validation" else args.num,
                    1 if args.split != "test" else args.num, args.seed)
  for en, de in zip(*corpus[args.split], strict=True):
    print(f"EN: {en}\nDE: {de}\n")


if __name__ == "__main__":
  main()
