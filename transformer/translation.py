"""Translation: one engine interface for this project's search and CTranslate2.

An ``Engine`` turns (B, S) source ids into (B, L) output ids, and says what it
is (``name``, ``dtype``, the checkpoint ``steps``). Evaluation
(``evaluate.evaluate``), ``evaluate.py --translate``, dev BLEU during
training and the benchmarks all translate through one:

  engine = jax_engine(model, config.decode)                 # beam 4, alpha 0.6
  engine = restore_jax_engine(config, workdir)              # the run's averaged model
  engine = export.ctranslate2_engine(folder, tokenizer, config.decode)
  hypotheses = translate_sentences(engine, tokenizer, sentences)

Sentences are decoded in batches of ``decode.batch_size`` sorted by source
length (less padding, fewer steps per batch), and put back in input order.
Translation results do not depend on the batching (see transformer/search.py).
Any function of (B, S) ids to (B, L) ids can stand in for an engine in the
functions below (tests use a copying one).
"""

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from absl import logging

from transformer import checkpoint as checkpoint_lib
from transformer import model as model_lib
from transformer import precision, search
from transformer.tokens import EOS_ID, PAD_ID

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
                        batch_size: int = 64) -> list[str]:
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
                     batch_size: int = 64) -> int:
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
