"""What a workdir holds, and the one place that saves and restores it (Orbax).

Layout of a workdir ``DIR``::

  DIR/config.json                  the resolved config of the run (transformer/config_io.py)
  DIR/checkpoints/<step>/params    model parameters (a pure dict of arrays)
  DIR/checkpoints/<step>/opt_state Adam's moments and update count
  DIR/checkpoints/<step>/train     {"step", "rng"}: update count, base PRNG key
  DIR/checkpoints/<step>/data      JSON: each process's data-iterator state

Checkpoints are written atomically by Orbax (into a temporary directory that
is renamed when complete), so a run killed at any moment, even by kill -9,
resumes from the latest complete one. The last ``train.keep_checkpoints``
are kept. A complete checkpoint that was damaged afterwards (a truncated or
missing file) is skipped with a warning on resume, and the newest intact one
is used; the damaged one is moved to ``DIR/checkpoints_damaged/<step>`` so
that the resumed run can write that step again (nothing is deleted).

For evaluation (checkpoint averaging) use the two public functions:

  steps = checkpoint.list_steps(workdir)              # e.g. [1000, 2000, 3000]
  params = checkpoint.restore_params(workdir, steps[-1], target=abstract)

and ``config_io.load_config(workdir)`` to get the run's config back. Parameters
saved apart from a run (``evaluate.py --save_averaged``) are a folder ``P``::

  P/params                         the parameters (a pure dict of arrays)
  P/steps.json                     {"checkpoint_steps": [...]}: where they come from

written by ``save_params`` and read by ``load_params``. Orbax's own log lines
that say nothing to a user are filtered by transformer/orbax_logs.py.
"""

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from transformer import model as model_lib
from transformer import multihost, orbax_logs

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored (named by step, with the reason)."""


# ---------------------------------------------------------------------------
# Reading checkpoints (evaluation, averaging).
# ---------------------------------------------------------------------------


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def list_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints in ``workdir``, ascending.

  Incomplete checkpoints (a save interrupted by kill -9) are not listed.
  Returns [] when there is none.
  """
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(s) for s in ocp.utils.checkpoint_steps(directory))


def restore_params(workdir: str, step: int, target=None):
  """The parameters saved at ``step``, as a pure dict of arrays.

  Args:
    workdir: the run's workdir.
    step: one of ``list_steps(workdir)``.
    target: optional tree with the structure of the parameters whose leaves are
      ``jax.ShapeDtypeStruct``s (with ``sharding``) or arrays: the restored
      arrays get those shapes, dtypes and shardings. ``None``: restore onto
      the first local device as saved.

  Returns:
    The parameter tree, e.g. ``{"encoder": {...}, ...}`` (the model's
    ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` layout). Apply it with
    ``nnx.update(model, params)`` or ``nnx.merge(graphdef, params, rest)``.
  """
  steps = list_steps(workdir)
  if step not in steps:
    raise FileNotFoundError(
        f"No complete checkpoint for step {step} in {checkpoint_dir(workdir)}; "
        f"available steps: {steps or 'none'}.")
  path = os.path.join(checkpoint_dir(workdir), str(step), "params")
  orbax_logs.drop_closed_loop_reports()
  with ocp.StandardCheckpointer() as checkpointer, orbax_logs.quiet_missing_step_metadata():
    try:
      if target is None:
        metadata = checkpointer.metadata(path).item_metadata
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata)
      else:
        target = jax.tree.map(_shape_dtype_struct, target)
      return checkpointer.restore(path, target)
    except Exception as e:  # Orbax/TensorStore raise many kinds for a damaged file.
      raise CheckpointError(f"The checkpoint at step {step} ({path}) cannot be restored: "
                            f"{_reason(e)}") from e


def _reason(e: BaseException) -> str:
  """The first line of an Orbax/TensorStore error, without TensorStore's spec
  dump: short enough for a log line."""
  os_error = orbax_logs.OS_ERROR.search(str(e))
  if os_error and not isinstance(e, OSError):  # TensorStore's: the OS's words.
    return f"{os_error.group(1).strip()} (os error {os_error.group(2)})"
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  text = lines[0] if lines else type(e).__name__
  for noise in (" See full TensorStore details", " [tensorstore_spec"):
    text = text.split(noise)[0]
  text = text.rstrip(".")
  return text if len(text) <= 300 else text[:297] + "..."


def _shape_dtype_struct(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


# ---------------------------------------------------------------------------
# The model of a run: checkpoints chosen, averaged and restored.
# ---------------------------------------------------------------------------


def select_steps(workdir: str, average_last: int, step: int | None = None, *,
                 exact: bool = True) -> list[int]:
  """The checkpoint steps to average: the last ``average_last`` complete ones,
  up to ``step`` (default: the latest).

  The one averaging policy (§6.1 averages the last 5 checkpoints, 20 for the
  big model): when fewer than ``average_last`` are kept, an asked-for number
  (``exact``: ``evaluate.py --average_last=N``, ``--step``) is an error naming
  how many there are, and the config's own ``decode.average_last`` (training's
  final evaluation, ``evaluate.py`` without the flag, the export) averages the
  ones kept, with a warning naming them: both give the same model.
  """
  if average_last < 1:
    raise ValueError(f"average_last must be >= 1, got {average_last}.")
  steps = list_steps(workdir)
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint in {checkpoint_dir(workdir)}: train first "
        f"(python train.py --config=... --workdir={workdir}).")
  if step is not None:
    if step not in steps:
      raise ValueError(f"No checkpoint at step {step}; available steps: {steps}.")
    steps = [s for s in steps if s <= step]
  if average_last > len(steps):
    if exact:
      raise ValueError(
          f"Asked to average the last {average_last} checkpoints but {workdir} has "
          f"only {len(steps)} (steps {steps}); use --average_last={len(steps)} or "
          "fewer (train.keep_checkpoints sets how many are kept).")
    logging.warning("decode.average_last=%d but only %d checkpoints (steps %s) are kept; "
                    "averaging those (train.keep_checkpoints sets how many are kept).",
                    average_last, len(steps), steps)
  return steps[-average_last:]


def _flat(tree) -> dict:
  """{"a/b/0": leaf}: paths as strings (checkpoints store list indices as str)."""
  def name(path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return {name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fit(params, abstract, what: str):
  """``params`` in the structure of ``abstract``, or a clear error."""
  have, want = _flat(params), _flat(abstract)
  bad = []
  for key in sorted(have.keys() | want.keys()):
    a, b = have.get(key), want.get(key)
    if a is None or b is None or tuple(a.shape) != tuple(b.shape):
      bad.append(f"{key}: {what} {None if a is None else tuple(a.shape)}, "
                 f"config {None if b is None else tuple(b.shape)}")
  if bad:
    raise ValueError(
        f"The parameters of {what} do not fit the model config (was a --config.model "
        f"field changed?): " + "; ".join(bad[:4]) + (" ..." if len(bad) > 4 else ""))
  leaves = [have[k] for k in _flat(abstract)]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), leaves)


def average_params(param_trees: Iterable) -> dict:
  """Elementwise mean of parameter trees, accumulated in float32."""
  total, count, dtypes = None, 0, None
  for params in param_trees:
    if total is None:
      dtypes = jax.tree.map(lambda x: x.dtype, params)
      total = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    else:
      total = jax.tree.map(lambda t, x: t + jnp.asarray(x, jnp.float32), total, params)
    count += 1
  if total is None:
    raise ValueError("average_params needs at least one parameter tree.")
  return jax.tree.map(lambda t, d: (t / count).astype(d), total, dtypes)


def restore_model(model_config, workdir: str, *, average_last: int = 1,
                  step: int | None = None, params_path: str | None = None,
                  exact: bool = True):
  """The model with the mean parameters of the last ``average_last`` checkpoints.

  Args:
    model_config: the run's ``config.model`` section (must match the checkpoints).
    workdir: the run's workdir.
    average_last: how many of the latest checkpoints to average.
    step: the latest step to use (default: the latest checkpoint).
    params_path: restore parameters saved by ``save_params`` instead.
    exact: fewer checkpoints than ``average_last`` is an error (see
      ``select_steps``, the averaging policy); else the ones kept, with a warning.

  Returns:
    (model, steps): an ``nnx.Module`` in eval mode and the averaged steps.
  """
  abstract = nnx.eval_shape(lambda: model_lib.build_model(model_config))
  graphdef, abstract_params, _ = nnx.split(abstract, nnx.Param, ...)
  abstract_params = nnx.to_pure_dict(abstract_params)
  if params_path:
    params, steps = load_params(params_path)
  elif average_last == 1 and step is None:
    params, steps = _restore_newest_intact(workdir, abstract_params)
  else:
    # Averaging (or an asked-for step) uses exactly these checkpoints: a
    # damaged one is an error naming its step (CheckpointError).
    steps = select_steps(workdir, average_last, step, exact=exact)
    params = average_params(
        _fit(restore_params(workdir, s), abstract_params, f"checkpoint {s}")
        for s in steps)
  params = _fit(params, abstract_params, params_path or "the average")

  def rest_fn():
    return nnx.split(model_lib.build_model(model_config), nnx.Param, ...)[2]

  rest = jax.jit(rest_fn)()  # RNG streams only; XLA drops the unused params.
  model = nnx.merge(graphdef, params, rest)
  model.eval()
  return model, steps


def _restore_newest_intact(workdir: str, abstract_params):
  """(params, [step]) of the newest checkpoint whose parameters restore whole;
  damaged newer ones are skipped with a warning naming the step and reason."""
  select_steps(workdir, 1)  # Names a workdir without checkpoints.
  failures = []
  for s in reversed(list_steps(workdir)):
    try:
      params = restore_params(workdir, s)
    except CheckpointError as e:
      logging.warning("%s Trying the checkpoint before it.", e)
      failures.append(str(e))
      continue
    if failures:
      logging.warning("Evaluating step %d, the newest intact checkpoint.", s)
    return _fit(params, abstract_params, f"checkpoint {s}"), [s]
  raise CheckpointError(
      f"No checkpoint in {checkpoint_dir(workdir)} can be restored. "
      + " ".join(failures))


# ---------------------------------------------------------------------------
# Saved parameters (``evaluate.py --save_averaged``, ``--params``).
# ---------------------------------------------------------------------------


def save_params(params, path: str, steps: list[int]):
  """Saves (averaged) parameters to ``path/params`` with Orbax, and the steps
  they come from to ``path/steps.json``."""
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(path, "params"), params, force=True)
  with open(os.path.join(path, "steps.json"), "w", encoding="utf-8") as f:
    json.dump({"checkpoint_steps": [int(s) for s in steps]}, f)


def load_params(path: str):
  """(params, steps) written by ``save_params``."""
  path = os.path.abspath(path)
  if not os.path.isdir(os.path.join(path, "params")):
    raise FileNotFoundError(f"No saved parameters in {path} (expected {path}/params).")
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(os.path.join(path, "params"))
  with open(os.path.join(path, "steps.json"), encoding="utf-8") as f:
    steps = json.load(f)["checkpoint_steps"]
  return params, steps


# ---------------------------------------------------------------------------
# Saving and resuming during training.
# ---------------------------------------------------------------------------


class Checkpointer:
  """Saves every N steps and every M minutes, keeps the last K, resumes.

  All processes must call every method together (saving is collective).
  """

  def __init__(self, workdir: str, *, every_steps: int, every_minutes: float, keep: int):
    self.every_steps = every_steps
    self.every_seconds = every_minutes * 60.0
    # The time trigger keeps its own clock: saves made for the step trigger
    # in between do not move it, so the timed checkpoints (the ones the paper
    # averages, §6.1) stay every_minutes apart.
    self.next_timed_save = time.time() + self.every_seconds
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options,
        item_names=("params", "opt_state", "train", "data"))

  def due(self, step: int) -> bool:
    """Whether ``step`` is due for a save by the step or the time trigger.

    The time trigger reads this process's clock; the training loop makes all
    processes agree on the decision before saving.
    """
    if self.every_steps > 0 and step % self.every_steps == 0:
      return True
    return self.every_seconds > 0 and time.time() >= self.next_timed_save

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, data_state):
    """Saves the train ``state`` (dict with params, opt_state, step, rng) and
    this process's data-iterator state (any JSON-serializable object)."""
    if self.manager.latest_step() == step:
      return  # Already saved (e.g. a final save right after a periodic one).
    data_states = multihost.allgather_json(data_state)
    with self._failed_save_is_one_error(step):
      self.manager.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(state["params"]),
          opt_state=ocp.args.StandardSave(state["opt_state"]),
          train=ocp.args.StandardSave({"step": state["step"], "rng": state["rng"]}),
          data=ocp.args.JsonSave({"process_states": data_states})), force=True)
    if time.time() >= self.next_timed_save:
      self.next_timed_save = time.time() + self.every_seconds

  @contextlib.contextmanager
  def _failed_save_is_one_error(self, step=None):
    """A save that fails (a full disk, a lost permission; in the background,
    so it surfaces at the next save or at close) leaves no temporary folder
    behind and becomes one ``OSError`` naming the folder and the reason."""
    try:
      yield
    except Exception as e:  # Orbax wraps the OSError of its writer threads.
      self._remove_temporary_folders()
      cause = orbax_logs.storage_error(e)
      if cause is None:
        raise
      # A background save fails at the next save or at close: name its own step.
      failed = re.search(r"[/\\](\d+)\.orbax-checkpoint-tmp", str(cause))
      step = int(failed.group(1)) if failed else step
      what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
      raise OSError(
          f"Saving {what} in {self.manager.directory} failed: {_reason(cause)}. The "
          "checkpoints saved before it are intact; free space or fix the permission, "
          "then run the same command to resume.") from e

  def _remove_temporary_folders(self):
    """Removes the failed save's temporary folders. Orbax's other writer
    threads of that save may still be writing into them when its error
    surfaces: their work is waited for, and the folders are removed until
    none is left (up to 10 s; under load a thread can recreate one after a
    first removal)."""
    if jax.process_index() != 0:
      return
    try:
      self.manager.wait_until_finished()
    except Exception:  # The same failure again: what is left is removed below.
      pass
    directory = str(self.manager.directory)
    deadline, empty_looks = time.monotonic() + 10.0, 0
    while empty_looks < 2 and time.monotonic() < deadline:  # Two looks 50 ms apart.
      names = [name for name in (os.listdir(directory) if os.path.isdir(directory) else [])
               if ".orbax-checkpoint-tmp" in name]
      for name in names:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
      empty_looks = 0 if names else empty_looks + 1
      if empty_looks < 2:
        time.sleep(0.05)

  def restore_latest(self, abstract_state: dict, accept_data_state=None):
    """(state, data_state of this process, step) of the newest checkpoint that
    restores whole, or None when there is no checkpoint.

    ``abstract_state`` gives the shapes, dtypes and shardings
    (``jax.ShapeDtypeStruct``s); ``accept_data_state(data_state)`` (the data
    iterator's ``set_state``) raises if the data state does not fit. A
    checkpoint that fails (a truncated array file, a missing manifest, an
    empty data file, a step that is not its folder's) is skipped with a
    warning naming its step and the reason, and moved to
    ``DIR/checkpoints_damaged`` once an older one has restored; if none
    restores, ``CheckpointError`` lists them all and nothing is moved.
    """
    damaged = []
    orbax_logs.drop_closed_loop_reports()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        with orbax_logs.quiet_missing_step_metadata():
          restored = self._restore(step, abstract_state, accept_data_state)
        reason = None
      except _WrongProcessCountError:
        raise
      except Exception as e:  # Orbax/TensorStore raise many kinds for a damaged file.
        restored, reason = None, _reason(e)
      if multihost.agree(reason is not None)[0]:
        reason = reason or "another process could not restore it"
        logging.warning("The checkpoint at step %d (%s) cannot be restored: %s. Trying "
                        "the one before it.", step,
                        os.path.join(self.manager.directory, str(step)), reason)
        damaged.append((step, reason))
        continue
      if damaged:
        self._move_damaged([s for s, _ in damaged])
        logging.warning("Resuming from step %d, the newest intact checkpoint; the damaged "
                        "ones (steps %s) are in %s.", step, [s for s, _ in damaged],
                        self._damaged_dir())
      logging.info("Restored checkpoint at step %d from %s.", step, self.manager.directory)
      return restored
    if damaged:
      raise CheckpointError(
          f"No checkpoint in {self.manager.directory} can be restored: "
          + "; ".join(f"step {s}: {r}" for s, r in damaged)
          + ". Nothing was changed. Restore the folders from a copy, or move them away "
          "to start again from step 0.")
    return None

  def _restore(self, step, abstract_state, accept_data_state):
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state["params"]),
        opt_state=ocp.args.StandardRestore(abstract_state["opt_state"]),
        train=ocp.args.StandardRestore(
            {"step": abstract_state["step"], "rng": abstract_state["rng"]}),
        data=ocp.args.JsonRestore()))
    state = {"params": restored["params"], "opt_state": restored["opt_state"],
             "step": restored["train"]["step"], "rng": restored["train"]["rng"]}
    if int(state["step"]) != step:
      raise ValueError(f"it holds step {int(state['step'])}")
    data = restored["data"]
    if not isinstance(data, dict) or not isinstance(data.get("process_states"), list):
      raise ValueError("its data state has no process_states")
    process_states = data["process_states"]
    if len(process_states) != jax.process_count():
      raise _WrongProcessCountError(
          f"Checkpoint {step} was written by {len(process_states)} processes but this run "
          f"has {jax.process_count()}; resume with the same number of processes.")
    data_state = process_states[jax.process_index()]
    if accept_data_state is not None:
      accept_data_state(data_state)
    return state, data_state, step

  def _damaged_dir(self) -> str:
    return os.path.join(os.path.dirname(str(self.manager.directory)), DAMAGED_DIR)

  def _move_damaged(self, steps):
    """Moves damaged step folders out of the way (never deletes them)."""
    if jax.process_index() == 0:
      os.makedirs(self._damaged_dir(), exist_ok=True)
      for step in steps:
        target = os.path.join(self._damaged_dir(), str(step))
        suffix = 1
        while os.path.exists(target):
          target = os.path.join(self._damaged_dir(), f"{step}.{suffix}")
          suffix += 1
        os.rename(os.path.join(self.manager.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoint: damaged steps moved")
    self.manager.reload()

  def close(self):
    try:
      with self._failed_save_is_one_error():
        self.manager.wait_until_finished()
    finally:
      self.manager.close()


class _WrongProcessCountError(ValueError):
  """A checkpoint of another number of processes: not damage, a wrong command."""


