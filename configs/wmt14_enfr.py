r"""WMT14 English->French (Table 2).

Run card
  Prepare data (once, needs network; ~36M pairs):
    python -c "import tensorflow_datasets as tfds; tfds.builder('wmt14_translate/fr-en').download_and_prepare()"
  Train (8 GPUs):
    python train.py --config=configs/wmt14_enfr.py:base --workdir=runs/enfr_base
    python train.py --config=configs/wmt14_enfr.py:big --workdir=runs/enfr_big
  Evaluate:
    python evaluate.py --workdir=runs/enfr_big --split=test

  Paper (newstest2014, tokenized BLEU): base 38.1, big 41.8 (3.5 days on 8
  P100). The paper's EN-FR big uses P_drop = 0.1 instead of 0.3 (§6.1).

Deviation from the paper: the paper split EN-FR into a 32000 word-piece
vocabulary (§5.1, the GNMT word-piece model); here it is a shared 32000-piece
SentencePiece vocabulary, BPE by default (data.tokenizer_type="bpe", as for
EN-DE) or SentencePiece's unigram model with
--config.data.tokenizer_type=unigram. Neither is the word-piece model, which
SentencePiece does not offer; an existing vocabulary can be given with
data.tokenizer_path.

Variants: ``base`` (default) and ``big``.
"""

from configs import common


def get_config(arg=None):
  size = common.parse_variant(arg, ("base", "big"), "base")
  config = common.get_base_config(size)
  config.data.tfds_name = "wmt14_translate/fr-en"
  config.data.target_lang = "fr"  # From English, as for EN-DE.
  # Deviation from the paper: 32000 SentencePiece BPE pieces where §5.1 has
  # 32000 word pieces (module docstring).
  config.model.vocab_size = 32000
  if size == "big":
    config.model.dropout_rate = 0.1  # §6.1: P_drop = 0.1 for EN-FR big.
  config.lock()
  return config
