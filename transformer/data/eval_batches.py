"""Evaluation batches: a whole split once, in order, nothing dropped."""

import numpy as np

from transformer import tokens
from transformer.data import packing, token_cache


def eval_batches(data_config, tokenizer, workdir, split, *, batch_size):
  """Every sentence of ``split`` once, in order, in padded batches."""
  if batch_size < 1:
    raise ValueError(f"eval batch_size must be positive, got {batch_size}.")
  data = token_cache.tokenize_split(data_config, tokenizer, workdir, split)
  source_lengths = data.source_lengths + 1  # EOS.
  target_lengths = data.target_lengths + 1
  batches = []
  for start in range(0, len(data), batch_size):
    indices = np.arange(start, min(start + batch_size, len(data)))
    batch = packing.fill_one_per_row(
        data, indices, batch_size, tokens.bucket(source_lengths[indices].max()),
        tokens.bucket(target_lengths[indices].max()))
    batch["index"] = np.full((batch_size,), -1, np.int32)
    batch["index"][:len(indices)] = indices
    batches.append(batch)
  return batches
