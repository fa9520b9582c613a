"""Shared defaults for every experiment config.

Each experiment file (``wmt14_ende.py``, ``table3.py``, ...) starts from
``get_base_config()`` and changes only what differs, so that a config reads as
a diff against the paper's base model. The four sections are:

* ``model``:  the architecture (§3) and its ablation switches.
* ``data``:   dataset, tokenizer and batching (§5.1).
* ``train``:  objective, optimizer, schedule, parallelism, checkpoints (§5.2-5.4).
* ``decode``: beam search and checkpoint averaging (§6.1).

Every field is declared once, in transformer/fields.py: its default (the
paper's choice; switches that depart from it say so there), type, valid
values and meaning. Here: the model sizes of Table 3, and the sections built
from that table.
"""

import ml_collections

from transformer import fields

# Model sizes of Table 3 ("base" and "big" rows). Paper: Vaswani et al. 2017.
MODEL_SIZES = {
    #        N  d_model  d_ff  h  d_k  d_v  P_drop
    "base": (6, 512, 2048, 8, 64, 64, 0.1),
    "big": (6, 1024, 4096, 16, 64, 64, 0.3),
}


def model_config(size="base"):
  """The ``model`` section for a Table 3 size."""
  num_layers, d_model, d_ff, num_heads, d_k, d_v, dropout = MODEL_SIZES[size]
  return fields.defaults("model", num_layers=num_layers, d_model=d_model, d_ff=d_ff,
                         num_heads=num_heads, d_k=d_k, d_v=d_v, dropout_rate=dropout)


def data_config():
  """The ``data`` section, read by the input pipeline (transformer/data/)."""
  return fields.defaults("data")


def train_config(num_steps=None):
  """The ``train`` section: objective, optimizer and run management
  (``num_steps``: default the base model's)."""
  t = fields.defaults("train")
  if num_steps is not None:
    t.num_steps = num_steps
  return t


def decode_config(average_last=None):
  """The ``decode`` section: beam search of §6.1 (``average_last``: default
  the base model's)."""
  d = fields.defaults("decode")
  if average_last is not None:
    d.average_last = average_last
  return d


def get_base_config(size="base"):
  """The paper's WMT14 EN-DE configuration for a model size."""
  config = ml_collections.ConfigDict()
  config.model = model_config(size)
  config.data = data_config()
  # The big model trains 300K steps (Table 3) and averages its last 20
  # checkpoints (§6.1).
  config.train = train_config(num_steps=None if size == "base" else 300_000)
  config.decode = decode_config(average_last=None if size == "base" else 20)
  return config


def parse_variant(arg, choices, default):
  """Returns the ``file.py:variant`` suffix, checked against ``choices``."""
  variant = arg or default
  if variant not in choices:
    raise ValueError(
        f"Unknown config variant {variant!r}; choose one of {sorted(choices)} "
        "(e.g. --config=configs/wmt14_ende.py:base).")
  return variant
