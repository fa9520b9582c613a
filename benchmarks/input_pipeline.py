r"""Input pipeline speed at WMT scale: can one host feed 8 GPUs?

  python benchmarks/input_pipeline.py --pairs=4500000            # WMT14 EN-DE size
  python benchmarks/input_pipeline.py --pairs=1000000 --json
  python benchmarks/input_pipeline.py --corpus_dir=DIR          # train.{en,de} of your own

The paper's base model takes about 25000 source + 25000 target tokens per
step, 0.4 s a step on 8 P100s (§5.1-5.2); a modern 8-GPU host asks for several
times that. This runs the real pipeline of transformer/data/, with
configs/wmt14_ende.py:base's data settings, from raw text to batches:

* corpus: ``--pairs`` generated sentence pairs with WMT-like lengths (below),
  written once as train/validation/test.{en,de} under ``--cache_dir`` and
  reused by later runs (never timed); or ``--corpus_dir``.
* tokenizer_seconds: data.load_tokenizer from scratch (sampling the training
  text and training SentencePiece, model.vocab_size pieces).
* tokenize_pairs_per_second: data.tokenize_split of train from scratch
  (reading the text, encoding both sides in ``tokenize_workers`` worker
  processes, one per usable core, writing the token-id cache; a corpus of one
  chunk, 20000 pairs or fewer, is encoded in this process instead).
* sentencepiece_pairs_per_second: the ceiling for the figure above:
  SentencePiece's own multi-threaded batch encode of the same training text,
  both sides, in chunks of 20000 lines already in memory (reading untimed).
* time_to_first_batch_seconds: tokenizer + tokenization + make_train_iterator
  + the first next(), i.e. a fresh run from raw text to its first batch.
* batches_per_second, real_target_tokens_per_second, padding_efficiency:
  ``--batches`` batches after ``--warmup`` warm-up batches; real target tokens
  are the non-zero entries of targets_segmentation; padding efficiency is
  data.padding_efficiency (both sides), averaged over the timed batches.
* real_target_tokens_per_second_busy: the same, on a fresh iterator, while
  ``--busy_cores`` other processes each spin a core (a training step's host
  work competes with the pipeline for cores).
* peak_rss_bytes: the peak resident memory of this process and its children
  (the tokenization workers) together: the larger of this process's own peak
  (getrusage ru_maxrss, exact) and the largest sum of the tree's resident
  memory sampled every 50 ms (/proc, Linux), up to the end of the quiet
  measurement (the busy processes are not counted). A corpus generated in the
  same run adds its own (bounded, ~0.2 GB) peak: rerun for a clean figure.

The generated corpus. Words are pseudo-words of random syllables (an English-
and a German-looking syllable set), ranked by a Zipf-Mandelbrot law over
``--vocab_words`` types per language, frequent words short, rare words long,
so that a 37000-piece BPE keeps the frequent words whole and splits the rare
ones, as on real text. Sentence lengths in words are log-normal (median 18,
a tail to 200 words); the German length is the English one times a
log-normal factor. Each sentence starts with a capital and ends with a
period. With the WMT config this gives about 27 tokens per side on average
and a tail past 250 tokens, close to WMT14 EN-DE's (the JSON's
"corpus_tokens" has the measured figures). It is generated with numpy in
chunks: 4.5M pairs (1.3 GB of text) in about a minute, in 0.2 GB.
"""

import contextlib
import json
import multiprocessing
import os
import pathlib
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root

import numpy as np
import sentencepiece as spm
from absl import app, flags, logging

from configs import wmt14_ende
from transformer import data
from transformer.data import encode_worker


def _define_flags():
  """The command line's flags, defined only when run as a script, so that
  importing this module beside benchmarks/benchmark.py (whose flags share
  names such as --json) defines nothing twice."""
  # pylint: disable=global-statement
  global _PAIRS, _SEED, _CORPUS_DIR, _CACHE_DIR, _WORKDIR, _REUSE
  global _BATCH_TOKENS, _MAX_LENGTH, _VOCAB_SIZE, _WORKERS, _PREFETCH, _BATCHES
  global _WARMUP, _BUSY_CORES, _VOCAB_WORDS, _JSON
  _PAIRS = flags.DEFINE_integer("pairs", 1_000_000, "Generated training pairs (ignored "
                                "with --corpus_dir).")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the generated corpus.")
  _CORPUS_DIR = flags.DEFINE_string("corpus_dir", None,
                                    "An existing folder of train.{en,de} instead of a "
                                    "generated corpus.")
  _CACHE_DIR = flags.DEFINE_string(
      "cache_dir", os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                "transformer", "input_pipeline"),
      "Where generated corpora are kept (one folder per --pairs and --seed).")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Tokenizer and token cache folder; default "
                                 "<cache_dir>/work-<corpus>.")
  _REUSE = flags.DEFINE_bool("reuse", False, "Reuse the workdir's tokenizer and token cache "
                             "(their timings are then loads, not builds).")
  _BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", None, "data.batch_tokens (default: "
                                       "the WMT config's, 25000).")
  _MAX_LENGTH = flags.DEFINE_integer("max_length", None, "data.max_length (default: the "
                                     "WMT config's, 256).")
  _VOCAB_SIZE = flags.DEFINE_integer("vocab_size", None, "model.vocab_size (default: the "
                                     "WMT config's, 37000).")
  _WORKERS = flags.DEFINE_integer("workers", None, "data.workers, where the config has it.")
  _PREFETCH = flags.DEFINE_integer("prefetch", 0, "data.prefetch.")
  _BATCHES = flags.DEFINE_integer("batches", 300, "Batches timed.")
  _WARMUP = flags.DEFINE_integer("warmup", 5, "Batches before the timed ones.")
  _BUSY_CORES = flags.DEFINE_integer("busy_cores", 1, "Processes spinning a core each "
                                     "during the second throughput measurement; 0: skip it.")
  _VOCAB_WORDS = flags.DEFINE_integer("vocab_words", 200_000, "Word types per language of "
                                      "the generated corpus.")
  _JSON = flags.DEFINE_bool("json", False, "Print one JSON object with every figure.")

_LINES_PER_CHUNK = 20_000  # Pairs generated, and lines encoded by SentencePiece, at a time.
_EVAL_PAIRS = 3000  # Generated validation and test pairs (newstest size).


# ----------------------------------------------------------------------------
# Generated corpus.
# ----------------------------------------------------------------------------

# (onsets, nuclei, codas) per language; a syllable is one of each.
_SYLLABLES = {
    "en": (["", "", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t",
            "v", "w", "st", "tr", "pl", "ch", "sh", "th", "br", "gr"],
           ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ea", "ou", "ai", "ee", "y"],
           ["", "", "", "", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "m", "d"]),
    "de": (["", "", "b", "d", "f", "g", "h", "k", "l", "m", "n", "r", "s", "t", "w", "z",
            "sch", "st", "sp", "ch", "kr", "tr", "br", "gr", "schw", "zw"],
           ["a", "e", "i", "o", "u", "a", "e", "i", "ä", "ö", "ü", "ei", "au", "ie", "e"],
           ["", "", "", "", "n", "r", "s", "t", "l", "ch", "ng", "rt", "cht", "nd", "st",
            "ß", "tz", "en", "er"]),
}
# Zipf-Mandelbrot word frequencies, p(rank) ~ 1 / (rank + _ZIPF_OFFSET)^_ZIPF_EXPONENT.
_ZIPF_EXPONENT = 1.2
_ZIPF_OFFSET = 2.7
# Sentence lengths in words: log-normal (median, sigma), at most _MAX_WORDS;
# the German side is the English length times exp(N(0, _TARGET_SIGMA)).
_WORDS_MEDIAN = 18.0
_WORDS_SIGMA = 0.65
_MAX_WORDS = 200
_TARGET_SIGMA = 0.2


class _Vocabulary:
  """Word types of one language as one byte buffer: word r (rank r, 0 the most
  frequent) is ``buffer[starts[r]:starts[r] + lengths[r]]``, its trailing space
  included. The last type is ".\\n", which ends every sentence."""

  def __init__(self, lang, size, rng):
    onsets, nuclei, codas = _SYLLABLES[lang]
    words = [","]  # The most frequent "word".
    seen = set(words)
    while len(words) < size:
      n = size - len(words)
      ranks = np.arange(len(words), len(words) + n)
      # Frequent words are short (Zipf's law of abbreviation).
      syllables = 1 + rng.poisson(0.10 * np.log(ranks + 2))
      total = int(syllables.sum())
      parts = np.char.add(np.char.add(
          np.asarray(onsets)[rng.integers(len(onsets), size=total)],
          np.asarray(nuclei)[rng.integers(len(nuclei), size=total)]),
          np.asarray(codas)[rng.integers(len(codas), size=total)]).tolist()
      ends = np.cumsum(syllables).tolist()
      start = 0
      for end in ends:
        word = "".join(parts[start:end])
        start = end
        if word not in seen:
          seen.add(word)
          words.append(word)
    encoded = [(w + " ").encode() for w in words[:size]] + [b".\n"]
    self.lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    self.starts = np.cumsum(self.lengths) - self.lengths
    self.buffer = np.frombuffer(b"".join(encoded), np.uint8)
    self.period = len(encoded) - 1
    weights = 1.0 / (np.arange(size) + _ZIPF_OFFSET) ** _ZIPF_EXPONENT
    self.cdf = np.cumsum(weights) / weights.sum()

  def render(self, words_per_sentence, rng):
    """Bytes of sentences of the given word counts, one per line."""
    count = words_per_sentence + 1  # The period.
    ids = np.searchsorted(self.cdf, rng.random(int(count.sum())), side="right")
    ids = np.minimum(ids, self.period - 1)
    ends = np.cumsum(count) - 1
    ids[ends] = self.period
    lengths = self.lengths[ids]
    lengths[ends - 1] -= 1  # No space before the period.
    out_starts = np.cumsum(lengths) - lengths
    index = np.repeat(self.starts[ids] - out_starts, lengths) + np.arange(int(lengths.sum()))
    text = self.buffer[index]
    first = out_starts[ends - count + 1]
    lower = (text[first] >= ord("a")) & (text[first] <= ord("z"))
    text[first[lower]] -= 32  # Capitalized.
    return text.tobytes()


def sentence_lengths(n, rng):
  """Words per (English, German) sentence of ``n`` pairs."""
  source = np.exp(rng.normal(np.log(_WORDS_MEDIAN), _WORDS_SIGMA, n))
  target = source * np.exp(rng.normal(0.0, _TARGET_SIGMA, n))
  clip = lambda x: np.clip(np.rint(x), 1, _MAX_WORDS).astype(np.int64)
  return clip(source), clip(target)


def write_corpus(directory, pairs, seed, *, vocab_words=200_000, eval_pairs=_EVAL_PAIRS):
  """Writes {train,validation,test}.{en,de} (once) and returns ``directory``.

  Deterministic by ``seed``. Written in chunks of 20000 pairs into a temporary
  folder that is renamed at the end, so an interrupted run leaves no corpus.
  """
  if os.path.isfile(os.path.join(directory, "done")):
    return directory
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(directory) + ".tmp")
  rng = np.random.default_rng(seed)
  vocabularies = {lang: _Vocabulary(lang, vocab_words, rng) for lang in ("en", "de")}
  for split, n in (("train", pairs), ("validation", eval_pairs), ("test", eval_pairs)):
    with open(os.path.join(tmp, f"{split}.en"), "wb") as en, \
        open(os.path.join(tmp, f"{split}.de"), "wb") as de:
      for start in range(0, n, _LINES_PER_CHUNK):
        source, target = sentence_lengths(min(_LINES_PER_CHUNK, n - start), rng)
        en.write(vocabularies["en"].render(source, rng))
        de.write(vocabularies["de"].render(target, rng))
  with open(os.path.join(tmp, "done"), "w") as f:
    json.dump({"pairs": pairs, "seed": seed, "vocab_words": vocab_words}, f)
  try:
    os.rename(tmp, directory)
  except OSError:  # Another run wrote it first.
    shutil.rmtree(tmp)
  return directory


def generated_corpus(cache_dir, pairs, seed, vocab_words):
  """The folder of the generated corpus, written on first use; (dir, seconds or None)."""
  directory = os.path.join(cache_dir, f"corpus-{pairs}-seed{seed}-words{vocab_words}")
  if os.path.isfile(os.path.join(directory, "done")):
    return directory, None
  start = time.perf_counter()
  write_corpus(directory, pairs, seed, vocab_words=vocab_words)
  return directory, time.perf_counter() - start


# ----------------------------------------------------------------------------
# Measurements.
# ----------------------------------------------------------------------------


def benchmark_config(corpus_dir, workdir, *, batch_tokens=None, max_length=None,
                     vocab_size=None, workers=None, prefetch=0):
  """configs/wmt14_ende.py:base reading ``corpus_dir`` as source="text"."""
  config = wmt14_ende.get_config("base")
  d = config.data
  d.source = "text"
  d.dir = os.path.abspath(corpus_dir)
  d.cache_dir = os.path.join(workdir, "data_cache")
  d.prefetch = prefetch
  if batch_tokens is not None:
    d.batch_tokens = batch_tokens
  if max_length is not None:
    d.max_length = max_length
  if vocab_size is not None:
    config.model.vocab_size = vocab_size
  if workers is not None:
    if "workers" in d:
      d.workers = workers
    else:
      logging.warning("--workers=%d ignored: this config has no data.workers.", workers)
  return config


def _spin(ready):
  ready.put(os.getpid())
  while True:
    pass


@contextlib.contextmanager
def busy_cores(n):
  """``n`` processes, each spinning a core (a pure-Python loop) until exit."""
  context = multiprocessing.get_context("spawn")  # Small children, no forked state.
  ready = context.Queue()
  processes = [context.Process(target=_spin, args=(ready,), daemon=True) for _ in range(n)]
  for p in processes:
    p.start()
  try:
    for _ in processes:
      ready.get(timeout=120)
    yield
  finally:
    for p in processes:
      p.terminate()
    for p in processes:
      p.join()


def measure_batches(it, batches, warmup):
  """Throughput of ``it`` over ``batches`` batches after ``warmup`` ones."""
  for _ in range(warmup):
    next(it)
  real_targets = 0
  efficiency = 0.0
  cpu_start = time.process_time()
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
    real_targets += np.count_nonzero(batch["targets_segmentation"])
    efficiency += data.padding_efficiency(batch)
  seconds = time.perf_counter() - start
  cpu_seconds = time.process_time() - cpu_start
  return {"seconds": seconds, "batches_per_second": batches / seconds,
          "process_cpu_seconds_per_batch": cpu_seconds / batches,
          "real_target_tokens_per_second": real_targets / seconds,
          "padding_efficiency": efficiency / batches,
          "batch_shape": list(batch["targets"].shape)}


def _line_chunks(path, size):
  with open(path, encoding="utf-8") as f:
    chunk = []
    for line in f:
      chunk.append(line.rstrip("\n"))
      if len(chunk) == size:
        yield chunk
        chunk = []
    if chunk:
      yield chunk


def sentencepiece_ceiling(model_path, paths, pairs):
  """Pairs/s of SentencePiece's own batch encode of ``paths`` (both sides).

  Only the encode calls are timed; lines are read in chunks beforehand.
  """
  processor = spm.SentencePieceProcessor(model_file=model_path)
  seconds = 0.0
  for path in paths:
    for chunk in _line_chunks(path, _LINES_PER_CHUNK):
      start = time.perf_counter()
      processor.encode(chunk, out_type=int, num_threads=os.cpu_count())
      seconds += time.perf_counter() - start
  return pairs / seconds


def token_statistics(lengths):
  """Mean and percentiles of sentence lengths in tokens (no EOS)."""
  lengths = np.asarray(lengths)
  p = np.percentile(lengths, [50, 90, 99, 99.9])
  return {"mean": float(lengths.mean()), "p50": float(p[0]), "p90": float(p[1]),
          "p99": float(p[2]), "p99.9": float(p[3]), "max": int(lengths.max())}


def machine_info():
  model = ""
  with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  memory = None
  with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
    memory = int(f.readline().split()[1]) * 1024
  return {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
          "cpu_model": model, "memory_bytes": memory, "platform": platform.platform(),
          "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def _tree_rss():
  """Resident bytes of this process and its live descendants, from /proc
  (Linux); None where there is no /proc. A child that still runs this
  process's program (between fork and exec) is not counted: its pages are
  this process's."""
  try:
    with open("/proc/self/cmdline", "rb") as f:
      own_command = f.read()
  except OSError:
    return None
  total, pending = 0, [os.getpid()]
  while pending:
    pid = pending.pop()
    try:
      if pid != os.getpid():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
          if f.read() == own_command:
            continue
      with open(f"/proc/{pid}/status") as f:
        total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
      for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
          pending.extend(map(int, f.read().split()))
    except (OSError, StopIteration, ValueError):
      pass  # A process that ended while being read.
  return total


class TreeMemory:
  """The largest sum of resident memory of this process and its children
  (the tokenization workers), sampled every ``interval`` seconds by a thread.

  getrusage's peak of the children cannot give it: a child's peak includes
  the parent's image it was forked from, before it ran the worker program,
  and children alive at the same time add up.
  """

  def __init__(self, interval=0.05):
    self.peak = _tree_rss()
    self._interval = interval
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def _sample(self):
    while self.peak is not None and not self._stop.wait(self._interval):
      rss = _tree_rss()
      self.peak = None if rss is None else max(self.peak, rss)

  def start(self):
    self._thread.start()

  def stop(self):
    self._stop.set()
    self._thread.join()


def run_benchmark(corpus_dir, workdir, *, reuse=False, batch_tokens=None, max_length=None,
                  vocab_size=None, workers=None, prefetch=0, batches=300, warmup=5,
                  busy=1, command=""):
  """Every figure of the module docstring, as a dict."""
  if batches < 1:
    raise ValueError(f"--batches={batches} must be at least 1.")
  for name in ("train.en", "train.de"):
    if not os.path.isfile(os.path.join(corpus_dir, name)):
      raise FileNotFoundError(f"{os.path.join(corpus_dir, name)} does not exist: the corpus "
                              "folder needs train.en and train.de, one sentence a line.")
  load_average_start = os.getloadavg()
  if not reuse:
    for name in ("tokenizer", "data_cache"):
      shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
  config = benchmark_config(corpus_dir, workdir, batch_tokens=batch_tokens,
                            max_length=max_length, vocab_size=vocab_size, workers=workers,
                            prefetch=prefetch)
  d = config.data
  memory = TreeMemory()  # Stopped before the busy processes start.
  memory.start()

  start = time.perf_counter()
  tokenizer = data.load_tokenizer(d, workdir, vocab_size=config.model.vocab_size)
  tokenizer_seconds = time.perf_counter() - start

  start = time.perf_counter()
  train = data.tokenize_split(d, tokenizer, workdir, d.train_split)
  tokenize_seconds = time.perf_counter() - start
  pairs = len(train)
  # The ceiling right after the build, so that both see the same load.
  sentencepiece = sentencepiece_ceiling(
      tokenizer.path, [os.path.join(d.dir, f"{d.train_split}.{lang}")
                       for lang in (d.source_lang, d.target_lang)], pairs)
  source_lengths, target_lengths = train.source_lengths, train.target_lengths
  too_long = (np.maximum(source_lengths, target_lengths) + 1 > d.max_length).sum()
  corpus_tokens = {"source": token_statistics(source_lengths),
                   "target": token_statistics(target_lengths),
                   "pairs_longer_than_max_length": int(too_long)}
  del train, source_lengths, target_lengths

  start = time.perf_counter()
  it = data.make_train_iterator(d, tokenizer, workdir)
  iterator_seconds = time.perf_counter() - start
  start = time.perf_counter()
  next(it)
  first_batch_seconds = time.perf_counter() - start
  try:
    quiet = measure_batches(it, batches, warmup)
  finally:
    it.close()
  del it
  memory.stop()
  peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

  busy_result = None
  if busy > 0:
    with busy_cores(busy):
      it = data.make_train_iterator(d, tokenizer, workdir)
      try:
        busy_result = measure_batches(it, batches, warmup)
      finally:
        it.close()
      del it

  tokenize_rate = pairs / tokenize_seconds
  return {
      "pairs": pairs,
      "corpus_dir": d.dir,
      "workdir": workdir,
      "reused_workdir": reuse,
      "tokenizer_seconds": tokenizer_seconds,
      "tokenize_seconds": tokenize_seconds,
      "tokenize_pairs_per_second": tokenize_rate,
      "sentencepiece_pairs_per_second": sentencepiece,
      "tokenize_vs_sentencepiece": tokenize_rate / sentencepiece,
      "tokenize_workers": encode_worker.usable_cores(),
      "make_train_iterator_seconds": iterator_seconds,
      "first_batch_seconds": first_batch_seconds,
      "time_to_first_batch_seconds": (tokenizer_seconds + tokenize_seconds + iterator_seconds
                                      + first_batch_seconds),
      "batches_timed": batches,
      "warmup_batches": warmup,
      "batch_shape": quiet["batch_shape"],
      "batches_per_second": quiet["batches_per_second"],
      # CPU time of this process (all its threads) per timed batch: less
      # sensitive than the wall-clock figures to other load on the machine.
      "process_cpu_seconds_per_batch": quiet["process_cpu_seconds_per_batch"],
      "real_target_tokens_per_second": quiet["real_target_tokens_per_second"],
      "padding_efficiency": quiet["padding_efficiency"],
      "busy_cores": busy,
      "batches_per_second_busy": busy_result and busy_result["batches_per_second"],
      "real_target_tokens_per_second_busy": (busy_result and
                                             busy_result["real_target_tokens_per_second"]),
      "peak_rss_bytes": max(peak_self, memory.peak or 0),
      "peak_rss_self_bytes": peak_self,
      "peak_rss_with_children_sampled_bytes": memory.peak,
      "corpus_tokens": corpus_tokens,
      "config": {"data": d.to_dict(), "model.vocab_size": config.model.vocab_size,
                 "data.workers": d.get("workers")},
      "machine": machine_info(),
      # 1-minute load averages before and after: above the CPU count, other
      # processes shared the cores and the timings are pessimistic.
      "load_average_1min": [load_average_start[0], os.getloadavg()[0]],
      "command": command,
  }


def format_report(r):
  rate = lambda x: "n/a" if x is None else f"{x:,.0f}"
  s, t = r["corpus_tokens"]["source"], r["corpus_tokens"]["target"]
  return "\n".join([
      f"corpus: {r['pairs']:,} pairs in {r['corpus_dir']}; tokens per sentence "
      f"source mean {s['mean']:.1f} p50 {s['p50']:.0f} p99 {s['p99']:.0f} max {s['max']}, "
      f"target mean {t['mean']:.1f} p50 {t['p50']:.0f} p99 {t['p99']:.0f} max {t['max']}",
      f"tokenizer from scratch: {r['tokenizer_seconds']:.1f} s "
      f"({r['config']['model.vocab_size']} pieces)",
      f"tokenize train: {r['tokenize_seconds']:.1f} s, "
      f"{rate(r['tokenize_pairs_per_second'])} pairs/s "
      f"({100 * r['tokenize_vs_sentencepiece']:.0f}% of SentencePiece's own "
      f"{rate(r['sentencepiece_pairs_per_second'])} pairs/s)",
      f"time to first batch: {r['time_to_first_batch_seconds']:.1f} s "
      f"(make_train_iterator {r['make_train_iterator_seconds']:.1f} s, "
      f"first next() {r['first_batch_seconds']:.2f} s)",
      f"batches {r['batch_shape'][0]}x{r['batch_shape'][1]}: "
      f"{r['batches_per_second']:.1f} batches/s, "
      f"{rate(r['real_target_tokens_per_second'])} real target tokens/s, "
      f"padding efficiency {100 * r['padding_efficiency']:.1f}%",
      f"with {r['busy_cores']} busy core(s): "
      f"{rate(r['real_target_tokens_per_second_busy'])} real target tokens/s",
      f"peak RSS: {r['peak_rss_bytes'] / 2**30:.2f} GiB",
      f"machine: {r['machine']['cpu_count']} x {r['machine']['cpu_model']}, "
      f"{r['machine']['date']}, load average {r['load_average_1min'][0]:.1f} before, "
      f"{r['load_average_1min'][1]:.1f} after",
  ])


def main(argv):
  del argv
  if _CORPUS_DIR.value:
    corpus_dir, generation_seconds = _CORPUS_DIR.value, None
    key = os.path.basename(os.path.abspath(corpus_dir))
  else:
    if _PAIRS.value < 1:
      raise app.UsageError(f"--pairs={_PAIRS.value} must be positive.")
    corpus_dir, generation_seconds = generated_corpus(
        _CACHE_DIR.value, _PAIRS.value, _SEED.value, _VOCAB_WORDS.value)
    key = os.path.basename(corpus_dir)
  workdir = _WORKDIR.value or os.path.join(_CACHE_DIR.value, f"work-{key}")
  result = run_benchmark(
      corpus_dir, workdir, reuse=_REUSE.value, batch_tokens=_BATCH_TOKENS.value,
      max_length=_MAX_LENGTH.value, vocab_size=_VOCAB_SIZE.value, workers=_WORKERS.value,
      prefetch=_PREFETCH.value, batches=_BATCHES.value, warmup=_WARMUP.value,
      busy=_BUSY_CORES.value, command=" ".join(["python"] + sys.argv))
  result["corpus_generation_seconds"] = generation_seconds
  print(json.dumps(result) if _JSON.value else format_report(result))


if __name__ == "__main__":
  from transformer import cli

  _define_flags()
  cli.run(main, config_flag=None)
