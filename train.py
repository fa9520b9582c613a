r"""Trains a Transformer: ``python train.py --config=CONFIG --workdir=DIR``.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python train.py --config=configs/wmt14_ende.py:base --workdir=runs/ende_base \
      --config.train.accumulate_steps=4 --config.data.batch_tokens=6250

Running the same command again with the same DIR resumes from the latest
checkpoint. SIGTERM or Ctrl-C saves a checkpoint and exits.

Multi-host: start the same command on every host with
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or the
environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID). ``data.batch_tokens`` is the global budget over all of them.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from transformer import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/wmt14_ende.py:base.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, logs, config.json and eval results.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS", ""),
    "HOST:PORT of process 0, for runs over several processes.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ.get("JAX_NUM_PROCESSES", "1")),
    "Number of processes (hosts) in the run.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", int(os.environ.get("JAX_PROCESS_ID", "0")), "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # After flag parsing: JAX starts here.

  from transformer import multihost, train

  # A diverged run, or another process's failure, is one message (exit code 1)
  # as a user's mistake is (data, workdir, checkpoints: cli.run).
  with cli.user_errors(train.NonFiniteLossError, multihost.OtherProcessFailedError):
    multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    final = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if "test/bleu" in final and jax.process_index() == 0:
    split = _CONFIG.value.data.test_split
    print(f"{split} BLEU {final['test/bleu']:.2f} (sacreBLEU) after {final['step']} steps; "
          f"report: {os.path.join(_WORKDIR.value, 'eval', split + '.json')}")


if __name__ == "__main__":
  # A flag or config error (a misspelt field, a missing config file, a value
  # out of range): one "error:" line and exit code 2; a user's other mistakes
  # (the data, the workdir, the machine) exit with 1.
  cli.run(main)
