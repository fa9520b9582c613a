"""train.profile_steps: a JAX profiler trace of real steps (train.py's loop)."""

import glob
import gzip
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from tests.tiny_configs import make_tiny_config
from transformer import checkpoint, train

PROFILE = {"train.profile_steps": 2, "train.profile_skip_steps": 1}


def _train_logged(config, workdir):
  """``train_and_evaluate``'s result and the lines it logged (absl, INFO)."""
  lines = []
  handler = logging.Handler(logging.INFO)
  handler.emit = lambda record: lines.append(record.getMessage())
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.addHandler(handler)
  absl_logger.setLevel(logging.INFO)
  try:
    return train.train_and_evaluate(config, workdir), lines
  finally:
    absl_logger.removeHandler(handler)
    absl_logger.setLevel(level)


def _trace_steps(workdir):
  """The step numbers the trace's "train" step annotations carry, read from
  the one Perfetto file under DIR/profile/ (which must open as gzip + JSON)."""
  (path,) = glob.glob(os.path.join(workdir, "profile", "**", "perfetto_trace.json.gz"),
                      recursive=True)
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  assert events
  return sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train")


def _assert_no_trace_running(tmp_path):
  jax.profiler.start_trace(str(tmp_path / "probe"))  # Raises while another one runs.
  jax.profiler.stop_trace()


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
  """The session's tiny 6-step run (``trained_run``'s config), with steps 2-3 traced."""
  workdir = str(tmp_path_factory.mktemp("profiled") / "run")
  final, lines = _train_logged(make_tiny_config(**PROFILE), workdir)
  return workdir, final, lines


@pytest.mark.slow
def test_profile_steps_write_a_trace_of_those_steps(profiled_run, tmp_path):
  workdir, final, lines = profiled_run
  assert final["step"] == 6
  assert glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert _trace_steps(workdir) == [2, 3]  # One skipped step, then two.
  profile_dir = os.path.join(workdir, "profile")
  assert f"Profile of steps 2-3 written to {profile_dir} (tensorboard --logdir " \
         f"{profile_dir})." in lines
  _assert_no_trace_running(tmp_path)


@pytest.mark.slow
def test_profiling_changes_no_loss_and_no_parameter(profiled_run, trained_run, train_losses):
  workdir, _, _ = profiled_run
  assert train_losses(workdir) == train_losses(trained_run)  # Bitwise.
  assert checkpoint.list_steps(workdir) == checkpoint.list_steps(trained_run) == [3, 6]
  for x, y in zip(jax.tree.leaves(checkpoint.restore_params(workdir, 6)),
                  jax.tree.leaves(checkpoint.restore_params(trained_run, 6)), strict=True):
    np.testing.assert_array_equal(x, y)
  assert not os.path.exists(os.path.join(trained_run, "profile"))  # profile_steps=0.


@pytest.mark.slow
def test_a_resumed_run_traces_what_is_left_of_a_longer_window(trained_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  config = make_tiny_config(**{"train.num_steps": 8, "train.profile_steps": 10,
                               "train.profile_skip_steps": 0})
  final, lines = _train_logged(config, workdir)
  assert final["step"] == 8
  assert _trace_steps(workdir) == [7, 8]  # Steps 7-16 asked for; the run ends at 8.
  assert any(line.startswith("Profile of steps 7-8 written to") for line in lines)
  _assert_no_trace_running(tmp_path)


@pytest.mark.slow
def test_a_run_that_fails_mid_trace_stops_the_trace(tmp_path):
  config = make_tiny_config(**{"train.learning_rate_scale": 1e32, "train.num_steps": 20,
                               "train.profile_steps": 10, "train.profile_skip_steps": 0})
  with pytest.raises(train.NonFiniteLossError):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert _trace_steps(str(tmp_path / "run"))  # Written, though the run failed.
  _assert_no_trace_running(tmp_path)


def test_each_process_of_a_multi_process_run_traces_into_its_own_folder(monkeypatch):
  # Two CPU processes hang on jax 0.12.1 (tests/test_train.py), so the folder
  # choice is checked here without a second process.
  config = make_tiny_config(**PROFILE)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  window = train._ProfileWindow(config.train, "DIR", first_step=1, writer=None)
  assert window.log_dir == os.path.join("DIR", "profile", "process_1")
  assert (window.first, window.last) == (2, 3)
