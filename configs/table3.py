r"""Every row of Table 3: variations on the base model, EN-DE newstest2013.

Run card
  python train.py --config=configs/table3.py:C7 --workdir=runs/table3_C7
  python evaluate.py --workdir=runs/table3_C7 --split=validation
  python -m transformer.summary --config=configs/table3.py:B1

  Each row trains for 100K steps (300K for "big") on 8 GPUs like base (12 h
  on 8 P100 in the paper). The paper reports dev perplexity (per
  word-piece, its name here for the pieces of its byte-pair encoding; ours is
  per piece of the run's own 37000-piece BPE) and dev BLEU on newstest2013
  *without* checkpoint averaging, with beam search as in §6.1; compare
  against the ``paper`` numbers of each row.

Variants: base, A1-A4, B1-B2, C1-C7, D1-D4, E, big.
"""

from configs import common

# Each row: the fields it changes relative to base, and the paper's figures
# (dev PPL, dev BLEU, parameters in millions; None where Table 3 is blank).
ROWS = {
    "base": ({}, (4.92, 25.8, 65)),
    # (A) number of heads, with d_k = d_v = d_model / h: constant compute.
    "A1": ({"model.num_heads": 1, "model.d_k": 512, "model.d_v": 512}, (5.29, 24.9, None)),
    "A2": ({"model.num_heads": 4, "model.d_k": 128, "model.d_v": 128}, (5.00, 25.5, None)),
    "A3": ({"model.num_heads": 16, "model.d_k": 32, "model.d_v": 32}, (4.91, 25.8, None)),
    "A4": ({"model.num_heads": 32, "model.d_k": 16, "model.d_v": 16}, (5.01, 25.4, None)),
    # (B) smaller attention key size d_k (d_v stays 64).
    "B1": ({"model.d_k": 16}, (5.16, 25.1, 58)),
    "B2": ({"model.d_k": 32}, (5.01, 25.4, 60)),
    # (C) model size.
    "C1": ({"model.num_layers": 2}, (6.11, 23.7, 36)),
    "C2": ({"model.num_layers": 4}, (5.19, 25.3, 50)),
    "C3": ({"model.num_layers": 8}, (4.88, 25.5, 80)),
    "C4": ({"model.d_model": 256, "model.d_k": 32, "model.d_v": 32}, (5.75, 24.5, 28)),
    "C5": ({"model.d_model": 1024, "model.d_k": 128, "model.d_v": 128}, (4.66, 26.0, 168)),
    "C6": ({"model.d_ff": 1024}, (5.12, 25.4, 53)),
    "C7": ({"model.d_ff": 4096}, (4.75, 26.2, 90)),
    # (D) regularization.
    "D1": ({"model.dropout_rate": 0.0}, (5.77, 24.6, None)),
    "D2": ({"model.dropout_rate": 0.2}, (4.95, 25.5, None)),
    "D3": ({"train.label_smoothing": 0.0}, (4.67, 25.3, None)),
    "D4": ({"train.label_smoothing": 0.2}, (5.47, 25.7, None)),
    # (E) learned positional embeddings instead of sinusoids.
    "E": ({"model.positional_encoding": "learned"}, (4.92, 25.7, None)),
    # The big model (300K steps).
    "big": (
        {"model.d_model": 1024, "model.d_ff": 4096, "model.num_heads": 16,
         "model.dropout_rate": 0.3, "train.num_steps": 300_000},
        (4.33, 26.4, 213)),
}


def get_config(arg=None):
  row = common.parse_variant(arg, ROWS, "base")
  changes, (dev_ppl, dev_bleu, params_m) = ROWS[row]
  config = common.get_base_config("base")
  for key, value in changes.items():
    section, field = key.split(".")
    config[section][field] = value
  # §6.2: Table 3 uses beam search "but no checkpoint averaging".
  config.decode.average_last = 1
  # The paper's figures for this row, for comparison (not used by training).
  config.paper = dict(row=row, dev_ppl=dev_ppl, dev_bleu=dev_bleu,
                      params_millions=params_m)
  config.lock()
  return config
