"""Tests for transformer/config_io.py: a run's config.json written, read back,
completed with newer fields, and compared."""

import json

import pytest

from configs import common, quickstart
from transformer import checks, config_io


def test_config_round_trip(tmp_path):
  config = common.get_base_config("base")
  config_io.save_config(config, str(tmp_path))
  loaded = config_io.load_config(str(tmp_path))
  assert loaded.model.d_model == 512
  assert loaded.train.mesh_shape.data == -1
  assert config_io.config_differences(config, loaded) == []
  loaded.train.num_steps = 5
  assert config_io.config_differences(config, loaded) == ["train.num_steps"]
  with pytest.raises(FileNotFoundError, match="config.json"):
    config_io.load_config(str(tmp_path / "missing"))


def test_malformed_config_json_is_a_config_error(tmp_path):
  (tmp_path / config_io.CONFIG_FILE).write_text("{\"model\": {")
  with pytest.raises(checks.ConfigError, match="config.json is not valid JSON"):
    config_io.load_config(str(tmp_path))
  (tmp_path / config_io.CONFIG_FILE).write_text("[1, 2]")
  with pytest.raises(checks.ConfigError, match="holds a JSON list"):
    config_io.load_config(str(tmp_path))


def test_fields_added_since_a_run_take_todays_defaults(tmp_path):
  values = json.loads(quickstart.get_config().to_json())
  for section, name in [("train", "mesh_shape"), ("data", "workers"), ("decode", "dtype")]:
    del values[section][name]
  (tmp_path / config_io.CONFIG_FILE).write_text(json.dumps(values))
  config, added = config_io.with_default_fields(config_io.load_config(str(tmp_path)))
  assert added == ["data.workers=2", "decode.dtype='auto'",
                   "train.mesh_shape=data: -1\nfsdp: 1\ntensor: 1\n"]
  assert config.train.mesh_shape.to_dict() == {"data": -1, "fsdp": 1, "tensor": 1}
  assert config_io.config_differences(config, quickstart.get_config()) == []
  checks.check_config(config)
  # A model size's field has no default: a config without it is not a run's.
  del values["model"]["d_model"]
  (tmp_path / config_io.CONFIG_FILE).write_text(json.dumps(values))
  config, added = config_io.with_default_fields(config_io.load_config(str(tmp_path)))
  with pytest.raises(checks.ConfigError, match="config.model.d_model is missing"):
    checks.check_config(config)
