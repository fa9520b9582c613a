r"""Decoding speed of what users run: evaluate.py's path, per engine and dtype.

  python benchmarks/evaluation_speed.py --workdir=runs/multi30k --split=val
  python benchmarks/evaluation_speed.py --workdir=runs/multi30k --split=val \
      --dtypes=float32,bfloat16 --ctranslate2_compute_types=float32,int8 --repeats=3 --json

The run's model (the mean of its last ``decode.average_last`` checkpoints, as
evaluate.py restores it) translates the whole split with the run's search
(``config.decode``: beam 4, alpha 0.6, its batch size), through
``transformer.evaluate.translate_sentences``: tokenization, padding to the
compiled shapes, decoding and detokenization, as evaluate.py times them. Each
dtype is ``decode.dtype`` in turn. One warm-up round compiles every shape;
then ``repeats`` rounds alternate the dtypes (A, B, A, B, ...), so that a
change of load on the machine falls on both. Reports, per dtype: the median
seconds, sentences per second, the time relative to float32, sacreBLEU, and
how many translations equal the first dtype's.

The CTranslate2 rows (``--ctranslate2_compute_types``; empty: none) decode the
same averaged model, exported by ``transformer.export`` to a temporary
folder, through the same ``translate_sentences`` with the same search
settings, loaded in each compute type (int8: weights quantized at load), on
every usable core. Its beam search ranks finished hypotheses by
log P / |Y|^alpha rather than our GNMT penalty, so its translations and BLEU
differ a little by design (transformer/export.py).
"""

import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root

import numpy as np
from absl import flags

from transformer import bleu as bleu_lib
from transformer import data
from transformer import evaluate as evaluate_lib
from transformer import export as export_lib

FLAGS = flags.FLAGS


def define_flags():
  """The CLI's flags; defined only when run as a script, since the names
  (workdir, split, repeats, json) are benchmark.py's and evaluate.py's too,
  and absl allows one definition per process (the test suite imports all)."""
  flags.DEFINE_string("workdir", None, "The train.py run whose model decodes.")
  flags.DEFINE_string("split", None, "Split to translate (default: data.test_split).")
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"],
                    "Values of decode.dtype to time, in this order.")
  flags.DEFINE_list("ctranslate2_compute_types", ["float32", "int8"],
                    "CTranslate2 compute types to time the exported model in (empty: "
                    "none).")
  flags.DEFINE_integer("repeats", 3, "Timed rounds after the warm-up round.")
  flags.DEFINE_bool("json", False, "Print the result as JSON.")
  flags.mark_flags_as_required(["workdir"])


def run_benchmark(config, workdir: str, *, split: str | None = None,
                  dtypes=("float32", "bfloat16"), ctranslate2_compute_types=(),
                  repeats: int = 3) -> dict:
  """Times ``translate_sentences`` on ``split`` for each ``decode.dtype`` and
  each CTranslate2 compute type."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}.")
  split = split or config.data.test_split
  sources, references = data.load_split_text(config.data, split, workdir=workdir)
  sources, references = list(sources), list(references)
  tokenizer = evaluate_lib.load_run_tokenizer(config, workdir)
  jax_engine = evaluate_lib.restore_jax_engine(config, workdir)
  engines = {}  # name -> evaluate_lib.Engine
  for name in dtypes:
    decode_config = config.decode.copy_and_resolve_references()
    decode_config.dtype = name
    engines[name] = evaluate_lib.jax_engine(jax_engine.model, decode_config, jax_engine.steps)
  with tempfile.TemporaryDirectory() as folder:
    if ctranslate2_compute_types:
      export_lib.write_model(jax_engine.model, tokenizer, folder,
                             {"tokenizer_fingerprint": tokenizer.fingerprint,
                              "checkpoint_steps": list(jax_engine.steps)})
    for compute_type in ctranslate2_compute_types:
      engines[f"ctranslate2:{compute_type}"] = export_lib.ctranslate2_engine(
          folder, tokenizer, config.decode, compute_type=compute_type)
    names = list(engines)
    seconds = {name: [] for name in names}
    hypotheses = {}
    for round_ in range(repeats + 1):  # Round 0 compiles.
      for name in names:
        start = time.perf_counter()
        hypotheses[name] = evaluate_lib.translate_sentences(
            engines[name], tokenizer, sources, batch_size=config.decode.batch_size)
        if round_:
          seconds[name].append(time.perf_counter() - start)
  first = names[0]
  base = float(np.median(seconds["float32"])) if "float32" in seconds else None
  rows = []
  for name in names:
    median = float(np.median(seconds[name]))
    rows.append({
        "engine": engines[name].name, "decode_dtype": name,
        "computes_in": engines[name].dtype,
        "seconds_median": median, "seconds": seconds[name],
        "sentences_per_second": len(sources) / median,
        "time_vs_float32": median / base if base else None,
        "bleu": bleu_lib.sacrebleu_bleu(hypotheses[name], references)[0],
        f"same_translation_as_{first}": sum(
            a == b for a, b in zip(hypotheses[name], hypotheses[first], strict=True)),
    })
  return {"workdir": workdir, "split": split, "num_sentences": len(sources),
          "checkpoint_steps": list(jax_engine.steps), "model_dtype": config.model.dtype,
          "beam_size": config.decode.beam_size, "alpha": config.decode.alpha,
          "batch_size": config.decode.batch_size, "repeats": repeats, "results": rows}


def format_report(r: dict) -> str:
  lines = [f"{r['workdir']} split {r['split']}: {r['num_sentences']} sentences, beam "
           f"{r['beam_size']}, alpha {r['alpha']}, batches of {r['batch_size']}, trained in "
           f"{r['model_dtype']}, checkpoints {r['checkpoint_steps']}; median of "
           f"{r['repeats']} alternating rounds after a compiling one"]
  for row in r["results"]:
    ratio = row["time_vs_float32"]
    what = (f"CTranslate2 {row['computes_in']}" if row.get("engine") == "ctranslate2"
            else f"decode.dtype={row['decode_dtype']} ({row['computes_in']})")
    lines.append(
        f"  {what}: "
        f"{row['seconds_median']:.2f} s, {row['sentences_per_second']:.1f} sentences/s"
        + (f", {ratio:.2f}x float32's time" if ratio else "")
        + f", sacreBLEU {row['bleu']:.2f}")
  return "\n".join(lines)


def main(argv):
  del argv
  config = evaluate_lib.load_run_config(FLAGS.workdir)
  r = run_benchmark(config, FLAGS.workdir, split=FLAGS.split, dtypes=FLAGS.dtypes,
                    ctranslate2_compute_types=FLAGS.ctranslate2_compute_types,
                    repeats=FLAGS.repeats)
  print(json.dumps(r, indent=2) if FLAGS.json else format_report(r))


if __name__ == "__main__":
  from transformer import cli

  define_flags()
  cli.run(main, config_flag=None)
