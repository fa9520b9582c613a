"""Tests for transformer/checks.py: every config field against
transformer/fields.py's table, the fields that must agree, and the directories.

The command lines' one-line errors are tests/test_cli.py's.
"""

import importlib
import math
import os
import re

import ml_collections
import pytest

from configs import quickstart, table3
from transformer import checks


def _config(**overrides):
  """The quickstart config as a plain ConfigDict (any type may be set), with
  ``overrides`` ({"section.field": value}, "train.mesh_shape.data" too)."""
  values = quickstart.get_config().to_dict()
  for key, value in overrides.items():
    *path, field = key.split(".")
    node = values
    for part in path:
      node = node[part]
    node[field] = value
  return ml_collections.ConfigDict(values)


# ---------------------------------------------------------------------------
# check_config
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,variant", [
    ("quickstart", None), ("multi30k", None), ("wmt14_ende", "base"), ("wmt14_ende", "big"),
    ("wmt14_enfr", "base"), ("wmt14_enfr", "big")] + [("table3", r) for r in table3.ROWS])
def test_every_shipped_config_passes(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  if config.data.source == "text":
    config.data.dir = "/data/multi30k"  # Required on the command line.
  checks.check_config(config, num_devices=1)


PAPER = {"row": "B1", "dev_ppl": 5.16, "dev_bleu": 25.1, "params_millions": 58}


@pytest.mark.parametrize("section, value, message", [
    ("paper", dict(PAPER, dev_bleu="high"), "config.paper.dev_bleu='high' must be a number"),
    ("paper", dict(PAPER, dev_ppl=-1.0), "config.paper.dev_ppl=-1.0 must be > 0"),
    ("paper", dict(PAPER, row=3), "config.paper.row=3 must be a string"),
    ("paper", dict(PAPER, bleu=1.0), "config.paper has no field 'bleu'"),
    ("extra", {"a": 1}, "no section 'extra'"),
])
def test_the_paper_section_and_unknown_sections_are_checked(section, value, message):
  config = table3.get_config("B1")
  checks.check_config(config)
  config.unlock()
  config[section] = value
  with pytest.raises(checks.ConfigError, match=re.escape(message)):
    checks.check_config(config)


BAD_VALUES = [
    # (field, value, part of the message)
    ("model.vocab_size", 4, "vocab_size=4 must be >= 5"),  # Only the special ids.
    ("model.vocab_size", 0, "vocab_size=0"),
    ("model.num_layers", 0, "num_layers=0 must be >= 1"),
    ("model.d_model", -8, "d_model=-8"),
    ("model.d_model", 33, "must be even"),
    ("model.d_ff", 0, "d_ff=0"),
    ("model.num_heads", 0, "num_heads=0"),
    ("model.d_k", 0, "d_k=0"),
    ("model.dropout_rate", 1.0, "dropout_rate=1.0 must be in [0.0, 1.0)"),
    ("model.attention_dropout_rate", -0.1, "attention_dropout_rate=-0.1"),
    ("model.layer_norm_epsilon", 0.0, "layer_norm_epsilon=0.0 must be > 0"),
    ("model.max_len", 0, "max_len=0"),
    ("model.activation", "relux", "activation='relux' is not one of"),
    ("model.norm_position", "middle", "norm_position"),
    ("model.dtype", "float8", "float8"),
    ("model.attention_impl", "flash", "attention_impl"),
    ("data.source", "web", "Unknown data.source 'web'"),
    ("data.batching", "sorted", "Unknown data.batching 'sorted'"),
    ("data.target_lang", "en", "both 'en'"),
    ("data.source_lang", "", "source_lang='' must be non-empty"),
    ("data.test_split", "", "test_split=''"),
    ("data.tokenizer_type", "wordpiece", "'bpe' or 'unigram'"),
    ("data.tokenizer_sample_sentences", 1, "tokenizer_sample_sentences=1 must be >= 2"),
    ("data.tokenizer_character_coverage", 0.0, "must be in (0.0, 1.0]"),
    ("data.tokenizer_character_coverage", 1.5, "tokenizer_character_coverage=1.5"),
    ("data.tokenizer_path", "/no/such/spm.model", "is not a file"),
    ("data.max_length", 1, "max_length=1 must be >= 2"),
    ("data.batch_tokens", 0, "batch_tokens=0 must be >= 1"),
    ("data.batch_tokens", 10, "less than one row"),
    ("data.eval_batch_size", 0, "eval_batch_size=0"),
    ("data.prefetch", -1, "prefetch=-1 must be >= 0"),
    ("data.workers", -1, "workers=-1 must be >= 0"),
    ("data.seed", -1, "data.seed=-1"),
    ("data.synthetic_train_size", 0, "synthetic_train_size=0"),
    ("train.num_steps", 0, "num_steps=0 must be >= 1"),
    ("train.num_steps", -5, "num_steps=-5"),
    ("train.keep_checkpoints", 0, "keep_checkpoints=0 must be >= 1"),
    ("train.label_smoothing", 1.0, "label_smoothing=1.0"),
    ("train.adam_b1", 1.0, "adam_b1=1.0"),
    ("train.adam_b2", -0.5, "adam_b2=-0.5"),
    ("train.adam_eps", 0.0, "adam_eps=0.0 must be > 0"),
    ("train.warmup_steps", 0, "warmup_steps=0 must be >= 1"),
    ("train.learning_rate_scale", 0.0, "learning_rate_scale=0.0"),
    ("train.grad_clip_norm", -1.0, "grad_clip_norm=-1.0"),
    ("train.weight_decay", -0.1, "weight_decay=-0.1"),
    ("train.accumulate_steps", 0, "accumulate_steps=0"),
    ("train.loss_chunk_tokens", -1, "loss_chunk_tokens=-1 must be >= 0"),
    ("train.log_every_steps", 0, "log_every_steps=0"),
    ("train.eval_every_steps", -1, "eval_every_steps=-1"),
    ("train.eval_bleu_sentences", -1, "eval_bleu_sentences=-1"),
    ("train.checkpoint_every_steps", -1, "checkpoint_every_steps=-1"),
    ("train.checkpoint_every_minutes", -1.0, "checkpoint_every_minutes=-1.0"),
    ("train.mesh_shape.data", 0, "mesh_shape.data=0"),
    ("train.mesh_shape.fsdp", -1, "at most one -1"),  # data is -1 already.
    ("decode.beam_size", 0, "beam_size=0 must be >= 1"),
    ("decode.beam_size", 5000, "larger than the vocabulary"),
    ("decode.alpha", -0.1, "alpha=-0.1 must be in [0.0, 10.0]"),
    ("decode.alpha", 1e6, "alpha=1000000.0"),
    ("decode.max_extra_length", -1, "max_extra_length=-1"),
    ("decode.average_last", 0, "average_last=0"),
    ("decode.batch_size", 0, "batch_size=0"),
    ("decode.dtype", "float64", "decode.dtype='float64' must be 'auto' or 'model' or"),
    ("decode.dtype", "float16", "config.decode.dtype='float16' is not supported on CPU"),
    # Wrong types and values that are no numbers.
    ("train.num_steps", "100", "num_steps='100' must be an integer"),
    ("train.num_steps", 2.5, "num_steps=2.5 must be an integer"),
    ("train.num_steps", True, "num_steps=True must be an integer"),
    ("decode.alpha", math.nan, "alpha=nan must be a number (finite)"),
    ("decode.alpha", math.inf, "alpha=inf"),
    ("model.share_output_embedding", 1, "share_output_embedding=1 must be True or False"),
    ("data.source", 3, "data.source=3 must be a string"),
]


@pytest.mark.parametrize("field,value,message", BAD_VALUES,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_bad_value_is_one_config_error(field, value, message):
  with pytest.raises(checks.ConfigError, match=_literal(message)):
    checks.check_config(_config(**{field: value}), num_devices=1)


def _model_config(**fields):
  """``_config`` with ``fields`` of its model section set."""
  return _config(**{f"model.{name}": value for name, value in fields.items()})


@pytest.mark.parametrize("overrides,message", [
    ({"dtype": "float32"}, r"takes bfloat16 or float16, not float32 \(config.model.dtype="
     r"'float32'\); set --config.model.dtype=bfloat16, or use --config.model.attention_impl=xla"),
    ({"d_k": 12, "d_v": 12}, r"multiple of 8, at most 256 \(config.model.d_k = d_v = 12\)"),
    ({"d_k": 264, "d_v": 264}, r"at most 256 \(config.model.d_k = d_v = 264\)"),
    ({"d_v": 16}, r"needs d_k == d_v \(got 8 and 16\)"),
    ({"attention_dropout_rate": 0.1}, r"no attention dropout \(config.model."
     r"attention_dropout_rate=0.1\); set --config.model.attention_dropout_rate=0"),
])
def test_what_cudnn_cannot_take_is_one_clear_error_for_a_gpu(overrides, message):
  fields = dict(attention_impl="dot_product_attention", d_k=8, d_v=8, dtype="bfloat16",
                attention_dropout_rate=0.0)
  config = _model_config(**{**fields, **overrides})
  with pytest.raises(checks.ConfigError, match=message):
    checks.check_config(config, platform="gpu")


def test_attention_dropout_is_refused_by_the_fused_path_on_any_platform():
  with pytest.raises(checks.ConfigError, match="no attention dropout"):
    checks.check_config(_model_config(attention_impl="dot_product_attention", d_k=8,
                                      d_v=8, attention_dropout_rate=0.1))


@pytest.mark.parametrize("field,value,message", [
    ("activation", "tanh", "activation"),
    ("norm_position", "sandwich", "norm_position"),
    ("dropout_rate", 1.5, "dropout_rate"),
    ("d_model", 15, "even"),
    ("dtype", "fp8", "Unknown dtype config.model.dtype='fp8'"),
    ("dtype", "float16", "'float16' is not supported on CPU"),
])
def test_impossible_model_config_has_clear_error(field, value, message):
  with pytest.raises(checks.ConfigError, match=message):
    checks.check_config(_model_config(**{field: value}), platform="cpu")


def test_the_model_section_alone_is_checked_for_the_model_only_tools():
  checks.check_model_config(_config().model)  # The summary and the benchmark's check.
  with pytest.raises(checks.ConfigError, match="norm_position='Pre' is not one of"):
    checks.check_model_config(_model_config(norm_position="Pre").model)
  with pytest.raises(checks.ConfigError, match="must be even"):
    checks.check_model_config(_model_config(d_model=15).model)


def _literal(text):
  import re
  return re.escape(text)


def test_mesh_that_does_not_fit_the_devices():
  config = _config(**{"train.mesh_shape.data": 3})
  with pytest.raises(checks.ConfigError, match="has 3 devices but 2 are available"):
    checks.check_config(config, num_devices=2)


def test_unknown_missing_fields_and_sections():
  config = _config()
  config.model.activaton = "gelu"
  with pytest.raises(checks.ConfigError, match="no field 'activaton'; did you mean 'activation'"):
    checks.check_config(config)
  config = _config()
  del config.train["num_steps"]
  with pytest.raises(checks.ConfigError, match="config.train.num_steps is missing"):
    checks.check_config(config)
  config = _config()
  del config["decode"]
  with pytest.raises(checks.ConfigError, match="no 'decode' section"):
    checks.check_config(config)


# ---------------------------------------------------------------------------
# check_directory
# ---------------------------------------------------------------------------


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "run"
  path.write_text("not a folder")
  with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
    checks.check_directory(str(path), create=True)
  assert path.read_text() == "not a folder"


def test_unwritable_workdir_is_found_before_any_work(tmp_path, monkeypatch):
  # Simulated: the test suite runs as root, where chmod does not stop writes.
  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied", kwargs.get("dir"))

  monkeypatch.setattr(checks.tempfile, "TemporaryFile", refuse)
  with pytest.raises(OSError, match=r"Workdir '.*' is not writable: Permission denied"):
    checks.check_directory(str(tmp_path), create=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders; "
                    "test_unwritable_workdir_is_found_before_any_work simulates it")
def test_read_only_workdir(tmp_path):
  os.chmod(tmp_path, 0o555)
  try:
    with pytest.raises(OSError, match="is not writable"):
      checks.check_directory(str(tmp_path), create=True)
  finally:
    os.chmod(tmp_path, 0o755)


def test_missing_workdir_is_made_or_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checks.check_directory(str(tmp_path / "none"), create=False)
  checks.check_directory(str(tmp_path / "new"), create=True)
  assert os.listdir(tmp_path / "new") == []  # The write probe leaves nothing.
