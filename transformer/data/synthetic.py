"""A generated English->German corpus, for the offline quickstart and tests.

Sentences come from a small grammar whose German side needs what makes
translation more than word substitution:

* gender and case agreement: the article and the adjective ending depend on
  the German noun's gender (invisible in English) and on its case
  ("the old dog sees the old dog" -> "Der alte Hund sieht den alten Hund"),
  with dative after prepositions and after verbs such as "helfen", and the
  contractions "im" and "vom";
* numbers written out as one word, German putting the unit before the ten
  ("twenty-one" -> "einundzwanzig", "three hundred and forty-two" ->
  "dreihundertzweiundvierzig"), with strong adjective endings after them;
* verb-final subordinate clauses ("... that the dog sees the car" ->
  "..., dass der Hund das Auto sieht") and verb agreement with the subject;
* relative clauses set off by commas, whose pronoun takes the antecedent's
  gender and its own clause's case ("the girl that the man helps" ->
  "das Mädchen, dem der Mann hilft");
* the present perfect's verb bracket ("has seen the cat in the garden" ->
  "hat die Katze im Garten gesehen"), with "sein" for "folgen".

The corpus is deterministic by seed. Splits are assigned by a hash of the
English sentence, so train, validation and test never share a source sentence.
``write_corpus`` writes ``{split}.{en,de}`` files so that the generated corpus
goes through the same text-folder path as real data.

The first training pairs of seed 0 (``python -m transformer.data.synthetic --num=3``):
  His black flower is hungry because a table helps four hundred and nineteen
  children that the black car likes.
  Seine schwarze Blume ist hungrig, weil ein Tisch vierhundertneunzehn
  Kindern, die das schwarze Auto mag, hilft.

  She says that the black bottle watches a bird.
  Sie sagt, dass die schwarze Flasche einen Vogel beobachtet.

  The green cats that help an apple like his street.
  Die grünen Katzen, die einem Apfel helfen, mögen seine Straße.

Sentences are 4-31 words (about 13 SentencePiece tokens on average, at most
~40, with a 1000-piece vocabulary); 50000 training pairs take about a second.
"""

import hashlib
import os
import random

from transformer import atomic

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

# Verbs: English base, 3rd singular, past participle; German 1st singular,
# 3rd singular, plural (1st and 3rd), past participle, perfect auxiliary;
# case of the object.
VERBS = (
    ("see", "sees", "seen", "sehe", "sieht", "sehen", "gesehen", "haben", "acc"),
    ("like", "likes", "liked", "mag", "mag", "mögen", "gemocht", "haben", "acc"),
    ("buy", "buys", "bought", "kaufe", "kauft", "kaufen", "gekauft", "haben",
     "acc"),
    ("find", "finds", "found", "finde", "findet", "finden", "gefunden", "haben",
     "acc"),
    ("carry", "carries", "carried", "trage", "trägt", "tragen", "getragen",
     "haben", "acc"),
    ("paint", "paints", "painted", "male", "malt", "malen", "gemalt", "haben",
     "acc"),
    ("visit", "visits", "visited", "besuche", "besucht", "besuchen", "besucht",
     "haben", "acc"),
    ("know", "knows", "known", "kenne", "kennt", "kennen", "gekannt", "haben",
     "acc"),
    ("watch", "watches", "watched", "beobachte", "beobachtet", "beobachten",
     "beobachtet", "haben", "acc"),
    ("help", "helps", "helped", "helfe", "hilft", "helfen", "geholfen", "haben",
     "dat"),
    ("follow", "follows", "followed", "folge", "folgt", "folgen", "gefolgt",
     "sein", "dat"),
    ("thank", "thanks", "thanked", "danke", "dankt", "danken", "gedankt",
     "haben", "dat"),
)
AUXILIARIES = {"haben": {"1s": "habe", "3s": "hat", "p": "haben"},
               "sein": {"1s": "bin", "3s": "ist", "p": "sind"}}
EN_HAVE = {"1s": "have", "3s": "has", "p": "have"}

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
# Relative pronouns: gender and number of the antecedent, case of their role
# in the relative clause.
RELATIVE = {
    "m": {"nom": "der", "acc": "den", "dat": "dem"},
    "f": {"nom": "die", "acc": "die", "dat": "der"},
    "n": {"nom": "das", "acc": "das", "dat": "dem"},
    "p": {"nom": "die", "acc": "die", "dat": "denen"},
}
# Plural after a number: no article (strong declension).
STRONG_PLURAL = {"nom": "e", "acc": "e", "dat": "en"}
POSSESSIVES = (("my", "mein"), ("his", "sein"))


def number_en(n):
  """1..999 in English words: 21 -> "twenty-one", 342 -> "three hundred
  and forty-two"."""
  if n >= 100:
    hundreds, rest = divmod(n, 100)
    words = EN_ONES[hundreds] + " hundred"
    return words + (" and " + number_en(rest) if rest else "")
  if n < 20:
    return EN_ONES[n]
  tens, unit = divmod(n, 10)
  return EN_TENS[tens] + ("-" + EN_ONES[unit] if unit else "")


def number_de(n):
  """1..999 in German words, unit before ten, one word: 21 ->
  "einundzwanzig", 342 -> "dreihundertzweiundvierzig"."""
  if n >= 100:
    hundreds, rest = divmod(n, 100)
    words = ("ein" if hundreds == 1 else DE_ONES[hundreds]) + "hundert"
    return words + (number_de(rest) if rest else "")
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

  def number(self):
    """2..99 mostly, 102..999 a quarter of the time (not x01: "hunderteins"
    does not stand before a noun)."""
    if self.rng.random() < 0.75:
      return self.rng.randint(2, 99)
    while True:
      n = self.rng.randint(102, 999)
      if n % 100 != 1:
        return n

  def noun_phrase(self, case, relative=False):
    """Returns (english, german, person, gender) of a random noun phrase.

    ``gender`` is "m", "f", "n" or "p" (plural). With ``relative``, the phrase
    may carry a relative clause; its German ends with a comma, which the
    sentence drops before final punctuation.
    """
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
    else:  # A written-out number.
      n = self.number()
      en_words.append(number_en(n))
      de_words.append(number_de(n))
      declension = None
    if adjective:
      en_words.append(adjective[0])
      ending = STRONG_PLURAL[case] if declension is None else declension[g][case]
      de_words.append(_inflect(adjective[1], ending))
    en_words.append(en_pl if plural else en_sg)
    de_words.append(noun_de)
    person = "p" if plural else "3s"
    en, de = " ".join(en_words), " ".join(de_words)
    if relative and rng.random() < 0.2:
      en_clause, de_clause = self.relative_clause(g, person)
      en, de = f"{en} {en_clause}", f"{de}, {de_clause},"
    return en, de, person, g

  def relative_clause(self, gender, person):
    """"that sees the cat" -> "der die Katze sieht" (antecedent = subject) or
    "that the cat sees" -> "den die Katze sieht" (antecedent = object): the
    pronoun takes the antecedent's gender and its own clause's case, and the
    verb goes last."""
    rng = self.rng
    verb = rng.choice(VERBS)
    if rng.random() < 0.5:  # The antecedent is the subject.
      en_obj, de_obj, _, _ = self.noun_phrase(verb[8])
      en_verb, de_verb = self.present(verb, person)
      return (f"that {en_verb} {en_obj}",
              f"{RELATIVE[gender]['nom']} {de_obj} {de_verb}")
    en_subj, de_subj, inner_person, _ = self.noun_phrase("nom")
    en_verb, de_verb = self.present(verb, inner_person)
    return (f"that {en_subj} {en_verb}",
            f"{RELATIVE[gender][verb[8]]} {de_subj} {de_verb}")

  def present(self, verb, person):
    en = verb[1] if person == "3s" else verb[0]
    de = {"1s": verb[3], "3s": verb[4], "p": verb[5]}[person]
    return en, de

  def subject(self):
    if self.rng.random() < 0.25:
      en, de, person = self.rng.choice(PRONOUNS)
      return en, de, person
    en, de, person, _ = self.noun_phrase("nom", relative=True)
    return en, de, person

  def prepositional_phrase(self):
    en_prep, de_prep = self.rng.choice(PREPOSITIONS)
    en, de, _, _ = self.noun_phrase("dat")
    article, _, rest = de.partition(" ")
    contracted = CONTRACTIONS.get((de_prep, article))
    de = f"{contracted} {rest}" if contracted else f"{de_prep} {de}"
    return f"{en_prep} {en}", de

  def clause(self):
    """Returns (english, german_main_order, german_verb_final) of a clause.

    In the perfect, the German participle goes to the end of a main clause
    (the verb bracket: "hat ... gesehen"), and the auxiliary after it in a
    subordinate clause ("... gesehen hat"); "folgen" takes "sein".
    """
    rng = self.rng
    en_subj, de_subj, person = self.subject()
    verb = rng.choice(VERBS)
    pp = rng.random() < 0.35
    en_obj, de_obj, _, _ = self.noun_phrase(verb[8], relative=not pp)
    en_pp, de_pp = self.prepositional_phrase() if pp else ("", "")
    if rng.random() < 0.3:  # Present perfect.
      en_verb = f"{EN_HAVE[person]} {verb[2]}"
      aux, participle = AUXILIARIES[verb[7]][person], verb[6]
      main = (de_subj, aux, de_obj, de_pp, participle)
      final = (de_subj, de_obj, de_pp, participle, aux)
    else:
      en_verb, de_verb = self.present(verb, person)
      main = (de_subj, de_verb, de_obj, de_pp)
      final = (de_subj, de_obj, de_pp, de_verb)
    en = " ".join(w for w in (en_subj, en_verb, en_obj, en_pp) if w)
    return en, " ".join(w for w in main if w), " ".join(w for w in final if w)

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
      de_be = AUXILIARIES["sein"][person]
      en_pred, de_pred = rng.choice(PREDICATES)
      en_clause, _, de_clause = self.clause()
      en = f"{en_subj} {en_be} {en_pred} because {en_clause}"
      de = f"{de_subj} {de_be} {de_pred}, weil {de_clause}"
    de = de.replace(",,", ",").rstrip(",")  # Relative clause before "weil"/".".
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

  Returns the directory. Files are written to a temporary folder and renamed
  (``atomic.folder``), so a crash never leaves a partial corpus behind.
  """
  if os.path.isfile(os.path.join(directory, "COMPLETE")):
    return directory
  corpus = generate(train_size, dev_size, test_size, seed)
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  with atomic.folder(directory) as tmp:
    for split, (english, german) in corpus.items():
      for lang, lines in zip(LANGS, (english, german), strict=True):
        with open(os.path.join(tmp, f"{split}.{lang}"), "w",
                  encoding="utf-8") as f:
          f.write("\n".join(lines) + "\n")
    with open(os.path.join(tmp, "COMPLETE"), "w") as f:
      f.write("")
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
