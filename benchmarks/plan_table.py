r"""The planner table of docs/wmt14.md: ``transformer.plan`` over a grid of runs.

  python benchmarks/plan_table.py --runs=base:h100:8:dp,big:h100:8:fsdp --max_batch \
      --json_out=/tmp/plans.json

Each run is SIZE:TARGET:DEVICES:MODE with SIZE base or big (configs/wmt14_ende.py
at the paper's batch, data.batch_tokens=25000), TARGET one of
transformer.plan.TARGETS, MODE dp (data parallel) or fsdp (parameters and Adam
state sharded over every device). Prints a markdown table of compile-time
estimates (never measurements) and writes every plan as JSON.
"""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"  # Before JAX starts: nothing runs on a device.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformer import toolchain  # noqa: E402

toolchain.use()  # Before JAX starts: it finds the CUDA plugin and libtpu then.

import datetime  # noqa: E402
import json  # noqa: E402

from absl import flags  # noqa: E402

from configs import wmt14_ende  # noqa: E402
from transformer import plan as plan_lib  # noqa: E402

_RUNS = flags.DEFINE_list("runs", ["base:h100:8:dp"], "SIZE:TARGET:DEVICES:MODE runs.")
_MAX_BATCH = flags.DEFINE_bool("max_batch", False, "Search the largest batch of each run.")
_MAX_BATCH_COMPILES = flags.DEFINE_integer(
    "max_batch_compiles", 8, "At most this many compiles per largest-batch search "
    "(fewer: the largest found, not exact to one row).")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Write the plans here as JSON.")


def run_config(size, mode):
  config = wmt14_ende.get_config(size)
  config.unlock()
  if mode == "fsdp":
    config.train.fsdp = True
    config.train.mesh_shape.data = 1
    config.train.mesh_shape.fsdp = -1
  elif mode != "dp":
    raise ValueError(f"mode {mode!r} is not dp or fsdp.")
  return config


def row(name, p):
  m, e = p["memory_per_device"], p["estimate"]
  gib = lambda n: f"{n / 2**30:.2f}"  # noqa: E731
  best = p.get("max_batch", {})
  largest = (("" if best["exact_to_one_row"] else ">= ") + f"{best['batch_tokens']:,}"
             + f" ({best['tokens_per_device']:,} per device)" if best else "not searched")
  hours = lambda steps: e["step_seconds"] * steps / 3600  # noqa: E731
  state = m["parameters"] + m["optimizer_state"]
  return (f"| {name} | {p['devices']} x {p['device']} | {gib(state)}"
          f" | {gib(m['peak'])} / {gib(m['usable'])} | {largest} | "
          f"{e['bytes_accessed_per_device']:.2e} | {e['step_seconds'] * 1e3:.1f} ({e['bound']}) | "
          f"{100 * e['best_case_mfu']:.0f}% | {hours(100_000):.2f} h / {hours(300_000):.2f} h |")


def main(argv):
  del argv
  plans, lines = {}, []
  for spec in _RUNS.value:
    size, target, devices, mode = spec.split(":")
    print(f"== {spec}", file=sys.stderr, flush=True)
    plans[spec] = plan_lib.make_plan(run_config(size, mode), target, int(devices),
                                     max_batch=_MAX_BATCH.value, beam_search=False,
                                     max_batch_compiles=_MAX_BATCH_COMPILES.value,
                                     log=lambda *a: print(*a, file=sys.stderr, flush=True))
    lines.append(row(f"{size} {mode}", plans[spec]))
    print(lines[-1], file=sys.stderr, flush=True)
  search = (f" --max_batch --max_batch_compiles={_MAX_BATCH_COMPILES.value}"
            if _MAX_BATCH.value else "")
  print(f"Compile-time estimates, {datetime.date.today()} (python benchmarks/plan_table.py "
        f"--runs={','.join(_RUNS.value)}{search}):\n")
  print("| run | devices | params + Adam per device (GiB) | peak / usable per device (GiB) "
        "| largest data.batch_tokens | bytes accessed per device per step | roofline step (ms) "
        "| best-case MFU | roofline time for 100k / 300k steps |")
  print("|---|---|---|---|---|---|---|---|---|")
  print("\n".join(lines))
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      json.dump(plans, f, indent=1)


if __name__ == "__main__":
  from transformer import cli

  cli.run(main, config_flag=None)
