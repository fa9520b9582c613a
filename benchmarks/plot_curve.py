r"""The learning curve of a run: dev BLEU and losses against steps and wall time.

  python benchmarks/plot_curve.py --workdir=runs/multi30k --out=docs/multi30k_curve.png

Reads ``DIR/metrics.jsonl`` (keys documented in transformer/metrics.py),
writes a PNG with two panels (dev sacreBLEU; train and dev loss) and prints a
Markdown table of every evaluation: step, wall time, dev loss, perplexity
and BLEU, plus the final test figures from ``DIR/eval/*.json``.
"""

import glob
import json
import os
import pathlib
import sys

from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root
from transformer import metrics  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with metrics.jsonl.")
_OUT = flags.DEFINE_string("out", None, "PNG to write; default DIR/curve.png.")


def read_metrics(workdir):
  """The rows of DIR/metrics.jsonl, one per step (train.py truncates on resume)."""
  rows = metrics.read_metrics(workdir)
  if not rows:
    raise FileNotFoundError(f"No metrics in {workdir}/metrics.jsonl; train first "
                            "(python train.py --config=... --workdir=DIR).")
  by_step = {row["step"]: row for row in rows}
  return [by_step[s] for s in sorted(by_step)]


def plot(rows, out):
  import matplotlib  # noqa: PLC0415 (only this command needs it)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  evals = [r for r in rows if "dev/bleu" in r]
  train = [r for r in rows if "train/loss" in r]
  fig, (ax_bleu, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
  ax_bleu.plot([r["step"] for r in evals], [r["dev/bleu"] for r in evals], "o-")
  ax_bleu.set_xlabel("step")
  ax_bleu.set_ylabel("dev sacreBLEU (greedy)")
  ax_bleu.grid(alpha=0.3)
  minutes = ax_bleu.secondary_xaxis("top")
  if evals:
    steps = [r["step"] for r in evals]
    mins = [r["elapsed_s"] / 60 for r in evals]
    minutes.set_xticks(steps[::max(len(steps) // 5, 1)])
    minutes.set_xticklabels([f"{m:.0f}m" for m in mins[::max(len(steps) // 5, 1)]])
  minutes.set_xlabel("wall time")
  ax_loss.plot([r["step"] for r in train], [r["train/loss"] for r in train], label="train loss")
  ax_loss.plot([r["step"] for r in evals], [r["dev/loss"] for r in evals], "o-",
               label="dev loss")
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("label-smoothed loss per token (KL form)")
  ax_loss.legend()
  ax_loss.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=100)


def table(rows, workdir):
  lines = ["| step | wall time | dev loss | dev PPL | dev BLEU |", "|---|---|---|---|---|"]
  for r in rows:
    if "dev/bleu" in r:
      lines.append(f"| {r['step']} | {r['elapsed_s'] / 60:.1f} min | {r['dev/loss']:.3f} | "
                   f"{r['dev/perplexity']:.2f} | {r['dev/bleu']:.2f} |")
  for path in sorted(glob.glob(os.path.join(workdir, "eval", "*.json"))):
    with open(path) as f:
      report = json.load(f)
    lines.append(f"\n{os.path.basename(path)}: BLEU {report['bleu']:.2f} on "
                 f"{report['num_sentences']} sentences at step {report['step']}")
  return "\n".join(lines)


def main(argv):
  del argv
  rows = read_metrics(_WORKDIR.value)
  out = _OUT.value or os.path.join(_WORKDIR.value, "curve.png")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  plot(rows, out)
  print(table(rows, _WORKDIR.value))
  print(f"\nwrote {out}")


if __name__ == "__main__":
  from transformer import cli

  flags.mark_flags_as_required(["workdir"])
  cli.run(main, config_flag=None)
