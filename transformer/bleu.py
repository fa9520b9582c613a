"""BLEU, two ways: sacreBLEU and the paper-comparable tokenized BLEU.

* ``bleu``: sacreBLEU (Post, 2018) on detokenized text: cased, 13a
  tokenization, exponential smoothing, with its signature. This is the number
  to compare with anything reported as sacreBLEU, and the main figure.
* ``bleu_tokenized``: what the paper (Table 2: 27.3 base / 28.4 big on
  EN-DE newstest2014) and most papers of its time report. It is
  tensor2tensor's ``tensor2tensor/utils/get_ende_bleu.sh``, step by step:
    1. hypotheses only: Moses ``replace-unicode-punctuation.perl`` (fullwidth
       and CJK punctuation, curly double quotes and the right single quote to
       ASCII, "…" to "...");
    2. hypotheses and references: Moses ``tokenizer.perl -l LANG`` with its
       default escaping (& -> &amp;, " -> &quot;, ...);
    3. split hyphenated compounds: ``perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'``
       ("rich-text" -> "rich ##AT##-##AT## text"), which rewards getting
       each part of a compound right;
    4. ``multi-bleu.perl``: cased BLEU over whitespace tokens, no smoothing.
  On EN-DE it is above sacreBLEU (by about 0.7 to 1 BLEU as a rule of
  thumb, not measured here), because Moses tokenization and compound
  splitting make more, shorter tokens.

Where this differs from running the script, all of it:

* The script reads a reference that is already tokenized
  (``newstest2013.tok.de``) and does not show how it was made; here the
  detokenized reference goes through step 2 only, ``tokenizer.perl -l LANG``,
  the tool the script runs on the hypotheses. The reference's punctuation
  stays as it is, so, as in the script, a German closing quote "“" in a
  hypothesis becomes a '"' that no longer matches the reference's "“".
* Steps 1 and 2 are sacremoses, the Python port of the Moses scripts. Its
  ``replace_unicode_punct`` is ``replace-unicode-punctuation.perl`` as on
  Moses master; older copies of that script (Moses commit 7e78dc5, for one)
  turn a fullwidth "１" into a double quote rather than "1". sacremoses
  0.2.0 lacks ``tokenizer.perl``'s rule that the last word of a line always
  has its period split off ("usw." -> "usw ."); ``_MosesTokenizer`` below
  adds it. The punctuation step eats any whitespace after "。" and "．"
  (``\\s*``) where Perl eats only spaces (`` *``); step 2 collapses
  whitespace, so the tokens are the same.
* Step 4 is sacreBLEU with ``tokenize="none", smooth_method="none"``: the
  formula of multi-bleu.perl, which prints it rounded to two decimals.

``tests/test_bleu.py`` holds steps 1 to 4 against output of the Moses
scripts; the two agreed line for line on 645 German lines.

Compound splitting is the EN-DE convention; for other target languages it is
off unless asked for. Step 1 runs for every target language.
"""

import functools
import re
from collections.abc import Sequence

import sacrebleu

# tensor2tensor/fairseq: perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'.
_COMPOUND = re.compile(r"(\S)-(\S)")
# tokenizer.perl: a word that ends in a period, `$word =~ /^(\S+)\.$/`.
_ENDS_WITH_PERIOD = re.compile(r"^(\S+)\.$")


def split_compounds(line: str) -> str:
  """Puts hyphenated compounds in ##AT## format, exactly as the perl one-liner.

  Matches do not overlap, as in perl: "a-b-c" -> "a ##AT##-##AT## b-c".
  """
  return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def _sacremoses():
  try:
    import sacremoses
  except ImportError as e:  # pragma: no cover - depends on the environment.
    raise ImportError(
        "Tokenized BLEU needs sacremoses (the Python port of Moses' "
        "tokenizer.perl): pip install -r requirements.txt") from e
  return sacremoses


@functools.lru_cache(maxsize=8)
def _moses_tokenizer(lang: str):
  sacremoses = _sacremoses()

  class _MosesTokenizer(sacremoses.MosesTokenizer):
    """sacremoses' tokenizer plus tokenizer.perl's last-word rule.

    tokenizer.perl: "split last words independently as they are unlikely to
    be non-breaking prefixes": a line's last word loses its period even when
    it is a known abbreviation ("usw.", "z.B.").
    """

    def handles_nonbreaking_prefixes(self, text):
      tokens = text.split()
      if tokens and (match := _ENDS_WITH_PERIOD.match(tokens[-1])):
        tokens[-1] = match.group(1) + " ."
      return super().handles_nonbreaking_prefixes(" ".join(tokens))

  return _MosesTokenizer(lang=lang)


@functools.lru_cache(maxsize=1)
def _punct_normalizer():
  return _sacremoses().MosesPunctNormalizer()


def replace_unicode_punctuation(line: str) -> str:
  """Moses ``replace-unicode-punctuation.perl`` (step 1, hypotheses only)."""
  return _punct_normalizer().replace_unicode_punct(line)


def moses_tokenize(line: str, lang: str) -> str:
  """Moses ``tokenizer.perl -l LANG`` (default escaping: & -> &amp; etc.)."""
  return _moses_tokenizer(lang).tokenize(line, return_str=True, escape=True)


def tokenize_for_bleu(line: str, lang: str, compound_split: bool,
                      hypothesis: bool = False) -> str:
  """Steps 1 (hypotheses only) to 3 of the paper-comparable BLEU, one line."""
  if hypothesis:
    line = replace_unicode_punctuation(line)
  line = moses_tokenize(line, lang)
  return split_compounds(line) if compound_split else line


def _check(hypotheses: Sequence[str], references: Sequence[str]):
  if len(hypotheses) != len(references):
    raise ValueError(
        f"BLEU needs one hypothesis per reference: got {len(hypotheses)} "
        f"hypotheses and {len(references)} references.")
  if not references:
    raise ValueError("BLEU needs at least one sentence; got none.")


def sacrebleu_bleu(hypotheses: Sequence[str], references: Sequence[str], *,
                   lowercase: bool = False):
  """sacreBLEU on detokenized text. Returns (score, signature string).

  ``lowercase`` is sacreBLEU's ``-lc`` (the figure Multi30k papers print).
  """
  _check(hypotheses, references)
  # Cased (unless lowercase), 13a, exp smoothing: sacreBLEU defaults.
  metric = sacrebleu.BLEU(lowercase=lowercase)
  score = metric.corpus_score(list(hypotheses), [list(references)])
  return float(score.score), str(metric.get_signature())


def tokenized_bleu(hypotheses: Sequence[str], references: Sequence[str],
                   lang: str = "de", compound_split: bool | None = None):
  """Paper-comparable BLEU: get_ende_bleu.sh's steps (module docstring).

  Args:
    hypotheses: detokenized system outputs, one per sentence.
    references: detokenized references, same order.
    lang: target language for Moses' tokenizer rules.
    compound_split: split hyphenated compounds (##AT##); None means "only for
      German", the convention the paper's EN-DE figures follow.

  Returns:
    BLEU in [0, 100].
  """
  _check(hypotheses, references)
  if compound_split is None:
    compound_split = lang == "de"
  hyps = [tokenize_for_bleu(h, lang, compound_split, hypothesis=True)
          for h in hypotheses]
  refs = [tokenize_for_bleu(r, lang, compound_split) for r in references]
  # multi-bleu.perl: whitespace tokens, cased, no smoothing.
  metric = sacrebleu.BLEU(tokenize="none", smooth_method="none", force=True)
  return float(metric.corpus_score(hyps, [refs]).score)


def compute_bleu(hypotheses: Sequence[str], references: Sequence[str],
                 lang: str = "de") -> dict:
  """Both BLEU figures, as written into evaluation reports.

  Returns:
    {"bleu": sacreBLEU, "sacrebleu_signature": str, "bleu_tokenized": float}.
  """
  bleu, signature = sacrebleu_bleu(hypotheses, references)
  return {
      "bleu": bleu,
      "sacrebleu_signature": signature,
      "bleu_tokenized": tokenized_bleu(hypotheses, references, lang),
  }
