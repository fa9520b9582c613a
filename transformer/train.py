"""Training and evaluation (§5): ``train_and_evaluate(config, workdir)``.

One linear story, in the order of the banners below:

  config    the resumed run's config checked against this one
  state     params, Adam state, step and PRNG key as sharded jax.Arrays
  update    the jitted train step: label-smoothed loss (§5.4), gradient
            accumulation over micro-batches, Adam with Eq. (3) (§5.3), and
            the dev loss's step
  loop      checkpoints, logging, signals, NaN guard, resume; dev loss and
            greedy BLEU every ``train.eval_every_steps``, test BLEU at the end
            (``evaluate.dev_metrics``, ``evaluate.test_metrics``)

The config is checked and resolved by ``checks.resolve_config``; the mesh and
its rules are sharding.py's, checkpoints checkpoint.py's, the processes of a
multi-host run multihost.py's.

The train state is a plain dict of arrays, exactly what a checkpoint holds:

  {"params": pure dict of the model's nnx.Param values,
   "opt_state": optax state, "step": int32 updates done, "rng": uint32 key}

Dropout keys are derived from (rng, step, micro-batch index), never carried
from step to step, so a resumed run draws the same dropout masks as an
uninterrupted one.
"""

import dataclasses
import functools
import os
import signal
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from transformer import checkpoint as checkpoint_lib
from transformer import checks, config_io, multihost, optim, orbax_logs, precision
from transformer import compiled as compiled_lib
from transformer import data as data_lib
from transformer import evaluate as evaluate_lib
from transformer import loss as loss_lib
from transformer import metrics as metrics_lib
from transformer import model as model_lib
from transformer import sharding as sharding_lib

BATCH_KEYS = data_lib.FEATURES


# ---------------------------------------------------------------------------
# The config of a resumed run.
# ---------------------------------------------------------------------------


# model.* fields a run may resume with changed: they leave the parameters'
# shapes and meaning alone. The compute dtype (model.dtype; "auto" resolves per
# machine, and the same run may resume on a GPU or on a CPU with or without
# bfloat16 instructions): parameters and optimizer state stay param_dtype.
# attention_impl, matmul_output: the same function from the same parameters. The dropout
# rates: training's regularization, not the model's function.
RESUMABLE_MODEL_FIELDS = ("model.dtype", "model.attention_impl", "model.matmul_output",
                          "model.dropout_rate", "model.attention_dropout_rate",
                          "model.ffn_dropout_rate")


def _check_resumed_config(workdir: str, config: ml_collections.ConfigDict):
  """A workdir is resumed only with the same model (the fields that change the
  parameters' shapes or meaning); other changes are logged."""
  path = os.path.join(workdir, config_io.CONFIG_FILE)
  if not os.path.exists(path):
    return
  old = config_io.load_config(workdir)
  changed = config_io.config_differences(old, config)
  model_changes = [k for k in changed
                   if k.startswith("model.") and k not in RESUMABLE_MODEL_FIELDS]
  if model_changes and checkpoint_lib.list_steps(workdir):
    raise ValueError(
        f"Workdir {workdir} holds checkpoints of a different model ({model_changes} "
        "changed). Use a new --workdir, or the same model config to resume.")
  if "model.dtype" in changed:
    logging.warning(
        "Compute dtype changed from %s (saved in %s) to %s; parameters and optimizer "
        "state stay %s, so the run continues from the same state in the new precision.",
        old.model.get("dtype"), path, config.model.dtype, config.model.param_dtype)
  if changed:
    logging.warning("Config differs from %s in %s; continuing with the new values.",
                    path, changed)


# ---------------------------------------------------------------------------
# State: the model and the sharded train state.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class TrainSetup:
  """Everything the step functions close over: the sections they use, not the
  whole config."""
  train_config: ml_collections.ConfigDict  # config.train: the loss's and Adam's fields.
  schedule: optax.Schedule  # Eq. (3), of config.train and model.d_model.
  mesh: jax.sharding.Mesh
  rules: tuple
  graphdef: nnx.GraphDef
  rest: nnx.State  # Non-parameter variables (RNG streams): re-seeded each step.
  tx: optax.GradientTransformation
  state_shardings: dict
  abstract_state: dict  # ShapeDtypeStructs with shardings (for restoring).
  shard_optimizer: bool  # Adam's moments split over "data" (train.shard_optimizer).
  moment_shardings: dict  # Of Adam's moments: the params', or split over "data".
  init_fn: Callable  # () -> (state, rest), jitted with the state's out_shardings.


def _make_model(model_config, seed, platform, remat="none"):
  with nnx.use_eager_sharding(False):  # Shardings come from sharding.py's rules.
    return model_lib.build_model(model_config, seed=seed, platform=platform, remat=remat)


def _with_shardings(tree, shardings):
  """ShapeDtypeStructs of ``tree``'s leaves, each with its sharding."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def shards_optimizer(train_config, platform: str) -> bool:
  """Whether Adam's moments are split over the "data" axis for
  ``train.shard_optimizer`` on ``platform``: "auto" splits them on a GPU."""
  return (train_config.shard_optimizer == "data"
          or (train_config.shard_optimizer == "auto" and platform == "gpu"))


def setup_state(config, mesh, *, abstract: bool = False) -> TrainSetup:
  """Shapes, shardings and step machinery for the train state (no arrays yet).

  The model is built for the platform of the mesh's devices. ``abstract``:
  create nothing on the devices (``rest`` is then ShapeDtypeStructs too), for
  meshes of compile-only devices (``transformer/plan.py``).
  """
  rules = sharding_lib.logical_axis_rules(config.train)
  seed = config.train.seed
  platform = mesh.devices.flat[0].platform
  abstract_model = nnx.eval_shape(
      lambda: _make_model(config.model, seed, platform, config.train.remat))
  graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
  param_specs = nnx.to_pure_dict(sharding_lib.state_partition_specs(abstract_params, rules))
  pure_abstract = nnx.to_pure_dict(abstract_params)
  sharding_lib.check_divisible(pure_abstract, param_specs, mesh)
  param_shardings = sharding_lib.named(mesh, param_specs)
  tx = optim.make_optimizer(config.train, config.model.d_model)
  abstract_opt = jax.eval_shape(tx.init, pure_abstract)
  replicated = sharding_lib.replicated(mesh)
  # Adam's moments are sharded like the params, or with train.shard_optimizer
  # split over "data" too (ZeRO stage 1: the gradient is then reduce-scattered
  # to them and the update gathered); counts are replicated.
  moment_shardings = param_shardings
  shard_optimizer = shards_optimizer(config.train, platform)
  if shard_optimizer:
    moment_shardings = sharding_lib.named(
        mesh, sharding_lib.optimizer_specs(pure_abstract, param_specs, mesh))
  opt_shardings = optax.tree_utils.tree_map_params(
      tx, lambda _, s: s, abstract_opt, moment_shardings,
      transform_non_params=lambda _: replicated)
  state_shardings = {"params": param_shardings, "opt_state": opt_shardings,
                     "step": replicated, "rng": replicated}

  def init():
    model = _make_model(config.model, seed, platform)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0),
             "rng": jax.random.key_data(jax.random.PRNGKey(seed))}
    return state, rest

  abstract_state = _with_shardings(jax.eval_shape(init)[0], state_shardings)
  if abstract:
    rest = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                        jax.eval_shape(lambda: init()[1]))
  else:
    # The RNG streams only (the parameters are computed and dropped by XLA).
    rest = jax.jit(lambda: init()[1], out_shardings=replicated)()
  schedule = optim.learning_rate_schedule(config.train, config.model.d_model)
  return TrainSetup(train_config=config.train, schedule=schedule, mesh=mesh, rules=rules,
                    graphdef=graphdef, rest=rest, tx=tx, state_shardings=state_shardings,
                    abstract_state=abstract_state, shard_optimizer=shard_optimizer,
                    moment_shardings=moment_shardings,
                    init_fn=jax.jit(init, out_shardings=(state_shardings, replicated)))


def init_state(setup: TrainSetup) -> dict:
  """Freshly initialized, sharded train state (params created in place)."""
  state, _ = setup.init_fn()
  return state


def make_model(setup: TrainSetup, params) -> nnx.Module:
  """The model with ``params`` (a pure dict), e.g. for decoding."""
  return nnx.merge(setup.graphdef, params, setup.rest)


# ---------------------------------------------------------------------------
# Update: the train step (§5.3, §5.4) and the dev loss.
# ---------------------------------------------------------------------------


def _model_inputs(batch):
  return {k: batch[k] for k in BATCH_KEYS if k in batch}


def _loss_sums(setup, params, rest, batch, dropout_key, *, train: bool):
  """Summed label-smoothed loss and counts of one (micro-)batch."""
  model = nnx.merge(setup.graphdef, params, rest, copy=True)
  if train:
    nnx.reseed(model, dropout=dropout_key)
    model.train()
  else:
    model.eval()
  weights = None
  if "index" in batch:  # Filler rows of an evaluation batch have index -1.
    weights = jnp.broadcast_to((batch["index"] >= 0)[:, None], batch["targets"].shape)
  train_config = setup.train_config
  # train.loss_chunk_tokens is per device; the loss sees the global batch.
  chunk_tokens = train_config.loss_chunk_tokens * sharding_lib.batch_divisor(
      setup.mesh, setup.rules)
  with sharding_lib.activation_sharding(setup.mesh, setup.rules):
    hidden = model(**_model_inputs(batch), return_hidden=True)  # (B, T, D)
    w, project = model.output_layer()
    return loss_lib.chunked_cross_entropy_sums(
        hidden, w, project, batch["targets"], train_config.label_smoothing, weights,
        chunk_tokens=chunk_tokens, one_pass=setup.mesh.devices.flat[0].platform != "cpu")


def _grads_and_sums(setup, state, rest, batch, micro_index):
  """Gradient of the *summed* loss of one micro-batch, and its sums."""
  key = jax.random.wrap_key_data(state["rng"])
  key = jax.random.fold_in(jax.random.fold_in(key, state["step"]), micro_index)
  # Dropout masks are drawn with XLA's RngBitGenerator ("rbg"), keyed from the
  # threefry key above: just as deterministic, and cheaper than threefry on CPU
  # (the base model's step went from 2.32 s to 2.25 s, benchmarks/benchmark.py).
  key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")

  def loss_fn(params):
    sums = _loss_sums(setup, params, rest, batch, key, train=True)
    return sums["loss_sum"], sums

  (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  return grads, sums


def _apply(setup, state, grads, sums):
  """Adam update with the token-averaged gradient: sum over all micro-batches,
  divided once by the total number of target tokens."""
  num_tokens = jnp.maximum(sums["num_tokens"], 1.0)
  grads = jax.tree.map(lambda g: g / num_tokens, grads)
  if setup.shard_optimizer:  # Each device updates its share of the moments.
    grads = jax.lax.with_sharding_constraint(grads, setup.moment_shardings)
  updates, opt_state = setup.tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
               "rng": state["rng"]}
  metrics = loss_lib.summarize(sums)
  metrics.update({
      "learning_rate": setup.schedule(state["step"] + 1),
      "grad_norm": optax.tree.norm(grads),
      "target_tokens": sums["num_tokens"],
  })
  return new_state, metrics


# train.xla_options="auto": the XLA options the train step is compiled with,
# per platform. A CPU and a TPU get XLA's defaults. Of the GPU flags MaxText and
# NVIDIA's JAX guide set, the planner saw one change base's bytes on 8 x H100
# (docs/wmt14.md): cuBLAS's GEMMs in place of XLA's Triton ones, 9.7% fewer
# with JAX 0.11.2 and cuDNN attention (1.266e10 -> 1.144e10), 4.7% with 0.12.1
# and the einsums (1.642e10 -> 1.565e10). The scheduler is kept for the overlap
# only a GPU run can show.
XLA_OPTIONS = {
    "gpu": {
        # Overlap the gradient all-reduce (and FSDP's gathers) with compute.
        "xla_gpu_enable_latency_hiding_scheduler": True,
        # GEMMs by cuBLAS(Lt), bias epilogues fused, not XLA's Triton kernels.
        "xla_gpu_enable_triton_gemm": False,
    },
}


def xla_options(train_config, platform: str) -> dict:
  """``train.xla_options`` as ``jax.jit``'s compiler_options for ``platform``
  ("cpu", "gpu", "tpu"): "auto" is ``XLA_OPTIONS[platform]``, "none" XLA's
  defaults, either followed by comma-separated name=value pairs that add or
  override options ("auto,xla_gpu_enable_triton_gemm=true")."""
  base, pairs = checks.xla_option_pairs(train_config.xla_options)
  return {**(XLA_OPTIONS.get(platform, {}) if base == "auto" else {}), **pairs}


@dataclasses.dataclass(frozen=True)
class Update:
  """``update(state, micro_batches) -> (state, metrics)``: one Adam update,
  and the jitted programs it runs (``make_update_fn``).

  ``fused(state, rest, batch)`` is the whole update when
  ``train.accumulate_steps`` is 1; otherwise ``zeros(state)``, then
  ``accumulate(state, rest, batch, i, acc)`` per micro-batch and
  ``apply(state, acc)``. ``lower`` gives the programs a step runs, for a
  batch's shapes: what the memory check and the planner compile (and a
  compiled program is what the jitted call then runs, without compiling again).
  """
  setup: TrainSetup
  fused: Callable
  zeros: Callable
  accumulate: Callable
  apply: Callable

  def __call__(self, state, micro_batches):
    if len(micro_batches) == 1:
      return self.fused(state, self.setup.rest, micro_batches[0])
    acc = self.zeros(state)
    for i, batch in enumerate(micro_batches):
      acc = self.accumulate(state, self.setup.rest, batch, jnp.int32(i), acc)
    return self.apply(state, acc)

  def lower(self, batch) -> dict:
    """{name: jax.stages.Lowered} of the programs of one update on micro-batches
    shaped like ``batch`` (arrays or ShapeDtypeStructs with shardings, e.g.
    ``batch_shapes``): "update", or "accumulate" and "apply"."""
    state = self.setup.abstract_state
    if self.setup.train_config.accumulate_steps == 1:
      return {"update": self.fused.lower(state, self.setup.rest, batch)}
    replicated = sharding_lib.replicated(self.setup.mesh)
    grads, sums = jax.eval_shape(self.zeros, state)
    acc = (_with_shardings(grads, self.setup.state_shardings["params"]),
           _with_shardings(sums, jax.tree.map(lambda _: replicated, sums)))
    index = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    return {"accumulate": self.accumulate.lower(state, self.setup.rest, batch, index, acc),
            "apply": self.apply.lower(state, acc)}


def make_update_fn(setup: TrainSetup) -> Update:
  """One Adam update from a list of ``train.accumulate_steps`` global batches.

  An update from k micro-batches equals one update from their concatenation:
  loss numerators, gradients and token counts are summed over micro-batches
  and divided once. ``state`` is donated.
  """
  replicated = sharding_lib.replicated(setup.mesh)
  state_sh = setup.state_shardings
  param_sh = state_sh["params"]

  def fused(state, rest, batch):
    grads, sums = _grads_and_sums(setup, state, rest, batch, 0)
    return _apply(setup, state, grads, sums)

  def zeros(state):
    grads = jax.tree.map(jnp.zeros_like, state["params"])
    sums = {k: jnp.zeros((), jnp.float32)
            for k in ("loss_sum", "nll_sum", "correct", "num_tokens")}
    return grads, sums

  def accumulate(state, rest, batch, micro_index, acc):
    grads, sums = _grads_and_sums(setup, state, rest, batch, micro_index)
    acc_grads, acc_sums = acc
    acc_grads = jax.tree.map(jnp.add, acc_grads, grads)
    acc_sums = jax.tree.map(jnp.add, acc_sums, sums)
    return jax.lax.with_sharding_constraint(acc_grads, param_sh), acc_sums

  def apply(state, acc):
    return _apply(setup, state, *acc)

  acc_sh = (param_sh, replicated)
  # The same options wherever the step is compiled: training, its memory
  # check and the planner.
  jit = functools.partial(jax.jit, compiler_options=xla_options(
      setup.train_config, setup.mesh.devices.flat[0].platform) or None)
  return Update(
      setup=setup,
      fused=jit(fused, out_shardings=(state_sh, replicated), donate_argnums=(0,)),
      zeros=jit(zeros, out_shardings=acc_sh),
      accumulate=jit(accumulate, out_shardings=acc_sh, donate_argnums=(4,)),
      apply=jit(apply, out_shardings=(state_sh, replicated), donate_argnums=(0,)))


def batch_shapes(data_config, setup: TrainSetup) -> dict:
  """ShapeDtypeStructs, with the batch's sharding, of one global training
  batch as ``data.make_train_iterator`` makes it: ``data.batch_tokens`` per
  side in rows of ``data.max_length``, a multiple of the batch's split (with
  ``data.batching="bucket"``, the longest bucket's shape)."""
  divisor = sharding_lib.batch_divisor(setup.mesh, setup.rules)
  rows = data_lib.rows_for(data_config.batch_tokens, data_config.max_length, divisor)
  sharding = jax.sharding.NamedSharding(setup.mesh, sharding_lib.batch_spec(setup.rules, 2))
  return {k: jax.ShapeDtypeStruct((rows, data_config.max_length), jnp.int32, sharding=sharding)
          for k in BATCH_KEYS}


def check_memory(update: Update, data_config, bytes_limit: int | None = None) -> int | None:
  """Training's pre-flight check (``train.check_memory``): compiles the
  update's programs for the run's batch shape, the programs the loop then
  runs, and raises a ValueError naming the bytes needed and available, and a
  batch that would fit, when the peak exceeds the devices' memory limit
  (``bytes_limit``, default: what this process's first device reports).
  Returns the peak; None, compiling nothing, where the devices report no
  limit (CPUs)."""
  setup = update.setup
  # A device of this process: memory_stats() refuses another host's devices.
  local = [d for d in setup.mesh.devices.flat if d.process_index == jax.process_index()]
  if bytes_limit is None:
    bytes_limit = (local[0].memory_stats() or {}).get("bytes_limit")
    if not bytes_limit:
      return None
  batch = batch_shapes(data_config, setup)
  peak = compiled_lib.peak({name: {"memory": compiled_lib.memory(lowered.compile())}
                            for name, lowered in update.lower(batch).items()})
  if peak <= bytes_limit:
    return peak
  fixed = (compiled_lib.shard_bytes(setup.abstract_state["params"])
           + compiled_lib.shard_bytes(setup.abstract_state["opt_state"]))
  divisor = sharding_lib.batch_divisor(setup.mesh, setup.rules)
  rows, length = next(iter(batch.values())).shape
  rows //= divisor
  # Memory taken as linear in the rows beyond the state: an estimate.
  fit_rows = int(rows * (bytes_limit - fixed) / max(peak - fixed, 1))
  hint = (f"about --config.data.batch_tokens={fit_rows * divisor * length} "
          "with --config.train.accumulate_steps to keep the batch"
          if fit_rows >= 1 else "shard the parameters with train.fsdp or use more devices")
  raise ValueError(
      f"The train step needs {compiled_lib.format_bytes(peak)} ({peak:,} bytes) per device "
      f"but {local[0].device_kind} gives JAX {compiled_lib.format_bytes(bytes_limit)} "
      f"({bytes_limit:,} bytes) at data.batch_tokens={data_config.batch_tokens}: "
      f"{hint} (python -m transformer.plan ... --max_batch finds the largest; "
      "--config.train.check_memory=False skips this check).")


def make_eval_fn(setup: TrainSetup) -> Callable:
  """``eval_sums(params, batch) -> sums`` with dropout off (jitted); the host
  batch is placed on the mesh here."""
  replicated = sharding_lib.replicated(setup.mesh)

  def eval_sums(params, rest, batch):
    return _loss_sums(setup, params, rest, batch, None, train=False)

  jitted = jax.jit(eval_sums, out_shardings=replicated)
  return lambda params, batch: jitted(
      params, setup.rest, sharding_lib.replicated_batch(batch, setup.mesh, setup.rules))


def _eval_batch_size(data_config, setup) -> int:
  """``data.eval_batch_size`` rounded up to a multiple of the batch's split."""
  divisor = sharding_lib.batch_divisor(setup.mesh, setup.rules)
  return -(-data_config.eval_batch_size // divisor) * divisor


# ---------------------------------------------------------------------------
# Loop: training, checkpoints, evaluation.
# ---------------------------------------------------------------------------


class _ProfileWindow:
  """A JAX profiler trace of ``train.profile_steps`` steps, after the first
  ``train.profile_skip_steps`` steps this process runs (compilation and
  warm-up stay out; a resumed run is traced too).

  Written to DIR/profile/, or DIR/profile/process_<i>/ in a multi-process run
  (each process traces its own devices): ``tensorboard --logdir DIR/profile``
  (the profile plugin), or a ``perfetto_trace.json.gz`` in ui.perfetto.dev.
  As a context manager it stops a trace the loop leaves running (a signal, an
  error), so no trace outlives the loop.
  """

  def __init__(self, train_config, workdir: str, first_step: int, writer):
    self.first = first_step + train_config.profile_skip_steps  # The first traced step.
    self.last = min(self.first + train_config.profile_steps - 1, train_config.num_steps)
    self.root = self.log_dir = os.path.join(workdir, "profile")
    if jax.process_count() > 1:
      self.log_dir = os.path.join(self.root, f"process_{jax.process_index()}")
    self.writer = writer
    self.done = None  # The last step run under a running trace; None: no trace.

  def before(self, step: int):
    """Starts the trace if ``step`` (the step about to run) is the first traced."""
    if step == self.first and self.first <= self.last:
      jax.profiler.start_trace(self.log_dir, create_perfetto_trace=True)
      self.done = step - 1
      self.writer.info("Profiling steps %d-%d into %s.", self.first, self.last, self.log_dir)

  def after(self, step: int, state):
    """Stops the trace once the last traced step has finished on the device."""
    if self.done is not None:
      self.done = step
      if step == self.last:
        jax.block_until_ready(state)
        self._stop()

  def _stop(self):
    first, done, self.done = self.first, self.done, None
    jax.profiler.stop_trace()
    self.writer.info("Profile of steps %d-%d written to %s (tensorboard --logdir %s).",
                     first, done, self.log_dir, self.root)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.done is not None:
      self._stop()


class _StopSignal:
  """Records SIGTERM/SIGINT; the loop saves a checkpoint and stops cleanly."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not in the main thread: no handlers.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:  # A second signal: stop now, without saving.
      raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
    self.received = signal.Signals(signum).name
    logging.warning("Received %s: saving a checkpoint after this step, then stopping "
                    "(send it again to stop at once).", self.received)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class NonFiniteLossError(FloatingPointError):
  pass


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming what is there), evaluates.

  Returns the final metrics (also in DIR/metrics.jsonl and DIR/eval/).
  """

  # -- config and workdir ---------------------------------------------------
  orbax_logs.quiet()
  requested_dtype = config.model.dtype
  # Every field, the workdir and the saved run, before any work.
  config = checks.resolve_config(config, num_devices=jax.device_count())
  t = config.train
  is_primary = jax.process_index() == 0
  checks.check_directory(workdir, create=True)
  if config.data.cache_dir:
    checks.check_directory(config.data.cache_dir, create=True, what="data.cache_dir")
  _check_resumed_config(workdir, config)
  writer = metrics_lib.MetricsWriter(workdir, t.num_steps, is_primary=is_primary)
  writer.info("Workdir %s; process %d of %d; devices: %d global, %d local (%s).", workdir,
              jax.process_index(), jax.process_count(), jax.device_count(),
              jax.local_device_count(), jax.default_backend())

  # -- mesh -----------------------------------------------------------------
  mesh = sharding_lib.make_mesh(t)
  writer.info("Mesh %s; rules %s.", dict(mesh.shape), sharding_lib.logical_axis_rules(t))

  # -- model, state and the update step ----------------------------------------
  setup = setup_state(config, mesh)
  update = make_update_fn(setup)
  eval_fn = make_eval_fn(setup)
  num_params = sum(x.size for x in jax.tree.leaves(setup.abstract_state["params"]))
  # The compute dtype as resolved by checks.resolve_config (and saved in config.json).
  writer.info("Model: %s parameters (%s); compute dtype %s (model.dtype=%s); decoding "
              "in %s (decode.dtype=%s).", f"{num_params:,}", config.model.param_dtype,
              config.model.dtype, requested_dtype,
              precision.decode_dtype(config.decode, config.model), config.decode.dtype)
  if t.check_memory:  # GPU/TPU: the step fits in memory, before any data work.
    peak = check_memory(update, config.data)
    if peak is not None:
      writer.info("Train step compiled: peak %.2f GiB per device.", peak / 2**30)

  # -- input ----------------------------------------------------------------
  # Process 0 prepares the corpus and the tokenizer; the others then reuse them.
  # load_tokenizer refuses a tokenizer whose size is not model.vocab_size.
  tokenizer = multihost.primary_first(
      lambda: data_lib.load_tokenizer(config.data, workdir, vocab_size=config.model.vocab_size),
      "preparing the corpus and the tokenizer")
  rules = sharding_lib.logical_axis_rules(t)
  divisor = sharding_lib.batch_divisor(mesh, rules)
  if divisor % jax.process_count():
    raise ValueError(f"The batch is split {divisor} ways, not a multiple of the "
                     f"{jax.process_count()} processes.")
  train_iter = data_lib.make_train_iterator(
      config.data, tokenizer, workdir, process_index=jax.process_index(),
      process_count=jax.process_count(), row_multiple=divisor // jax.process_count())

  # -- checkpoints and resume ---------------------------------------------------
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, every_steps=t.checkpoint_every_steps,
      every_minutes=t.checkpoint_every_minutes, keep=t.keep_checkpoints)
  # The newest checkpoint that restores whole (damaged newer ones are skipped
  # with a warning); the data iterator takes its data state.
  try:
    restored = checkpointer.restore_latest(setup.abstract_state,
                                           accept_data_state=train_iter.set_state)
  except BaseException:
    checkpointer.close()
    train_iter.close()
    raise
  if restored is None:
    state = init_state(setup)
    writer.truncate_after(0)  # A run killed before its first checkpoint restarts.
  else:
    state, _, step = restored
    writer.truncate_after(step)
    writer.info("Resumed from step %d.", step)
  # Written only now that data, tokenizer, mesh and checkpoint all fit the
  # config, so a mistyped re-run never replaces a good run's config.json.
  config_io.save_config(config, workdir)
  step = int(state["step"])

  # -- loop -------------------------------------------------------------------
  eval_batch_size = _eval_batch_size(config.data, setup)

  @functools.cache  # Read on the first evaluation, then kept for the others.
  def dev_data():
    batches = data_lib.eval_batches(config.data, tokenizer, workdir, config.data.dev_split,
                                    batch_size=eval_batch_size)
    n = t.eval_bleu_sentences
    sources, references = data_lib.load_split_text(config.data, config.data.dev_split,
                                                    workdir=workdir)
    return batches, list(sources)[:n], list(references)[:n]

  last = {}  # Metrics of the latest checked update.
  stopped_by = None
  pending = None  # (step, device metrics) of the latest update, not yet checked.
  interval = {"start": time.time(), "steps": 0, "tokens": 0.0}

  def check(pending):
    """Fetches an update's metrics (one step behind, to keep the device busy)
    and stops on a NaN/Inf loss before anything is saved."""
    done_step, device_metrics = pending
    values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not (np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"])):
      good = checkpointer.latest_step()
      raise NonFiniteLossError(
          f"Loss is {values['loss']} (gradient norm {values['grad_norm']}) at step "
          f"{done_step}; stopping. "
          + (f"The last good checkpoint (step {good}) is intact. " if good is not None
             else "No checkpoint was saved before it. ")
          + "Lower the learning rate (train.learning_rate_scale) or set "
          "train.grad_clip_norm.")
    interval["steps"] += 1
    interval["tokens"] += values["target_tokens"]
    return values

  with _StopSignal() as stop, _ProfileWindow(t, workdir, step + 1, writer) as profile:
    try:
      while step < t.num_steps:
        profile.before(step + 1)
        # Marks the step for the profiler (as Flax's examples do); free untraced.
        with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
          micro_batches = [
              sharding_lib.global_batch(next(train_iter), mesh, rules)
              for _ in range(t.accumulate_steps)]
          state, device_metrics = update(state, micro_batches)
        step += 1
        profile.after(step, state)
        if pending is not None:
          last = check(pending)
        pending = (step, device_metrics)

        is_log = step % t.log_every_steps == 0 or step == t.num_steps
        is_eval = t.eval_every_steps > 0 and step % t.eval_every_steps == 0
        save_due, signalled = multihost.agree(checkpointer.due(step) or step == t.num_steps,
                                              stop.received is not None)
        if not (is_log or is_eval or save_due or signalled):
          continue
        last, pending = check(pending), None
        row, eta = {}, None
        if is_log:
          elapsed = time.time() - interval["start"]
          step_time = elapsed / max(interval["steps"], 1)
          row.update({f"train/{k}": v for k, v in last.items()})
          row["train/target_tokens_per_s"] = interval["tokens"] / max(elapsed, 1e-9)
          row["train/step_time_s"] = step_time
          eta = step_time * (t.num_steps - step)
        if is_eval:
          row.update(evaluate_lib.dev_metrics(
              functools.partial(eval_fn, state["params"]), make_model(setup, state["params"]),
              tokenizer, *dev_data(), config.decode))
        if row:
          writer.write(step, row, eta_s=eta)
        if save_due or signalled:
          checkpointer.save(step, state, train_iter.get_state())
        if signalled:
          stopped_by = stop.received or "a signal to another process"
          break
        if is_log or is_eval:  # Rates exclude evaluation and checkpoint time.
          interval = {"start": time.time(), "steps": 0, "tokens": 0.0}
      if pending is not None:
        last = check(pending)
    except BaseException:
      writer.close()
      raise
    finally:
      checkpointer.close()
      train_iter.close()

  if stopped_by is not None:
    writer.info("Stopped by %s at step %d; checkpoint saved. Run the same command to "
                "resume.", stopped_by, step)
    writer.close()
    return {"step": step, "stopped_by": stopped_by, **last}

  # -- final evaluation ----------------------------------------------------------
  final = {"step": step, **{f"train/{k}": v for k, v in last.items()}}
  final.update(evaluate_lib.test_metrics(make_model(setup, state["params"]), config,
                                         workdir, step))
  writer.info(
      "Done at step %d (this process: %s); last train loss %s; %s BLEU %.2f on %d sentences -> %s",
      step, metrics_lib.format_duration(time.time() - writer.start_time),
      f"{final['train/loss']:.4f}" if "train/loss" in final else "n/a (no step run now)",
      config.data.test_split,
      final["test/bleu"], final["test/num_sentences"],
      os.path.join(workdir, "eval", f"{config.data.test_split}.json"))
  writer.close()
  return final
