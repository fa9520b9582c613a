"""Tests for transformer/evaluate.py, transformer/plot.py and the evaluate.py CLI.

A tiny workdir is built once: a text corpus from the synthetic grammar, a
SentencePiece vocabulary, config.json and three checkpoints of random tiny
models saved with the training checkpointer (steps 1, 2, 3).
"""

import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from tests.tiny_configs import make_tiny_config
from transformer import checkpoint as checkpoint_lib
from transformer import config_io, data, precision, search
from transformer import evaluate as ev
from transformer.data import synthetic
from transformer.model import Transformer
from transformer.tokens import EOS_ID, PAD_ID

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 120
STEPS = (1, 2, 3)


def tiny_config(data_dir):
  """conftest's tiny model in the paper's base config, narrower, on the text
  files of ``data_dir``."""
  return make_tiny_config("paper", **{
      "model.vocab_size": VOCAB, "model.d_model": 16, "model.d_ff": 32, "model.d_k": 8,
      "model.d_v": 8, "model.max_len": 128, "data.source": "text", "data.dir": data_dir,
      "decode.batch_size": 8, "decode.average_last": 2, "decode.max_extra_length": 5})


def model_params(config, seed):
  model = Transformer(config.model, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  data_dir = str(root / "data")
  synthetic.write_corpus(data_dir, 300, 12, 12, seed=0)
  workdir = str(root / "run")
  config = tiny_config(data_dir)
  config_io.save_config(config, workdir)
  tokenizer = data.load_tokenizer(config.data, workdir, vocab_size=config.model.vocab_size)
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=1, every_minutes=0, keep=5)
  params = {}
  for step in STEPS:
    params[step] = model_params(config, seed=step)
    state = {"params": params[step], "opt_state": {"count": jnp.zeros((), jnp.int32)},
             "step": jnp.int32(step), "rng": jax.random.key_data(jax.random.PRNGKey(0))}
    checkpointer.save(step, state, {"epoch": 0})
  checkpointer.close()
  return {"config": config, "workdir": workdir, "tokenizer": tokenizer, "params": params,
          "data_dir": data_dir, "root": root}


def copy_translate(inputs):
  """A stand-in decoder that "translates" by copying the source ids."""
  return np.asarray(inputs)


# The copying decoder as an engine, for evaluate().
COPY = ev.Engine(copy_translate, name="copy", dtype="int32")


def test_averaging_gives_the_elementwise_mean(run):
  model, steps = checkpoint_lib.restore_model(run["config"].model, run["workdir"], average_last=2)
  assert steps == [2, 3]
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  want = jax.tree.map(lambda a, b: (np.asarray(a) + np.asarray(b)) / 2,
                      run["params"][2], run["params"][3])
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7), got, want)
  # One checkpoint: exactly its parameters; --step picks an earlier one.
  model, steps = checkpoint_lib.restore_model(run["config"].model, run["workdir"],
                                              average_last=1, step=2)
  assert steps == [2]
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, got, run["params"][2])


def test_average_params_of_three_trees():
  trees = [{"w": np.full((2,), v, np.float32)} for v in (1.0, 2.0, 6.0)]
  np.testing.assert_allclose(checkpoint_lib.average_params(trees)["w"], [3.0, 3.0])


def test_saved_averaged_parameters_restore_identically(run, tmp_path):
  model, steps = checkpoint_lib.restore_model(run["config"].model, run["workdir"], average_last=3)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  checkpoint_lib.save_params(params, str(tmp_path / "avg"), steps)
  again, again_steps = checkpoint_lib.restore_model(run["config"].model, run["workdir"],
                                        params_path=str(tmp_path / "avg"))
  assert again_steps == [1, 2, 3]
  jax.tree.map(np.testing.assert_array_equal,
               nnx.to_pure_dict(nnx.state(again, nnx.Param)), params)


def test_clear_errors_for_workdir_checkpoints_and_averaging(run, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ev.check_workdir(str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="No config.json"):
    ev.load_run_config(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="No checkpoint in"):
    checkpoint_lib.select_steps(str(tmp_path), 1)
  with pytest.raises(ValueError, match=r"average the last 5 checkpoints but .* only 3"):
    checkpoint_lib.select_steps(run["workdir"], 5)
  with pytest.raises(ValueError, match="No checkpoint at step 7"):
    checkpoint_lib.select_steps(run["workdir"], 1, step=7)
  config = tiny_config(run["data_dir"])
  config.model.d_model = 32
  with pytest.raises(ValueError, match="do not fit the model config"):
    checkpoint_lib.restore_model(config.model, run["workdir"], average_last=1)


def test_tokenizer_that_does_not_match_the_run_is_refused(run, tmp_path):
  from transformer.data import tokenizer as tokenizer_lib

  other = str(tmp_path / "other.model")
  sentences = [f"word{i} other{i % 7} text{i % 13}" for i in range(400)]
  tokenizer_lib.train_tokenizer(sentences, other, vocab_size=VOCAB)
  config = tiny_config(run["data_dir"])
  config.data.tokenizer_path = other
  with pytest.raises(ValueError, match="not the one this run was trained with"):
    ev.load_run_tokenizer(config, run["workdir"])
  config.model.vocab_size = VOCAB + 1
  config.data.tokenizer_path = ""
  with pytest.raises(ValueError, match="pieces"):
    ev.load_run_tokenizer(config, run["workdir"])
  # A workdir without its tokenizer: an error, never a newly trained one.
  bare = tmp_path / "bare"
  config_io.save_config(tiny_config(run["data_dir"]), str(bare))
  with pytest.raises(FileNotFoundError, match="tokenizer .* is missing"):
    ev.load_run_tokenizer(tiny_config(run["data_dir"]), str(bare))
  assert not (bare / "tokenizer").exists()


def test_translate_ids_covers_every_sentence_once(run):
  rng = np.random.default_rng(0)
  sources = [np.append(rng.integers(4, VOCAB, size=n), EOS_ID).astype(np.int32)
             for n in rng.integers(1, 20, size=21)]
  seen = {}
  for index, ids in ev.translate_ids(copy_translate, sources, batch_size=4):
    assert index not in seen
    seen[index] = ids
  assert sorted(seen) == list(range(21))
  for i, src in enumerate(sources):
    np.testing.assert_array_equal(seen[i][:len(src)], src)
    assert np.all(seen[i][len(src):] == PAD_ID)


def test_evaluation_covers_every_sentence_once_in_order(run):
  tokenizer = run["tokenizer"]
  report = ev.evaluate(run["config"], run["workdir"], COPY, split="test", name="copy")
  sources, references = data.load_split_text(run["config"].data, "test", workdir=run["workdir"])
  with open(report["hypotheses"], encoding="utf-8") as f:
    hypotheses = f.read().splitlines()
  # The copy decoder's output is the source, detokenized, in input order.
  assert hypotheses == [tokenizer.detokenize(tokenizer.encode(s)) for s in sources]
  assert hypotheses == list(sources)
  assert report["num_sentences"] == 12
  assert os.path.isfile(os.path.join(run["workdir"], "eval", "copy.json"))
  for key in ("bleu", "sacrebleu_signature", "bleu_tokenized", "num_sentences",
              "checkpoint_steps", "beam_size", "alpha", "min_length", "decode_seconds",
              "sentences_per_second", "empty_outputs", "bleu_lowercase"):
    assert key in report
  from transformer import bleu

  assert report["bleu"] == pytest.approx(bleu.sacrebleu_bleu(list(sources), list(references))[0])
  text = ev.summary(report)
  assert f"BLEU {report['bleu']:6.2f}  sacreBLEU" in text and "12 sentences" in text


@pytest.mark.slow
def test_evaluate_source_and_reference_files_with_the_averaged_model(run, tmp_path):
  source, reference = tmp_path / "src.en", tmp_path / "ref.de"
  source.write_text("The dog sees the car.\nWe follow the cars.\nHe is happy.\n")
  reference.write_text("Der Hund sieht das Auto.\nWir folgen den Autos.\nEr ist froh.\n")
  config = run["config"].copy_and_resolve_references()
  config.decode.beam_size = 2
  report = ev.evaluate(config, run["workdir"], source=str(source), reference=str(reference))
  assert report["name"] == "src.en.avg2"
  assert report["checkpoint_steps"] == [2, 3] and report["step"] == 3
  assert report["num_sentences"] == 3 and report["beam_size"] == 2
  assert 0.0 <= report["bleu"] <= 100.0
  with open(report["hypotheses"], encoding="utf-8") as f:
    assert len(f.read().splitlines()) == 3
  # Each line is what the model gives that sentence alone.
  model, _ = checkpoint_lib.restore_model(run["config"].model, run["workdir"], average_last=2)
  alone = ev.translate_sentences(ev.jax_engine(model, config.decode),
                                          run["tokenizer"], ["He is happy."])
  with open(report["hypotheses"], encoding="utf-8") as f:
    assert f.read().splitlines()[2] == alone[0]


def test_report_counts_empty_outputs_warns_and_gives_lowercase_bleu(run, tmp_path, caplog):
  import sacrebleu

  source, reference = tmp_path / "src.en", tmp_path / "ref.de"
  lines = ["The dog sees the car.", "We follow the cars.", "He is happy.", "The old dog."]
  source.write_text("\n".join(lines) + "\n")
  reference.write_text("the dog sees the car.\nWe follow the cars.\nhe is happy.\nx\n")

  def empty_odd_rows(inputs):  # Copies the source, but rows 1 and 3 of a batch end at once.
    out = np.asarray(inputs).copy()
    out[1::2] = PAD_ID
    out[1::2, 0] = EOS_ID
    return out

  config = run["config"].copy_and_resolve_references()
  config.decode.batch_size = 4
  with caplog.at_level("WARNING"):
    report = ev.evaluate(config, run["workdir"],
                         ev.Engine(empty_odd_rows, name="copy", dtype="int32"),
                         source=str(source), reference=str(reference), name="empty")
  with open(report["hypotheses"], encoding="utf-8") as f:
    hypotheses = f.read().splitlines()
  assert sum(h == "" for h in hypotheses) == 2 and report["empty_outputs"] == 2
  assert "2 of 4 translations are empty" in caplog.text
  refs = reference.read_text().splitlines()
  want_lc = sacrebleu.corpus_bleu(hypotheses, [refs], lowercase=True).score
  want = sacrebleu.corpus_bleu(hypotheses, [refs]).score
  assert report["bleu_lowercase"] == pytest.approx(want_lc)
  assert report["bleu"] == pytest.approx(want) and want < want_lc
  assert "case:lc" in report["sacrebleu_signature_lowercase"]
  assert "empty translations: 2" in ev.summary(report)


def test_decoding_dtype_auto_is_float32_on_a_cpu_and_the_models_elsewhere():
  config = common.get_base_config("base")
  config.model.dtype = "bfloat16"
  assert precision.decode_dtype(config.decode, config.model, "cpu") == "float32"
  assert precision.decode_dtype(config.decode, config.model, "gpu") == "bfloat16"
  config.decode.dtype = "model"
  assert precision.decode_dtype(config.decode, config.model, "cpu") == "bfloat16"
  config.decode.dtype = "bfloat16"
  assert precision.decode_dtype(config.decode, config.model, "cpu") == "bfloat16"
  config.decode.dtype = "float16"
  assert precision.decode_dtype(config.decode, config.model, "tpu") == "float16"
  with pytest.raises(ValueError, match="config.decode.dtype='float16' is not supported on CPU"):
    precision.decode_dtype(config.decode, config.model, "cpu")


def test_a_bfloat16_model_decodes_in_the_decode_dtype(run):
  workdir, config = run["workdir"], run["config"].copy_and_resolve_references()
  config.model.dtype = "bfloat16"
  model, _ = checkpoint_lib.restore_model(config.model, workdir, average_last=1)
  sources = [np.array([5, 6, 7, 8, EOS_ID]), np.array([9, 10, EOS_ID])]
  config.model.dtype = "float32"
  model32, _ = checkpoint_lib.restore_model(config.model, workdir, average_last=1)
  want = [ids.tolist() for _, ids in ev.translate_ids(
      ev.jax_engine(model32, config.decode), sources, batch_size=8)]
  config.decode.dtype = "auto"  # float32 on this CPU.
  got = [ids.tolist() for _, ids in ev.translate_ids(
      ev.jax_engine(model, config.decode), sources, batch_size=8)]
  assert got == want
  assert model.dtype == jnp.bfloat16  # The caller's model is left as it was.


@pytest.mark.slow
def test_evaluation_speed_benchmark_times_each_decoding_dtype(run):
  from benchmarks import evaluation_speed
  config = run["config"].copy_and_resolve_references()
  config.model.dtype = "bfloat16"
  r = evaluation_speed.run_benchmark(config, run["workdir"], split="test",
                                     dtypes=["float32", "model"],
                                     ctranslate2_compute_types=["float32"], repeats=1)
  f32, model, ct2 = r["results"]
  assert (f32["computes_in"], model["computes_in"]) == ("float32", "bfloat16")
  assert (ct2["engine"], ct2["computes_in"]) == ("ctranslate2", "float32")
  assert len(ct2["seconds"]) == 1 and 0 <= ct2["bleu"] <= 100
  assert f32["time_vs_float32"] == 1.0
  assert model["time_vs_float32"] == pytest.approx(model["seconds_median"] / f32["seconds_median"])
  assert f32["same_translation_as_float32"] == r["num_sentences"] == 12
  assert r["checkpoint_steps"] == [2, 3]
  assert "decode.dtype=model (bfloat16)" in evaluation_speed.format_report(r)
  assert "CTranslate2 float32: " in evaluation_speed.format_report(r)


def test_empty_source_file_is_a_clear_error(run, tmp_path):
  empty = tmp_path / "empty.en"
  empty.write_text("")
  with pytest.raises(ValueError, match="is empty"):
    ev.evaluate(run["config"], run["workdir"], COPY, source=str(empty))


class RecordingOut(io.StringIO):
  def __init__(self):
    super().__init__()
    self.flushed = []

  def flush(self):
    self.flushed.append(self.getvalue().count("\n"))


def test_translate_mode_round_trips_and_streams(run):
  lines = ["The dog sees the car.", "We follow the cars.", "He is happy.",
           "The old dog sees the old dog.", "We follow the dog."]
  out = RecordingOut()

  def source():
    for i, line in enumerate(lines):
      if i == 2:  # The first batch is written before the third line is read.
        assert out.getvalue().count("\n") == 2
      yield line + "\n"

  count = ev.translate_stream(copy_translate, run["tokenizer"], source(), out,
                                       batch_size=2)
  assert count == 5
  assert out.getvalue().splitlines() == lines
  assert out.flushed == [2, 4, 5]


def test_translate_mode_warns_about_empty_translations(run, caplog):
  def empty_first_row(inputs):
    out = np.asarray(inputs).copy()
    out[0] = PAD_ID
    out[0, 0] = EOS_ID
    return out

  out = io.StringIO()
  with caplog.at_level("WARNING"):
    count = ev.translate_stream(empty_first_row, run["tokenizer"],
                                ["The dog sees the car.", "He is happy.", "We follow."], out,
                                batch_size=2)
  assert count == 3 and out.getvalue().splitlines().count("") == 2
  assert "2 of 3 translations are empty" in caplog.text


@pytest.mark.slow
def test_attention_plot_is_a_valid_png(run, tmp_path):
  model, _ = checkpoint_lib.restore_model(run["config"].model, run["workdir"], average_last=1)
  path = str(tmp_path / "attention.png")
  ev.write_attention_plot(model, run["tokenizer"], "The dog sees the car.", path,
                          run["config"].decode, beam_size=2)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 10_000


@pytest.mark.slow
def test_attention_weights_are_distributions(run):
  model, _ = checkpoint_lib.restore_model(run["config"].model, run["workdir"], average_last=1)
  translated, attention, src, tgt, dec_in = ev.attention_for_sentence(
      model, run["tokenizer"], "The dog sees the car.", run["config"].decode, beam_size=1)
  assert src[-1] == "</s>" and tgt[-1] == "</s>" and dec_in[0] == "<s>"
  assert len(dec_in) == len(tgt)
  enc, dec, cross = (attention[k][0] for k in ("encoder_self", "decoder_self",
                                                "encoder_decoder"))
  assert enc.shape == (2, len(src), len(src))
  assert cross.shape == (2, len(tgt), len(src))
  np.testing.assert_allclose(cross.sum(-1), 1.0, rtol=1e-5)
  assert np.all(np.triu(dec[0], k=1) == 0)  # Decoder self-attention sees the past only.
  greedy = search.translate_batch(
      model, ev.encode_sources(run["tokenizer"], ["The dog sees the car."])[0][None],
      beam_size=1, max_extra_length=5)
  assert translated == run["tokenizer"].detokenize(greedy[0])


def _cli(*args, stdin=""):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "evaluate.py"), *args], input=stdin,
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"})


@pytest.mark.slow
def test_cli_translate_from_stdin(run):
  result = _cli(f"--workdir={run['workdir']}", "--translate", "--beam_size=1",
                "--config.decode.batch_size=2",
                stdin="The dog sees the car.\nWe follow the cars.\nHe is happy.\n")
  assert result.returncode == 0, result.stderr
  assert len(result.stdout.splitlines()) == 3


@pytest.mark.slow
def test_cli_errors_are_one_clear_line(run, tmp_path):
  result = _cli(f"--workdir={tmp_path / 'nope'}")
  assert result.returncode == 1
  assert "error: Workdir" in result.stderr and "Traceback" not in result.stderr
  result = _cli(f"--workdir={run['workdir']}", "--average_last=9")
  assert result.returncode == 1
  assert "average the last 9 checkpoints" in result.stderr
  assert "Traceback" not in result.stderr
