"""Input pipeline: parallel text -> shared SentencePiece ids -> static batches.

One module per job:
  sources.py         raw parallel text, streamed in chunks (TFDS, text
                     folders, the generated corpus)
  synthetic.py       the generated EN->DE corpus (the quickstart's data)
  tokenizer.py       the shared SentencePiece tokenizer, trained once on a
                     uniform sample of the whole training split
  token_cache.py     token ids of each split, tokenized once, streamed to
                     disk, mmapped; a whole split once, in order, for
                     evaluation (eval_batches)
  encode_worker.py   the worker processes that encode the text for it, one
                     per usable core
  packing.py         the batch format; where pairs go in a batch (first-fit,
                     or one per row for evaluation) and the copy into batch
                     arrays, both compiled (numba)
  train_iterator.py  shuffled, packed, resumable training batches, assembled
                     by worker threads

Sources (``config.data.source``):
  "tfds"       a TFDS translate builder by name (``data.tfds_name``), e.g.
               ``wmt14_translate/de-en`` (train; newstest2013 = "validation";
               newstest2014 = "test"). Read from ``data.tfds_data_dir`` or
               $TFDS_DATA_DIR. Never downloads unless ``data.tfds_download``.
  "text"       a folder (``data.dir``) of ``{split}.{lang}`` files, plain or
               ``.gz``, UTF-8, one sentence per line, line N of one language
               the translation of line N of the other.
  "synthetic"  the project's generated EN->DE corpus (transformer/data/synthetic.py),
               written once as ``{split}.{lang}`` files under the cache dir and
               then read exactly like "text". Splits: "train", "validation",
               "test"; languages "en", "de".
The direction is always ``data.source_lang`` -> ``data.target_lang``, never
the order of TFDS's supervised keys.

API (everything a trainer or evaluator needs). Each function takes the
``config.data`` section (``data_config``), never the whole config:

  load_tokenizer(data_config, workdir, *, vocab_size) -> tokenizer.Tokenizer
      Loads ``data.tokenizer_path`` or ``<workdir>/tokenizer/spm.model``; on
      the first run trains it (``vocab_size`` pieces, ``data.
      tokenizer_type``) on a uniform sample of ``data.tokenizer_sample_
      sentences`` sentences of the whole training split, both languages, and
      reuses it on restart. ``vocab_size`` is ``model.vocab_size``; a
      loaded tokenizer of another size is an error.

  make_train_iterator(data_config, tokenizer, workdir, *, process_index=0,
                      process_count=1, row_multiple=1) -> TrainIterator
      Endless, shuffled by ``data.seed`` and epoch. Each ``next()`` is this
      process's part of the global batch, a dict of int32 arrays in the batch
      format below. The global budget ``data.batch_tokens`` (per side) is
      split evenly over processes; the row count is a multiple of
      ``row_multiple`` (pass the number of local devices).
        it.batch_shape  (rows, length) of every batch ("pack"); None for
                        "bucket", where it.batch_shapes lists the shapes
                        (every process gets the same shape at each step).
        it.get_state()  small JSON-serializable dict (this process's epoch and
                        position); it.set_state(state) resumes exactly.
                        Each process saves and restores its own state.
        it.epoch, it.padding_efficiency, it.num_pairs (this process's shard).
        it.close()      stops the background prefetch thread (``data.prefetch``
                        batches ahead) and the ``data.workers`` assembly
                        threads; also a context manager.
      Each process packs a disjoint shard of the training pairs (every
      process_count-th pair); over an epoch the shards cover every kept pair
      once.

  eval_batches(data_config, tokenizer, workdir, split, *, batch_size) -> list[dict]
      The whole split once, in its original order, ``batch_size`` rows per
      batch, with "index" (original sentence number; -1 on the filler rows of
      the last batch). Nothing dropped or truncated; each batch's S and T are
      the next power of two (>= 8) above its longest sentence.

  load_split_text(data_config, split, *, workdir=None) -> (sources, references)
      Raw text of a split, in the order of ``eval_batches``.

  read_lines(path) -> list[str]   UTF-8 lines of a plain or gzipped file.

  padding_efficiency(batch) -> float   real tokens / slots, both sides.

  tokenize_split(data_config, tokenizer, workdir, split) -> TokenizedSplit
      Token ids (no EOS) of a whole split, from the cache or built once.

Batch format: see packing.py ("inputs", "targets", their "_segmentation" and
"_position", int32).

Token ids of each split are cached under ``data.cache_dir`` (default
``<workdir>/data_cache``), keyed by dataset, split, direction and tokenizer,
so restarts never re-tokenize. Training pairs with an empty side, or longer
than ``data.max_length`` tokens (EOS included) on either side, are dropped and
counted in the log.
"""

from transformer.data.packing import FEATURES, padding_efficiency
from transformer.data.sources import load_split_text, read_lines
from transformer.data.token_cache import TokenizedSplit, eval_batches, tokenize_split
from transformer.data.tokenizer import load_tokenizer
from transformer.data.train_iterator import TrainIterator, make_train_iterator, rows_for

__all__ = [
    "FEATURES", "TokenizedSplit", "TrainIterator", "eval_batches",
    "load_split_text", "load_tokenizer", "make_train_iterator",
    "padding_efficiency", "read_lines", "rows_for", "tokenize_split",
]
