"""Tests for transformer/tokens.py: the special ids, and the padded lengths
(``bucket``) held against an independent computation."""

import math

import numpy as np
import pytest

from transformer import tokens


def test_special_ids_are_the_first_four_and_padding_is_zero():
  """Padding is 0 everywhere (masks are ``ids != PAD_ID``, and zero-filled
  arrays are padding); real pieces start at 4."""
  assert tokens.PAD_ID == 0
  ids = (tokens.PAD_ID, tokens.EOS_ID, tokens.UNK_ID, tokens.BOS_ID)
  assert ids == (0, 1, 2, 3)  # The ids SentencePiece is trained with.
  assert all(type(i) is int for i in ids)


def _smallest_power_of_two_at_least(n):
  return 2 ** math.ceil(math.log2(n))


@pytest.mark.parametrize("minimum", [1, 8, 32])
def test_bucket_is_the_smallest_power_of_two_at_least_n_and_minimum(minimum):
  for n in range(0, 1100):
    expected = _smallest_power_of_two_at_least(max(n, minimum, 1))
    assert tokens.bucket(n, minimum) == expected, n


def test_bucket_values():
  assert [tokens.bucket(n) for n in (0, 1, 7, 8, 9, 63, 64, 65, 1000)] == [
      8, 8, 8, 8, 16, 64, 64, 128, 1024]
  assert [tokens.bucket(n, minimum=1) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 8]


def test_bucket_takes_numpy_lengths():
  """Evaluation batches bucket the ``max()`` of numpy length arrays."""
  lengths = np.array([3, 17, 9], np.int64)
  assert tokens.bucket(lengths.max()) == 32
  assert type(tokens.bucket(lengths.max())) is int


def test_a_split_compiles_a_few_lengths():
  """Sentences of 1 to 256 tokens are padded to 6 lengths (8 ... 256)."""
  assert sorted({tokens.bucket(n) for n in range(1, 257)}) == [8, 16, 32, 64, 128, 256]
