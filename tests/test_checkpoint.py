"""Tests for transformer/checkpoint.py: save, keep-last-K, resume, params restore,
and damaged checkpoints (also through train.py and evaluate.py)."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer import checkpoint


def _state(seed):
  key = jax.random.key(seed)
  # Integer keys as in nnx.List layers.
  params = {"embed": jax.random.normal(key, (5, 4)),
            "layers": {0: {"w": jnp.full((4, 4), float(seed))}, 1: {"w": jnp.ones((4, 4))}}}
  opt_state = optax.adam(1e-3).init(params)
  return {"params": params, "opt_state": opt_state, "step": jnp.int32(seed),
          "rng": jax.random.key_data(jax.random.PRNGKey(seed))}


def _abstract_tree(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _assert_tree_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_keep_last_k(tmp_path):
  workdir = str(tmp_path)
  ckpt = checkpoint.Checkpointer(workdir, every_steps=10, every_minutes=0, keep=2)
  for step in (10, 20, 30):
    ckpt.save(step, _state(step), {"epoch": 0, "position": step * 3})
  ckpt.close()
  assert checkpoint.list_steps(workdir) == [20, 30]

  ckpt = checkpoint.Checkpointer(workdir, every_steps=10, every_minutes=0, keep=2)
  state, data_state, step = ckpt.restore_latest(_abstract_tree(_state(0)))
  ckpt.close()
  assert step == 30
  assert data_state == {"epoch": 0, "position": 90}
  _assert_tree_equal(state, _state(30))

  params = checkpoint.restore_params(workdir, 20, target=_abstract_tree(_state(0)["params"]))
  _assert_tree_equal(params, _state(20)["params"])
  # Without a target, the saved layout comes back (keys as saved).
  params = checkpoint.restore_params(workdir, 30)
  np.testing.assert_array_equal(params["layers"]["0"]["w"], np.full((4, 4), 30.0))


def test_incomplete_checkpoint_is_ignored(tmp_path):
  workdir = str(tmp_path)
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, every_minutes=0, keep=5)
  ckpt.save(1, _state(1), {})
  ckpt.close()
  # What kill -9 in the middle of a save leaves behind: a temporary directory.
  tmp = os.path.join(checkpoint.checkpoint_dir(workdir), "2.orbax-checkpoint-tmp-123")
  os.makedirs(os.path.join(tmp, "params"))
  assert checkpoint.list_steps(workdir) == [1]
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, every_minutes=0, keep=5)
  _, _, step = ckpt.restore_latest(_abstract_tree(_state(0)))
  ckpt.close()
  assert step == 1


def test_restore_latest_without_checkpoint_is_none(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, every_minutes=0, keep=1)
  assert ckpt.restore_latest(_abstract_tree(_state(0))) is None
  ckpt.close()
  assert checkpoint.list_steps(str(tmp_path / "nothing")) == []


def test_restore_params_missing_step_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="No complete checkpoint for step 7"):
    checkpoint.restore_params(str(tmp_path), 7)


def test_step_and_time_triggers(tmp_path, monkeypatch):
  clock = [1000.0]
  monkeypatch.setattr(checkpoint.time, "time", lambda: clock[0])
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=100, every_minutes=10, keep=3)
  state = _state(0)
  assert ckpt.due(200) and not ckpt.due(201)
  clock[0] += 9 * 60
  ckpt.save(300, state, {})  # A step-triggered save at minute 9 ...
  clock[0] += 60
  assert ckpt.due(301)  # ... does not move the 10-minute clock.
  ckpt.save(301, state, {})
  clock[0] += 9 * 60
  assert not ckpt.due(302)
  clock[0] += 60
  assert ckpt.due(303)
  ckpt.close()


def _two_checkpoints(workdir):
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, every_minutes=0, keep=5)
  for step in (1, 2):
    ckpt.save(step, _state(step), {"position": step})
  ckpt.close()


def _files(directory):
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), directory)] = f.read()
  return out


@pytest.mark.parametrize("damage", ["truncated array file", "missing manifest",
                                    "empty data state"])
def test_damaged_newest_checkpoint_falls_back(tmp_path, damage, capfd):
  workdir = str(tmp_path)
  _two_checkpoints(workdir)
  step_dir = os.path.join(checkpoint.checkpoint_dir(workdir), "2")
  if damage == "truncated array file":
    for root, _, names in os.walk(os.path.join(step_dir, "params")):
      for name in names if os.path.basename(root) == "d" else []:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(10)
  elif damage == "missing manifest":
    os.remove(os.path.join(step_dir, "opt_state", "manifest.ocdbt"))
  else:
    open(os.path.join(step_dir, "data", "metadata"), "w").close()
  older = _files(os.path.join(checkpoint.checkpoint_dir(workdir), "1"))

  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, every_minutes=0, keep=5)
  state, data_state, step = ckpt.restore_latest(_abstract_tree(_state(0)))
  assert (step, data_state) == (1, {"position": 1})
  _assert_tree_equal(state, _state(1))
  # The damaged step is kept aside, so the resumed run can save step 2 again.
  assert checkpoint.list_steps(workdir) == [1]
  assert os.path.isdir(os.path.join(workdir, checkpoint.DAMAGED_DIR, "2"))
  ckpt.save(2, _state(2), {"position": 2})
  ckpt.close()
  assert checkpoint.list_steps(workdir) == [1, 2]
  assert _files(os.path.join(checkpoint.checkpoint_dir(workdir), "1")) == older
  assert "Event loop is closed" not in capfd.readouterr().err


def test_data_state_the_iterator_refuses_falls_back(tmp_path):
  workdir = str(tmp_path)
  _two_checkpoints(workdir)

  def accept(data_state):
    if data_state["position"] == 2:
      raise ValueError("not this one")

  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, every_minutes=0, keep=5)
  _, _, step = ckpt.restore_latest(_abstract_tree(_state(0)), accept_data_state=accept)
  ckpt.close()
  assert step == 1


def test_no_intact_checkpoint_is_one_error_and_moves_nothing(tmp_path):
  workdir = str(tmp_path)
  _two_checkpoints(workdir)
  for step in (1, 2):
    open(os.path.join(checkpoint.checkpoint_dir(workdir), str(step), "data", "metadata"),
         "w").close()
  before = _files(workdir)
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, every_minutes=0, keep=5)
  with pytest.raises(checkpoint.CheckpointError, match=r"step 2: .*; step 1: "):
    ckpt.restore_latest(_abstract_tree(_state(0)))
  ckpt.close()
  assert _files(workdir) == before


def test_damaged_params_name_the_step(tmp_path):
  workdir = str(tmp_path)
  _two_checkpoints(workdir)
  os.remove(os.path.join(checkpoint.checkpoint_dir(workdir), "2", "params", "manifest.ocdbt"))
  with pytest.raises(checkpoint.CheckpointError, match="checkpoint at step 2 .* cannot be "
                     "restored"):
    checkpoint.restore_params(workdir, 2)


def test_failed_save_is_one_error_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, every_minutes=0, keep=5)
  ckpt.save(1, _state(1), {})
  ckpt.manager.wait_until_finished()

  def full_disk(step, args, force):  # What a full disk leaves: a partial save.
    tmp = os.path.join(checkpoint.checkpoint_dir(workdir), f"{step}.orbax-checkpoint-tmp-9")
    os.makedirs(os.path.join(tmp, "params"))
    raise OSError(28, "No space left on device", os.path.join(tmp, "params"))

  monkeypatch.setattr(ckpt.manager, "save", full_disk)
  with pytest.raises(OSError, match="step 2 .* failed: .*No space left on device.* intact"):
    ckpt.save(2, _state(2), {})
  monkeypatch.undo()
  ckpt.close()
  assert sorted(os.listdir(checkpoint.checkpoint_dir(workdir))) == ["1"]
  assert checkpoint.list_steps(workdir) == [1]


def test_a_tensorstore_write_error_is_one_error_naming_the_failed_step(tmp_path, monkeypatch):
  # TensorStore reports a failed write as a ValueError naming the OS error;
  # a background save's failure surfaces at the next save, which names it.
  workdir = str(tmp_path)
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, every_minutes=0, keep=5)
  ckpt.save(1, _state(1), {})
  ckpt.manager.wait_until_finished()
  where = os.path.join(checkpoint.checkpoint_dir(workdir), "2.orbax-checkpoint-tmp", "params")

  def earlier_save_failed(step, args, force):
    raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local '
                     f'file "{where}/": Failed to write 1796592 bytes to file 4: No space '
                     "left on device [os_error_code='28']")

  monkeypatch.setattr(ckpt.manager, "save", earlier_save_failed)
  with pytest.raises(OSError, match=r"checkpoint of step 2 .* failed: No space left on "
                     r"device \(os error 28\)\. The checkpoints saved before it are intact"):
    ckpt.save(3, _state(3), {})
  monkeypatch.undo()
  ckpt.close()


_WRITE_LIMIT_SCRIPT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # A write past the limit fails (EFBIG).
import jax, jax.numpy as jnp
from transformer import checkpoint, orbax_logs
orbax_logs.quiet()
ckpt = checkpoint.Checkpointer(sys.argv[1], every_steps=1, every_minutes=0, keep=3)
def state(n):
  return {"params": {"w": jax.random.normal(jax.random.PRNGKey(n), (n,))},
          "opt_state": {"count": jnp.zeros((), jnp.int32)}, "step": jnp.int32(n),
          "rng": jax.random.key_data(jax.random.PRNGKey(0))}
ckpt.save(1, state(1000), {})
ckpt.manager.wait_until_finished()
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
try:
  ckpt.save(2, state(1_000_000), {})  # 4 MB of random floats: the write fails.
  ckpt.close()
except OSError as e:
  print(f"error: {e}", file=sys.stderr)
  sys.exit(1)
"""


@pytest.mark.slow
def test_a_real_failed_write_prints_one_error_line_and_keeps_earlier_checkpoints(tmp_path):
  # A real write failure in Orbax's background threads (a file size limit:
  # the same path as a full disk, without a small filesystem to fill).
  import subprocess
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = str(tmp_path / "run")
  done = subprocess.run([sys.executable, "-c", _WRITE_LIMIT_SCRIPT, workdir],
                        capture_output=True, text=True, cwd=repo,
                        env=dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu"))
  lines = [line for line in done.stderr.splitlines() if not line.startswith("I")]
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith(
      "error: Saving the checkpoint of step 2 in "), lines
  assert "File too large (os error 27)" in lines[0]
  assert sorted(os.listdir(checkpoint.checkpoint_dir(workdir))) == ["1"]
  assert checkpoint.list_steps(workdir) == [1]


# ---------------------------------------------------------------------------
# A damaged newest checkpoint of a run, through the command lines: skipped,
# and the run ends as an uninterrupted one.
# ---------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALUATE = [sys.executable, os.path.join(REPO, "evaluate.py")]


def _run(command):
  """(exit code, stderr) of a command line (train.py, evaluate.py) on the CPU."""
  done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
  return done.returncode, done.stderr


def _error_line(stderr):
  """The last line of ``stderr``, an ``error:`` line without a traceback."""
  assert "Traceback" not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), stderr[-3000:]
  return last


def _damage(workdir, kind, step=6):
  step_dir = os.path.join(checkpoint.checkpoint_dir(workdir), str(step))
  if kind == "truncated array file":
    data = os.path.join(step_dir, "params", "ocdbt.process_0", "d")
    largest = max(os.listdir(data), key=lambda n: os.path.getsize(os.path.join(data, n)))
    with open(os.path.join(data, largest), "r+b") as f:
      f.truncate(10)
  elif kind == "missing manifest":
    os.remove(os.path.join(step_dir, "opt_state", "manifest.ocdbt"))
  elif kind == "empty data state":
    open(os.path.join(step_dir, "data", "metadata"), "w").close()


def _final_params(workdir):
  return [np.asarray(x) for x in jax.tree.leaves(checkpoint.restore_params(workdir, 6))]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated array file", "missing manifest",
                                  "empty data state"])
def test_damaged_newest_checkpoint_resumes_from_the_intact_one(trained_run, tmp_path,
                                                               kind, tiny_cli_args,
                                                               train_losses):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  shutil.rmtree(os.path.join(workdir, "eval"))
  _damage(workdir, kind)
  intact = {k: v for k, v in _files(workdir).items() if k.startswith("checkpoints/3/")}
  code, stderr = _run(tiny_cli_args(workdir))
  assert code == 0, stderr[-3000:]
  assert "Traceback" not in stderr and "Event loop is closed" not in stderr
  assert "The checkpoint at step 6" in stderr and "cannot be restored" in stderr
  assert "Resumed from step 3" in stderr
  # The older checkpoint is untouched, the damaged one kept aside, and the run
  # ends bitwise as the uninterrupted one.
  after = _files(workdir)
  assert {k: v for k, v in after.items() if k.startswith("checkpoints/3/")} == intact
  assert os.path.isdir(os.path.join(workdir, checkpoint.DAMAGED_DIR, "6"))
  assert checkpoint.list_steps(workdir) == [3, 6]
  assert train_losses(workdir) == train_losses(trained_run)
  for a, b in zip(_final_params(workdir), _final_params(trained_run), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_no_intact_checkpoint_is_one_error_and_changes_nothing(trained_run, tmp_path,
                                                               tiny_cli_args):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  _damage(workdir, "truncated array file", step=6)
  _damage(workdir, "empty data state", step=3)
  before = _files(workdir)
  code, stderr = _run(tiny_cli_args(workdir))
  assert code == 1
  last = _error_line(stderr)
  assert "No checkpoint" in last and "step 6:" in last and "step 3:" in last, last
  after = _files(workdir)  # Never a silent restart from step 0.
  assert {k: after.get(k) for k in before} == before
  assert {k for k in after.keys() - before.keys() if not k.startswith("data_cache/")} == set()


@pytest.mark.slow
def test_evaluate_skips_a_damaged_newest_checkpoint_but_averaging_stops(trained_run,
                                                                        tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  _damage(workdir, "truncated array file")
  before = {k: v for k, v in _files(workdir).items() if k.startswith("checkpoints/")}
  code, stderr = _run([*EVALUATE, f"--workdir={workdir}", "--beam_size=1",
                       "--average_last=1"])
  assert code == 0, stderr[-3000:]
  assert "Traceback" not in stderr and "Event loop is closed" not in stderr
  assert "step 6" in stderr
  assert json.load(open(os.path.join(workdir, "eval", "test.json")))["step"] == 3
  code, stderr = _run([*EVALUATE, f"--workdir={workdir}", "--average_last=2"])
  assert code == 1
  last = _error_line(stderr)
  assert "checkpoint at step 6" in last and "cannot be restored" in last, last
  assert {k: v for k, v in _files(workdir).items() if k.startswith("checkpoints/")} == before
