"""Device mesh and the one table mapping logical axes to mesh axes.

The model names the axes of its parameters logically ("vocab", "embed",
"mlp", "heads", "kv", via ``nnx.with_partitioning``); batches have a "batch"
axis. ``logical_axis_rules`` below is the only place that says which mesh
axis each of them is split over:

  mesh axes  data    plain data parallelism: batch rows split, params copied.
             fsdp    batch rows split too; with ``train.fsdp`` the params and
                     optimizer state are split over it as well (ZeRO-3/FSDP).
             tensor  model parallelism inside layers (heads, d_ff, vocab).

By default ``train.mesh_shape`` is {"data": -1, "fsdp": 1, "tensor": 1}: every
device of every host is a data-parallel replica. ``--config.train.fsdp=True
--config.train.mesh_shape.data=1 --config.train.mesh_shape.fsdp=-1`` shards a
big model's parameters over all devices, with no code change.

Activations: while a train or eval step traces the model
(``activation_sharding``), the model pins its (B, T, D) activations, the
embedding output and each layer's output, to ("batch", None, None) with
``constrain``, and looks up embedding rows in the whole (gathered) table.
FSDP then costs what it should: each parameter is all-gathered where it is
used and each gradient reduce-scattered (all-reduced on a CPU mesh), and
activations are never resharded. Left to itself, XLA carried the parameters'
split of d_model into the activations and moved them with all-to-alls: big
on 8 compile-only H100s had 103 all-to-alls per step and a per-device peak of
10.6 GiB against data parallelism's 6.6 GiB (pinned: none, and 4.5 GiB).

All arrays are ``jax.Array``s with a ``NamedSharding`` over one ``Mesh``; the
train step is a single ``jax.jit`` (no ``pmap``).
"""

import contextlib
import contextvars
import math
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from transformer.choices import MESH_AXES  # The axes the rules below map to.


def logical_axis_rules(train_config: ml_collections.ConfigDict) -> tuple[tuple[str, object], ...]:
  """The logical-axis -> mesh-axis rules table, from the ``config.train``
  section (``train.fsdp``)."""
  fsdp = bool(train_config.fsdp)
  return (
      ("batch", ("data", "fsdp")),  # Rows of a batch: over every data replica.
      ("vocab", "tensor"),  # Embedding rows / softmax columns.
      ("embed", "fsdp" if fsdp else None),  # d_model: the FSDP axis.
      ("mlp", "tensor"),  # d_ff.
      ("heads", "tensor"),  # h.
      ("kv", None),  # d_k, d_v.
  )


def resolve_mesh_shape(mesh_shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Mesh axis sizes with a single -1 filled in from ``num_devices``."""
  unknown = [k for k in mesh_shape if k not in MESH_AXES]
  if unknown:
    raise ValueError(f"train.mesh_shape has unknown axes {unknown}; allowed: {list(MESH_AXES)}.")
  sizes = [int(mesh_shape.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"train.mesh_shape {dict(mesh_shape)} may contain at most one -1.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f"train.mesh_shape {dict(mesh_shape)} does not divide the {num_devices} devices.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"train.mesh_shape {dict(mesh_shape)} has {math.prod(sizes)} devices but "
        f"{num_devices} are available; use -1 for one axis to take the rest.")
  return tuple(sizes)


def make_mesh(train_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The ("data", "fsdp", "tensor") mesh over all devices of all processes,
  shaped by the ``config.train`` section's ``mesh_shape``."""
  devices = jax.devices() if devices is None else devices
  shape = resolve_mesh_shape(train_config.mesh_shape, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_mesh(logical_axes, rules) -> PartitionSpec:
  """PartitionSpec for a tuple of logical axis names under ``rules``."""
  return PartitionSpec(*flax_spmd.from_sharding_rules(tuple(logical_axes), rules))


def batch_spec(rules, ndim: int, batch_axis: int = 0) -> PartitionSpec:
  """PartitionSpec splitting axis ``batch_axis`` of an ``ndim`` array as "batch"."""
  axes = [None] * ndim
  axes[batch_axis] = "batch"
  return logical_to_mesh(axes, rules)


def batch_divisor(mesh: Mesh, rules) -> int:
  """Number of shards of the batch axis: global rows must be a multiple of it."""
  mesh_axes = dict(rules)["batch"]
  mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
  return math.prod(mesh.shape[a] for a in mesh_axes)


def state_partition_specs(abstract_state: nnx.State, rules) -> nnx.State:
  """PartitionSpecs (a State of the same structure) from the params' logical axes."""
  with flax_spmd.logical_axis_rules(rules):
    return nnx.get_partition_spec(abstract_state)


def check_divisible(abstract_params, specs, mesh: Mesh):
  """Raises a clear error if a sharded parameter axis does not split evenly."""
  flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  for (path, leaf), spec in zip(flat_params, flat_specs, strict=True):
    for dim, axes in zip(leaf.shape, spec, strict=False):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      size = math.prod(mesh.shape[a] for a in axes)
      if dim % size:
        raise ValueError(
            f"Parameter {jax.tree_util.keystr(path)} of shape {leaf.shape} cannot be split "
            f"{size} ways over mesh axes {axes} (spec {spec}); change train.mesh_shape or "
            "the model size so that the dimension is divisible.")


# (mesh, rules) while a train or eval step traces the model; None otherwise.
_ACTIVATIONS = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
  """While the model is traced inside this context, ``constrain`` pins its
  activations to ``mesh`` under ``rules``; outside it (decoding, tests)
  ``constrain`` does nothing."""
  token = _ACTIVATIONS.set((mesh, rules))
  try:
    yield
  finally:
    _ACTIVATIONS.reset(token)


def constrain(x, logical_axes):
  """``x`` with its sharding pinned to ``logical_axes`` (one name or None per
  dimension) under the current ``activation_sharding``; ``x`` itself outside
  one or on a one-device mesh."""
  context = _ACTIVATIONS.get()
  if context is None or context[0].size == 1:
    return x
  mesh, rules = context
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, logical_to_mesh(logical_axes, rules)))


def optimizer_specs(abstract_params, specs, mesh: Mesh):
  """``train.shard_optimizer``'s PartitionSpecs of Adam's moments (ZeRO stage
  1): each parameter's spec with its first dimension that is not split yet and
  divides by the "data" axis split over "data" too; a parameter with none such
  keeps its own spec."""
  data = mesh.shape["data"]

  def split(param, spec):
    parts = list(spec) + [None] * (len(param.shape) - len(spec))
    if data > 1:
      for i, (size, part) in enumerate(zip(param.shape, parts, strict=True)):
        if part is None and size % data == 0:
          parts[i] = "data"
          return PartitionSpec(*parts)
    return spec

  return jax.tree.map(split, abstract_params, specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def named(mesh: Mesh, specs):
  """NamedShardings for a tree of PartitionSpecs."""
  return jax.tree.map(lambda p: NamedSharding(mesh, p), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules, batch_axis: int = 0):
  """Assembles each process's local rows into global ``jax.Array``s.

  Every process passes its own rows (its disjoint shard of the data); the
  global batch is their concatenation in process order along ``batch_axis``.
  """
  out = {}
  for k, v in batch.items():
    sharding = NamedSharding(mesh, batch_spec(rules, v.ndim, batch_axis))
    global_shape = list(v.shape)
    global_shape[batch_axis] *= jax.process_count()
    out[k] = jax.make_array_from_process_local_data(sharding, v, tuple(global_shape))
  return out


def replicated_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules):
  """Global arrays from a batch that every process holds in full (evaluation)."""
  out = {}
  for k, v in batch.items():
    sharding = NamedSharding(mesh, batch_spec(rules, v.ndim, 0))
    out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
  return out
