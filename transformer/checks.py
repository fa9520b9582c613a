"""Checks of what a user gives, before any work: the config and the directories.

``train.py`` and ``evaluate.py`` call these first, so that a mistake costs a
second, not a tokenizer, a compilation or a decoded test split:

  check_config       every field of every section (model, data, train,
                     decode, the mesh) against transformer/fields.py's table
  resolve_config     the checked config as a run uses it ("auto" resolved)
  check_directory    a directory (made if asked) that this process can write

A ``ConfigError`` is a config file, flag or value that cannot work; the CLIs
(transformer/cli.py) exit with 2 for it, 1 for any other user error.
"""

import difflib
import math
import os
import tempfile

import ml_collections

from transformer import choices, fields


class ConfigError(ValueError):
  """A config file, flag or value that cannot work; the CLIs exit with 2."""


# ---------------------------------------------------------------------------
# Each field against its entry in transformer/fields.py.
# ---------------------------------------------------------------------------

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False",
               dict: "a section"}


def did_you_mean(name, names) -> str:
  """The end of a message about an unknown ``name``: the closest of ``names``,
  or all of them."""
  match = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
  return f"; did you mean {match[0]!r}?" if match else f"; fields: {', '.join(sorted(names))}."


def has_type(value, kind) -> bool:
  """Whether ``value`` is of a field's ``kind`` (int is not bool; float is finite)."""
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind is float:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
  if kind is dict:
    return isinstance(value, (dict, ml_collections.ConfigDict))
  return isinstance(value, kind)


def _check_paper(paper):
  if not has_type(paper, dict):
    raise ConfigError(f"config.paper={paper!r} must be a section of Table 3's figures.")
  for name in paper:
    if name not in fields.PAPER_FIELDS:
      raise ConfigError(f"config.paper has no field {name!r}"
                        f"{did_you_mean(name, fields.PAPER_FIELDS)}")
  for name, kind in fields.PAPER_FIELDS.items():
    value = paper.get(name)
    if kind is float and value is None:
      continue
    if not has_type(value, kind):
      blank = " or None" if kind is float else ""
      raise ConfigError(f"config.paper.{name}={value!r} must be {_TYPE_NAMES[kind]}{blank}.")
    if kind is float and value <= 0:
      raise ConfigError(f"config.paper.{name}={value!r} must be > 0.")


def _check_fields(config):
  for section in config:
    if section not in fields.SECTIONS and section != "paper":
      raise ConfigError(f"The config has no section {section!r}"
                        f"{did_you_mean(section, [*fields.SECTIONS, 'paper'])}")
  if "paper" in config:
    _check_paper(config.paper)
  for section in fields.SECTIONS:
    if section not in config or not has_type(config[section], dict):
      raise ConfigError(f"The config has no {section!r} section (sections: "
                        f"{', '.join(sorted(fields.SECTIONS))}).")
    _check_section(section, config[section])


def _check_section(section, values):
  table = fields.SECTIONS[section]
  for name in values:
    if name not in table:
      raise ConfigError(f"config.{section} has no field {name!r}{did_you_mean(name, table)}")
  for name, field in table.items():
    if name not in values:
      raise ConfigError(f"config.{section}.{name} is missing.")
    value = values[name]
    if not has_type(value, field.kind):
      finite = " (finite)" if field.kind is float else ""
      raise ConfigError(f"config.{section}.{name}={value!r} must be "
                        f"{_TYPE_NAMES[field.kind]}{finite}.")
    test, meaning = field.valid
    if not test(value):
      verb = "is not" if meaning.startswith(fields.ONE_OF) else "must be"
      raise ConfigError(f"config.{section}.{name}={value!r} {verb} {meaning}.")


def _check_mesh_shape(mesh_shape):
  for axis, size in mesh_shape.items():
    if axis not in choices.MESH_AXES:
      raise ConfigError(f"config.train.mesh_shape has no axis {axis!r}"
                        f"{did_you_mean(axis, choices.MESH_AXES)}")
    if not has_type(size, int) or not (size >= 1 or size == -1):
      raise ConfigError(f"config.train.mesh_shape.{axis}={size!r} must be a size >= 1, "
                        "or -1 for the devices left over.")
  if list(mesh_shape.values()).count(-1) > 1:
    raise ConfigError(f"config.train.mesh_shape {dict(mesh_shape)} may contain at most "
                      "one -1.")


def _check_model(m, platform):
  """What the model's fields must satisfy together, on ``platform``."""
  from transformer import precision

  precision.dtype_name(m.dtype, platform)  # An unknown dtype, or float16 on a CPU.
  if m.positional_encoding == "sinusoidal" and m.d_model % 2:
    raise ValueError(
        f"config.model.d_model={m.d_model} must be even for sinusoidal "
        "positional encoding (sin and cos pairs, §3.5).")
  if m.attention_impl == "dot_product_attention":
    precision.check_fused_attention(m, platform)


def check_model_config(model_config: ml_collections.ConfigDict, *,
                       platform: str | None = None):
  """``check_config`` of the ``config.model`` section alone, for the tools
  that only build a model (the parameter summary, the benchmark)."""
  _check_section("model", model_config)
  try:
    _check_model(model_config, platform)
  except ValueError as e:
    raise ConfigError(str(e)) from e


def check_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
                 platform: str | None = None):
  """Raises one ``ConfigError`` for the first field of ``config`` out of range.

  Checks every field of every section (types, ranges, choices), the fields
  that must agree with each other, what the model needs on ``platform`` (the
  kind of device the run compiles for; default: JAX's default backend) and,
  given ``num_devices``, that the mesh fits the devices. The data pipeline's
  own checks (``data.sources.check_config``) run here too, so that nothing is
  found only after the work has started. The library trusts what is checked
  here: a model is built from a config without checking it again.
  """
  from transformer import precision
  from transformer.data import sources

  _check_fields(config)
  _check_mesh_shape(config.train.mesh_shape)
  try:
    _check_model(config.model, platform)
    precision.decode_dtype(config.decode, config.model, platform)  # float16 on a CPU.
    sources.check_config(config.data)
    if num_devices is not None:
      from transformer import sharding

      sharding.resolve_mesh_shape(config.train.mesh_shape, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  xla_option_pairs(config.train.xla_options)
  m, d = config.model, config.data
  if m.positional_encoding == "learned" and d.max_length > m.max_len:
    raise ConfigError(
        f"data.max_length={d.max_length} is longer than the learned positional "
        f"embedding (model.max_len={m.max_len}); raise --config.model.max_len or lower "
        "--config.data.max_length.")
  if d.batch_tokens < d.max_length:
    raise ConfigError(
        f"data.batch_tokens={d.batch_tokens} is less than one row of data.max_length="
        f"{d.max_length} tokens; raise data.batch_tokens or lower data.max_length.")
  if d.source == "tfds" and not d.tfds_name:
    raise ConfigError("data.source='tfds' needs data.tfds_name (e.g. "
                      "'wmt14_translate/de-en').")
  if d.source == "text" and not d.dir:
    raise ConfigError("data.source='text' needs data.dir: a folder of {split}.{lang} "
                      "files.")
  if d.tokenizer_path and not os.path.isfile(d.tokenizer_path):
    raise ConfigError(f"data.tokenizer_path={d.tokenizer_path!r} is not a file.")
  if config.decode.beam_size > m.vocab_size:
    raise ConfigError(f"decode.beam_size={config.decode.beam_size} is larger than the "
                      f"vocabulary (model.vocab_size={m.vocab_size}).")


def xla_option_pairs(value: str) -> tuple[str, dict]:
  """``train.xla_options`` read: ("auto" or "none", {name: value} of the
  comma-separated pairs after it). A ``ConfigError`` names a malformed one."""
  example = "e.g. --config.train.xla_options=auto,xla_gpu_enable_triton_gemm=true"
  base, *pairs = [part.strip() for part in value.split(",")]
  if base not in ("auto", "none"):
    raise ConfigError(f"train.xla_options={value!r} must start with \"auto\" or \"none\", "
                      f"then comma-separated name=value pairs ({example}).")
  options = {}
  for pair in filter(None, pairs):
    name, eq, option = (part.strip() for part in pair.partition("="))
    if not eq or not name.startswith("xla_") or not option:
      raise ConfigError(f"train.xla_options: {pair!r} is not an XLA option as name=value "
                        f"({example}).")
    options[name] = _option_value(option)
  return base, options


def _option_value(text: str):
  """An XLA option's value as XLA takes it: a bool, an int, a float or text."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def resolve_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
                   platform: str | None = None) -> ml_collections.ConfigDict:
  """The config as the run uses it (a locked copy), after ``check_config`` of
  every field: ``model.dtype="auto"`` becomes bfloat16 on GPU/TPU and on a
  CPU with a bfloat16 matrix engine, float32 on other CPUs (mixed precision:
  params and Adam state stay ``model.param_dtype``). ``platform``: the kind
  of device the run compiles for (default: JAX's default backend)."""
  check_config(config, num_devices=num_devices, platform=platform)
  config = ml_collections.ConfigDict(config.to_dict())
  # Resolves "auto".
  from transformer import precision

  config.model.dtype = precision.dtype_name(config.model.dtype, platform)
  config.lock()
  return config


# ---------------------------------------------------------------------------
# Directories: the workdir, the data cache, where results go.
# ---------------------------------------------------------------------------


def check_directory(directory: str, *, create: bool, writable: bool = True,
                    what: str = "Workdir"):
  """Raises one clear ``OSError``/``FileNotFoundError`` unless ``directory`` is
  a directory (``create``: make it if missing) that this process can write
  (unless ``writable`` is False: only read from). ``what`` names it in the
  message ("Workdir", "data.cache_dir", ...).

  Writing is tried for real (a temporary file is made and removed), so the
  answer is right for read-only mounts, ACLs and full disks alike.
  """
  if not directory:
    raise ValueError("--workdir is required: the directory of a train.py run.")
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise NotADirectoryError(f"{what} {directory!r} is a file, not a directory; pass a "
                             "directory (a train.py run's, or a new one for a new run).")
  if not os.path.isdir(directory):
    if not create:
      raise FileNotFoundError(f"{what} {directory!r} does not exist. Pass the --workdir of "
                              "a train.py run (e.g. runs/quickstart).")
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      raise OSError(f"{what} {directory!r} cannot be created: {e.strerror or e}.") from e
  if not writable:
    return
  try:
    with tempfile.TemporaryFile(dir=directory, prefix=".write_check"):
      pass
  except OSError as e:
    raise OSError(f"{what} {directory!r} is not writable: {e.strerror or e}. Make it "
                  "writable, or pass another directory.") from e
