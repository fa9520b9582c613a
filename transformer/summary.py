r"""Model summary: parameters per module, total, and forward FLOPs per token.

  python -m transformer.summary --config=configs/wmt14_ende.py:base
  python -m transformer.summary --config=configs/table3.py:C5 --json

The model is built abstractly (nnx.eval_shape), so even "big" costs no memory.

FLOPs are counted analytically (2 per multiply-add, matmuls only; softmax,
LayerNorm and other elementwise work are left out) for one forward pass over a
sentence pair with source and target both ``--seq_len`` tokens long, divided
by the number of target tokens. tests/test_summary.py checks the formula
against XLA's own cost analysis of the compiled forward pass.
"""

import collections
import json

import jax
from absl import flags
from flax import nnx
from ml_collections import config_flags

from transformer import model as model_lib


def abstract_model(model_config):
  """The model with ShapeDtypeStruct parameters: no memory, no compute."""
  return nnx.eval_shape(lambda: model_lib.build_model(model_config))


def count_parameters(model):
  """Parameters per module path (e.g. "encoder_layers.0.feed_forward")."""
  counts = collections.Counter()
  for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    module = ".".join(str(p) for p in path[:-1]) or str(path[-1])
    counts[module] += param.get_value().size
  return dict(counts)


def flops_per_token(cfg, seq_len):
  """Forward matmul FLOPs per target token, for S = T = seq_len."""
  d, f, h, k, j = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_k, cfg.d_v
  n, length = cfg.num_layers, seq_len
  ffn_matrices = 3 if cfg.activation in model_lib.GATED_ACTIVATIONS else 2
  ffn = 2 * ffn_matrices * d * f
  q_and_out = 2 * d * h * k + 2 * h * j * d  # Q W^Q, Concat(heads) W^O
  kv = 2 * d * h * (k + j)  # K W^K, V W^V
  scores = 2 * length * h * (k + j)  # Q K^T and softmax(...) V, per query
  encoder = q_and_out + kv + scores + ffn  # per source token
  decoder = 2 * (q_and_out + scores) + kv + ffn  # self + cross, per target token
  cross_kv = kv  # encoder-decoder K, V: once per source token
  logits = 2 * d * cfg.vocab_size
  # Per target token with S = T: every per-source-token term counts once.
  return n * (encoder + decoder + cross_kv) + logits


def summarize(model_config, seq_len=128):
  """A dict with ``total_params``, ``flops_per_token`` and ``modules`` of the
  model of a ``config.model`` section."""
  model = abstract_model(model_config)
  modules = count_parameters(model)
  return {
      "total_params": int(sum(modules.values())),
      "flops_per_token": int(flops_per_token(model_config, seq_len)),
      "seq_len": seq_len,
      "modules": modules,
  }


def _group(name):
  """encoder_layers.3.feed_forward -> encoder_layers.*.feed_forward."""
  parts = name.split(".")
  if len(parts) > 1 and parts[1].isdigit():
    parts[1] = "*"
  return ".".join(parts)


def format_table(summary, config):
  groups = collections.Counter()
  for name, count in summary["modules"].items():
    groups[_group(name)] += count
  width = max(len(g) for g in groups) + 2
  lines = [f"{'module':<{width}}{'parameters':>14}", "-" * (width + 14)]
  for name, count in groups.items():
    lines.append(f"{name:<{width}}{count:>14,}")
  lines.append("-" * (width + 14))
  lines.append(f"{'total':<{width}}{summary['total_params']:>14,}"
               f"  ({summary['total_params'] / 1e6:.2f}M)")
  lines.append(f"forward FLOPs per target token (S = T = {summary['seq_len']}): "
               f"{summary['flops_per_token']:,}")
  lines.append("(* = summed over the model.num_layers="
               f"{config.model.num_layers} identical layers)")
  if "paper" in config and config.paper.params_millions:
    lines.append(f"paper (Table 3, row {config.paper.row}): "
                 f"{config.paper.params_millions}M parameters")
  return "\n".join(lines)


def _define_flags():
  """CLI flags, defined only when run as a program (the module is a library too)."""
  global _CONFIG, _JSON, _SEQ_LEN
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  _JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
  _SEQ_LEN = flags.DEFINE_integer(
      "seq_len", 128, "Source and target length assumed for FLOPs per token.")


def main(argv):
  """The command (run by cli.run: a config error is one line and exit code 2)."""
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  from transformer import checks

  config = _CONFIG.value
  checks.check_model_config(config.model)
  summary = summarize(config.model, _SEQ_LEN.value)
  if _JSON.value:
    print(json.dumps(summary))
  else:
    print(format_table(summary, config))


if __name__ == "__main__":
  from transformer import cli

  jax.config.update("jax_platforms", "cpu")
  _define_flags()
  flags.mark_flags_as_required(["config"])
  cli.run(main)
