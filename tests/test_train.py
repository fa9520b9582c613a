"""Tests for transformer/train.py and train.py: the update, resume, signals.

Step-level tests drive the jitted update on random batches; loop-level tests
run ``train_and_evaluate`` (and the CLI, in subprocesses) on a tiny generated
corpus with a one-layer model.
"""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import quickstart
from transformer import checkpoint, checks, config_io, precision, sharding, train
from transformer import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _env():
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")


# ---------------------------------------------------------------------------
# The update step.
# ---------------------------------------------------------------------------


def _setup(tiny_config, dropout_rate=0.1, dtype="auto", **train_overrides):
  config = tiny_config(**{f"train.{k}": v for k, v in train_overrides.items()})
  config.model.vocab_size = 32
  config.model.dropout_rate = dropout_rate
  config.model.dtype = dtype
  mesh = sharding.make_mesh(config.train)
  return train.setup_state(config, mesh)


def _random_batch(rng, rows, vocab=32):
  inputs = rng.integers(4, vocab, (rows, 9)).astype(np.int32)
  targets = rng.integers(4, vocab, (rows, 11)).astype(np.int32)
  inputs[:, -1] = 1
  # Ragged targets: different numbers of real tokens per row.
  for r in range(rows):
    n = 4 + r % 6
    targets[r, n - 1], targets[r, n:] = 1, 0
  return {"inputs": inputs, "targets": targets}


def test_train_and_evaluate_runs_two_steps(tmp_path, tiny_config, train_losses):
  """Flax's train_test in the fast suite: two updates of ``train_and_evaluate``
  on a tiny config, its checkpoint, metrics and test report."""
  config = tiny_config(**{"train.num_steps": 2, "train.checkpoint_every_steps": 2,
                          "data.synthetic_train_size": 300, "data.synthetic_test_size": 8,
                          "data.synthetic_dev_size": 8, "model.dtype": "float32"})
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(config, workdir)
  assert final["step"] == 2 and math.isfinite(final["train/loss"]) and final["train/loss"] > 0
  assert checkpoint.list_steps(workdir) == [2]
  assert sorted(train_losses(workdir)) == [1, 2]
  assert final["test/num_sentences"] == 8 and final["test/checkpoint_steps"] == [2]
  assert os.path.isfile(os.path.join(workdir, "eval", "test.json"))


@pytest.mark.slow
def test_accumulation_equals_bigger_batch(tiny_config):
  rng = np.random.default_rng(0)
  a, b = _random_batch(rng, 4), _random_batch(rng, 4)
  big = {k: np.concatenate([a[k], b[k]]) for k in a}

  def one_update(accumulate_steps, micro_batches):
    # float32: bf16 products (what "auto" picks on a CPU with bf16 instructions)
    # round the two micro-batches' gradients differently from the big batch's.
    setup = _setup(tiny_config, dropout_rate=0.0, dtype="float32",
                   accumulate_steps=accumulate_steps)
    state = train.init_state(setup)
    update = train.make_update_fn(setup)
    batches = [sharding.global_batch(mb, setup.mesh, setup.rules) for mb in micro_batches]
    state, metrics = update(state, batches)
    return jax.tree.map(np.asarray, state["params"]), jax.device_get(metrics)

  params_acc, metrics_acc = one_update(2, [a, b])
  params_big, metrics_big = one_update(1, [big])
  # Token counts differ per micro-batch, so averaging the two micro-batch means
  # would be wrong; summing and dividing once matches the big batch.
  assert metrics_acc["target_tokens"] == metrics_big["target_tokens"]
  np.testing.assert_allclose(metrics_acc["loss"], metrics_big["loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics_acc["grad_norm"], metrics_big["grad_norm"], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(params_acc), jax.tree.leaves(params_big), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_chunked_loss_gives_the_same_update(tiny_config):
  """train.loss_chunk_tokens changes how the loss is computed, not the update:
  chunks of 8 tokens (2 of the 11 target positions of 4 rows: they do not
  divide them) against one chunk."""
  batch = _random_batch(np.random.default_rng(2), 4)

  def one_update(loss_chunk_tokens):
    setup = _setup(tiny_config, dropout_rate=0.0, loss_chunk_tokens=loss_chunk_tokens)
    state, metrics = train.make_update_fn(setup)(
        train.init_state(setup), [sharding.global_batch(batch, setup.mesh, setup.rules)])
    return jax.tree.map(np.asarray, state["params"]), jax.device_get(metrics)

  params_chunked, metrics_chunked = one_update(8)
  params_whole, metrics_whole = one_update(0)
  for key in ("loss", "nll", "accuracy", "target_tokens", "grad_norm"):
    np.testing.assert_allclose(metrics_chunked[key], metrics_whole[key], rtol=1e-5,
                               err_msg=key)
  for x, y in zip(jax.tree.leaves(params_chunked), jax.tree.leaves(params_whole),
                  strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_tiny_batch_overfits(tiny_config):
  setup = _setup(tiny_config, dropout_rate=0.0, warmup_steps=30, learning_rate_scale=0.2)
  state = train.init_state(setup)
  update = train.make_update_fn(setup)
  batch = sharding.global_batch(_random_batch(np.random.default_rng(1), 2), setup.mesh,
                                setup.rules)
  first = None
  for _ in range(100):
    state, metrics = update(state, [batch])
    first = first or float(metrics["loss"])
  metrics = jax.device_get(metrics)
  # The loss is a KL divergence to the smoothed targets: 0 is a perfect fit.
  assert first > 2.5
  assert metrics["loss"] < 0.01, metrics
  assert metrics["accuracy"] == 1.0


# ---------------------------------------------------------------------------
# The loop: resume, NaN, logs.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_is_bitwise_identical(tmp_path, tiny_config, train_losses):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  final = train.train_and_evaluate(tiny_config(), straight)
  train.train_and_evaluate(tiny_config(**{"train.num_steps": 3}), resumed)
  assert checkpoint.list_steps(resumed) == [3]
  train.train_and_evaluate(tiny_config(), resumed)

  a, b = train_losses(straight), train_losses(resumed)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
  assert a == b  # Bitwise: dropout keys come from (seed, step), data from its state.
  for x, y in zip(jax.tree.leaves(checkpoint.restore_params(straight, 6)),
                  jax.tree.leaves(checkpoint.restore_params(resumed, 6)), strict=True):
    np.testing.assert_array_equal(x, y)

  # Logs, config and evaluation files.
  row = metrics_lib.read_metrics(straight)[-1]
  for key in ("step", "train/loss", "train/nll", "train/perplexity", "train/accuracy",
              "train/learning_rate", "train/target_tokens_per_s", "train/step_time_s"):
    assert key in row
  np.testing.assert_allclose(row["train/learning_rate"], 32**-0.5 * 6 * 10**-1.5, rtol=1e-6)
  assert config_io.load_config(straight).model.d_model == 32
  report = json.load(open(os.path.join(straight, "eval", "test.json")))
  assert report["num_sentences"] == 24 and report["step"] == 6
  assert report["bleu"] == final["test/bleu"]
  with open(os.path.join(straight, "eval", "test.hyp.txt")) as f:
    assert len(f.read().splitlines()) == 24


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_config):
  workdir = str(tmp_path)
  config = tiny_config(**{"train.learning_rate_scale": 1e32, "train.num_steps": 20,
                          "train.checkpoint_every_steps": 1})
  with pytest.raises(train.NonFiniteLossError, match=r"at step (\d+)") as info:
    train.train_and_evaluate(config, workdir)
  bad_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
  steps = checkpoint.list_steps(workdir)
  assert steps and max(steps) < bad_step
  params = checkpoint.restore_params(workdir, max(steps))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_changed_model_cannot_resume(tmp_path, tiny_config):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(**{"train.num_steps": 3}), workdir)
  with pytest.raises(ValueError, match="different model"):
    train.train_and_evaluate(tiny_config(**{"model.d_ff": 128}), workdir)


@pytest.mark.slow
def test_a_run_trained_in_float32_resumes_in_bfloat16(tmp_path, caplog, tiny_config):
  """The compute dtype is not the model's identity: "auto" resolves per machine."""
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(**{"train.num_steps": 3, "model.dtype": "float32"}),
                           workdir)
  before = checkpoint.restore_params(workdir, 3)
  with caplog.at_level("WARNING"):
    train.train_and_evaluate(tiny_config(**{"model.dtype": "bfloat16"}), workdir)
  assert "Compute dtype changed from float32" in caplog.text and "to bfloat16" in caplog.text
  assert checkpoint.list_steps(workdir)[-1] == 6
  after = checkpoint.restore_params(workdir, 6)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(after))  # param_dtype.
  assert jax.tree.structure(after) == jax.tree.structure(before)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["model"]["dtype"] == "bfloat16"


@pytest.mark.slow
def test_bad_rerun_keeps_the_runs_config_and_checkpoints(tmp_path, tiny_config):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(**{"train.num_steps": 3}), workdir)
  saved = open(os.path.join(workdir, "config.json")).read()
  steps = checkpoint.list_steps(workdir)
  bad = tiny_config(**{"train.num_steps": 3, "data.source": "text",
                       "data.dir": str(tmp_path / "no_such_folder")})
  with pytest.raises(FileNotFoundError, match="no_such_folder"):
    train.train_and_evaluate(bad, workdir)
  assert open(os.path.join(workdir, "config.json")).read() == saved
  assert checkpoint.list_steps(workdir) == steps


@pytest.mark.parametrize("overrides,message", [
    ({"train.log_every_steps": 0}, "train.log_every_steps=0 must be >= 1"),
    ({"model.positional_encoding": "learned", "model.max_len": 16},
     "longer than the learned positional embedding"),
])
def test_impossible_train_config_is_one_clear_error(overrides, message, tiny_config):
  with pytest.raises(ValueError, match=message):
    checks.resolve_config(tiny_config(**overrides))


# ---------------------------------------------------------------------------
# The CLI: signals, kill -9 and two processes.
# ---------------------------------------------------------------------------


def _wait_for(predicate, process, timeout=120):
  start = time.time()
  while not predicate():
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() - start < timeout, "timed out"
    time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_saves_and_kill9_resumes(tmp_path, tiny_cli_args, train_losses):
  workdir = str(tmp_path)
  args = tiny_cli_args(workdir, **{"train.num_steps": 100000, "train.checkpoint_every_steps": 1000})
  proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  _wait_for(lambda: len(train_losses(workdir)) >= 2, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err[-3000:]
  assert "Stopped by SIGTERM" in err
  steps = checkpoint.list_steps(workdir)
  assert len(steps) == 1 and steps[0] >= 2  # Saved at the step it stopped.
  stopped_at = steps[0]

  # Resume, checkpointing every step, and kill -9 at some moment.
  args = tiny_cli_args(workdir, **{"train.num_steps": 100000, "train.checkpoint_every_steps": 1})
  proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  _wait_for(lambda: max(train_losses(workdir)) >= stopped_at + 3, proc)
  proc.kill()
  proc.communicate()
  latest = max(checkpoint.list_steps(workdir))
  assert latest > stopped_at

  # The same command (with a reachable end) resumes from the latest complete one.
  args = tiny_cli_args(workdir, **{"train.num_steps": latest + 2})
  out = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=180)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"Resumed from step {latest}" in out.stderr
  assert max(checkpoint.list_steps(workdir)) == latest + 2
  rows = [r["step"] for r in metrics_lib.read_metrics(workdir) if "train/loss" in r]
  assert rows == list(range(1, latest + 3))  # Each step logged once.


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# Two training processes on localhost (gloo collectives on the CPU) hang in
# their first multihost.primary_first broadcast on jax 0.12.1 (found
# 2026-12-06, not diagnosed: a bare two-process broadcast_one_to_all script
# passes there); they pass on jax 0.11.2, where .ci/run runs them
# (`-m "not slow or multiprocess"` in .venv-oldest). docs/troubleshooting.md.
MULTIPROCESS_HANGS = tuple(int(x) for x in jax.__version__.split(".")[:2]) >= (0, 12)
multiprocess = [
    pytest.mark.slow, pytest.mark.multiprocess,
    pytest.mark.skipif(MULTIPROCESS_HANGS, reason=(
        f"two CPU processes hang in their first broadcast on jax {jax.__version__}; "
        "run on jax 0.11.2 by .ci/run's .venv-oldest"))]


@multiprocess[0]
@multiprocess[1]
@multiprocess[2]
def test_two_processes(tmp_path, tiny_cli_args, train_losses):
  workdir = str(tmp_path)
  port = _free_port()
  procs = [
      subprocess.Popen(
          [*tiny_cli_args(workdir, **{"train.num_steps": 4, "train.eval_every_steps": 4,
                                 "train.eval_bleu_sentences": 8}),
           f"--coordinator_address=localhost:{port}", "--num_processes=2",
           f"--process_id={i}"],
          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
  assert "process 0 of 2; devices: 2 global, 1 local" in outputs[0][1]
  assert checkpoint.list_steps(workdir) == [3, 4]
  # Only process 0 logs metrics: one row per step.
  assert sorted(train_losses(workdir)) == [1, 2, 3, 4]
  assert metrics_lib.read_metrics(workdir)[-1]["dev/bleu_sentences"] == 8
  assert "Done at step 4" in outputs[0][1] and "Done at" not in outputs[1][1]
  assert json.load(open(os.path.join(workdir, "eval", "test.json")))["num_sentences"] == 24


@multiprocess[0]
@multiprocess[1]
@multiprocess[2]
def test_two_processes_stop_together_when_process_0_fails(tmp_path, tiny_cli_args):
  # Process 0 cannot read the corpus; process 1 must not wait for it forever.
  workdir = str(tmp_path / "run")
  missing = str(tmp_path / "no_such_corpus")
  port = _free_port()
  procs = [
      subprocess.Popen(
          [*tiny_cli_args(workdir, **{"data.source": "text", "data.dir": missing}),
           f"--coordinator_address=localhost:{port}", "--num_processes=2",
           f"--process_id={i}"],
          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errors = [p.communicate(timeout=120)[1] for p in procs]
  assert [p.returncode for p in procs] == [1, 1], errors[1][-3000:]
  assert "no_such_corpus" in errors[0]
  assert errors[1].strip().splitlines()[-1] == (
      "error: Process 0 failed while preparing the corpus and the tokenizer; "
      "its log has the error.")


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
  """The README's quickstart command, shortened: 120 steps, greedy, 200 test
  sentences (~45 s on 2 CPU cores). The full run reaches BLEU ~93."""
  workdir = str(tmp_path)
  args = [sys.executable, os.path.join(REPO, "train.py"),
          "--config=" + os.path.join(REPO, "configs", "quickstart.py"), f"--workdir={workdir}",
          "--config.train.num_steps=120", "--config.train.eval_every_steps=0",
          "--config.decode.beam_size=1", "--config.data.synthetic_test_size=200"]
  out = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "test BLEU" in out.stdout
  report = json.load(open(os.path.join(workdir, "eval", "test.json")))
  assert report["num_sentences"] == 200 and report["step"] == 120
  assert report["bleu"] > 25.0, report  # Measured: 41.6.


@pytest.mark.slow
def test_bfloat16_losses_track_float32_for_50_quickstart_steps(tmp_path, train_losses):
  """The quickstart model, 50 steps, the same data and dropout masks: the
  bfloat16 run's loss stays within 2% of float32's at every step (measured:
  at most 0.4%, 0.015 nats, on an AMD EPYC, 2026-11-25)."""
  runs = {}
  for dtype in ("float32", "bfloat16"):
    config = quickstart.get_config()
    overrides = {"model.dtype": dtype, "train.num_steps": 50, "train.log_every_steps": 1,
                 "train.eval_every_steps": 0, "train.checkpoint_every_steps": 0,
                 "train.checkpoint_every_minutes": 0.0, "data.synthetic_test_size": 8,
                 "decode.beam_size": 1}
    for key, value in overrides.items():
      section, field = key.split(".")
      config[section][field] = value
    train.train_and_evaluate(config, str(tmp_path / dtype))
    runs[dtype] = train_losses(str(tmp_path / dtype))
  assert sorted(runs["float32"]) == sorted(runs["bfloat16"]) == list(range(1, 51))
  f32 = np.array([runs["float32"][s] for s in range(1, 51)])
  bf16 = np.array([runs["bfloat16"][s] for s in range(1, 51)])
  np.testing.assert_allclose(bf16, f32, rtol=0.02)
  assert bf16[-1] < bf16[0] - 2.0  # It learns (6.6 -> 3.6 nats).


@pytest.mark.slow
def test_mixed_precision_keeps_float32_params(tiny_config):
  config = tiny_config(**{"model.dtype": "auto", "model.vocab_size": 32})
  resolved = checks.resolve_config(config)
  # "auto": float32 on a CPU without a bfloat16 matrix engine; bfloat16 with
  # one (AMX, AVX512-BF16) and on GPU/TPU. Resolved once, saved with the run.
  expected = "bfloat16" if precision.cpu_has_bf16_matmul() else "float32"
  assert resolved.model.dtype == expected
  config.model.dtype = "bfloat16"  # bfloat16 compute, float32 params and Adam state.
  setup = train.setup_state(config, sharding.make_mesh(config.train))
  state = train.init_state(setup)
  update = train.make_update_fn(setup)
  batch = sharding.global_batch(_random_batch(np.random.default_rng(2), 2), setup.mesh,
                                setup.rules)
  state, metrics = update(state, [batch])
  assert np.isfinite(float(metrics["loss"]))
  assert {x.dtype for x in jax.tree.leaves(state["params"])} == {np.dtype("float32")}
  assert {x.dtype for x in jax.tree.leaves(state["opt_state"]) if x.ndim} == {np.dtype("float32")}


@pytest.mark.slow
def test_final_evaluation_averages_the_last_checkpoints(tmp_path, tiny_config):
  # decode.average_last=3 with a checkpoint every step: the final test report
  # is the mean of steps 4-6 (§6.1), the same as evaluate.py --average_last=3.
  from transformer import evaluate as evaluate_lib

  workdir = str(tmp_path)
  config = tiny_config(**{"train.checkpoint_every_steps": 1, "decode.average_last": 3})
  final = train.train_and_evaluate(config, workdir)
  assert final["test/checkpoint_steps"] == [4, 5, 6]
  report = json.load(open(os.path.join(workdir, "eval", "test.json")))
  assert report["checkpoint_steps"] == [4, 5, 6] and report["empty_outputs"] == 0
  saved = config_io.load_config(workdir)
  again = evaluate_lib.evaluate(saved, workdir, split="test", name="again")
  assert again["checkpoint_steps"] == [4, 5, 6]
  assert again["bleu"] == final["test/bleu"]


# ---------------------------------------------------------------------------
# Training's pre-flight check (train.check_memory), on this CPU's devices.
# ---------------------------------------------------------------------------


def _memory_check_config():
  config = quickstart.get_config()
  config.unlock()
  config.model.update(num_layers=1, d_model=64, d_ff=128, num_heads=2, d_k=32, d_v=32,
                      vocab_size=256)
  config.data.max_length = 32
  config.data.batch_tokens = 256
  return checks.resolve_config(config)


def test_check_memory_compiles_nothing_where_devices_report_no_limit(monkeypatch):
  config = _memory_check_config()
  update = train.make_update_fn(train.setup_state(config, sharding.make_mesh(config.train)))
  monkeypatch.setattr(train.Update, "lower", lambda *a: pytest.fail("compiled"))
  assert train.check_memory(update, config.data) is None  # CPU devices: no memory_stats.


@pytest.mark.slow
def test_check_memory_stops_a_step_that_does_not_fit_naming_the_bytes():
  config = _memory_check_config()
  update = train.make_update_fn(train.setup_state(config, sharding.make_mesh(config.train)))
  peak = train.check_memory(update, config.data, bytes_limit=2**40)
  assert peak > 0
  with pytest.raises(ValueError, match=r"needs .* \(.* bytes\) per device but .* gives JAX "
                     r".*data.batch_tokens=256.*check_memory=False"):
    train.check_memory(update, config.data, bytes_limit=peak - 1)


@pytest.mark.slow
def test_the_memory_checks_program_is_the_one_the_first_step_runs(caplog):
  config = _memory_check_config()
  setup = train.setup_state(config, sharding.make_mesh(config.train))
  update = train.make_update_fn(setup)
  assert train.check_memory(update, config.data, bytes_limit=2**40) > 0
  rows, length = train.batch_shapes(config.data, setup)["targets"].shape
  batch = {k: np.ones((rows, length), np.int32) for k in train.BATCH_KEYS}
  batch = sharding.global_batch(batch, setup.mesh, setup.rules)
  state = train.init_state(setup)
  with jax.log_compiles(), caplog.at_level("DEBUG"):
    state, metrics = update(state, [batch])
    jax.block_until_ready(metrics)
  compiles = [r.getMessage() for r in caplog.records if "Compiling jit(fused)" in r.getMessage()]
  assert not compiles, compiles
  assert int(state["step"]) == 1
