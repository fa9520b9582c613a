"""Tests for transformer/plot.py: the PNG's size follows the layers x heads
grids, and each head's weights are drawn on the fixed [0, 1] colour scale.
(tests/test_evaluate.py draws a real model's attention through evaluate.py.)"""

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from transformer import plot

SOURCE = ["▁Der", "▁Hund", "</s>"]
TARGET = ["▁The", "▁dog", "</s>"]
DECODER_INPUT = ["<s>", "▁The", "▁dog"]
KEYS = ("encoder_self", "decoder_self", "encoder_decoder")


def _attention(heads):
  """One layer per entry of ``heads``: each a list of (Q, M) = (3, 3) weights."""
  return {key: [np.stack(layer).astype(np.float32) for layer in heads] for key in KEYS}


def _pixels(path):
  image = matplotlib.image.imread(path)  # (rows, columns, RGBA) in [0, 1]
  return (image[..., :3] * 255).round().astype(int)


def _colour(value):
  return (np.array(matplotlib.colormaps["viridis"](value)[:3]) * 255).round().astype(int)


def _count(pixels, value):
  """Pixels of the viridis colour of ``value`` (within the PNG's rounding)."""
  return int((np.abs(pixels - _colour(value)).max(axis=-1) <= 2).sum())


@pytest.mark.parametrize("num_layers,num_heads,size", [
    # Each layer x head cell is max(1.2, 3 tokens x 0.18) + 0.6 = 1.8 inches
    # at 100 dpi; 1 inch of width and 0.8 per grid more, 0.5 for the title.
    (1, 2, (3 * (1 * 180 + 80) + 50, 2 * 180 + 100)),
    (2, 1, (3 * (2 * 180 + 80) + 50, 1 * 180 + 100)),
])
def test_the_picture_is_layers_by_heads_cells_per_grid(tmp_path, num_layers, num_heads, size):
  heads = [[np.full((3, 3), 1 / 3)] * num_heads] * num_layers
  path = str(tmp_path / "attention.png")
  assert plot.plot_attention(_attention(heads), SOURCE, TARGET, DECODER_INPUT, path,
                             title="Der Hund. -> The dog.") == path
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert _pixels(path).shape == (*size, 3)


def test_longer_sentences_make_bigger_cells(tmp_path):
  source = [f"▁w{i}" for i in range(9)] + ["</s>"]  # 10 x 0.18 + 0.6 = 2.4 inches.
  attention = {"encoder_self": [np.full((1, 10, 10), 0.1, np.float32)],  # (H, S, S)
               "decoder_self": [np.full((1, 3, 3), 1 / 3, np.float32)],  # (H, T, T)
               "encoder_decoder": [np.full((1, 3, 10), 0.1, np.float32)]}  # (H, T, S)
  path = plot.plot_attention(attention, source, TARGET, DECODER_INPUT,
                             str(tmp_path / "long.png"))
  assert _pixels(path).shape == (3 * (240 + 80) + 50, 240 + 100, 3)


def test_weights_are_drawn_on_the_fixed_unit_scale(tmp_path):
  """Head 1 attends one-hot (1.0 on the diagonal, 0.0 elsewhere), head 2
  uniformly at 0.5: a scale fitted to each head would draw head 2 in one
  end colour, not in the middle of viridis."""
  identity, half = np.eye(3), np.full((3, 3), 0.5)
  path = plot.plot_attention(_attention([[identity, half]]), SOURCE, TARGET, DECODER_INPUT,
                             str(tmp_path / "scale.png"))
  pixels = _pixels(path)
  middle = pixels.shape[1] // 2  # Between the two heads' columns.
  head_1, head_2 = pixels[:, :middle], pixels[:, middle:]
  for value in (0.0, 1.0):
    assert _count(head_2, value) == 0
  assert _count(head_1, 0.5) == 0
  assert _count(head_2, 0.5) > 0
  # Three grids, each 3 of head 1's 9 cells at 1.0 and 6 at 0.0; the cells
  # are equal (2% for the edges' antialiasing).
  ones, zeros = _count(head_1, 1.0), _count(head_1, 0.0)
  assert ones / (ones + zeros) == pytest.approx(3 / 9, rel=0.02)
  assert _count(head_2, 0.5) == pytest.approx(ones + zeros, rel=0.02)


def test_no_figure_stays_open(tmp_path):
  before = plt.get_fignums()
  plot.plot_attention(_attention([[np.eye(3)]]), SOURCE, TARGET, DECODER_INPUT,
                      str(tmp_path / "a.png"))
  assert plt.get_fignums() == before
  assert matplotlib.get_backend().lower() == "agg"  # No display needed.
