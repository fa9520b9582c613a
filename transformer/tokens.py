"""Special token ids shared by the tokenizer, the model and decoding, and the
padded lengths that evaluation batches and decoding share.

The SentencePiece model is trained with exactly these ids, so that padding is
0 everywhere (masks are ``ids != PAD_ID``).
"""

PAD_ID = 0  # Padding; never a real token. Masks are `ids != PAD_ID`.
EOS_ID = 1  # End of sentence; appended to every source and target sentence.
UNK_ID = 2  # Unknown piece (rare with byte fallback off and a shared vocabulary).
BOS_ID = 3  # Decoder start token, inserted by the model's shift-right.


def bucket(n: int, minimum: int = 8) -> int:
  """Smallest power of two >= max(n, minimum): the padded lengths (and decoding's
  batch sizes) that are compiled, so that a whole split compiles a few times."""
  return max(minimum, 1 << max(int(n) - 1, 0).bit_length())
