"""A run's config file, ``DIR/config.json``: written when training starts,
read back by evaluation, export and a resumed run.

  save_config(config, workdir)        the resolved config, atomically (process 0)
  load_config(workdir)                it back (a ``ConfigError`` if malformed)
  with_default_fields(config)         fields added since the run was trained, at
                                      today's defaults (transformer/fields.py)
  config_differences(old, new)        the dotted fields whose values differ

Importing this module starts no JAX (evaluate.py reads the config while it
parses its flags).
"""

import json
import os

import ml_collections

from transformer import checks, fields

CONFIG_FILE = "config.json"


def save_config(config: ml_collections.ConfigDict, workdir: str):
  """Writes ``DIR/config.json`` atomically (process 0 only)."""
  import jax

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
  still evaluate and export; returns (config, ["section.field=value", ...]).
  A model size's fields have no default: a config without one is not a run's."""
  added = []
  for section in sorted(fields.SECTIONS):
    if section in config and isinstance(config[section], ml_collections.ConfigDict):
      for name in sorted(fields.SECTIONS[section]):
        field = fields.SECTIONS[section][name]
        if name not in config[section] and field.default != fields.PER_SIZE:
          value = fields.default_value(field)
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
