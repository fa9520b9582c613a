"""Checks of what a user gives, before any work: flags, config, workdir.

``train.py`` and ``evaluate.py`` call these first, so that a mistake costs a
second, not a tokenizer, a compilation or a decoded test split:

  parse_flags        absl's flag parsing, with every flag error (a misspelt
                     field, a missing or broken config file, an unknown
                     variant, a wrongly typed value) as one ``error:`` line
                     and exit code 2
  check_config       every field of every section (model, data, train,
                     decode, the mesh) against its valid range
  resolve_config     the checked config as a run uses it ("auto" resolved)
  check_workdir      the workdir is a directory this process can write
  error_line         any user error as the one line the CLIs print

Exit codes of the CLIs: 2 for a config or flag error (``ConfigError``), 1 for
any other user error (missing data or checkpoint, an unwritable workdir, a
diverged run).
"""

import difflib
import importlib.util
import math
import os
import sys
import tempfile

import ml_collections
from absl import flags

from transformer import tokens

# Special ids of the shared vocabulary; a vocabulary needs at least one more.
SPECIAL_IDS = (tokens.PAD_ID, tokens.EOS_ID, tokens.UNK_ID, tokens.BOS_ID)
# lp(Y) = ((5 + |Y|) / 6)^alpha (§6.1, Wu et al. 2016): GNMT tunes alpha in
# [0, 1]; beyond 10, lp of a few hundred tokens overflows float32.
MAX_ALPHA = 10.0
# config.decode.dtype: see configs/common.py.
_DECODE_DTYPES = ("auto", "model", "float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """A config file, flag or value that cannot work; the CLIs exit with 2."""


# ---------------------------------------------------------------------------
# The rules: one per field of configs/common.py.
# ---------------------------------------------------------------------------

# Each rule is (type, test, what the test means). Types: int (not bool),
# float (int accepted; finite), str, bool.
def _at_least(n):
  return (lambda v: v >= n), f">= {n}"


def _positive():
  return (lambda v: v > 0), "> 0"


def _in(lo, hi, *, lo_open=False, hi_open=False):
  def test(v):
    return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  return test, f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _non_empty():
  return bool, "non-empty"


def _one_of(*choices):
  return (lambda v: v in choices), f"{_CHOICES}{sorted(choices)}"


_CHOICES = "one of "
_ANY = (lambda v: True), ""
_PROBABILITY = _in(0.0, 1.0, hi_open=True)

# The names of the model's registries (transformer/model.py resolves them;
# tests/test_checks.py holds the two lists equal), here so that checking a
# config imports no model code.
ACTIVATIONS = ("relu", "gelu", "elu", "silu")
GATED_ACTIVATIONS = ("reglu", "geglu", "swiglu")
ATTENTION_IMPLS = ("auto", "xla", "dot_product_attention")
DTYPES = ("float32", "bfloat16", "float16")  # As transformer/precision.py's.

RULES = {
    "model": {
        # More than the special ids; SentencePiece also needs one piece per
        # character of the text (checked when the tokenizer is trained).
        "vocab_size": (int, *_at_least(len(SPECIAL_IDS) + 1)),
        "num_layers": (int, *_at_least(1)),
        "d_model": (int, *_at_least(1)),
        "d_ff": (int, *_at_least(1)),
        "num_heads": (int, *_at_least(1)),
        "d_k": (int, *_at_least(1)),
        "d_v": (int, *_at_least(1)),
        "dropout_rate": (float, *_PROBABILITY),
        "attention_dropout_rate": (float, *_PROBABILITY),
        "ffn_dropout_rate": (float, *_PROBABILITY),
        "activation": (str, *_one_of(*ACTIVATIONS, *GATED_ACTIVATIONS)),
        "norm_position": (str, *_one_of("post", "pre")),
        "layer_norm_epsilon": (float, *_positive()),
        "positional_encoding": (str, *_one_of("sinusoidal", "learned")),
        "max_len": (int, *_at_least(1)),
        "share_source_target_embedding": (bool, *_ANY),
        "share_output_embedding": (bool, *_ANY),
        "dtype": (str, *_ANY),  # A DTYPES name or "auto", for the platform: _check_model.
        "param_dtype": (str, *_one_of(*DTYPES)),
        "attention_impl": (str, *_one_of(*ATTENTION_IMPLS)),
    },
    "data": {
        "source": (str, *_ANY),  # Choices: data.sources.check_config.
        "tfds_name": (str, *_ANY),
        "tfds_data_dir": (str, *_ANY),
        "tfds_download": (bool, *_ANY),
        "dir": (str, *_ANY),
        "source_lang": (str, *_non_empty()),
        "target_lang": (str, *_non_empty()),
        "train_split": (str, *_non_empty()),
        "dev_split": (str, *_non_empty()),
        "test_split": (str, *_non_empty()),
        "tokenizer_type": (str, (lambda v: v in ("bpe", "unigram")), "'bpe' or 'unigram'"),
        "tokenizer_path": (str, *_ANY),
        "tokenizer_sample_sentences": (int, *_at_least(2)),  # One pair.
        "tokenizer_character_coverage": (float, *_in(0.0, 1.0, lo_open=True)),
        "max_length": (int, *_at_least(2)),  # One token and EOS.
        "batch_tokens": (int, *_at_least(1)),
        "batching": (str, *_ANY),
        "eval_batch_size": (int, *_at_least(1)),
        "prefetch": (int, *_at_least(0)),
        "workers": (int, *_at_least(0)),
        "seed": (int, *_at_least(0)),
        "cache_dir": (str, *_ANY),
        "synthetic_train_size": (int, *_at_least(1)),
        "synthetic_dev_size": (int, *_at_least(1)),
        "synthetic_test_size": (int, *_at_least(1)),
        "synthetic_seed": (int, *_at_least(0)),
    },
    "train": {
        "seed": (int, *_at_least(0)),
        "num_steps": (int, *_at_least(1)),
        "label_smoothing": (float, *_PROBABILITY),
        "adam_b1": (float, *_PROBABILITY),
        "adam_b2": (float, *_PROBABILITY),
        "adam_eps": (float, *_positive()),
        "warmup_steps": (int, *_at_least(1)),  # Eq. (3) divides by it.
        "learning_rate_scale": (float, *_positive()),
        "grad_clip_norm": (float, *_at_least(0.0)),
        "weight_decay": (float, *_at_least(0.0)),
        "loss_chunk_tokens": (int, *_at_least(0)),  # 0: one chunk.
        "accumulate_steps": (int, *_at_least(1)),
        "mesh_shape": (dict, *_ANY),  # Axes and sizes: _check_mesh_shape.
        "fsdp": (bool, *_ANY),
        "check_memory": (bool, *_ANY),
        "log_every_steps": (int, *_at_least(1)),
        "eval_every_steps": (int, *_at_least(0)),
        "eval_bleu_sentences": (int, *_at_least(0)),
        "checkpoint_every_steps": (int, *_at_least(0)),
        "checkpoint_every_minutes": (float, *_at_least(0.0)),
        "keep_checkpoints": (int, *_at_least(1)),  # 0 would delete every one.
    },
    "decode": {
        "beam_size": (int, *_at_least(1)),  # 1 is greedy.
        "alpha": (float, *_in(0.0, MAX_ALPHA)),
        "max_extra_length": (int, *_at_least(0)),
        "min_length": (int, *_at_least(0)),  # Real tokens before EOS; 0: the paper.
        "average_last": (int, *_at_least(1)),
        "batch_size": (int, *_at_least(1)),
        "dtype": (str, (lambda v: v in _DECODE_DTYPES), " or ".join(map(repr, _DECODE_DTYPES))),
    },
}

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False",
               dict: "a section"}


def _closest(name, names):
  match = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
  return f"; did you mean {match[0]!r}?" if match else f"; fields: {', '.join(sorted(names))}."


def _has_type(value, kind) -> bool:
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind is float:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
  if kind is dict:
    return isinstance(value, (dict, ml_collections.ConfigDict))
  return isinstance(value, kind)


# Optional section: configs/table3.py's paper figures of its row (read by the
# summary, never by training). The numbers are None where Table 3 is blank.
PAPER_FIELDS = {"row": str, "dev_ppl": float, "dev_bleu": float, "params_millions": float}


def _check_paper(paper):
  if not _has_type(paper, dict):
    raise ConfigError(f"config.paper={paper!r} must be a section of Table 3's figures.")
  for name in paper:
    if name not in PAPER_FIELDS:
      raise ConfigError(f"config.paper has no field {name!r}{_closest(name, PAPER_FIELDS)}")
  for name, kind in PAPER_FIELDS.items():
    value = paper.get(name)
    if kind is float and value is None:
      continue
    if not _has_type(value, kind):
      blank = " or None" if kind is float else ""
      raise ConfigError(f"config.paper.{name}={value!r} must be {_TYPE_NAMES[kind]}{blank}.")
    if kind is float and value <= 0:
      raise ConfigError(f"config.paper.{name}={value!r} must be > 0.")


def _check_fields(config):
  for section in config:
    if section not in RULES and section != "paper":
      raise ConfigError(f"The config has no section {section!r}"
                        f"{_closest(section, [*RULES, 'paper'])}")
  if "paper" in config:
    _check_paper(config.paper)
  for section, rules in RULES.items():
    if section not in config or not _has_type(config[section], dict):
      raise ConfigError(f"The config has no {section!r} section (sections: "
                        f"{', '.join(sorted(RULES))}).")
    _check_section(section, config[section], rules)


def _check_section(section, values, rules):
  for name in values:
    if name not in rules:
      raise ConfigError(f"config.{section} has no field {name!r}{_closest(name, rules)}")
  for name, (kind, test, meaning) in rules.items():
    if name not in values:
      raise ConfigError(f"config.{section}.{name} is missing.")
    value = values[name]
    if not _has_type(value, kind):
      finite = " (finite)" if kind is float else ""
      raise ConfigError(f"config.{section}.{name}={value!r} must be "
                        f"{_TYPE_NAMES[kind]}{finite}.")
    if not test(value):
      verb = "is not" if meaning.startswith(_CHOICES) else "must be"
      raise ConfigError(f"config.{section}.{name}={value!r} {verb} {meaning}.")


def _check_mesh_shape(mesh_shape):
  from transformer import sharding

  for axis, size in mesh_shape.items():
    if axis not in sharding.MESH_AXES:
      raise ConfigError(f"config.train.mesh_shape has no axis {axis!r}"
                        f"{_closest(axis, sharding.MESH_AXES)}")
    if not _has_type(size, int) or not (size >= 1 or size == -1):
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
  _check_section("model", model_config, RULES["model"])
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
  from transformer import precision, sharding
  from transformer.data import sources

  _check_fields(config)
  _check_mesh_shape(config.train.mesh_shape)
  try:
    _check_model(config.model, platform)
    precision.decode_dtype(config.decode, config.model, platform)  # float16 on a CPU.
    sources.check_config(config.data)
    if num_devices is not None:
      sharding.resolve_mesh_shape(config.train.mesh_shape, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from e
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
# The workdir.
# ---------------------------------------------------------------------------


def check_workdir(workdir: str, *, create: bool, writable: bool = True,
                  what: str = "Workdir"):
  """Raises one clear ``OSError``/``FileNotFoundError`` unless ``workdir`` is
  a directory (``create``: make it if missing) that this process can write
  (unless ``writable`` is False: only read from). ``what`` names it in the
  message ("Workdir", "data.cache_dir", ...).

  Writing is tried for real (a temporary file is made and removed), so the
  answer is right for read-only mounts, ACLs and full disks alike.
  """
  if not workdir:
    raise ValueError("--workdir is required: the directory of a train.py run.")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"{what} {workdir!r} is a file, not a directory; pass a "
                             "directory (a train.py run's, or a new one for a new run).")
  if not os.path.isdir(workdir):
    if not create:
      raise FileNotFoundError(f"{what} {workdir!r} does not exist. Pass the --workdir of "
                              "a train.py run (e.g. runs/quickstart).")
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise OSError(f"{what} {workdir!r} cannot be created: {e.strerror or e}.") from e
  if not writable:
    return
  try:
    with tempfile.TemporaryFile(dir=workdir, prefix=".write_check"):
      pass
  except OSError as e:
    raise OSError(f"{what} {workdir!r} is not writable: {e.strerror or e}. Make it "
                  "writable, or pass another directory.") from e


# ---------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------


def error_line(e: BaseException) -> str:
  """``e`` as one line (an OSError names its path and the reason)."""
  if isinstance(e, OSError) and e.strerror and e.filename:
    text = f"{e.filename}: {e.strerror}"
  else:
    text = str(e) or type(e).__name__
  return " ".join(text.split())


def exit_with_error(e: BaseException, code: int):
  print(f"error: {error_line(e)}", file=sys.stderr)
  sys.stderr.flush()
  sys.exit(code)


def _config_arg(argv, name):
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config_file(value: str):
  """The config of ``--config=FILE[:VARIANT]``, or a ``ConfigError`` naming it."""
  path, _, variant = value.partition(":")
  flag = f"--config={value}"
  if not os.path.isfile(path):
    raise ConfigError(f"{flag}: no such config file {path!r}.")
  try:
    spec = importlib.util.spec_from_file_location("_checked_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{flag}: syntax error in {path} line {e.lineno}: {e.msg}.") from e
  except Exception as e:  # Anything the file raises while it is imported.
    raise ConfigError(f"{flag}: {path} fails to load: {error_line(e)}") from e
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"{flag}: {path} defines no get_config().")
  try:
    return module.get_config(variant) if variant else module.get_config()
  except Exception as e:
    raise ConfigError(f"{flag}: {error_line(e)}") from e


def _check_override(arg, config, name):
  """A ``--config.a.b=value`` flag whose path is not a field of ``config``."""
  path = arg[len(f"--{name}."):].split("=", 1)[0]
  node, done = config, name
  for part in path.split("."):
    keys = list(node.keys()) if _has_type(node, dict) else []
    if part not in keys:
      where = f"{done} has no field {part!r}" if keys else f"{done} is not a section"
      raise ConfigError(f"{arg.split('=', 1)[0]}: {where}{_closest(part, keys) if keys else '.'}")
    node, done = node[part], f"{done}.{part}"


def parse_flags(argv, *, config_flag="config", loaded_config=None):
  """absl's flag parsing (pass as ``app.run(main, flags_parser=parse_flags)``)
  with every error as one ``error:`` line naming the flag, exit code 2.

  ``loaded_config``: for a config that is not a file (evaluate.py's saved
  config.json), a function returning it or raising ``ConfigError``.
  """
  try:
    rest = flags.FLAGS(argv)
    config = flags.FLAGS[config_flag].value
    if config is not None:
      config.keys()  # A config file that failed to load raises only when used.
    return rest
  except Exception as e:  # Any error of parsing is the user's; say which flag.
    exit_for_flag_error(e, argv, config_flag=config_flag, loaded_config=loaded_config)


def exit_for_flag_error(e: Exception, argv, *, config_flag="config", loaded_config=None):
  """Prints the flag error ``e`` as one ``error:`` line naming the flag (for a
  misspelt field, the closest one) and exits with code 2."""
  message = error_line(e)
  try:
    if loaded_config is not None:
      config = loaded_config()
    else:
      value = _config_arg(argv[1:], config_flag)
      config = _load_config_file(value) if value is not None else None
    if config is not None:
      for arg in argv[1:]:
        if arg.startswith(f"--{config_flag}."):
          _check_override(arg, config, config_flag)
  except ConfigError as diagnosed:
    message = error_line(diagnosed)
  exit_with_error(ConfigError(message), 2)
