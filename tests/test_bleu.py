"""Tests for transformer/bleu.py: sacreBLEU and paper-comparable tokenized BLEU.

Expected strings and the 67.78 marked "Perl" below were produced on 2026-11-25
by the Moses scripts that tensor2tensor's get_ende_bleu.sh calls
(replace-unicode-punctuation.perl and tokenizer.perl as on Moses master,
tokenizer.perl's non-Penn path; multi-bleu.perl; the ##AT## one-liner), run
with perl 5.36 in the order get_ende_bleu.sh runs them:
  replace-unicode-punctuation.perl < hyp | tokenizer.perl -l de | perl -ple ATAT
  tokenizer.perl -l de < ref | perl -ple ATAT
  multi-bleu.perl ref.atat < hyp.atat
The same pipeline agreed with tokenized_bleu line for line on 645 German
lines (vim's German tutor plus the sentences here).
"""

import collections
import math

import pytest
import sacrebleu

from transformer import bleu

HYPS = [
    "Das Haus ist klein.",
    "Der state-of-the-art Ansatz kostet 3,50 € & mehr.",
    "Er sagte: \"Es ist ein rich-text Format\".",
    "Heute regnet es nicht.",
]
REFS = [
    "Das Haus ist sehr klein.",
    "Der state-of-the-art-Ansatz kostet 3,50 € und mehr.",
    "Er sagte: \"Es ist ein rich-text-Format\".",
    "Heute regnet es.",
]


def multi_bleu(hyps, refs):
  """An independent multi-bleu.perl: whitespace tokens, cased, no smoothing."""
  matches, totals = [0] * 4, [0] * 4
  hyp_len = ref_len = 0
  for h, r in zip(hyps, refs, strict=True):
    h, r = h.split(), r.split()
    hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
    for n in range(1, 5):
      hc = collections.Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
      rc = collections.Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
      matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
      totals[n - 1] += max(len(h) - n + 1, 0)
  if min(matches) == 0:
    return 0.0
  log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
  brevity = min(1.0, math.exp(1 - ref_len / hyp_len))
  return 100 * brevity * math.exp(log_precision)


def test_sacrebleu_bleu_equals_sacrebleu_corpus_bleu():
  score, signature = bleu.sacrebleu_bleu(HYPS, REFS)
  assert score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
  assert 20 < score < 80
  assert signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
  assert f"version:{sacrebleu.__version__}" in signature


def test_identical_text_scores_100():
  score, _ = bleu.sacrebleu_bleu(REFS, REFS)
  assert score == pytest.approx(100.0)
  assert bleu.tokenized_bleu(REFS, REFS) == pytest.approx(100.0)


def test_split_compounds_matches_the_perl_one_liner():
  # Expected outputs produced with
  #   perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'
  line = "state-of-the-art a-b-c rich-text x - y -5 e-"
  assert bleu.split_compounds(line) == (
      "state ##AT##-##AT## of ##AT##-##AT## the ##AT##-##AT## art "
      "a ##AT##-##AT## b-c rich ##AT##-##AT## text x - y -5 e-")
  assert bleu.split_compounds("no compounds here") == "no compounds here"


def test_moses_tokenization_worked_examples():
  # tokenizer.perl -l de, default escaping.
  assert bleu.moses_tokenize("Das Haus ist klein.", "de") == "Das Haus ist klein ."
  assert bleu.moses_tokenize(
      "Er sagte: \"Es kostet 3,50 € & mehr, z.B. heute.\"", "de") == (
          "Er sagte : &quot; Es kostet 3,50 € &amp; mehr , z.B. heute . &quot;")
  assert bleu.tokenize_for_bleu(
      "Ein rich-text Format.", "de", compound_split=True) == (
          "Ein rich ##AT##-##AT## text Format .")


def test_tokenized_bleu_is_multi_bleu_on_tokenized_split_text():
  tok_hyps = [bleu.tokenize_for_bleu(h, "de", True, hypothesis=True) for h in HYPS]
  tok_refs = [bleu.tokenize_for_bleu(r, "de", True) for r in REFS]
  assert tok_refs[1] == (
      "Der state ##AT##-##AT## of ##AT##-##AT## the ##AT##-##AT## art "
      "##AT##-##AT## Ansatz kostet 3,50 € und mehr .")
  want = multi_bleu(tok_hyps, tok_refs)
  assert bleu.tokenized_bleu(HYPS, REFS, "de") == pytest.approx(want, rel=1e-6)
  # Tokenization and compound splitting give more, shorter tokens: here the
  # paper-comparable figure is higher than sacreBLEU.
  assert want > bleu.sacrebleu_bleu(HYPS, REFS)[0]


def test_replace_unicode_punctuation_matches_the_perl_script():
  # Perl: replace-unicode-punctuation.perl. "„", "‘" and "–" are not in its
  # table and stay; "１" is "1" on Moses master (older copies made it '"').
  assert bleu.replace_unicode_punctuation(
      "Er sagte：„Es kostet １０％ – oder？“ Dann… ‘gut’ （ja）。 Ende．") == (
          "Er sagte:„Es kostet 10% – oder?\" Dann... ‘gut' (ja). Ende. ")


def test_moses_tokenize_splits_the_period_of_the_last_word():
  # Perl: tokenizer.perl -l de. "usw" is a non-breaking prefix for German,
  # but tokenizer.perl always splits the last word's period (sacremoses 0.2.0
  # alone would leave "usw.").
  assert bleu.moses_tokenize("Wir kaufen Äpfel, Birnen usw.", "de") == (
      "Wir kaufen Äpfel , Birnen usw .")
  assert bleu.moses_tokenize("Wir kaufen Äpfel usw. und Birnen.", "de") == (
      "Wir kaufen Äpfel usw. und Birnen .")


def test_only_hypotheses_get_unicode_punctuation_replaced():
  line = "„Das ist’s“, sagte er."
  # Perl: replace-unicode-punctuation.perl | tokenizer.perl -l de.
  assert bleu.tokenize_for_bleu(line, "de", True, hypothesis=True) == (
      "„ Das ist &apos; s &quot; , sagte er .")
  # Perl: tokenizer.perl -l de.
  assert bleu.tokenize_for_bleu(line, "de", True) == "„ Das ist ’ s “ , sagte er ."
  # So, as with get_ende_bleu.sh, a hypothesis equal to a reference with
  # curly quotes does not score 100.
  assert bleu.tokenized_bleu([line], [line]) < 100


def test_tokenized_bleu_equals_get_ende_bleu_sh():
  hyps = ["Das Haus ist klein.",
          "Der state-of-the-art Ansatz kostet 3,50 € & mehr.",
          "Er sagte: „Es ist ein rich-text Format“.",
          "Heute regnet es nicht…"]
  refs = ["Das Haus ist sehr klein.",
          "Der state-of-the-art-Ansatz kostet 3,50 € und mehr.",
          "Er sagte: „Es ist ein rich-text-Format“.",
          "Heute regnet es nicht..."]
  # Perl: the files get_ende_bleu.sh hands to multi-bleu.perl.
  perl_hyps = [
      "Das Haus ist klein .",
      "Der state ##AT##-##AT## of ##AT##-##AT## the ##AT##-##AT## art Ansatz "
      "kostet 3,50 € &amp; mehr .",
      "Er sagte : „ Es ist ein rich ##AT##-##AT## text Format &quot; .",
      "Heute regnet es nicht ...",
  ]
  perl_refs = [
      "Das Haus ist sehr klein .",
      "Der state ##AT##-##AT## of ##AT##-##AT## the ##AT##-##AT## art "
      "##AT##-##AT## Ansatz kostet 3,50 € und mehr .",
      "Er sagte : „ Es ist ein rich ##AT##-##AT## text ##AT##-##AT## Format “ .",
      "Heute regnet es nicht ...",
  ]
  assert [bleu.tokenize_for_bleu(h, "de", True, hypothesis=True)
          for h in hyps] == perl_hyps
  assert [bleu.tokenize_for_bleu(r, "de", True) for r in refs] == perl_refs
  # Perl: multi-bleu.perl printed "BLEU = 67.78, 94.7/79.4/66.7/57.7
  # (BP=0.924, ratio=0.927, hyp_len=38, ref_len=41)".
  score = bleu.tokenized_bleu(hyps, refs, "de")
  assert round(score, 2) == 67.78
  assert score == pytest.approx(multi_bleu(perl_hyps, perl_refs), rel=1e-9)


def test_compound_splitting_only_by_default_for_german():
  no_split = multi_bleu([bleu.tokenize_for_bleu(h, "fr", False, hypothesis=True)
                         for h in HYPS],
                        [bleu.moses_tokenize(r, "fr") for r in REFS])
  assert bleu.tokenized_bleu(HYPS, REFS, "fr") == pytest.approx(no_split, rel=1e-6)
  assert bleu.tokenized_bleu(HYPS, REFS, "de") != pytest.approx(no_split)


def test_multi_bleu_has_no_smoothing():
  # No 4-gram match anywhere: multi-bleu.perl reports 0.
  assert bleu.tokenized_bleu(["a b c"], ["a b c d"]) == 0.0


def test_compute_bleu_report_keys():
  report = bleu.compute_bleu(HYPS, REFS, "de")
  assert set(report) == {"bleu", "sacrebleu_signature", "bleu_tokenized"}
  assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)


def test_mismatched_lengths_raise_a_clear_error():
  with pytest.raises(ValueError, match="2 hypotheses and 1 references"):
    bleu.sacrebleu_bleu(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="at least one sentence"):
    bleu.tokenized_bleu([], [])
