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

import functools
import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from transformer import checks, choices, cli, config_io


def _load_saved_config(argv) -> ml_collections.ConfigDict:
  """DIR/config.json of the --workdir on the command line, or a ConfigError.

  Fields added to the project after the run was trained (absent from its
  config.json) take today's defaults, so that older runs still evaluate.
  """
  workdir = cli.flag_value(argv, "workdir")
  if not workdir:
    raise checks.ConfigError("--workdir is required: the directory of a train.py run.")
  checks.check_directory(workdir, create=False, writable=False)
  config, added = config_io.with_default_fields(config_io.load_config(workdir))
  if added:
    print(f"warning: {workdir}/config.json predates the fields {', '.join(added)}; "
          "using those defaults.", file=sys.stderr)
  return config


def _saved_config(argv) -> ml_collections.ConfigDict:
  """The saved config for --config.* overrides; empty when it cannot be read
  (main() then names the problem, or cli.parse_flags for an override)."""
  try:
    return _load_saved_config(argv)
  except (OSError, ValueError):
    return ml_collections.ConfigDict()


def _define_flags(argv):
  """The flags; ``--config`` is the saved config of the run named by argv's
  ``--workdir``, with ``--config.*`` overrides applied to it."""
  try:
    config_flags.DEFINE_config_dict(
        "config", _saved_config(argv), "The run's config (DIR/config.json); override "
        "fields with --config.section.field=value.")
  except Exception as e:  # A misspelt field, or a config.json that cannot be read.
    cli.exit_for_flag_error(e, argv, load_config=_load_saved_config)
  flags.DEFINE_string("workdir", None, "The train.py run to evaluate.")
  flags.DEFINE_string("split", None, "Split to evaluate (default: data.test_split).")
  flags.DEFINE_string("source", None, "Raw source text file, one sentence per line.")
  flags.DEFINE_string("reference", None, "Raw reference file, parallel to --source.")
  flags.DEFINE_string("name", None, "Report name: DIR/eval/<name>.json (default: the "
                      "split or source file name, plus .avg<N>).")
  flags.DEFINE_integer(
      "average_last", None, "Average the last N checkpoints (default: decode.average_last; "
      "the paper: 5 for base, 20 for big).")
  flags.DEFINE_integer("step", None, "Use checkpoints up to this step (default: latest).")
  flags.DEFINE_integer("beam_size", None, "Beam size (default: decode.beam_size; "
                       "1 is greedy).")
  flags.DEFINE_float("alpha", None, "Length penalty alpha (default: decode.alpha).")
  flags.DEFINE_bool(
      "save_averaged", False, "Save the averaged parameters to DIR/eval/<name>.params.")
  flags.DEFINE_string("params", None, "Evaluate parameters saved by --save_averaged.")
  flags.DEFINE_bool(
      "translate", False, "Translate stdin (or --source) to stdout, streaming; no BLEU.")
  flags.DEFINE_string("plot_attention", None, "Write attention grids of --sentence "
                      "to this PNG.")
  flags.DEFINE_string("sentence", None, "The sentence for --plot_attention.")
  flags.DEFINE_enum(
      "engine", "jax", list(choices.ENGINES), "Decode with this project's JAX search, or "
      "with the run exported to CTranslate2 (--ctranslate2_model; beam search ranks "
      "finished hypotheses differently, see transformer/export.py).")
  flags.DEFINE_string(
      "ctranslate2_model", None, "For --engine=ctranslate2: the folder written by "
      "python -m transformer.export --workdir=DIR --out=FOLDER.")
  flags.DEFINE_string(
      "ctranslate2_compute_type", "default", "For --engine=ctranslate2: CTranslate2's "
      "compute type (default: as exported; int8, float32, ...).")


def _resolved_config(f) -> ml_collections.ConfigDict:
  """The run's config with this command's decoding flags in it, checked
  (a flag's bad value is named by its flag)."""
  from transformer import evaluate

  evaluate.check_workdir(f.workdir)
  evaluate.load_run_config(f.workdir)  # Names a missing or malformed config.json.
  config = ml_collections.ConfigDict(f.config.to_dict())
  flag_values = {"beam_size": f.beam_size, "alpha": f.alpha, "average_last": f.average_last}
  for field, value in flag_values.items():
    if value is not None:
      config.decode[field] = value
  try:
    return checks.resolve_config(config)
  except checks.ConfigError as e:
    flag = next((name for name, v in flag_values.items()
                 if v is not None and str(e).startswith(f"config.decode.{name}=")), None)
    raise checks.ConfigError(f"--{flag}: {e}" if flag else str(e)) from e


def _is_translation(f) -> bool:
  """--translate, or --source without --reference: text out, no BLEU."""
  return bool(f.translate or (f.source and not f.reference))


def _check_inputs(f):
  """The files and flag combinations, and that results can be written, before
  any checkpoint is read or sentence decoded."""
  if f.plot_attention is not None and not f.sentence:
    raise ValueError("--plot_attention needs --sentence=\"...\" to translate.")
  if f.step is not None and f.step < 1:
    raise ValueError(f"--step={f.step} must be a checkpoint step (>= 1).")
  if f.source and not os.path.isfile(f.source):
    raise FileNotFoundError(f"Source file {f.source!r} does not exist.")
  if f.source and os.path.getsize(f.source) == 0:
    raise ValueError(f"Source file {f.source!r} is empty: nothing to translate.")
  if f.reference and not os.path.isfile(f.reference):
    raise FileNotFoundError(f"Reference file {f.reference!r} does not exist.")
  if f.params and not os.path.isdir(f.params):
    raise FileNotFoundError(f"--params={f.params!r} is not a folder written by "
                            "--save_averaged.")
  if f.plot_attention is not None:
    checks.check_directory(os.path.dirname(os.path.abspath(f.plot_attention)), create=False,
                           what="The folder of --plot_attention")
  elif not _is_translation(f):
    checks.check_directory(os.path.join(f.workdir, "eval"), create=True,
                           what="The evaluation folder")
  if f.engine == "ctranslate2":
    fixed = {"--plot_attention": f.plot_attention, "--save_averaged": f.save_averaged or None,
             "--params": f.params, "--step": f.step, "--average_last": f.average_last}
    bad = [name for name, value in fixed.items() if value is not None]
    if bad:
      raise ValueError(
          f"{', '.join(bad)} cannot be used with --engine=ctranslate2: the exported "
          "model's checkpoints were chosen at export (python -m transformer.export "
          "--average_last/--step), and attention pictures come from the JAX model.")
    if not f.ctranslate2_model:
      raise ValueError(
          "--engine=ctranslate2 needs --ctranslate2_model=FOLDER, a model written by "
          f"python -m transformer.export --workdir={f.workdir} --out=FOLDER.")
  elif f.ctranslate2_model or f.ctranslate2_compute_type != "default":
    raise ValueError("--ctranslate2_model and --ctranslate2_compute_type need "
                     "--engine=ctranslate2.")


def _engine(f, config, tokenizer):
  """--engine's translation engine: the run's checkpoints (the last
  decode.average_last averaged, up to --step, or --params) or the exported
  CTranslate2 model."""
  from transformer import evaluate, export

  if f.engine == "ctranslate2":
    return export.ctranslate2_engine(f.ctranslate2_model, tokenizer, config.decode,
                                     compute_type=f.ctranslate2_compute_type)
  # An asked-for number of checkpoints must be there; the config's own
  # decode.average_last averages the ones kept (checkpoint.select_steps).
  exact = f.average_last is not None or f.step is not None
  return evaluate.restore_jax_engine(config, f.workdir, step=f.step, params_path=f.params,
                                     exact=exact)


def _translate(f, config, engine, tokenizer):
  """Translations of --source (or stdin) to stdout, batch by batch."""
  from transformer import evaluate

  stream = open(f.source, encoding="utf-8") if f.source else sys.stdin
  with stream:
    evaluate.translate_stream(engine, tokenizer, stream, sys.stdout,
                              batch_size=config.decode.batch_size)


def _plot_attention(f, config, engine, tokenizer):
  """--sentence's translation on stdout, its attention grids in --plot_attention."""
  from transformer import evaluate

  print(evaluate.write_attention_plot(engine.model, tokenizer, f.sentence, f.plot_attention,
                                      config.decode))
  print(f"Attention grids written to {f.plot_attention}", file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from transformer import evaluate, orbax_logs  # After flag parsing: JAX starts here.

  orbax_logs.quiet()  # Orbax's INFO lines of every restore.
  f = flags.FLAGS
  config = _resolved_config(f)  # Decoding and averaging settings, flags included.
  _check_inputs(f)
  if f.plot_attention is not None or _is_translation(f):
    tokenizer = evaluate.load_run_tokenizer(config, f.workdir)
    engine = _engine(f, config, tokenizer)
    if f.plot_attention is not None:
      return _plot_attention(f, config, engine, tokenizer)
    return _translate(f, config, engine, tokenizer)
  # The engine is built once the text to evaluate is read (a bad input costs
  # no checkpoint restore).
  report = evaluate.evaluate(config, f.workdir, functools.partial(_engine, f, config),
                             split=f.split, source=f.source, reference=f.reference,
                             name=f.name, save_averaged=f.save_averaged)
  print(evaluate.summary(report))


if __name__ == "__main__":
  _define_flags(sys.argv)
  flags.mark_flags_as_required(["workdir"])
  # Flag and config errors (a misspelt field, a wrong type, a malformed
  # DIR/config.json, a value out of range): one "error:" line and exit code 2;
  # a missing run, file or checkpoint, or the machine: exit code 1.
  cli.run(main, load_config=_load_saved_config)
