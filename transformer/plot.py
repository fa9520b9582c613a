"""Attention pictures in the style of the paper's Figures 3-5.

One PNG with three grids, each layers (rows) x heads (columns):
  * encoder self-attention: source tokens attending to source tokens;
  * decoder self-attention: each output token (row) attending to the decoder
    inputs (<s> and the previous outputs, columns), masked to the past;
  * encoder-decoder attention: each output token attending to the source.
Token labels sit on the outer axes of each grid. Rendering uses matplotlib's
Agg backend (no display needed).
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

KINDS = (
    # (key, title, query labels, key labels)
    ("encoder_self", "Encoder self-attention", "source", "source"),
    ("decoder_self", "Decoder self-attention", "target", "decoder_input"),
    ("encoder_decoder", "Encoder-decoder attention", "target", "source"),
)


def plot_attention(attention: dict, source_tokens: list[str], target_tokens: list[str],
                   decoder_input_tokens: list[str], path: str, *, title: str = "",
                   cell_inches: float = 0.18, dpi: int = 100) -> str:
  """Writes the three attention grids to ``path`` (PNG).

  Args:
    attention: {"encoder_self", "decoder_self", "encoder_decoder"} -> list over
      layers of (H, Q, M) weights for one sentence.
    source_tokens: the M (or Q) source pieces, EOS included.
    target_tokens: the output pieces, one per decoder position.
    decoder_input_tokens: the decoder's inputs (<s> then the outputs but the last).
    path: output file.
    title: a line drawn at the top (e.g. the sentence and its translation).
    cell_inches: size of one attention cell.
    dpi: resolution.

  Returns:
    path.
  """
  labels = {"source": source_tokens, "target": target_tokens,
            "decoder_input": decoder_input_tokens}
  num_layers = len(attention["encoder_self"])
  num_heads = attention["encoder_self"][0].shape[0]
  longest = max(len(source_tokens), len(target_tokens))
  panel = max(1.2, longest * cell_inches) + 0.6  # inches per layer x head cell
  width = num_heads * panel + 1.0
  heights = [num_layers * panel + 0.8 for _ in KINDS]
  title_height = 0.5
  fig = plt.figure(figsize=(width, sum(heights) + title_height), dpi=dpi)
  title_fig, *subfigs = fig.subfigures(len(KINDS) + 1, 1,
                                       height_ratios=[title_height] + heights)
  title_fig.text(0.5, 0.5, title, ha="center", va="center", fontsize=10, wrap=True)
  for subfig, (key, name, q_kind, k_kind) in zip(subfigs, KINDS, strict=True):
    subfig.suptitle(name, fontsize=11)
    axes = subfig.subplots(num_layers, num_heads, squeeze=False)
    q_labels, k_labels = labels[q_kind], labels[k_kind]
    for layer, weights in enumerate(attention[key]):
      weights = np.asarray(weights, np.float32)  # (H, Q, M)
      for head in range(num_heads):
        ax = axes[layer, head]
        ax.imshow(weights[head], cmap="viridis", vmin=0.0, vmax=1.0,
                  interpolation="nearest", aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        if layer == num_layers - 1:
          ax.set_xticks(range(len(k_labels)))
          ax.set_xticklabels(k_labels, rotation=90, fontsize=6)
        if head == 0:
          ax.set_yticks(range(len(q_labels)))
          ax.set_yticklabels(q_labels, fontsize=6)
          ax.set_ylabel(f"layer {layer + 1}", fontsize=8)
        if layer == 0:
          ax.set_title(f"head {head + 1}", fontsize=8)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path
