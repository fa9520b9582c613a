"""What a workdir holds, and the one place that saves and restores it (Orbax).

Layout of a workdir ``DIR``::

  DIR/config.json                  the resolved config of the run (load_config)
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

and ``load_config(workdir)`` to get the run's config back. Parameters saved
apart from a run (``evaluate.py --save_averaged``) are a folder ``P``::

  P/params                         the parameters (a pure dict of arrays)
  P/steps.json                     {"checkpoint_steps": [...]}: where they come from

written by ``save_params`` and read by ``load_params``. Orbax's own log lines
that say nothing to a user are filtered here too (``quiet_orbax_logs``).
"""

import contextlib
import json
import logging as py_logging
import os
import re
import shutil
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored (named by step, with the reason)."""


# ---------------------------------------------------------------------------
# Config of a run.
# ---------------------------------------------------------------------------


def save_config(config: ml_collections.ConfigDict, workdir: str):
  """Writes ``DIR/config.json`` atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved by ``train.py`` in ``DIR/config.json`` (unlocked)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No {CONFIG_FILE} in workdir {workdir!r}: is it the --workdir of a "
        "train.py run? (train.py writes it when it starts.)")
  from transformer import checks

  try:
    with open(path, encoding="utf-8") as f:
      values = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise checks.ConfigError(
        f"{path} is not valid JSON ({e}); train.py writes it when it starts: restore "
        "it from a copy, or start a new --workdir.") from e
  if not isinstance(values, dict):
    raise checks.ConfigError(f"{path} holds a JSON {type(values).__name__}, not the "
                             "config's sections.")
  return ml_collections.ConfigDict(values)


def with_default_fields(config: ml_collections.ConfigDict):
  """``config`` with the fields added to the project after the run was trained
  (absent from its config.json) set to today's defaults, so that older runs
  still evaluate and export; returns (config, ["section.field=value", ...])."""
  from configs import common

  defaults = common.get_base_config("base")
  added = []
  for section, fields in defaults.items():
    if section in config and isinstance(config[section], ml_collections.ConfigDict):
      for name, value in fields.items():
        if name not in config[section]:
          config[section][name] = value
          added.append(f"{section}.{name}={value!r}")
  return config, added


def config_differences(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> list[str]:
  """Dotted keys whose values differ between two configs (for resume checks)."""
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = v
    return out

  a = flat(json.loads(old.to_json()))
  b = flat(json.loads(new.to_json()))
  return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


# ---------------------------------------------------------------------------
# Orbax's logs: what is dropped, and why (the one place that filters them).
# ---------------------------------------------------------------------------


class _OrbaxInfoFilter(py_logging.Filter):
  """Orbax logs each step of every save at INFO level; keep its warnings."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


# A storage failure as TensorStore words it (a ValueError, not an OSError):
# '... Failed to write 1796592 bytes to file 4: No space left on device
# [os_error_code='28']'.
_OS_ERROR = re.compile(r"([^:\]]+?)\s*\[os_error_code='?(\d+)'?\]")


def _storage_error(e: BaseException | None) -> BaseException | None:
  """The OSError in ``e``'s chain of causes, or TensorStore's error naming an
  os_error_code; None when the failure is not the storage's."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) or _OS_ERROR.search(str(e)):
      return e
    e = e.__cause__ or e.__context__
  return None


class _OrbaxFailedSaveFilter(py_logging.Filter):
  """A write that fails in Orbax's background save (a full disk) is logged
  by each of its threads at ERROR level with the whole traceback; the same
  failure is raised at the next save or at close, where it becomes one
  error line (``Checkpointer._failed_save_is_one_error``). Drop those."""

  def filter(self, record):
    if record.levelno < py_logging.ERROR or "/orbax/" not in record.pathname:
      return True
    error = record.exc_info[1] if record.exc_info else None
    return not (_storage_error(error) or _OS_ERROR.search(record.getMessage()))


def quiet_orbax_logs():
  """Drops Orbax's INFO lines (one per step of every save) and its tracebacks
  of a failed background save from absl's log; its warnings stay. Training
  calls it once."""
  absl_logger = logging.get_absl_logger()
  for kind in (_OrbaxInfoFilter, _OrbaxFailedSaveFilter):
    if not any(isinstance(f, kind) for f in absl_logger.filters):
      absl_logger.addFilter(kind())


class _DropMissingMetadata(py_logging.Filter):
  def filter(self, record):
    return "Metadata file does not exist" not in record.getMessage()


@contextlib.contextmanager
def _quiet_missing_step_metadata():
  """Silences Orbax's warning that a single item of a step has no step
  metadata file: it lives one folder up, and the item reads fine without it."""
  logger, drop = py_logging.getLogger("absl"), _DropMissingMetadata()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def _is_closed_loop_report(unraisable) -> bool:
  """A read of a failed restore that ends after Orbax closed its event loop:
  "Event loop is closed", or an Orbax coroutine finalized with its error."""
  if (isinstance(unraisable.exc_value, RuntimeError)
      and "Event loop is closed" in str(unraisable.exc_value)):
    return True
  code = getattr(unraisable.object, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _from_orbax(traceback) -> bool:
  while traceback is not None:
    if f"{os.sep}orbax{os.sep}" in traceback.tb_frame.f_code.co_filename:
      return True
    traceback = traceback.tb_next
  return False


class _DropOrbaxOrphanTasks(py_logging.Filter):
  """asyncio's "Task exception was never retrieved" for an Orbax read of a
  failed restore, logged when the task is collected (with its traceback), and
  "Future exception was never retrieved" for a TensorStore read of the same
  checkpoint (set from C++: no traceback, its message names the OCDBT file)."""

  def filter(self, record):
    if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
      return True
    _, error, traceback = record.exc_info
    from_tensorstore = traceback is None and "OCDBT database" in str(error)
    return not (_from_orbax(traceback) or from_tensorstore)


def _drop_closed_loop_reports():
  """When a restore fails, Orbax closes its event loop while TensorStore reads
  of the same checkpoint are still finishing; each then reports "Event loop is
  closed" as an unraisable exception (a traceback on stderr, dozens per
  checkpoint), and unfinished Orbax reads report their errors when they are
  collected (as unraisable coroutines, or through asyncio's logger as tasks
  whose exception was never retrieved). They are harmless, and the failure itself is reported once
  (``CheckpointError`` or a warning naming the step): drop just those."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_reports", False):
    return

  def hook(unraisable):
    if not _is_closed_loop_report(unraisable):
      previous(unraisable)

  hook.drops_closed_loop_reports = True
  sys.unraisablehook = hook
  py_logging.getLogger("asyncio").addFilter(_DropOrbaxOrphanTasks())


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
  _drop_closed_loop_reports()
  with ocp.StandardCheckpointer() as checkpointer, _quiet_missing_step_metadata():
    try:
      if target is None:
        metadata = checkpointer.metadata(path).item_metadata
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata)
      else:
        target = jax.tree.map(_abstract, target)
      return checkpointer.restore(path, target)
    except Exception as e:  # Orbax/TensorStore raise many kinds for a damaged file.
      raise CheckpointError(f"The checkpoint at step {step} ({path}) cannot be restored: "
                            f"{_reason(e)}") from e


def _reason(e: BaseException) -> str:
  """The first line of an Orbax/TensorStore error, without TensorStore's spec
  dump: short enough for a log line."""
  os_error = _OS_ERROR.search(str(e))
  if os_error and not isinstance(e, OSError):  # TensorStore's: the OS's words.
    return f"{os_error.group(1).strip()} (os error {os_error.group(2)})"
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  text = lines[0] if lines else type(e).__name__
  for noise in (" See full TensorStore details", " [tensorstore_spec"):
    text = text.split(noise)[0]
  text = text.rstrip(".")
  return text if len(text) <= 300 else text[:297] + "..."


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


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


def _allgather_json(obj) -> list:
  """Every process's JSON-serializable ``obj``, in process order."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode("utf-8"))
          for row, n in zip(np.asarray(gathered), np.asarray(lengths).reshape(-1), strict=True)]


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
    data_states = _allgather_json(data_state)
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
      cause = _storage_error(e)
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
    if jax.process_index() != 0:
      return
    directory = str(self.manager.directory)
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)

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
    _drop_closed_loop_reports()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        with _quiet_missing_step_metadata():
          restored = self._restore(step, abstract_state, accept_data_state)
        reason = None
      except _WrongProcessCountError:
        raise
      except Exception as e:  # Orbax/TensorStore raise many kinds for a damaged file.
        restored, reason = None, _reason(e)
      if not _agree_all(reason is None):
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


def _agree_all(ok: bool) -> bool:
  """True on every process when ``ok`` is true on all of them."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.array([int(ok)], np.int32))
  return bool(np.min(flags))
