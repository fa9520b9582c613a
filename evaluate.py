r"""Evaluates a trained run: ``python evaluate.py --workdir=DIR``.

  # Test split, beam 4, alpha 0.6, the last 5 checkpoints averaged (§6.1):
  python evaluate.py --workdir=runs/ende_base --split=test --average_last=5
  # Any parallel text files:
  python evaluate.py --workdir=DIR --source=newstest2014.en --reference=newstest2014.de
  # Translate stdin (or --source without --reference) to stdout, batch by batch:
  echo "The dog sees the car." | python evaluate.py --workdir=DIR --translate
  # Attention pictures (Figures 3-5) of one sentence's translation:
  python evaluate.py --workdir=DIR --plot_attention=attention.png --sentence="..."

The run's config is read from DIR/config.json; any field can be overridden
(``--config.decode.batch_size=128``, ``--config.model.dtype=bfloat16``).
Writes DIR/eval/<name>.hyp.txt and DIR/eval/<name>.json (sacreBLEU ``bleu``
and its signature, paper-comparable ``bleu_tokenized``, steps averaged, speed).
"""

import json
import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags


def _saved_config() -> ml_collections.ConfigDict:
  """DIR/config.json of the --workdir on the command line, for --config.* overrides."""
  workdir = None
  for i, arg in enumerate(sys.argv):
    if arg.startswith("--workdir="):
      workdir = arg.split("=", 1)[1]
    elif arg == "--workdir" and i + 1 < len(sys.argv):
      workdir = sys.argv[i + 1]
  path = os.path.join(workdir or "", "config.json")
  if not workdir or not os.path.isfile(path):
    return ml_collections.ConfigDict()  # main() then names the problem.
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


_CONFIG = config_flags.DEFINE_config_dict(
    "config", _saved_config(), "The run's config (DIR/config.json); override fields with "
    "--config.section.field=value.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The train.py run to evaluate.")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: data.test_split).")
_SOURCE = flags.DEFINE_string("source", None, "Raw source text file, one sentence per line.")
_REFERENCE = flags.DEFINE_string("reference", None, "Raw reference file, parallel to --source.")
_NAME = flags.DEFINE_string("name", None, "Report name: DIR/eval/<name>.json (default: the "
                            "split or source file name, plus .avg<N>).")
_AVERAGE_LAST = flags.DEFINE_integer(
    "average_last", None, "Average the last N checkpoints (default: decode.average_last; "
    "the paper: 5 for base, 20 for big).")
_STEP = flags.DEFINE_integer("step", None, "Use checkpoints up to this step (default: latest).")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", None, "Beam size (default: decode.beam_size; "
                                  "1 is greedy).")
_ALPHA = flags.DEFINE_float("alpha", None, "Length penalty alpha (default: decode.alpha).")
_SAVE_AVERAGED = flags.DEFINE_bool(
    "save_averaged", False, "Save the averaged parameters to DIR/eval/<name>.params.")
_PARAMS = flags.DEFINE_string("params", None, "Evaluate parameters saved by --save_averaged.")
_TRANSLATE = flags.DEFINE_bool(
    "translate", False, "Translate stdin (or --source) to stdout, streaming; no BLEU.")
_PLOT = flags.DEFINE_string("plot_attention", None, "Write attention grids of --sentence "
                            "to this PNG.")
_SENTENCE = flags.DEFINE_string("sentence", None, "The sentence for --plot_attention.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from transformer import evaluate, train  # After flag parsing: JAX starts here.

  workdir = _WORKDIR.value
  try:
    evaluate.check_workdir(workdir)
    evaluate.load_run_config(workdir)  # Names a missing config.json.
    config = train.resolve_config(_CONFIG.value)
    d = config.decode
    beam_size = d.beam_size if _BEAM_SIZE.value is None else _BEAM_SIZE.value
    alpha = d.alpha if _ALPHA.value is None else _ALPHA.value
    average_last = d.average_last if _AVERAGE_LAST.value is None else _AVERAGE_LAST.value
    translate = _TRANSLATE.value or (_SOURCE.value and not _REFERENCE.value)
    if _PLOT.value is not None and not _SENTENCE.value:
      raise ValueError("--plot_attention needs --sentence=\"...\" to translate.")
    if _SOURCE.value and not os.path.isfile(_SOURCE.value):
      raise FileNotFoundError(f"Source file {_SOURCE.value!r} does not exist.")
    if _SOURCE.value and os.path.getsize(_SOURCE.value) == 0:
      raise ValueError(f"Source file {_SOURCE.value!r} is empty: nothing to translate.")

    if _PLOT.value is not None or translate:
      tokenizer = evaluate.load_run_tokenizer(config, workdir)
      model, steps = evaluate.restore_model(config, workdir, average_last=average_last,
                                            step=_STEP.value, params_path=_PARAMS.value)
      if _PLOT.value is not None:
        translation = evaluate.write_attention_plot(
            model, tokenizer, _SENTENCE.value, _PLOT.value, beam_size=beam_size,
            alpha=alpha, max_extra_length=d.max_extra_length)
        print(translation)
        print(f"Attention grids written to {_PLOT.value}", file=sys.stderr)
        return
      translate_fn = evaluate.make_translate_fn(
          model, beam_size=beam_size, alpha=alpha, max_extra_length=d.max_extra_length)
      if _SOURCE.value:
        with open(_SOURCE.value, encoding="utf-8") as lines:
          evaluate.translate_stream(translate_fn, tokenizer, lines, sys.stdout,
                                    batch_size=d.batch_size)
      else:
        evaluate.translate_stream(translate_fn, tokenizer, sys.stdin, sys.stdout,
                                  batch_size=d.batch_size)
      return

    report = evaluate.evaluate(
        config, workdir, split=_SPLIT.value, source=_SOURCE.value, reference=_REFERENCE.value,
        name=_NAME.value, average_last=average_last, step=_STEP.value, beam_size=beam_size,
        alpha=alpha, save_averaged=_SAVE_AVERAGED.value, params_path=_PARAMS.value)
    print(evaluate.summary(report))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
