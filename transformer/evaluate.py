"""Evaluation of a trained run: beam search and BLEU (§6.1).

Used by the root ``evaluate.py``; every piece is importable:

  config = load_run_config(workdir)                       # DIR/config.json
  tokenizer = load_run_tokenizer(config, workdir)
  engine = restore_jax_engine(config, workdir)           # beam 4, alpha 0.6
  hyps = translate_sentences(engine, tokenizer, sources)
  report = evaluate(config, workdir, split="test")       # DIR/eval/test.avg5.json

Checkpoints are chosen, restored and averaged by transformer/checkpoint.py
(``restore_model``); sentences are translated by an ``Engine`` (this
project's search, ``jax_engine``, or an exported CTranslate2 model,
``export.ctranslate2_engine``: one interface); this module translates,
scores and reports.
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from transformer import bleu as bleu_lib
from transformer import checkpoint as checkpoint_lib
from transformer import checks, config_io, fields, precision, search
from transformer import loss as loss_lib
from transformer import model as model_lib
from transformer.tokens import EOS_ID, PAD_ID

# config.decode.batch_size's default (transformer/fields.py).
_DECODE_BATCH_SIZE = fields.defaults("decode").batch_size

# ----------------------------------------------------------------------------
# The run: config, tokenizer, checkpoints.
# ----------------------------------------------------------------------------


def check_workdir(workdir: str):
  """An existing run's workdir, read from only (the results' folder is checked
  for writing where it is chosen)."""
  checks.check_directory(workdir, create=False, writable=False)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config the run was trained with (DIR/config.json), unlocked."""
  check_workdir(workdir)
  return config_io.load_config(workdir)


def load_run_tokenizer(config, workdir: str):
  """The run's tokenizer, checked against the model's vocabulary.

  The tokenizer the run trained with is ``DIR/tokenizer/spm.model`` or the
  ``data.tokenizer_path`` saved in its config. A different tokenizer (by
  content) than that one is refused: its ids would mean other pieces.
  """
  from transformer import data
  from transformer.data import tokenizer as tokenizer_lib

  trained_path = os.path.join(workdir, "tokenizer", "spm.model")
  saved = config_io.load_config(workdir).data.get("tokenizer_path", "")
  trained_path = saved or trained_path
  if not config.data.tokenizer_path and not os.path.isfile(trained_path):
    # data.load_tokenizer would train a new vocabulary: never for evaluation.
    raise FileNotFoundError(
        f"The run's tokenizer {trained_path} is missing; without it the "
        "checkpoint's token ids cannot be read. Restore it, or pass the one the "
        "run used with --config.data.tokenizer_path=FILE.")
  tokenizer = data.load_tokenizer(config.data, workdir,  # Of model.vocab_size pieces, or an error.
                                 vocab_size=config.model.vocab_size)
  if os.path.isfile(trained_path) and os.path.abspath(trained_path) != os.path.abspath(
      tokenizer.path):
    trained = tokenizer_lib.Tokenizer(trained_path)
    if trained.fingerprint != tokenizer.fingerprint:
      raise ValueError(
          f"The tokenizer {tokenizer.path} is not the one this run was trained "
          f"with ({trained_path}): the checkpoint's token ids would mean other "
          "pieces. Leave --config.data.tokenizer_path as saved in config.json.")
  return tokenizer


# ----------------------------------------------------------------------------
# Translation: one engine interface for this project's search and CTranslate2.
# ----------------------------------------------------------------------------
#
# An Engine turns (B, S) source ids into (B, L) output ids and says what it is
# (name, dtype, the checkpoint steps). Evaluation, evaluate.py --translate, dev
# BLEU during training and the benchmarks all translate through one:
#
#   engine = jax_engine(model, config.decode)                 # beam 4, alpha 0.6
#   engine = restore_jax_engine(config, workdir)              # the run's averaged model
#   engine = export.ctranslate2_engine(folder, tokenizer, config.decode)
#   hypotheses = translate_sentences(engine, tokenizer, sentences)
#
# Sentences are decoded in batches of decode.batch_size sorted by source
# length (less padding, fewer steps per batch), and put back in input order;
# results do not depend on the batching (see transformer/search.py). Any
# function of (B, S) ids to (B, L) ids can stand in for an engine in the
# functions below (tests use a copying one).

# (B, S) source ids -> (B, L) output ids: an Engine, or any such function.
TranslateFn = Callable[[np.ndarray], np.ndarray]


def encode_sources(tokenizer, sentences: list[str]) -> list[np.ndarray]:
  """Source ids, each ending with EOS (as the data pipeline feeds them)."""
  encoded = tokenizer.encode_batch(sentences) if sentences else []
  return [np.asarray(list(ids) + [EOS_ID], np.int32) for ids in encoded]


def _pad(rows: list[np.ndarray]) -> np.ndarray:
  out = np.full((len(rows), max(len(r) for r in rows)), PAD_ID, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def decode_options(decode_config, **overrides) -> dict:
  """The search's arguments of ``search.translate_batch`` from a ``config.decode``
  section (beam_size, alpha, max_extra_length, min_length); ``overrides`` win."""
  options = {key: decode_config[key]
             for key in ("beam_size", "alpha", "max_extra_length", "min_length")}
  unknown = set(overrides) - set(options)
  if unknown:
    raise TypeError(f"Unknown decoding options {sorted(unknown)}.")
  options.update(overrides)
  return options


@dataclasses.dataclass(frozen=True)
class Engine:
  """A translation engine: ``engine(inputs)`` maps (B, S) source ids (each
  row ending with EOS, PAD after) to (B, L) output ids.

  ``name``: "jax" (this project's search, ``jax_engine``) or "ctranslate2"
  (an exported model, ``export.ctranslate2_engine``). ``dtype``: what it
  computes in. ``steps``: the checkpoints whose (averaged) parameters it
  translates with. ``model``: the JAX model, for what only it can do
  (attention pictures, saving averaged parameters); None for other engines.
  ``report``: further fields for an evaluation report (the exported folder,
  its quantization).
  """
  translate: TranslateFn
  name: str
  dtype: str
  steps: tuple[int, ...] = ()
  model: Any = None
  report: dict = dataclasses.field(default_factory=dict)

  def __call__(self, inputs: np.ndarray) -> np.ndarray:
    return self.translate(inputs)


def jax_engine(model, decode_config, steps=(), **overrides) -> Engine:
  """This project's search (``search.translate_batch``) as ``config.decode``
  says (``overrides``, e.g. ``beam_size=1``, replace single fields), computing
  in ``precision.decode_dtype`` (the model's parameters, in that compute
  dtype). ``steps``: the checkpoints ``model``'s parameters come from."""
  options = decode_options(decode_config, **overrides)
  dtype = precision.decode_dtype(decode_config, model.cfg)
  decoding_model = model_lib.with_compute_dtype(model, dtype)

  def translate(inputs):
    return search.translate_batch(decoding_model, inputs, **options)
  return Engine(translate, name="jax", dtype=dtype, steps=tuple(int(s) for s in steps),
                model=model)


def restore_jax_engine(config, workdir: str, *, step: int | None = None,
                       params_path: str | None = None, exact: bool = False) -> Engine:
  """The run's model as ``config.decode`` says (the mean of its last
  ``decode.average_last`` checkpoints up to ``step``, or the parameters saved
  at ``params_path``; ``checkpoint.restore_model``), as a JAX engine."""
  model, steps = checkpoint_lib.restore_model(
      config.model, workdir, average_last=config.decode.average_last, step=step,
      params_path=params_path, exact=exact)
  return jax_engine(model, config.decode, steps)


def translate_ids(engine: TranslateFn, sources: list[np.ndarray], *,
                  batch_size: int, sort: bool = True) -> Iterator[tuple[int, np.ndarray]]:
  """Yields (index, output ids) for every source once, batch by batch.

  With ``sort``, batches hold sentences of similar length (longest first);
  results come in batch order, each with its input index.
  """
  if batch_size < 1:
    raise ValueError(f"decode.batch_size must be >= 1, got {batch_size}.")
  order = list(range(len(sources)))
  if sort:
    order.sort(key=lambda i: -len(sources[i]))
  for start in range(0, len(order), batch_size):
    indices = order[start:start + batch_size]
    ids = engine(_pad([sources[i] for i in indices]))
    yield from zip(indices, ids, strict=True)


def translate_sentences(engine: TranslateFn, tokenizer, sentences: list[str], *,
                        batch_size: int = _DECODE_BATCH_SIZE) -> list[str]:
  """Detokenized translations of ``sentences``, in input order."""
  sources = encode_sources(tokenizer, sentences)
  hypotheses = [None] * len(sources)
  for index, ids in translate_ids(engine, sources, batch_size=batch_size):
    hypotheses[index] = tokenizer.detokenize(ids)
  return hypotheses


def _is_empty(hypothesis: str) -> bool:
  return not hypothesis.strip()


def warn_if_empty(is_empty: list[bool], what: str) -> list[int]:
  """Line numbers (from 1) of the empty translations; logs one warning naming
  them (the first 10) and ``what`` when there are any."""
  empty = [i + 1 for i, e in enumerate(is_empty) if e]
  if empty:
    logging.warning(
        "%d of %d translations are empty (lines %s%s of %s). With decode.min_length=0 "
        "(the paper's search) a model may prefer ending at once; decode.min_length=1 "
        "forbids it.", len(empty), len(is_empty), ", ".join(map(str, empty[:10])),
        " ..." if len(empty) > 10 else "", what)
  return empty


def translate_stream(engine: TranslateFn, tokenizer, lines: Iterable[str], out, *,
                     batch_size: int = _DECODE_BATCH_SIZE) -> int:
  """Translates lines as they come, ``batch_size`` at a time, in order.

  Writes one translation per input line to ``out`` and flushes after every
  batch, so that a long file (or a pipe) starts producing output at once.
  Returns the number of lines translated; warns (log) when any is empty.
  """
  count = 0
  empty = []  # Whether each translation is empty, for the warning at the end.
  batch = []

  def flush(batch):
    for hypothesis in translate_sentences(engine, tokenizer, batch,
                                          batch_size=batch_size):
      empty.append(_is_empty(hypothesis))
      out.write(hypothesis + "\n")
    out.flush()

  for line in lines:
    batch.append(line.rstrip("\n"))
    if len(batch) == batch_size:
      flush(batch)
      count += len(batch)
      batch = []
  if batch:
    flush(batch)
    count += len(batch)
  warn_if_empty(empty, "the input")
  return count


# ----------------------------------------------------------------------------
# Evaluation reports.
# ----------------------------------------------------------------------------


def read_sentence_file(path: str, what: str) -> list[str]:
  """A source or reference file, read exactly as the data pipeline reads splits."""
  from transformer import data

  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} file {path!r} does not exist.")
  lines = data.read_lines(path)
  if not lines:
    raise ValueError(f"{what} file {path!r} is empty: nothing to translate.")
  return lines


def evaluate(config, workdir: str, engine: Engine | Callable | None = None, *,
             split: str | None = None, source: str | None = None,
             reference: str | None = None, name: str | None = None,
             save_averaged: bool = False) -> dict:
  """Translates a split (or a source file) and writes BLEU reports.

  Writes ``DIR/eval/<name>.hyp.txt`` (detokenized hypotheses, one per line, in
  input order) and ``DIR/eval/<name>.json``; returns the report. ``name`` is
  the split or the source file's name, with ``.avg<N>`` when N > 1
  checkpoints are averaged.

  The search is ``config.decode``'s; the split left None is
  ``config.data.test_split``. The report counts the empty
  hypotheses (``empty_outputs``) and gives sacreBLEU with ``-lc``
  (``bleu_lowercase``, the figure Multi30k papers print) beside the cased one.
  ``decode_seconds`` is the wall time of translating (tokenization, decoding
  and detokenization), compilation of the few padded shapes included.
  ``engine`` translates (an ``Engine``: this project's search or an
  exported CTranslate2 model), or is a function of the run's tokenizer that
  returns one, called once the text and the tokenizer are read (so that a bad
  input costs no checkpoint restore); None: the run's JAX model as
  ``config.decode`` says (``restore_jax_engine``). The report names the engine, what
  it computes in and its checkpoints; an engine other than "jax" adds its name
  to ``name``. ``save_averaged``: also save the JAX engine's parameters to
  ``DIR/eval/<name>.params``.
  """
  from transformer import data

  check_workdir(workdir)
  d = config.decode
  if source:
    sources = read_sentence_file(source, "Source")
    references = read_sentence_file(reference, "Reference") if reference else None
    if references is not None and len(references) != len(sources):
      raise ValueError(f"{source} has {len(sources)} lines but {reference} has "
                       f"{len(references)}; they must be parallel.")
    base = os.path.basename(source)
  else:
    split = split or config.data.test_split
    sources, references = data.load_split_text(config.data, split, workdir=workdir)
    sources, references = list(sources), list(references)
    base = split
  tokenizer = load_run_tokenizer(config, workdir)
  if engine is None:
    engine = restore_jax_engine(config, workdir)
  elif not isinstance(engine, Engine):  # Built now that the text and the tokenizer are read.
    engine = engine(tokenizer)
  steps = list(engine.steps)
  if name is None:
    name = base + (f".avg{len(steps)}" if len(steps) > 1 else "")
    name += "" if engine.name == "jax" else f".{engine.name}"
  out_dir = os.path.join(workdir, "eval")
  # Every process of a multi-host run decodes (the model may be sharded over
  # all of them); only process 0 writes.
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(out_dir, exist_ok=True)
  if save_averaged and engine.model is not None:  # Orbax: every process takes part.
    path = os.path.join(out_dir, f"{name}.params")
    checkpoint_lib.save_params(nnx.to_pure_dict(nnx.state(engine.model, nnx.Param)), path,
                               steps)
    logging.info("Saved the averaged parameters of steps %s to %s.", steps, path)

  start = time.time()
  hypotheses = translate_sentences(engine, tokenizer, sources, batch_size=d.batch_size)
  seconds = time.time() - start
  report = {"name": name, "split": None if source else split, "source": source,
            "reference": reference}
  if references is not None:
    report.update(bleu_lib.compute_bleu(hypotheses, references, lang=config.data.target_lang))
    report["bleu_lowercase"], report["sacrebleu_signature_lowercase"] = (
        bleu_lib.sacrebleu_bleu(hypotheses, references, lowercase=True))
  empty = warn_if_empty([_is_empty(h) for h in hypotheses], source or f"split {split}")
  report.update({
      "num_sentences": len(hypotheses),
      "empty_outputs": len(empty),
      "checkpoint_steps": [int(s) for s in steps],
      "step": int(max(steps)) if steps else None,  # The latest step averaged.
      "beam_size": d.beam_size,
      "alpha": d.alpha,
      "max_extra_length": d.max_extra_length,
      "min_length": d.min_length,
      "engine": engine.name,
      "dtype": engine.dtype,
      "decode_seconds": seconds,
      "sentences_per_second": len(hypotheses) / max(seconds, 1e-9),
      "device": jax.devices()[0].device_kind,
      **engine.report,
  })
  hyp_path = os.path.join(out_dir, f"{name}.hyp.txt")
  report["hypotheses"] = hyp_path
  if writer:
    with open(hyp_path, "w", encoding="utf-8") as f:
      f.writelines(h + "\n" for h in hypotheses)
    with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


def summary(report: dict) -> str:
  """A short, readable summary of a report."""
  lines = [f"{report['name']}: {report['num_sentences']} sentences, beam "
           f"{report['beam_size']}, alpha {report['alpha']}, checkpoints "
           f"{report['checkpoint_steps'] or 'n/a'}, {report.get('engine', 'jax')} in "
           f"{report.get('dtype')}"]
  if "bleu" in report:
    lines.append(f"  BLEU {report['bleu']:6.2f}  sacreBLEU on detokenized text "
                 f"({report['sacrebleu_signature']})")
    if "bleu_lowercase" in report:
      lines.append(f"  BLEU {report['bleu_lowercase']:6.2f}  sacreBLEU, lowercased (-lc)")
    lines.append(f"  BLEU {report['bleu_tokenized']:6.2f}  tokenized, compound-split: the "
                 "paper's way of scoring WMT14 (Table 2)")
  if report.get("empty_outputs"):
    lines.append(f"  empty translations: {report['empty_outputs']} (decode.min_length="
                 f"{report.get('min_length')})")
  lines.append(f"  decoding: {report['decode_seconds']:.1f} s, "
               f"{report['sentences_per_second']:.1f} sentences/s on {report['device']}")
  lines.append(f"  hypotheses: {report['hypotheses']}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# During training: dev loss and greedy BLEU, test BLEU at the end.
# ----------------------------------------------------------------------------


def loss_metrics(loss_sums: Callable[[dict], dict], batches) -> dict:
  """loss, nll, perplexity, accuracy over whole batches; ``loss_sums(batch)``
  gives a batch's summed loss and counts (``train.make_eval_fn``)."""
  total = None
  for batch in batches:
    sums = loss_sums(batch)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  if total is None:
    return {}
  return {k: float(v) for k, v in loss_lib.summarize(total).items()}


def dev_metrics(loss_sums: Callable[[dict], dict], model, tokenizer, batches, sources,
                references, decode_config) -> dict:
  """Dev loss on the whole dev split; greedy BLEU on ``sources`` (its first
  sentences; ``config.decode`` with beam_size=1)."""
  row = {f"dev/{k}": v for k, v in loss_metrics(loss_sums, batches).items()}
  if sources:
    engine = jax_engine(model, decode_config, beam_size=1)
    hypotheses = translate_sentences(engine, tokenizer, sources,
                                     batch_size=decode_config.batch_size)
    row["dev/bleu"], _ = bleu_lib.sacrebleu_bleu(hypotheses, references)
    row["dev/bleu_sentences"] = len(hypotheses)
  return row


def test_metrics(model, config, workdir: str, step: int) -> dict:
  """Translates the whole test split with ``config.decode`` (beam 4, alpha 0.6),
  writes DIR/eval/<split>.json and DIR/eval/<split>.hyp.txt (``evaluate``, the
  code path of evaluate.py); returns test/* values. ``model``: the one trained
  to ``step``.

  With ``decode.average_last`` = N > 1 the model is the mean of the last N
  checkpoints up to ``step`` (§6.1), chosen as ``evaluate.py`` without
  ``--average_last`` chooses them (``checkpoint.select_steps``: the ones kept,
  with a warning, when fewer than N are), so both give the same model.
  """
  steps = [step]
  if config.decode.average_last > 1:
    steps = checkpoint_lib.select_steps(workdir, config.decode.average_last, step,
                                        exact=False)
    if len(steps) > 1:
      model, steps = checkpoint_lib.restore_model(
          config.model, workdir, average_last=len(steps), step=step)
  report = evaluate(config, workdir, jax_engine(model, config.decode, steps),
                    split=config.data.test_split, name=config.data.test_split)
  return {"test/bleu": report["bleu"], "test/bleu_tokenized": report["bleu_tokenized"],
          "test/bleu_lowercase": report["bleu_lowercase"],
          "test/empty_outputs": report["empty_outputs"],
          "test/num_sentences": report["num_sentences"],
          "test/checkpoint_steps": steps}


# ----------------------------------------------------------------------------
# Attention pictures (Figures 3-5).
# ----------------------------------------------------------------------------


def attention_for_sentence(model, tokenizer, sentence: str, decode_config, **overrides):
  """Translates ``sentence`` (searched as ``config.decode`` says, ``overrides``
  replacing single fields) and returns its attention weights and tokens.

  Returns:
    (translation, attention, source_pieces, target_pieces, decoder_input_pieces):
    attention is {"encoder_self", "decoder_self", "encoder_decoder"} -> list
    over layers of (H, Q, M) numpy arrays for this one sentence.
  """
  from transformer.tokens import BOS_ID

  source = encode_sources(tokenizer, [sentence])[0]
  ids = jax_engine(model, decode_config, **overrides)(source[None])[0]
  target = np.asarray(search.strip_eos(ids) + [EOS_ID], np.int32)
  _, attention = nnx.jit(lambda m, x, y: m(x, y, return_attention=True))(
      model, jnp.asarray(source[None]), jnp.asarray(target[None]))
  attention = {k: [np.asarray(w[0], np.float32) for w in v] for k, v in attention.items()}

  def pieces(seq):
    return [tokenizer.id_to_piece(i) for i in seq]

  decoder_inputs = [BOS_ID] + list(target[:-1])
  return (tokenizer.detokenize(target), attention, pieces(source), pieces(target),
          pieces(decoder_inputs))


def write_attention_plot(model, tokenizer, sentence: str, path: str, decode_config,
                         **overrides) -> str:
  """Draws the three attention grids of ``sentence``'s translation to ``path``."""
  from transformer import plot

  if not sentence.strip():
    raise ValueError("--plot_attention needs a non-empty --sentence to translate.")
  translation, attention, src, tgt, dec_in = attention_for_sentence(
      model, tokenizer, sentence, decode_config, **overrides)
  plot.plot_attention(attention, src, tgt, dec_in, path,
                      title=f"{sentence}  ->  {translation}")
  return translation

