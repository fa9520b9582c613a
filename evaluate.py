r"""Evaluates a trained run: ``python evaluate.py --workdir=DIR``.

  # Test split, beam 4, alpha 0.6, the last 5 checkpoints averaged (§6.1):
  python evaluate.py --workdir=runs/ende_base --split=test --average_last=5
  # Any parallel text files:
  python evaluate.py --workdir=DIR --source=newstest2014.en --reference=newstest2014.de
  # Translate stdin (or --source without --reference) to stdout, batch by batch:
  echo "The dog sees the car." | python evaluate.py --workdir=DIR --translate
  # The same report from the run exported to CTranslate2 (python -m transformer.export):
  python evaluate.py --workdir=DIR --engine=ctranslate2 --ctranslate2_model=DIR/ctranslate2
  # Attention pictures (Figures 3-5) of one sentence's translation:
  python evaluate.py --workdir=DIR --plot_attention=attention.png --sentence="..."

The run's config is read from DIR/config.json; any field can be overridden
(``--config.decode.batch_size=128``, ``--config.model.dtype=bfloat16``).
Writes DIR/eval/<name>.hyp.txt and DIR/eval/<name>.json (sacreBLEU ``bleu``
and its signature, paper-comparable ``bleu_tokenized``, steps averaged, speed).
"""

import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from transformer import checkpoint, checks


def _workdir_arg() -> str | None:
  for i, arg in enumerate(sys.argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(sys.argv):
      return sys.argv[i + 1]
  return None


def _load_saved_config() -> ml_collections.ConfigDict:
  """DIR/config.json of the --workdir on the command line, or a ConfigError.

  Fields added to the project after the run was trained (absent from its
  config.json) take today's defaults, so that older runs still evaluate.
  """
  workdir = _workdir_arg()
  if not workdir:
    raise checks.ConfigError("--workdir is required: the directory of a train.py run.")
  config, added = checkpoint.with_default_fields(checkpoint.load_config(workdir))
  if added:
    print(f"warning: {workdir}/config.json predates the fields {', '.join(added)}; "
          "using those defaults.", file=sys.stderr)
  return config


def _saved_config() -> ml_collections.ConfigDict:
  """The saved config for --config.* overrides; empty when it cannot be read
  (main() then names the problem, or parse_flags for an override)."""
  try:
    return _load_saved_config()
  except (OSError, ValueError):
    return ml_collections.ConfigDict()


try:  # --config.* overrides are applied here, to the saved config.
  _CONFIG = config_flags.DEFINE_config_dict(
      "config", _saved_config(), "The run's config (DIR/config.json); override fields "
      "with --config.section.field=value.")
except Exception as e:  # A misspelt field, or a config.json that cannot be read.
  checks.exit_for_flag_error(e, sys.argv, loaded_config=_load_saved_config)
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
_ENGINE = flags.DEFINE_enum(
    "engine", "jax", ["jax", "ctranslate2"], "Decode with this project's JAX search, or "
    "with the run exported to CTranslate2 (--ctranslate2_model; beam search ranks "
    "finished hypotheses differently, see transformer/export.py).")
_CT2_MODEL = flags.DEFINE_string(
    "ctranslate2_model", None, "For --engine=ctranslate2: the folder written by "
    "python -m transformer.export --workdir=DIR --out=FOLDER.")
_CT2_COMPUTE_TYPE = flags.DEFINE_string(
    "ctranslate2_compute_type", "default", "For --engine=ctranslate2: CTranslate2's "
    "compute type (default: as exported; int8, float32, ...).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from transformer import evaluate, train  # After flag parsing: JAX starts here.

  workdir = _WORKDIR.value
  try:
    evaluate.check_workdir(workdir)
    evaluate.load_run_config(workdir)  # Names a missing or malformed config.json.
    # Every field of the config, with this command's decoding flags in it.
    config = ml_collections.ConfigDict(_CONFIG.value.to_dict())
    flag_values = {"beam_size": _BEAM_SIZE.value, "alpha": _ALPHA.value,
                   "average_last": _AVERAGE_LAST.value}
    for field, value in flag_values.items():
      if value is not None:
        config.decode[field] = value
    try:
      config = train.resolve_config(config)
    except checks.ConfigError as e:
      flag = next((f for f, v in flag_values.items()
                   if v is not None and str(e).startswith(f"config.decode.{f}=")), None)
      raise checks.ConfigError(f"--{flag}: {e}" if flag else str(e)) from e
    d = config.decode  # Decoding and averaging settings, flags included: from here only.
    # An asked-for number of checkpoints must be there; the config's own
    # decode.average_last averages the ones kept (checkpoint.select_steps).
    exact_average = _AVERAGE_LAST.value is not None or _STEP.value is not None
    translate = _TRANSLATE.value or (_SOURCE.value and not _REFERENCE.value)
    if _PLOT.value is not None and not _SENTENCE.value:
      raise ValueError("--plot_attention needs --sentence=\"...\" to translate.")
    if _STEP.value is not None and _STEP.value < 1:
      raise ValueError(f"--step={_STEP.value} must be a checkpoint step (>= 1).")
    if _SOURCE.value and not os.path.isfile(_SOURCE.value):
      raise FileNotFoundError(f"Source file {_SOURCE.value!r} does not exist.")
    if _SOURCE.value and os.path.getsize(_SOURCE.value) == 0:
      raise ValueError(f"Source file {_SOURCE.value!r} is empty: nothing to translate.")
    if _REFERENCE.value and not os.path.isfile(_REFERENCE.value):
      raise FileNotFoundError(f"Reference file {_REFERENCE.value!r} does not exist.")
    if _PARAMS.value and not os.path.isdir(_PARAMS.value):
      raise FileNotFoundError(f"--params={_PARAMS.value!r} is not a folder written by "
                              "--save_averaged.")
    # Where the results go must be writable before anything is decoded.
    if _PLOT.value is not None:
      checks.check_workdir(os.path.dirname(os.path.abspath(_PLOT.value)), create=False,
                           what="The folder of --plot_attention")
    elif not translate:
      checks.check_workdir(os.path.join(workdir, "eval"), create=True,
                           what="The evaluation folder")

    ct2 = _ENGINE.value == "ctranslate2"
    if ct2:
      fixed = {"--plot_attention": _PLOT.value, "--save_averaged": _SAVE_AVERAGED.value or None,
               "--params": _PARAMS.value, "--step": _STEP.value,
               "--average_last": _AVERAGE_LAST.value}
      bad = [name for name, value in fixed.items() if value is not None]
      if bad:
        raise ValueError(
            f"{', '.join(bad)} cannot be used with --engine=ctranslate2: the exported "
            "model's checkpoints were chosen at export (python -m transformer.export "
            "--average_last/--step), and attention pictures come from the JAX model.")
      if not _CT2_MODEL.value:
        raise ValueError(
            "--engine=ctranslate2 needs --ctranslate2_model=FOLDER, a model written by "
            f"python -m transformer.export --workdir={workdir} --out=FOLDER.")
    elif _CT2_MODEL.value or _CT2_COMPUTE_TYPE.value != "default":
      raise ValueError("--ctranslate2_model and --ctranslate2_compute_type need "
                       "--engine=ctranslate2.")

    if ct2:
      from transformer import export

      tokenizer = evaluate.load_run_tokenizer(config, workdir)
      translate_fn, metadata = export.load_translate_fn(
          _CT2_MODEL.value, tokenizer, d, compute_type=_CT2_COMPUTE_TYPE.value)
      if translate:
        stream = open(_SOURCE.value, encoding="utf-8") if _SOURCE.value else sys.stdin
        with stream:
          evaluate.translate_stream(translate_fn, tokenizer, stream, sys.stdout,
                                    batch_size=d.batch_size)
        return
      report = evaluate.evaluate(
          config, workdir, split=_SPLIT.value, source=_SOURCE.value,
          reference=_REFERENCE.value, name=_NAME.value, translate_fn=translate_fn,
          steps=metadata["checkpoint_steps"],
          engine={"engine": "ctranslate2", "dtype": translate_fn.compute_type,
                  "ctranslate2_model": os.path.abspath(_CT2_MODEL.value),
                  "quantization": metadata["quantization"]})
      print(evaluate.summary(report))
      return

    if _PLOT.value is not None or translate:
      tokenizer = evaluate.load_run_tokenizer(config, workdir)
      model, steps = checkpoint.restore_model(
          config.model, workdir, average_last=d.average_last, step=_STEP.value,
          params_path=_PARAMS.value, exact=exact_average)
      if _PLOT.value is not None:
        translation = evaluate.write_attention_plot(
            model, tokenizer, _SENTENCE.value, _PLOT.value, d)
        print(translation)
        print(f"Attention grids written to {_PLOT.value}", file=sys.stderr)
        return
      translate_fn = evaluate.make_translate_fn(model, d)
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
        name=_NAME.value, step=_STEP.value, save_averaged=_SAVE_AVERAGED.value,
        params_path=_PARAMS.value, exact_average=exact_average)
    print(evaluate.summary(report))
  except checks.ConfigError as e:  # A config value or config.json: like a flag error.
    checks.exit_with_error(e, 2)
  except (OSError, ValueError) as e:  # A missing run, file or checkpoint; the machine.
    checks.exit_with_error(e, 1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  # Flag errors (a misspelt field, a wrong type, a malformed DIR/config.json):
  # one "error:" line and exit code 2.
  app.run(main, flags_parser=lambda argv: checks.parse_flags(
      argv, loaded_config=_load_saved_config))
