"""Parameter counts against Table 3, and the FLOP formula against XLA."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs import table3
from transformer import model as model_lib
from transformer import summary

ROWS_WITH_COUNTS = [row for row, (_, paper) in table3.ROWS.items() if paper[2]]


# About 2-3 s a row (the full-size model is traced): the base and big models
# run in the fast suite, the other rows with the slow tests.
@pytest.mark.parametrize("row", [
    row if row in ("base", "big") else pytest.param(row, marks=pytest.mark.slow)
    for row in ROWS_WITH_COUNTS])
def test_parameter_count_matches_table3(row):
  config = table3.get_config(row)
  ours = summary.summarize(config.model)["total_params"]
  paper = config.paper.params_millions * 1e6
  # Table 3 rounds to millions: within the larger of 3M and 3%.
  assert abs(ours - paper) <= max(3e6, 0.03 * paper), (row, ours, paper)


def test_modules_add_up_and_base_is_exact():
  s = summary.summarize(table3.get_config("base").model)
  assert sum(s["modules"].values()) == s["total_params"] == 63_045_632
  # Shared 37000 x 512 embedding counted once (three-way tying).
  assert s["modules"]["source_embedding"] == 37000 * 512
  assert s["modules"]["encoder_layers.0.feed_forward"] == 2 * 512 * 2048 + 2048 + 512


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
@pytest.mark.slow
def test_flops_formula_matches_xla_cost_analysis(activation):
  config = table3.get_config("base")
  cfg = config.model
  cfg.update(dict(vocab_size=300, num_layers=2, d_model=64, d_ff=128, num_heads=4,
                  d_k=16, d_v=8, activation=activation))
  model = model_lib.Transformer(cfg, rngs=nnx.Rngs(0))
  model.eval()
  length = 32
  ids = jnp.ones((1, length), jnp.int32)
  graphdef, state = nnx.split(model)
  forward = lambda state, x, y: nnx.merge(graphdef, state)(x, y)
  cost = jax.jit(forward).lower(state, ids, ids).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla_per_token = cost["flops"] / length
  ours = summary.flops_per_token(cfg, length)
  # XLA also counts softmax, LayerNorm and other elementwise work we leave out.
  assert 0.9 * xla_per_token <= ours <= 1.0 * xla_per_token, (ours, xla_per_token)


@pytest.mark.slow
def test_cli_json():
  out = subprocess.run(
      [sys.executable, "-m", "transformer.summary", "--config=configs/wmt14_ende.py:big",
       "--json"], capture_output=True, text=True, check=True)
  s = json.loads(out.stdout)
  assert isinstance(s["total_params"], int) and isinstance(s["flops_per_token"], int)
  assert abs(s["total_params"] - 213e6) < 3e6
  assert "decoder_layers.5.cross_attention" in s["modules"]
