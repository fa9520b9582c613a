"""Every config file and variant loads, is locked, and builds a model that runs."""

import importlib

import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from configs import table3
from transformer import model as model_lib
from transformer import summary

VARIANTS = (
    [("wmt14_ende", v) for v in ("base", "big")]
    + [("wmt14_enfr", v) for v in ("base", "big")]
    + [("table3", row) for row in table3.ROWS]
)


def load(name, variant):
  return importlib.import_module(f"configs.{name}").get_config(variant)


def shrink(model_config):
  """Same switches, tiny sizes: keeps each variant's structure, runs fast."""
  cfg = model_config.copy_and_resolve_references()
  scale = cfg.d_model // 64  # keeps the variant's ratios between dimensions
  cfg.update(dict(vocab_size=31, d_model=16 * max(scale // 2, 1), d_ff=32,
                  d_k=max(cfg.d_k // 16, 2), d_v=max(cfg.d_v // 16, 2),
                  num_layers=min(cfg.num_layers, 2), max_len=16))
  return cfg


@pytest.mark.parametrize("name,variant", VARIANTS)
@pytest.mark.slow
def test_variant_builds_and_runs(name, variant):
  config = load(name, variant)
  # The full-size model builds (abstractly, no memory).
  assert summary.summarize(config.model)["total_params"] > 1_000_000
  model = model_lib.Transformer(shrink(config.model), rngs=nnx.Rngs(0))
  model.eval()
  inputs = jnp.array([[4, 5, 6, 1]])
  targets = jnp.array([[7, 8, 1]])
  logits = model(inputs, targets)
  assert logits.shape == (1, 3, 31) and np.all(np.isfinite(logits))


def test_paper_sizes():
  base, big = load("wmt14_ende", "base"), load("wmt14_ende", "big")
  assert (base.model.num_layers, base.model.d_model, base.model.d_ff,
          base.model.num_heads, base.model.d_k, base.model.d_v) == (6, 512, 2048, 8, 64, 64)
  assert base.model.dropout_rate == 0.1 and base.train.label_smoothing == 0.1
  assert base.train.num_steps == 100_000 and big.train.num_steps == 300_000
  assert (big.model.d_model, big.model.d_ff, big.model.num_heads) == (1024, 4096, 16)
  assert big.model.dropout_rate == 0.3
  assert base.model.vocab_size == big.model.vocab_size == 37000
  assert (base.data.source_lang, base.data.target_lang) == ("en", "de")
  enfr_big = load("wmt14_enfr", "big")
  assert enfr_big.model.vocab_size == 32000 and enfr_big.model.dropout_rate == 0.1
  assert (base.decode.beam_size, base.decode.alpha) == (4, 0.6)
  assert (base.decode.average_last, big.decode.average_last) == (5, 20)
  assert (base.train.adam_b1, base.train.adam_b2, base.train.adam_eps) == (0.9, 0.98, 1e-9)
  assert base.train.warmup_steps == 4000


def test_paper_defaults_have_no_deviation():
  m = load("wmt14_ende", "base").model
  assert (m.activation, m.norm_position, m.positional_encoding) == (
      "relu", "post", "sinusoidal")
  assert m.share_source_target_embedding and m.share_output_embedding
  assert m.attention_dropout_rate == 0.0 and m.ffn_dropout_rate == 0.0


def test_configs_are_locked():
  config = load("wmt14_ende", "base")
  with pytest.raises(AttributeError):
    config.model.activaton = "gelu"  # typo: a new field is an error
  config.model.activation = "gelu"  # an existing field can change


def test_unknown_variant_is_a_clear_error():
  with pytest.raises(ValueError, match="Unknown config variant 'huge'"):
    load("wmt14_ende", "huge")


def _parse(argv):
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", flag_values=flag_values,
                                           sys_argv=argv)
  flag_values(argv)
  return holder.value


def test_command_line_overrides():
  config = _parse(["prog", "--config=configs/table3.py:C7",
                   "--config.model.activation=gelu", "--config.train.warmup_steps=8000"])
  assert config.model.d_ff == 4096 and config.model.activation == "gelu"
  assert config.train.warmup_steps == 8000
  with pytest.raises((flags.Error, KeyError, AttributeError)):  # a typo is an error
    _parse(["prog", "--config=configs/wmt14_ende.py", "--config.model.activaton=gelu"])


def test_table3_rows_change_only_what_the_paper_says():
  base = load("table3", "base")
  a1 = load("table3", "A1")
  assert (a1.model.num_heads, a1.model.d_k, a1.model.d_v) == (1, 512, 512)
  assert a1.model.d_model == base.model.d_model
  b1 = load("table3", "B1")
  assert (b1.model.d_k, b1.model.d_v) == (16, 64)
  assert load("table3", "D3").train.label_smoothing == 0.0
  assert load("table3", "E").model.positional_encoding == "learned"
  assert set(table3.ROWS) == {"base", "A1", "A2", "A3", "A4", "B1", "B2", "C1", "C2",
                              "C3", "C4", "C5", "C6", "C7", "D1", "D2", "D3", "D4",
                              "E", "big"}
  assert (a1.paper.row, a1.paper.dev_ppl, a1.paper.dev_bleu) == ("A1", 5.29, 24.9)
