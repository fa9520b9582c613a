r"""WMT14 English->German, the paper's main result (Table 2).

Run card
  Prepare data (once, needs network; ~4.5M pairs):
    python -c "import tensorflow_datasets as tfds; tfds.builder('wmt14_translate/de-en').download_and_prepare()"
  Train (8 GPUs, data parallel; base ~12 h on 8 P100 in the paper):
    python train.py --config=configs/wmt14_ende.py:base --workdir=runs/ende_base
    python train.py --config=configs/wmt14_ende.py:big --workdir=runs/ende_big
  On one accelerator, reach the paper's ~25000-token batches by accumulation:
    --config.data.batch_tokens=6250 --config.train.accumulate_steps=4
  Evaluate (beam 4, alpha 0.6, averaging 5 / 20 checkpoints):
    python evaluate.py --workdir=runs/ende_base --split=test

  First run: the tokenizer trains on a uniform 2M-sentence sample of the
  whole training split (data.tokenizer_sample_sentences), then every pair is
  tokenized once into DIR/data_cache, by one worker process per usable core.
  Measured on a generated corpus of WMT14 EN-DE's size (4.5M pairs, WMT-like
  lengths; benchmarks/input_pipeline.py --pairs=4500000, 2 AMD EPYC cores):
  2026-11-25, sample 20 s, SentencePiece training 24 s at 1.8 GiB peak
  memory, tokenization 255 s, first batch 301 s after start; 2026-11-30 (a
  slower day of the shared machine, SentencePiece's own encode 17,614
  pairs/s), sample 25 s, training 29 s, tokenization 280 s (0.91 of
  SentencePiece's encode), first batch 337 s, peak memory 2.13 GiB. Later
  runs reuse both.

  Paper (newstest2014, tokenized and compound-split BLEU):
    base 27.3 (100K steps, 12 h on 8 P100), big 28.4 (300K steps, 3.5 days).

Variants: ``base`` (default) and ``big``.
"""

from configs import common


def get_config(arg=None):
  size = common.parse_variant(arg, ("base", "big"), "base")
  # The defaults (transformer/fields.py) are this experiment: wmt14_translate/de-en,
  # EN->DE, a shared 37000-piece BPE vocabulary (§5.1); nothing differs.
  config = common.get_base_config(size)
  config.lock()
  return config
