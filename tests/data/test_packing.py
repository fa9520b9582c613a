"""Tests for transformer/data/packing.py: the compiled first-fit packer."""


import numpy as np
import pytest

from transformer import data


def _reference_first_fit(source_lengths, target_lengths, start, rows, length):
  """First fit as the paper-era loop: each pair to the first row with room on
  both sides; the batch closes at the first pair that fits in no row."""
  free = [[length, length] for _ in range(rows)]
  placed = []
  for k in range(start, len(source_lengths)):
    s, t = int(source_lengths[k]), int(target_lengths[k])
    for row, (fs, ft) in enumerate(free):
      if fs >= s and ft >= t:
        placed.append((row, length - fs, length - ft))
        free[row] = [fs - s, ft - t]
        break
    else:
      break
  return start + len(placed), placed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_fit_matches_a_plain_python_first_fit(seed):
  rng = np.random.default_rng(seed)
  n, rows, length = 3000, 7, 64
  source_lengths = rng.integers(2, length + 1, n) // rng.integers(1, 6, n) + 2
  source_lengths = np.minimum(source_lengths, length).astype(np.int64)
  target_lengths = np.clip(source_lengths + rng.integers(-3, 4, n), 2,
                           length).astype(np.int64)
  start = 0
  while start < n:
    want_end, want = _reference_first_fit(source_lengths, target_lengths,
                                          start, rows, length)
    end, row_of, source_start, target_start, segment_of = data.packing.first_fit(
        source_lengths, target_lengths, start, rows, length)
    assert end == want_end > start
    assert list(zip(row_of.tolist(), source_start.tolist(),
                    target_start.tolist(), strict=True)) == want
    for row in range(rows):  # Segments count 1, 2, ... along each row.
      np.testing.assert_array_equal(segment_of[row_of == row],
                                    np.arange(1, np.sum(row_of == row) + 1))
    start = end
