"""The suite's one tiny config (conftest.py's fixtures and the test modules use it)."""

# The suite's tiny model: one layer, d_model 32 ({"section.field": value}).
TINY_MODEL = {
    "model.vocab_size": 256, "model.num_layers": 1, "model.d_model": 32, "model.d_ff": 64,
    "model.num_heads": 2, "model.d_k": 16, "model.d_v": 16,
}
# The suite's one tiny training config: the quickstart with the tiny model on
# a small generated corpus, a few seconds per run.
TINY = {
    "data.synthetic_train_size": 2000, "data.synthetic_dev_size": 24,
    "data.synthetic_test_size": 24, "data.max_length": 32, "data.batch_tokens": 256,
    "data.eval_batch_size": 16, "data.prefetch": 2,
    **TINY_MODEL,
    "train.num_steps": 6, "train.warmup_steps": 10, "train.log_every_steps": 1,
    "train.eval_every_steps": 0, "train.eval_bleu_sentences": 0,
    "train.checkpoint_every_steps": 3, "train.checkpoint_every_minutes": 0.0,
    "train.keep_checkpoints": 5, "decode.beam_size": 1,
}


def make_tiny_config(base="quickstart", **overrides):
  """The tiny config, then ``overrides`` ({"section.field": value}): the
  suite's one tiny-config helper (conftest's ``tiny_config`` fixture returns
  it; modules that need it outside a fixture import it from here).

  base="quickstart": ``TINY`` over configs/quickstart.py, the tiny training
  run. base="paper": ``TINY_MODEL`` in the paper's base config
  (``common.get_base_config("base")``), every other field the paper's, for
  tests that build a model or an update step rather than a run.
  """
  from configs import common, quickstart

  if base == "quickstart":
    config, tiny = quickstart.get_config(), TINY
  elif base == "paper":
    config, tiny = common.get_base_config("base"), TINY_MODEL
  else:
    raise ValueError(f"base must be 'quickstart' or 'paper', got {base!r}.")
  for key, value in {**tiny, **overrides}.items():
    section, field = key.split(".")
    if field not in config[section]:  # The paper's config is not locked.
      raise KeyError(f"{key}: the config has no such field.")
    config[section][field] = value
  return config
