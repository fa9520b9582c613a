"""Tests for transformer/data/eval_batches.py: a whole split once, in order."""


import numpy as np

from transformer import data


def test_eval_sentences_once_in_order_untruncated(corpus_dir, workdir, tok, data_config,
                                                  check_batch):
  config = data_config(corpus_dir)
  sources, references = data.load_split_text(config.data, "validation")
  batches = data.eval_batches(config.data, tok, workdir, "validation", batch_size=8)
  assert len(batches) == 3  # 20 sentences: 8 + 8 + 4 and 4 filler rows.
  indices = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(indices, list(range(20)) + [-1] * 4)
  decoded = []
  for batch in batches:
    assert batch["inputs"].shape[0] == 8
    assert batch["inputs"].shape[1] in (8, 16, 32, 64, 128, 256)
    pairs = check_batch(batch, tok)
    filler = batch["index"] < 0
    assert not batch["inputs"][filler].any() and not batch["targets"][filler].any()
    decoded.extend(pairs)
  assert decoded == list(zip(sources, references, strict=True))
  # The over-long sentence (longer than max_length) is whole.
  assert len(tok.encode(sources[3])) + 1 > config.data.max_length
  assert decoded[3][0] == sources[3]
