"""Tests for transformer/metrics.py: progress line, metrics.jsonl, TensorBoard."""

import glob
import os

from transformer import metrics


def test_format_duration():
  assert metrics.format_duration(9.4) == "9s"
  assert metrics.format_duration(252) == "4m12s"
  assert metrics.format_duration(3 * 3600 + 5 * 60 + 7) == "3h05m"


def test_progress_line():
  line = metrics.progress_line(
      1200, 100000,
      {"train/loss": 4.12341, "train/perplexity": 40.0, "train/learning_rate": 6.1e-4,
       "train/target_tokens_per_s": 12345.6, "train/step_time_s": 0.52, "dev/bleu": 21.456},
      eta_s=3 * 3600 + 12 * 60)
  assert line == ("step 1200/100000 | loss 4.1234 | ppl 40.00 | lr 6.100e-04 | "
                  "12,346 tgt tok/s | 0.520 s/step | ETA 3h12m | dev/bleu 21.46")


def test_writer_jsonl_tensorboard_and_truncate(tmp_path):
  workdir = str(tmp_path)
  writer = metrics.MetricsWriter(workdir, num_steps=10)
  for step in (1, 2, 3):
    writer.write(step, {"train/loss": 1.0 / step})
  writer.truncate_after(2)  # A resumed run restarts after its checkpoint at step 2.
  writer.write(3, {"train/loss": 0.5})
  writer.close()
  rows = metrics.read_metrics(workdir)
  assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.5)]
  assert set(rows[0]) == {"step", "time", "elapsed_s", "train/loss"}
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))


def test_non_primary_process_writes_nothing(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path / "run"), num_steps=10, is_primary=False)
  writer.write(1, {"train/loss": 1.0})
  writer.close()
  assert not os.path.exists(tmp_path / "run")


def test_read_metrics_skips_a_line_cut_by_kill9(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/lo')
  assert metrics.read_metrics(str(tmp_path)) == [{"step": 1, "train/loss": 2.0}]


def test_resume_truncates_jsonl_and_purges_tensorboard(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path), 10)
  for step in range(1, 6):
    writer.write(step, {"train/loss": float(step)}, console=False)
  writer.truncate_after(3)  # Resumed from the checkpoint of step 3.
  writer.write(4, {"train/loss": 40.0}, console=False)
  writer.close()
  rows = metrics.read_metrics(str(tmp_path))
  assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0),
                                                          (4, 40.0)]
  # A second event file, opened with purge_step=4, tells TensorBoard to drop
  # the first file's events from step 4 on.
  assert len(os.listdir(tmp_path / "tensorboard")) == 2
