"""Tests for transformer/fields.py: the one table of config fields, and the
experiment configs' defaults built from it (configs/common.py)."""

import os
import subprocess
import sys

import pytest

from configs import common
from transformer import checks, fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("size", ["base", "big"])
def test_every_field_of_common_is_the_tables(size):
  # A new field is one entry of fields.SECTIONS: common.py and the checks follow.
  config = common.get_base_config(size)
  assert set(fields.SECTIONS) == {"model", "data", "train", "decode"}
  assert set(config) == set(fields.SECTIONS)
  for section, table in fields.SECTIONS.items():
    assert set(table) == set(config[section].keys()), section
  sizes = dict(zip(("num_layers", "d_model", "d_ff", "num_heads", "d_k", "d_v", "dropout_rate"),
                   common.MODEL_SIZES[size], strict=True))
  big = {"train.num_steps": 300_000, "decode.average_last": 20} if size == "big" else {}
  for section, table in fields.SECTIONS.items():
    for name, field in table.items():
      value = config[section][name]
      if field.kind is dict:
        value = value.to_dict()
      if field.default == fields.PER_SIZE:
        assert section == "model" and value == sizes.pop(name), name
      elif f"{section}.{name}" in big:
        assert value == big.pop(f"{section}.{name}")
      else:
        assert value == field.default, f"{section}.{name}"
  assert sizes == {} and big == {}


def test_every_default_is_of_its_type_and_valid():
  for section, table in fields.SECTIONS.items():
    for name, field in table.items():
      if field.default == fields.PER_SIZE:
        continue
      test, meaning = field.valid
      assert checks.has_type(field.default, field.kind), f"{section}.{name}"
      assert test(field.default), f"{section}.{name}: {meaning}"
      assert field.doc and "\n" not in field.doc, f"{section}.{name}"  # One line.


def test_each_section_is_a_new_config_dict():
  a, b = common.train_config(), common.train_config()
  a.mesh_shape.data = 8
  assert b.mesh_shape.data == -1 and fields.TRAIN["mesh_shape"].default["data"] == -1
  assert common.train_config(num_steps=7).num_steps == 7
  assert common.decode_config(average_last=3).average_last == 3


def test_a_per_size_field_must_be_given():
  with pytest.raises(TypeError, match="config.model.num_layers takes its default from "
                     "the model size"):
    fields.defaults("model")


def test_choices_are_the_declared_names():
  from transformer import choices

  activation, _ = fields.MODEL["activation"].valid
  assert all(activation(n) for n in (*choices.ACTIVATIONS, *choices.GATED_ACTIVATIONS))
  assert not activation("tanh")
  assert fields.MODEL["param_dtype"].valid[1] == f"one of {sorted(choices.DTYPES)}"
  assert fields.DECODE["dtype"].valid[1] == (
      "'auto' or 'model' or 'float32' or 'bfloat16' or 'float16'")


def test_building_and_checking_a_config_imports_no_jax():
  # The CLIs answer a flag or config mistake before JAX starts: the configs,
  # the table, the checks' module, the config file and the CLI module are light.
  code = ("import sys\n"
          "from configs import quickstart, table3, wmt14_ende\n"
          "from transformer import checks, cli, config_io, fields\n"
          "quickstart.get_config(); table3.get_config('B1'); wmt14_ende.get_config('big')\n"
          "cli.load_config_file('configs/table3.py:C7')\n"
          "heavy = [m for m in ('jax', 'flax', 'numpy', 'orbax', 'optax') if m in sys.modules]\n"
          "print(heavy)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr
