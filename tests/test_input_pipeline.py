"""The input-pipeline benchmark runs end to end on a tiny generated corpus and
reports consistent figures; the corpus has the lengths it promises."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import input_pipeline

PAIRS = 3000


@pytest.mark.slow
def test_benchmark_on_a_tiny_corpus(tmp_path):
  script = os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                        "input_pipeline.py")
  result = subprocess.run(
      [sys.executable, script, f"--pairs={PAIRS}", "--vocab_size=500",
       "--batches=5", "--warmup=2", "--busy_cores=0", f"--cache_dir={tmp_path}",
       "--json"], capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  r = json.loads(result.stdout)

  assert r["pairs"] == PAIRS
  assert r["config"]["model.vocab_size"] == 500
  assert r["config"]["data"]["batch_tokens"] == 25000  # The WMT config's.
  assert r["config"]["data"]["source"] == "text"
  assert r["batch_shape"] == [25000 // 256, 256]
  assert 0 < r["padding_efficiency"] <= 1
  for key in ("tokenizer_seconds", "tokenize_pairs_per_second", "batches_per_second",
              "real_target_tokens_per_second", "sentencepiece_pairs_per_second",
              "tokenize_vs_sentencepiece", "peak_rss_bytes"):
    assert r[key] > 0, key
  assert r["time_to_first_batch_seconds"] >= r["tokenizer_seconds"] + r["tokenize_seconds"]
  # At most every slot of the 5 timed batches is a real target token.
  assert r["real_target_tokens_per_second"] <= 5 * 97 * 256 / (5 / r["batches_per_second"])
  assert r["real_target_tokens_per_second_busy"] is None
  assert r["corpus_generation_seconds"] > 0
  assert 0 < r["process_cpu_seconds_per_batch"] < 60
  assert r["machine"]["cpu_count"] >= 1 and r["command"]
  assert len(r["load_average_1min"]) == 2

  # The corpus: as many German as English lines, in every split.
  corpus = os.path.join(tmp_path, f"corpus-{PAIRS}-seed0-words200000")
  for split, n in (("train", PAIRS), ("validation", 3000), ("test", 3000)):
    for lang in ("en", "de"):
      with open(os.path.join(corpus, f"{split}.{lang}"), encoding="utf-8") as f:
        lines = f.read().split("\n")
      assert lines[-1] == "" and len(lines) - 1 == n, (split, lang)
      assert all(line and line.endswith(".") for line in lines[:-1])
  # Tokens per sentence: 500 pieces split words more than the 37000 of the WMT
  # config (about 27 per side there), so a loose band.
  for side in ("source", "target"):
    stats = r["corpus_tokens"][side]
    assert 20 < stats["mean"] < 120, stats
    assert stats["p50"] < stats["mean"] < stats["p99"] <= stats["max"], stats


def test_corpus_is_reused_and_deterministic(tmp_path):
  first, seconds = input_pipeline.generated_corpus(tmp_path / "a", 100, 7, 1000)
  assert seconds is not None
  again, seconds = input_pipeline.generated_corpus(tmp_path / "a", 100, 7, 1000)
  assert again == first and seconds is None  # Reused, not regenerated.
  other, _ = input_pipeline.generated_corpus(tmp_path / "b", 100, 7, 1000)
  for name in ("train.en", "train.de", "test.de"):
    with open(os.path.join(first, name), "rb") as a, open(os.path.join(other, name), "rb") as b:
      assert a.read() == b.read()


def test_sentence_lengths_are_log_normal_and_correlated():
  source, target = input_pipeline.sentence_lengths(200_000, np.random.default_rng(0))
  # Log-normal with median 18 words and sigma 0.65: mean 18 * exp(0.65^2 / 2).
  assert np.median(source) == 18
  assert source.mean() == pytest.approx(18 * np.exp(0.65**2 / 2), rel=0.01)
  assert source.min() >= 1 and source.max() == 200  # Clipped tail.
  assert np.corrcoef(np.log(source), np.log(target))[0, 1] > 0.9
