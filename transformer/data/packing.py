"""Batch assembly: where each pair goes in a batch, and the batch arrays.

Batch format (numpy int32; B rows, S source and T target length):
  "inputs" (B, S), "targets" (B, T): ids, each sentence ending in EOS_ID,
      PAD_ID (0) elsewhere. The model shifts targets right itself.
  "inputs_segmentation", "targets_segmentation": 1..n for the n pairs packed
      in a row (pair k has id k on both sides), 0 on padding.
  "inputs_position", "targets_position": 0, 1, ... restarting at each
      segment, 0 on padding.

Every batch, packed, bucketed or for evaluation, is made the same way: a
placement (per pair: row, source start, target start, segment id) and one
``fill`` that copies the pairs' ids from the token cache. Both loops are
compiled with numba and run without the GIL, so that batches are assembled at
a cost per batch, not per pair in Python, by as many threads as the host has
cores, beside a training loop that holds the interpreter.
"""

import numba
import numpy as np

from transformer import tokens

FEATURES = ("inputs", "targets", "inputs_segmentation", "targets_segmentation",
            "inputs_position", "targets_position")


def empty_batch(rows, source_length, target_length):
  shapes = {"inputs": source_length, "targets": target_length}
  return {name: np.zeros((rows, shapes[name.split("_")[0]]), np.int32)
          for name in FEATURES}


def token_counts(batch):
  """(real tokens, slots) over both sides of a batch."""
  real = np.count_nonzero(batch["inputs_segmentation"]) + np.count_nonzero(
      batch["targets_segmentation"])
  return real, batch["inputs"].size + batch["targets"].size


def padding_efficiency(batch):
  """Real tokens / slots over both sides of a batch."""
  real, slots = token_counts(batch)
  return real / slots


@numba.njit(nogil=True, cache=True)
def first_fit(source_lengths, target_lengths, start, rows, length):
  """First-fit packing of items ``start, start + 1, ...`` (integer arrays of
  EOS-inclusive lengths) into ``rows`` rows of ``length`` slots a side.

  Each item (lengths with EOS) goes to the first row with room on both
  sides; the batch closes at the first item that fits in no row, or at the
  end. Returns (end, row, source start, target start, segment id) of items
  ``start:end``.
  """
  free_source = np.full(rows, length, np.int64)
  free_target = np.full(rows, length, np.int64)
  segments = np.zeros(rows, np.int32)
  capacity = min(len(source_lengths) - start, rows * length)
  row_of = np.empty(capacity, np.int32)
  source_start = np.empty(capacity, np.int32)
  target_start = np.empty(capacity, np.int32)
  segment_of = np.empty(capacity, np.int32)
  first_open = 0  # Rows before it have no room for even the shortest pair.
  n = 0
  while start + n < len(source_lengths):
    s = source_lengths[start + n]
    t = target_lengths[start + n]
    row = first_open
    while row < rows and (free_source[row] < s or free_target[row] < t):
      row += 1
    if row == rows:
      break
    row_of[n] = row
    source_start[n] = length - free_source[row]
    target_start[n] = length - free_target[row]
    segments[row] += 1
    segment_of[n] = segments[row]
    free_source[row] -= s
    free_target[row] -= t
    while first_open < rows and (free_source[first_open] < 2 or
                                 free_target[first_open] < 2):
      first_open += 1
    n += 1
  return (start + n, row_of[:n].copy(), source_start[:n].copy(),
          target_start[:n].copy(), segment_of[:n].copy())


@numba.njit(nogil=True, cache=True)
def _fill_side(ids, offsets, pairs, row_of, start_of, segment_of, out_ids,
               out_segmentation, out_position, eos):
  for n in range(len(pairs)):
    first = offsets[pairs[n]]
    count = offsets[pairs[n] + 1] - first
    row = row_of[n]
    column = start_of[n]
    segment = segment_of[n]
    for i in range(count):
      out_ids[row, column + i] = ids[first + i]
      out_segmentation[row, column + i] = segment
      out_position[row, column + i] = i
    out_ids[row, column + count] = eos
    out_segmentation[row, column + count] = segment
    out_position[row, column + count] = count


def fill(data, pairs, row_of, source_start, target_start, segment_of, rows,
         source_length, target_length):
  """A batch holding pair ``pairs[n]`` of ``data`` (a TokenizedSplit), ids and
  EOS, at ``row_of[n]`` from ``source_start[n]`` / ``target_start[n]`` with
  segment id ``segment_of[n]``."""
  batch = empty_batch(rows, source_length, target_length)
  pairs = np.asarray(pairs, np.int64)
  for side, ids, offsets, start_of in (
      ("inputs", data.source_ids, data.source_offsets, source_start),
      ("targets", data.target_ids, data.target_offsets, target_start)):
    _fill_side(ids, offsets, pairs, np.asarray(row_of, np.int32),
               np.asarray(start_of, np.int32),
               np.asarray(segment_of, np.int32), batch[side],
               batch[side + "_segmentation"], batch[side + "_position"],
               tokens.EOS_ID)
  return batch


def fill_one_per_row(data, pairs, rows, source_length, target_length):
  """A batch with pair ``pairs[r]`` alone in row r (the rest padding)."""
  zeros = np.zeros(len(pairs), np.int32)
  return fill(data, pairs, np.arange(len(pairs), dtype=np.int32), zeros, zeros,
              zeros + 1, rows, source_length, target_length)


def one_per_row_batches(data, batch_size: int) -> list[dict]:
  """Evaluation's batches: every pair of ``data`` (a tokenized split) once,
  in order, alone in its row, nothing dropped or truncated; ``batch_size``
  rows per batch, each side padded to the power-of-two bucket of its longest
  sentence (EOS included). ``index`` is each row's pair, -1 on filler rows."""
  source_lengths = data.source_lengths + 1  # EOS.
  target_lengths = data.target_lengths + 1
  batches = []
  for start in range(0, len(data), batch_size):
    indices = np.arange(start, min(start + batch_size, len(data)))
    batch = fill_one_per_row(
        data, indices, batch_size, tokens.bucket(source_lengths[indices].max()),
        tokens.bucket(target_lengths[indices].max()))
    batch["index"] = np.full((batch_size,), -1, np.int32)
    batch["index"][:len(indices)] = indices
    batches.append(batch)
  return batches
