"""Tests for transformer/export.py: the CTranslate2 export and decoding with it.

CTranslate2 is an independent implementation of the Transformer (C++), so
these tests hold our model against it given the same weights: its
``score_batch`` log-probabilities equal our teacher-forced ones to 1e-4 per
token, and its greedy search gives our greedy outputs token for token, for
every architecture switch it can express (random weights) and for a run
trained a few steps (slow). Switches it cannot express are one error before
anything is written; the output folder is never half-written.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from transformer import checkpoint as checkpoint_lib
from transformer import config_io, export, search
from transformer import evaluate as ev
from transformer import model as model_lib
from transformer.tokens import EOS_ID, PAD_ID

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 40
PIECES = ["<pad>", "</s>", "<unk>", "<s>"] + [f"w{i}" for i in range(VOCAB - 4)]


def random_model(**overrides):
  """A tiny Transformer at random weights, float32."""
  cfg = common.get_base_config("base").model
  cfg.update(dict(vocab_size=VOCAB, num_layers=2, d_model=16, d_ff=24, num_heads=2, d_k=8,
                  d_v=8, max_len=128, dtype="float32"))
  cfg.update(overrides)
  model = model_lib.build_model(cfg, seed=3)
  model.eval()
  return model


def save_spec(model, folder, quantization="float32"):
  """The model in CTranslate2's format in ``folder`` (no run, no metadata
  beyond an empty export.json), and a translator for it."""
  spec = export.transformer_spec(model, PIECES)
  spec.validate()
  spec.optimize(quantization=quantization)
  os.makedirs(folder)
  spec.save(str(folder))
  with open(os.path.join(folder, export.METADATA), "w") as f:
    json.dump({}, f)
  return export.load_translator(str(folder), threads=1)


def sentences(num, seed=0, max_len=9):
  """Random (source, target) id lists, without EOS, of real tokens."""
  rng = np.random.RandomState(seed)
  make = lambda: list(rng.randint(4, VOCAB, size=rng.randint(1, max_len)))  # noqa: E731
  return [make() for _ in range(num)], [make() for _ in range(num)]


def our_logprobs(model, sources, targets):
  """log P(y_t | y_<t, x) per target token (EOS included), teacher forced."""
  pad = lambda rows: ev._pad([np.asarray(r + [EOS_ID], np.int32) for r in rows])  # noqa: E731
  x, y = pad(sources), pad(targets)
  logits = nnx.jit(lambda m, x, y: m(x, y))(model, jnp.asarray(x), jnp.asarray(y))
  logprobs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)), np.float64)
  return [logprobs[i, np.arange(len(t) + 1), t + [EOS_ID]] for i, t in enumerate(targets)]


SWITCHES = {
    "paper": {},
    # Every switch that changes the mapping at once.
    "all_at_once": {"norm_position": "pre", "activation": "swiglu",
                    "share_source_target_embedding": False, "share_output_embedding": False,
                    "positional_encoding": "learned", "d_k": 4, "d_v": 4, "num_heads": 3,
                    "layer_norm_epsilon": 1e-3},
    "pre_ln": {"norm_position": "pre"},
    "gelu": {"activation": "gelu"},
    "silu": {"activation": "silu"},
    "reglu": {"activation": "reglu"},
    "geglu": {"activation": "geglu"},
    "swiglu": {"activation": "swiglu"},
    "untied": {"share_source_target_embedding": False, "share_output_embedding": False},
    "learned_positions": {"positional_encoding": "learned"},
    "d_k_not_d_model_over_h": {"d_k": 4, "d_v": 4, "num_heads": 3},
    "layer_norm_epsilon": {"layer_norm_epsilon": 1e-3},
}


@pytest.mark.slow
@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_ctranslate2_scores_and_greedy_equal_ours(switch, tmp_path):
  model = random_model(**SWITCHES[switch])
  translator = save_spec(model, tmp_path / "ct2")
  sources, targets = sentences(12, seed=len(switch))

  theirs = export.score(translator, PIECES, sources, targets)
  for ours, ct2 in zip(our_logprobs(model, sources, targets), theirs, strict=True):
    assert len(ct2) == len(ours)
    np.testing.assert_allclose(ct2, ours, atol=1e-4, rtol=0)

  inputs = ev._pad([np.asarray(s + [EOS_ID], np.int32) for s in sources])
  decode_config = common.decode_config()
  want = search.translate_batch(model, inputs, beam_size=1, min_length=1,
                                max_extra_length=decode_config.max_extra_length)
  got = export.ctranslate2_translate_fn(translator, PIECES, decode_config, beam_size=1)(inputs)
  assert [search.strip_eos(r) for r in got] == [search.strip_eos(r) for r in want]


def constant_model():
  """A model whose every output distribution is the same: EOS first, then
  w1 (id 5), then w2: the last LayerNorm's scale is 0 and its bias e, and
  the tied embedding rows of EOS, w1 and w2 are multiples of e."""
  model = random_model(num_layers=1)
  norm = model.decoder_layers[0].residual_3.norm
  e = np.random.RandomState(0).randn(16).astype(np.float32)
  norm.scale[...] = jnp.zeros(16)
  norm.bias[...] = jnp.asarray(e)
  table = np.asarray(model.target_embedding.embedding[...]).copy()
  table[EOS_ID], table[5], table[6] = 0.5 * e, 0.4 * e, 0.3 * e
  model.target_embedding.embedding[...] = jnp.asarray(table)
  return model


@pytest.mark.parametrize("min_length", [0, 1, 3, 20])
def test_min_length_and_the_length_limit_agree_with_min_decoding_length(min_length, tmp_path):
  model = constant_model()
  translator = save_spec(model, tmp_path / "ct2")
  inputs = np.array([[7, 8, 9, EOS_ID], [7, EOS_ID, PAD_ID, PAD_ID]], np.int32)
  options = dict(beam_size=1, min_length=min_length, max_extra_length=3)
  want = search.translate_batch(model, inputs, **options)
  got = export.ctranslate2_translate_fn(translator, PIECES, common.decode_config(),
                                        **options)(inputs)
  # Limits 7 and 5 tokens with the EOS: min_length 20 is cut there.
  expected = {0: [[], []], 1: [[5], [5]], 3: [[5] * 3, [5] * 3], 20: [[5] * 6, [5] * 4]}
  assert [search.strip_eos(r) for r in want] == expected[min_length]
  assert [search.strip_eos(r) for r in got] == expected[min_length]


@pytest.mark.parametrize("overrides, message", [
    ({"activation": "elu"}, "model.activation='elu'"),
    ({"d_k": 8, "d_v": 4}, "model.d_k=8 != model.d_v=4"),
])
def test_unsupported_switches_are_one_clear_error(overrides, message):
  cfg = random_model().cfg
  cfg.update(overrides)
  with pytest.raises(export.ExportError, match="cannot be exported to CTranslate2") as e:
    export.check_exportable(cfg)
  assert message in str(e.value)


def test_a_sentence_longer_than_the_position_table_is_a_clear_error(tmp_path):
  translator = save_spec(random_model(), tmp_path / "ct2")
  inputs = np.full((1, export.SINUSOIDAL_POSITIONS + 1), 5, np.int32)
  inputs[0, -1] = EOS_ID
  translate = export.ctranslate2_translate_fn(translator, PIECES, common.decode_config(),
                                              beam_size=1)
  with pytest.raises(export.ExportError, match="No position encodings .* translate longer "
                     "sentences with --engine=jax"):
    translate(inputs)


def test_int8_model_loads_and_translates(tmp_path):
  model = random_model()
  translator = save_spec(model, tmp_path / "ct2", quantization="int8")
  sources, _ = sentences(4)
  inputs = ev._pad([np.asarray(s + [EOS_ID], np.int32) for s in sources])
  out = export.ctranslate2_translate_fn(translator, PIECES, common.decode_config())(inputs)
  assert out.shape[0] == 4 and (out == EOS_ID).sum(axis=1).tolist() == [1] * 4
  assert translator.compute_type.startswith("int8")


# ----------------------------------------------------------------------------
# Exporting a run.
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config):
  """The tiny run, float32, trained 30 steps (checkpoints 10, 20, 30) on the
  generated corpus."""
  from transformer import train

  workdir = str(tmp_path_factory.mktemp("export") / "run")
  config = tiny_config(**{
      "data.synthetic_test_size": 40, "data.batch_tokens": 512, "model.dtype": "float32",
      "train.num_steps": 30, "train.log_every_steps": 10, "train.checkpoint_every_steps": 10,
      "decode.average_last": 2, "decode.batch_size": 16})
  train.train_and_evaluate(config, workdir)
  return workdir


def _export(run, out, **kwargs):
  return export.export(run, str(out), **kwargs)


@pytest.mark.slow
def test_exported_run_scores_and_greedy_equal_evaluate_py(run, tmp_path):
  metadata = _export(run, tmp_path / "ct2")
  assert metadata["checkpoint_steps"] == [20, 30]  # decode.average_last=2, as evaluate.py.
  config, _ = config_io.with_default_fields(ev.load_run_config(run))
  model, steps = checkpoint_lib.restore_model(config.model, run, average_last=2)
  assert steps == [20, 30]
  tokenizer = ev.load_run_tokenizer(config, run)
  from transformer import data

  sources, references = data.load_split_text(config.data, "test", workdir=run)
  sources, references = list(sources), list(references)

  engine = export.ctranslate2_engine(str(tmp_path / "ct2"), tokenizer, config.decode,
                                     beam_size=1)
  assert export.load_metadata(str(tmp_path / "ct2")) == metadata
  assert (engine.name, engine.steps) == ("ctranslate2", tuple(metadata["checkpoint_steps"]))
  ours = ev.translate_sentences(
      ev.jax_engine(model, config.decode, beam_size=1), tokenizer, sources)
  theirs = ev.translate_sentences(engine, tokenizer, sources)
  assert theirs == ours

  pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
  src_ids = [list(map(int, r)) for r in tokenizer.encode_batch(sources)]
  tgt_ids = [list(map(int, r)) for r in tokenizer.encode_batch(references)]
  translator = export.load_translator(str(tmp_path / "ct2"))
  want = our_logprobs(model, src_ids, tgt_ids)
  for ours_lp, ct2 in zip(want, export.score(translator, pieces, src_ids, tgt_ids),
                          strict=True):
    np.testing.assert_allclose(ct2, ours_lp, atol=1e-4, rtol=0)

  folder = sorted(os.listdir(tmp_path / "ct2"))
  assert folder == sorted(["README.md", "config.json", "export.json", "model.bin",
                           "shared_vocabulary.json", export.TOKENIZER])
  assert "python evaluate.py --workdir=" in (tmp_path / "ct2" / "README.md").read_text()


@pytest.mark.slow
def test_evaluate_report_from_the_exported_model(run, tmp_path):
  _export(run, tmp_path / "ct2", average_last=1)
  config, _ = config_io.with_default_fields(ev.load_run_config(run))
  tokenizer = ev.load_run_tokenizer(config, run)
  engine = export.ctranslate2_engine(str(tmp_path / "ct2"), tokenizer, config.decode)
  report = ev.evaluate(config, run, engine, split="test")
  assert report["name"] == "test.ctranslate2" and report["engine"] == "ctranslate2"
  assert report["checkpoint_steps"] == [30] and report["dtype"] == "float32"
  assert report["num_sentences"] == 40 and 0 <= report["bleu"] <= 100
  assert os.path.isfile(os.path.join(run, "eval", "test.ctranslate2.json"))


@pytest.mark.slow
def test_export_refuses_existing_output_and_overwrites_only_when_asked(run, tmp_path):
  out = tmp_path / "ct2"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(export.ExportError, match="exists; choose another --out, or pass "
                     "--overwrite"):
    _export(run, out)
  assert os.listdir(out) == ["keep.txt"]
  _export(run, out, overwrite=True, average_last=1)
  assert "keep.txt" not in os.listdir(out) and "model.bin" in os.listdir(out)
  assert [p for p in os.listdir(tmp_path) if p != "ct2"] == []  # No leftovers.


@pytest.mark.slow
def test_an_interrupted_export_leaves_nothing_half_written(run, tmp_path, monkeypatch):
  out = tmp_path / "ct2"
  _export(run, out, average_last=1)
  before = {p: (out / p).read_bytes() for p in os.listdir(out)}

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt  # After CTranslate2 wrote model.bin into the temporary folder.
  monkeypatch.setattr(export.shutil, "copyfile", interrupted)
  with pytest.raises(KeyboardInterrupt):
    _export(run, out, overwrite=True, step=20, average_last=1)
  assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before  # Old one intact.
  with pytest.raises(KeyboardInterrupt):
    _export(run, tmp_path / "new")
  assert sorted(os.listdir(tmp_path)) == ["ct2"]  # Neither "new" nor a temporary folder.

  # A kill -9 cannot clean up: its temporary folder goes with the next export.
  monkeypatch.undo()
  (tmp_path / ".new.tmp-killed").mkdir()
  _export(run, tmp_path / "new", average_last=1)
  assert sorted(os.listdir(tmp_path)) == ["ct2", "new"]


@pytest.mark.slow
def test_export_errors_name_the_problem(run, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="No config.json"):
    export.export(str(empty), str(tmp_path / "a"))
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  (untrained / "config.json").write_text(open(os.path.join(run, "config.json")).read())
  with pytest.raises(FileNotFoundError, match="No checkpoint in .*: train first"):
    export.export(str(untrained), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="No checkpoint at step 7"):
    _export(run, tmp_path / "b", step=7)
  with pytest.raises(export.ExportError, match="Unknown --quantization='int4'"):
    _export(run, tmp_path / "c", quantization="int4")
  with pytest.raises(export.ExportError, match="does not exist; write it with"):
    export.load_metadata(str(tmp_path / "nothing"))
  with pytest.raises(export.ExportError, match="is not a model folder written by"):
    export.load_metadata(str(empty))
  assert sorted(os.listdir(tmp_path)) == ["empty", "untrained"]


@pytest.mark.slow
def test_a_model_exported_from_another_run_is_refused(run, tmp_path):
  _export(run, tmp_path / "ct2", average_last=1)
  metadata_path = tmp_path / "ct2" / export.METADATA
  metadata = json.loads(metadata_path.read_text())
  metadata["tokenizer_fingerprint"] = "0123456789ab"
  metadata_path.write_text(json.dumps(metadata))
  config, _ = config_io.with_default_fields(ev.load_run_config(run))
  tokenizer = ev.load_run_tokenizer(config, run)
  with pytest.raises(export.ExportError, match="exported with another tokenizer"):
    export.ctranslate2_engine(str(tmp_path / "ct2"), tokenizer, config.decode)


def _cli(*args, module=None, stdin=""):
  command = [sys.executable, "-m", module] if module else [
      sys.executable, os.path.join(REPO, "evaluate.py")]
  return subprocess.run([*command, *args], capture_output=True, text=True, cwd=REPO,
                        input=stdin,
                        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))


@pytest.mark.slow
def test_cli_export_then_evaluate_with_ctranslate2(run, tmp_path):
  out = str(tmp_path / "ct2")
  done = _cli(f"--workdir={run}", f"--out={out}", "--average_last=1",
              module="transformer.export")
  assert done.returncode == 0, done.stderr
  assert "Wrote the CTranslate2 model" in done.stdout
  again = _cli(f"--workdir={run}", f"--out={out}", module="transformer.export")
  assert again.returncode == 1
  assert again.stderr.strip().splitlines()[-1].startswith("error: The output folder")

  done = _cli(f"--workdir={run}", "--engine=ctranslate2", f"--ctranslate2_model={out}",
              "--split=test", "--beam_size=1")
  assert done.returncode == 0, done.stderr
  assert "ctranslate2 in float32" in done.stdout
  report = json.loads(open(os.path.join(run, "eval", "test.ctranslate2.json")).read())
  assert report["engine"] == "ctranslate2" and report["beam_size"] == 1
  assert report["checkpoint_steps"] == [30]

  lines = "The dog sees the car.\nA woman reads a book.\n"
  streamed = _cli(f"--workdir={run}", "--engine=ctranslate2", f"--ctranslate2_model={out}",
                  "--translate", "--beam_size=1", stdin=lines)
  assert streamed.returncode == 0, streamed.stderr
  config, _ = config_io.with_default_fields(ev.load_run_config(run))
  tokenizer = ev.load_run_tokenizer(config, run)
  engine = export.ctranslate2_engine(out, tokenizer, config.decode, beam_size=1)
  want = ev.translate_sentences(engine, tokenizer, lines.splitlines())
  assert streamed.stdout.splitlines() == want

  bad = _cli(f"--workdir={run}", "--engine=ctranslate2", f"--ctranslate2_model={out}",
             "--average_last=2")
  assert bad.returncode == 1
  assert "cannot be used with --engine=ctranslate2" in bad.stderr.strip().splitlines()[-1]
  missing = _cli(f"--workdir={run}", "--engine=ctranslate2")
  assert "needs --ctranslate2_model=FOLDER" in missing.stderr.strip().splitlines()[-1]
