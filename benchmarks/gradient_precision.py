"""The precision cost of bfloat16 matmul products (model.matmul_output).

  python benchmarks/gradient_precision.py WORKDIR

The summed-loss gradient of WORKDIR's newest checkpoint on its first 4
training batches (dropout off), computed three ways from the same parameters:
the float32 model, bfloat16 compute with float32 products, and bfloat16
compute with bfloat16 products (what a GPU runs by default). Prints the
cosine and relative norm of each against the float32 gradient, as JSON
(docs/wmt14.md, "The accelerator step").
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from transformer import checkpoint, checks, config_io, sharding, train  # noqa: E402
from transformer import data as data_lib  # noqa: E402

WAYS = {"float32": ("float32", "float32"),  # (model.dtype, model.matmul_output)
        "bf16_f32_products": ("bfloat16", "float32"),
        "bf16_bf16_products": ("bfloat16", "compute")}


def gradient(workdir, step, batches, dtype, matmul_output):
  """The summed gradient over ``batches``, flat, float64."""
  c, _ = config_io.with_default_fields(config_io.load_config(workdir))
  c.model.dtype, c.model.matmul_output, c.model.dropout_rate = dtype, matmul_output, 0.0
  c = checks.resolve_config(c, num_devices=1)
  setup = train.setup_state(c, sharding.make_mesh(c.train))
  state = train.init_state(setup)
  state["params"] = checkpoint.restore_params(workdir, step, target=state["params"])
  grads = jax.jit(lambda s, r, b: train._grads_and_sums(setup, s, r, b, 0)[0])
  total = 0.0
  for b in batches:
    g = grads(state, setup.rest, sharding.global_batch(b, setup.mesh, setup.rules))
    total = total + np.concatenate([np.asarray(x, np.float64).ravel()
                                    for x in jax.tree.leaves(g)])
  return total


def compare(a, b):
  return {"cosine": float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)),
          "relative_norm": float(np.linalg.norm(a - b) / np.linalg.norm(b))}


def main(workdir):
  config = config_io.load_config(workdir)
  step = checkpoint.list_steps(workdir)[-1]
  tokenizer = data_lib.load_tokenizer(config.data, workdir, vocab_size=config.model.vocab_size)
  batches_iter = data_lib.make_train_iterator(config.data, tokenizer, workdir)
  batches = [next(batches_iter) for _ in range(4)]
  batches_iter.close()
  grads = {name: gradient(workdir, step, batches, *way) for name, way in WAYS.items()}
  out = {name: compare(g, grads["float32"]) for name, g in grads.items() if name != "float32"}
  out["bf16_bf16_vs_bf16_f32_products"] = compare(grads["bf16_bf16_products"],
                                                  grads["bf16_f32_products"])
  print(json.dumps({"workdir": workdir, "step": step, "batches": len(batches), **out}, indent=1))


if __name__ == "__main__":
  main(sys.argv[1])
