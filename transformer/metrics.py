"""Training logs: console progress line, ``metrics.jsonl`` and TensorBoard.

Only process 0 writes anything; on other processes every method is a no-op.

``DIR/metrics.jsonl`` holds one JSON object per logged step. Keys (stable;
a key is absent when its value was not computed at that step):

  step                      update number (1-based: the number of updates done)
  time                      Unix time when the line was written
  elapsed_s                 seconds since this process started training
  train/loss                label-smoothed loss per target token (KL form, 0 = perfect fit)
  train/nll                 unsmoothed negative log-likelihood per target token
  train/perplexity          exp(train/nll)
  train/accuracy            argmax token accuracy
  train/learning_rate       Eq. (3) learning rate used for this update
  train/grad_norm           global L2 norm of the (token-averaged) gradient
  train/target_tokens       real target tokens in this update (all micro-batches)
  train/target_tokens_per_s target tokens per second since the previous log line
  train/step_time_s         mean seconds per update since the previous log line
  dev/loss, dev/nll, dev/perplexity, dev/accuracy
                            the same, on the whole dev split (no dropout)
  dev/bleu                  sacreBLEU of greedy translations of the first
                            ``train.eval_bleu_sentences`` dev sentences
  dev/bleu_sentences        how many sentences that BLEU covers

The train/* values are those of the logged update itself (not averages over
the interval), except the two rates.
"""

import json
import os
import time

from absl import logging


def format_duration(seconds: float) -> str:
  """'3h05m', '4m12s' or '9s'."""
  seconds = int(round(max(seconds, 0)))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f"{h}h{m:02d}m"
  if m:
    return f"{m}m{s:02d}s"
  return f"{s}s"


def progress_line(step: int, num_steps: int, metrics: dict, eta_s: float | None) -> str:
  """The console line: step, loss, learning rate, tokens/s, step time, ETA."""
  parts = [f"step {step}/{num_steps}"]
  if "train/loss" in metrics:
    parts.append(f"loss {metrics['train/loss']:.4f}")
  if "train/perplexity" in metrics:
    parts.append(f"ppl {metrics['train/perplexity']:.2f}")
  if "train/learning_rate" in metrics:
    parts.append(f"lr {metrics['train/learning_rate']:.3e}")
  if "train/target_tokens_per_s" in metrics:
    parts.append(f"{metrics['train/target_tokens_per_s']:,.0f} tgt tok/s")
  if "train/step_time_s" in metrics:
    parts.append(f"{metrics['train/step_time_s']:.3f} s/step")
  if eta_s is not None:
    parts.append(f"ETA {format_duration(eta_s)}")
  for key, fmt in (("dev/loss", ".4f"), ("dev/perplexity", ".2f"), ("dev/bleu", ".2f")):
    if key in metrics:
      parts.append(f"{key} {metrics[key]:{fmt}}")
  return " | ".join(parts)


class MetricsWriter:
  """Writes metrics of process 0 to the console, metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str, num_steps: int, *, is_primary: bool = True,
               tensorboard: bool = True):
    self.num_steps = num_steps
    self.is_primary = is_primary
    self.start_time = time.time()
    self._jsonl = None
    self._tb = None
    if not is_primary:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = open(self.path, "a", encoding="utf-8")
    # The TensorBoard file is made at the first row, so that a run stopped
    # before it (a damaged workdir, a bad config) adds no file to the workdir.
    self._tb_dir = os.path.join(workdir, "tensorboard") if tensorboard else None
    self._tb_options = {}

  def _tensorboard(self):
    if self._tb is None and self._tb_dir is not None:
      from tensorboardX import SummaryWriter  # Imported lazily: slow import.
      self._tb = SummaryWriter(self._tb_dir, **self._tb_options)
    return self._tb

  def write(self, step: int, metrics: dict, *, eta_s: float | None = None, console: bool = True):
    """Writes one JSON line (and TensorBoard scalars) for ``step``."""
    if not self.is_primary:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    row = {"step": int(step), "time": time.time(),
           "elapsed_s": time.time() - self.start_time, **metrics}
    self._jsonl.write(json.dumps(row, sort_keys=False) + "\n")
    self._jsonl.flush()
    if self._tensorboard() is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, v, step)
      self._tb.flush()
    if console:
      logging.info("%s", progress_line(step, self.num_steps, metrics, eta_s))

  def truncate_after(self, step: int):
    """On resume: drops rows after the restored checkpoint's ``step``."""
    if not self.is_primary:
      return
    self._jsonl.close()
    truncate_after(os.path.dirname(self.path), step)
    self._jsonl = open(self.path, "a", encoding="utf-8")
    # TensorBoard drops the killed run's events after ``step`` too.
    self._tb_options = {"purge_step": step + 1, "filename_suffix": f".resume{step}"}
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def info(self, message: str, *args):
    """A console message from process 0 only."""
    if self.is_primary:
      logging.info(message, *args)

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def truncate_after(workdir: str, step: int):
  """Drops rows with a step > ``step`` (logged by a run that was killed after
  its last checkpoint), so that a resumed run's file has each step once."""
  rows = read_metrics(workdir)
  kept = [r for r in rows if r["step"] <= step]
  if len(kept) == len(rows):
    return
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for r in kept:
      f.write(json.dumps(r) + "\n")
  os.replace(path + ".tmp", path)


def read_metrics(workdir: str) -> list[dict]:
  """All rows of ``DIR/metrics.jsonl`` (an empty list if there is none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    rows = []
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # A line cut short by kill -9.
        continue
    return rows
