r"""Export a trained run to CTranslate2, and decode with the exported model.

  # The last decode.average_last checkpoints averaged, as evaluate.py would:
  python -m transformer.export --workdir=DIR --out=DIR/ctranslate2
  python -m transformer.export --workdir=DIR --out=OUT --step=80000 --average_last=1
  python -m transformer.export --workdir=DIR --out=OUT --quantization=int8
  # Score it with the same report as the JAX path:
  python evaluate.py --workdir=DIR --engine=ctranslate2 --ctranslate2_model=OUT

CTranslate2 (github.com/OpenNMT/CTranslate2) is the C++ engine NMT models are
served with. Its converters cover OpenNMT, fairseq, Marian and Hugging Face
models, not JAX; this module writes our parameters into its ``TransformerSpec``
directly. The mapping, box by box of Figure 1:

* W^Q, W^K, W^V (D, H, K) and W^O (H, J, D) become heads-major ``Linear``
  weights (H * K, D) and (D, H * J); self-attention's three input projections
  are one fused (3 H K, D) weight, encoder-decoder attention's keys and values
  one (2 H K, D). d_k need not be d_model / h (``head_dim``).
* Our positional encodings interleave sin and cos by dimension (§3.5);
  CTranslate2's own table concatenates them, so the exported model carries
  our table (``SINUSOIDAL_POSITIONS`` rows) or the learned one (row E).
* Embeddings are multiplied by sqrt(d_model) on input only (§3.4); the
  pre-softmax projection is the target embedding itself when tied.
* post-LN (§3.1) is ``pre_norm=False`` (LayerNorm after each residual add);
  pre-LN adds the final LayerNorm of each stack. LayerNorm's epsilon is the
  run's ``model.layer_norm_epsilon``.
* relu, gelu (exact, erf), silu and the GLU variants (reglu, geglu, swiglu:
  ``linear_0`` is W_1 under the activation, ``linear_0_noact`` is W_gate).

The two engines compute the same function (scores agree to about 1e-5 nats
per token in float32), and greedy search is the same search. Beam search is
not: CTranslate2 ranks finished hypotheses by log P / |Y|^alpha, we by the
GNMT penalty log P / ((5 + |Y|) / 6)^alpha of §6.1, so beam outputs can
differ by design; the paper's figures are the JAX path's.
"""

import datetime
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from transformer import checkpoint as checkpoint_lib
from transformer import checks, config_io
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

# Rows of the sinusoidal position table written into the model: CTranslate2
# reads positions from it, so a source or output longer than this is an
# error there (our JAX path has no limit).
SINUSOIDAL_POSITIONS = 2048

# model.activation -> (CTranslate2 Activation name, gated linear unit).
ACTIVATIONS = {
    "relu": ("RELU", False),
    "gelu": ("GELU", False),  # Exact (erf), as jax.nn.gelu(approximate=False).
    "silu": ("SWISH", False),
    "reglu": ("RELU", True),
    "geglu": ("GELU", True),
    "swiglu": ("SWISH", True),
}
# --quantization: how the weights are stored (CTranslate2's names). A model
# can also be loaded in another compute type (ctranslate2.Translator's
# compute_type, evaluate.py --ctranslate2_compute_type).
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16", "float16", "bfloat16")
COMPUTE_TYPES = ("default", "auto", "float32", "int8", "int8_float32", "int16",
                 "float16", "bfloat16", "int8_float16", "int8_bfloat16")
METADATA = "export.json"
TOKENIZER = "spm.model"


class ExportError(ValueError):
  """A run that cannot be exported as asked, or an exported model that
  cannot be used: one message naming the problem and the fix."""


# ----------------------------------------------------------------------------
# What CTranslate2 can express.
# ----------------------------------------------------------------------------


def check_exportable(model_config) -> None:
  """Raises ExportError naming every architecture switch of ``model_config``
  that CTranslate2's Transformer cannot express."""
  problems = []
  if model_config.activation not in ACTIVATIONS:
    problems.append(
        f"model.activation={model_config.activation!r} (CTranslate2 has "
        f"{', '.join(sorted(ACTIVATIONS))})")
  if model_config.d_k != model_config.d_v:
    problems.append(
        f"model.d_k={model_config.d_k} != model.d_v={model_config.d_v} (CTranslate2 "
        "has one head size for queries, keys and values)")
  if problems:
    raise ExportError(
        "This run cannot be exported to CTranslate2: " + "; ".join(problems)
        + ". Decode it with this project instead (python evaluate.py --workdir=...).")


# ----------------------------------------------------------------------------
# Parameters -> TransformerSpec.
# ----------------------------------------------------------------------------


def _array(p) -> np.ndarray:
  """A parameter as a float32 numpy array (bfloat16 parameters widened:
  CTranslate2 quantizes from float32 itself)."""
  return np.array(p[...], np.float32)  # A writable copy: quantizing works in place.


def _in_projection(w) -> np.ndarray:
  """(D, H, K) -> heads-major Linear weight (H * K, D)."""
  d, h, k = w.shape
  return w.reshape(d, h * k).T


def _out_projection(w) -> np.ndarray:
  """(H, J, D) -> Linear weight (D, H * J)."""
  h, j, d = w.shape
  return w.reshape(h * j, d).T


def _set_layer_norm(spec, norm):
  spec.gamma = _array(norm.scale)
  spec.beta = _array(norm.bias)


def _set_self_attention(spec, attention):
  q, k, v = (_in_projection(_array(w))
             for w in (attention.w_q, attention.w_k, attention.w_v))
  spec.linear[0].weight = np.concatenate([q, k, v], axis=0)  # (3 H K, D)
  spec.linear[1].weight = _out_projection(_array(attention.w_o))


def _set_cross_attention(spec, attention):
  spec.linear[0].weight = _in_projection(_array(attention.w_q))
  spec.linear[1].weight = np.concatenate(
      [_in_projection(_array(attention.w_k)), _in_projection(_array(attention.w_v))],
      axis=0)  # (2 H K, D)
  spec.linear[2].weight = _out_projection(_array(attention.w_o))


def _set_feed_forward(spec, ffn):
  spec.linear_0.weight = _array(ffn.w_1).T  # (F, D)
  spec.linear_1.weight = _array(ffn.w_2).T  # (D, F)
  if ffn.gated:
    spec.linear_0_noact.weight = _array(ffn.w_gate).T
  else:
    spec.linear_0.bias = _array(ffn.b_1)
    spec.linear_1.bias = _array(ffn.b_2)


def sinusoidal_table(num_positions: int, d_model: int) -> np.ndarray:
  """Our §3.5 encoding (sin and cos interleaved) for positions 0..n-1."""
  import jax.numpy as jnp

  from transformer import model as model_lib

  return np.asarray(model_lib.sinusoidal_encoding(jnp.arange(num_positions), d_model),
                    np.float32)


def transformer_spec(model, pieces: list[str]):
  """The CTranslate2 ``TransformerSpec`` of a Transformer, its weights set.

  Args:
    model: a ``transformer.model.Transformer`` (its parameters are read).
    pieces: the vocabulary, piece of id i at index i (source = target).
  """
  from ctranslate2.specs import common_spec
  from ctranslate2.specs import transformer_spec as ct2_spec

  cfg = model.cfg
  check_exportable(cfg)
  if len(pieces) != cfg.vocab_size:
    raise ExportError(f"The tokenizer has {len(pieces)} pieces but model.vocab_size is "
                      f"{cfg.vocab_size}.")
  activation, glu = ACTIVATIONS[cfg.activation]
  pre_norm = cfg.norm_position == "pre"
  options = dict(pre_norm=pre_norm,
                 activation=getattr(common_spec.Activation, activation), ffn_glu=glu,
                 head_dim=cfg.d_k if cfg.d_k * cfg.num_heads != cfg.d_model else None)
  encoder = ct2_spec.TransformerEncoderSpec(cfg.num_layers, cfg.num_heads, **options)
  decoder = ct2_spec.TransformerDecoderSpec(cfg.num_layers, cfg.num_heads, **options)
  spec = ct2_spec.TransformerSpec(encoder, decoder)

  # Embeddings (§3.4) and positional encodings (§3.5).
  encoder.embeddings[0].weight = _array(model.source_embedding.embedding)  # (V, D)
  decoder.embeddings.weight = _array(model.target_embedding.embedding)
  encoder.scale_embeddings = decoder.scale_embeddings = True  # * sqrt(d_model)
  if cfg.positional_encoding == "learned":
    encoder.position_encodings.encodings = _array(model.source_positions.embedding)
    decoder.position_encodings.encodings = _array(model.target_positions.embedding)
  else:
    table = sinusoidal_table(SINUSOIDAL_POSITIONS, cfg.d_model)
    encoder.position_encodings.encodings = table
    decoder.position_encodings.encodings = table
  # The pre-softmax linear transformation: E itself when tied (§3.4).
  decoder.projection.weight = (
      decoder.embeddings.weight if cfg.share_output_embedding
      else _array(model.output_projection).T)  # (V, D)

  for layer_spec, layer in zip(encoder.layer, model.encoder_layers, strict=True):
    _set_self_attention(layer_spec.self_attention, layer.self_attention)
    _set_layer_norm(layer_spec.self_attention.layer_norm, layer.residual_1.norm)
    _set_feed_forward(layer_spec.ffn, layer.feed_forward)
    _set_layer_norm(layer_spec.ffn.layer_norm, layer.residual_2.norm)
  for layer_spec, layer in zip(decoder.layer, model.decoder_layers, strict=True):
    _set_self_attention(layer_spec.self_attention, layer.self_attention)
    _set_layer_norm(layer_spec.self_attention.layer_norm, layer.residual_1.norm)
    _set_cross_attention(layer_spec.attention, layer.cross_attention)
    _set_layer_norm(layer_spec.attention.layer_norm, layer.residual_2.norm)
    _set_feed_forward(layer_spec.ffn, layer.feed_forward)
    _set_layer_norm(layer_spec.ffn.layer_norm, layer.residual_3.norm)
  if pre_norm:
    _set_layer_norm(encoder.layer_norm, model.encoder_norm)
    _set_layer_norm(decoder.layer_norm, model.decoder_norm)

  spec.config.layer_norm_epsilon = float(cfg.layer_norm_epsilon)
  spec.config.unk_token = pieces[UNK_ID]
  spec.config.bos_token = pieces[BOS_ID]
  spec.config.eos_token = pieces[EOS_ID]
  spec.config.decoder_start_token = pieces[BOS_ID]  # The model's shift-right.
  spec.config.add_source_eos = True  # The data pipeline appends EOS to sources.
  spec.register_source_vocabulary(pieces)
  spec.register_target_vocabulary(pieces)
  return spec


# ----------------------------------------------------------------------------
# Writing the model folder.
# ----------------------------------------------------------------------------


def write_model(model, tokenizer, folder: str, metadata: dict, *,
                quantization: str = "float32") -> None:
  """Writes ``model`` in CTranslate2's format into the existing ``folder``,
  with ``tokenizer``'s SentencePiece model and ``metadata`` (export.json)."""
  pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
  spec = transformer_spec(model, pieces)
  spec.validate()
  spec.optimize(quantization=quantization)
  spec.save(folder)
  shutil.copyfile(tokenizer.path, os.path.join(folder, TOKENIZER))
  with open(os.path.join(folder, METADATA), "w", encoding="utf-8") as f:
    json.dump(metadata, f, indent=2)


def _check_out(out: str, overwrite: bool) -> str:
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise ExportError(f"The output folder {out} exists; choose another --out, or pass "
                      "--overwrite to replace it.")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ExportError(f"--out={out} is a file, not a folder; choose another --out.")
  parent = os.path.dirname(out)
  checks.check_directory(parent, create=True, what="The folder of --out")
  return out


def _readme(metadata: dict) -> str:
  run, steps = metadata["workdir"], metadata["checkpoint_steps"]
  d = metadata["config"]["decode"]
  return f"""# CTranslate2 model of a Transformer run

Exported by `{metadata['command']}` on {metadata['created']}, CTranslate2
{metadata['ctranslate2_version']}, weights stored as {metadata['quantization']}.

- Run: `{run}`, checkpoints of steps {steps} averaged.
- Model: {metadata['model_summary']}.
- Tokenizer: `{TOKENIZER}` (SentencePiece; the run's, fingerprint
  {metadata['tokenizer_fingerprint']}); source and target share it.
- `{METADATA}`: these facts and the run's whole config.

Score it against references with the project's report (sacreBLEU, tokenized
and lowercase BLEU, empty outputs, sentences/s):

    python evaluate.py --workdir={run} --engine=ctranslate2 --ctranslate2_model=THIS_FOLDER

Or translate with CTranslate2 alone:

```python
import ctranslate2, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file="THIS_FOLDER/{TOKENIZER}")
translator = ctranslate2.Translator("THIS_FOLDER", device="cpu")
pieces = sp.encode(["The dog runs."], out_type=str)  # EOS is added by the model.
results = translator.translate_batch(
    pieces, beam_size={d['beam_size']}, length_penalty={d['alpha']}, max_input_length=0,
    max_decoding_length=len(pieces[0]) + {d['max_extra_length']},
    min_decoding_length={d['min_length']}, suppress_sequences=[["<pad>"], ["<s>"]])
print(sp.decode(results[0].hypotheses[0]))
```

Greedy search (beam_size=1) is the same search as this project's. Beam search
is not: CTranslate2 ranks finished hypotheses by log P / |Y|^alpha, the
project (and the paper, §6.1) by log P / ((5 + |Y|) / 6)^alpha, so a few beam
outputs differ even though the model is the same.
"""


def export(workdir: str, out: str, *, average_last: int | None = None,
           step: int | None = None, quantization: str = "float32",
           overwrite: bool = False, config=None, command: str | None = None) -> dict:
  """Writes the CTranslate2 model of a run's (averaged) checkpoints to ``out``.

  The checkpoints are chosen as ``evaluate.py`` chooses them: the last
  ``average_last`` (default ``decode.average_last``) up to ``step`` (default:
  the latest). ``out`` gets CTranslate2's files, the run's SentencePiece model
  (``spm.model``), ``export.json`` (run, steps, config, versions) and a
  README. Everything is written to a temporary folder beside ``out`` and
  renamed at the end, so ``out`` is never half-written; an existing ``out``
  is refused unless ``overwrite``, and then replaced only once the new one is
  complete. Returns the metadata written to ``export.json``.
  """
  import ctranslate2

  from transformer import evaluate as evaluate_lib

  if quantization not in QUANTIZATIONS:
    raise ExportError(f"Unknown --quantization={quantization!r}; choose one of "
                      f"{', '.join(QUANTIZATIONS)}.")
  if config is None:
    config, _ = config_io.with_default_fields(evaluate_lib.load_run_config(workdir))
  check_exportable(config.model)
  out = _check_out(out, overwrite)
  # An asked-for --average_last must be met; the config's is the ones kept
  # (checkpoint.select_steps, the one averaging policy).
  exact = average_last is not None or step is not None
  average_last = config.decode.average_last if average_last is None else average_last
  model, steps = checkpoint_lib.restore_model(config.model, workdir, average_last=average_last,
                                              step=step, exact=exact)
  tokenizer = evaluate_lib.load_run_tokenizer(config, workdir)

  m = config.model
  metadata = {
      "workdir": os.path.abspath(workdir),
      "checkpoint_steps": [int(s) for s in steps],
      "quantization": quantization,
      "tokenizer_fingerprint": tokenizer.fingerprint,
      "ctranslate2_version": ctranslate2.__version__,
      "sinusoidal_positions": (SINUSOIDAL_POSITIONS if m.positional_encoding == "sinusoidal"
                               else None),
      "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "command": command or "transformer.export.export(...)",
      "model_summary": (f"N={m.num_layers}, d_model={m.d_model}, d_ff={m.d_ff}, h={m.num_heads}, "
                        f"d_k={m.d_k}, {m.activation}, {m.norm_position}-LN, "
                        f"{m.positional_encoding} positions, vocabulary {m.vocab_size}"),
      "config": config.to_dict(),
  }
  parent, name = os.path.split(out)
  for stale in os.listdir(parent):  # Left by an export that was killed.
    if stale.startswith(f".{name}.tmp-"):
      shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
  tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0o700 would hide the model from others.
  old = None
  try:
    write_model(model, tokenizer, tmp, metadata, quantization=quantization)
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
      f.write(_readme(metadata))
    if os.path.exists(out):  # overwrite: the old one goes only once the new one is whole.
      old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
      os.rename(out, os.path.join(old, name))
    os.rename(tmp, out)
  except BaseException:
    if old is not None and not os.path.exists(out):
      os.rename(os.path.join(old, name), out)  # Put the old one back.
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  return metadata


# ----------------------------------------------------------------------------
# Decoding with the exported model.
# ----------------------------------------------------------------------------


def load_metadata(model_dir: str) -> dict:
  """``export.json`` of an exported model, or an ExportError naming the fix."""
  path = os.path.join(model_dir, METADATA)
  if not os.path.isdir(model_dir):
    raise ExportError(f"CTranslate2 model folder {model_dir!r} does not exist; write it "
                      "with python -m transformer.export --workdir=DIR --out=FOLDER.")
  if not (os.path.isfile(path) and os.path.isfile(os.path.join(model_dir, "model.bin"))):
    raise ExportError(f"{model_dir!r} is not a model folder written by "
                      "python -m transformer.export (no export.json or model.bin).")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ExportError(f"{path} cannot be read ({e}); export the run again.") from None


def load_translator(model_dir: str, *, compute_type: str = "default",
                    threads: int | None = None):
  """A ``ctranslate2.Translator`` on the CPU for an exported model, running
  one batch at a time on ``threads`` cores (default: every usable core)."""
  import ctranslate2

  load_metadata(model_dir)
  if compute_type not in COMPUTE_TYPES:
    raise ExportError(f"Unknown CTranslate2 compute type {compute_type!r}; choose one of "
                      f"{', '.join(COMPUTE_TYPES)}.")
  threads = threads or len(os.sched_getaffinity(0))
  try:
    return ctranslate2.Translator(model_dir, device="cpu", compute_type=compute_type,
                                  inter_threads=1, intra_threads=threads)
  except (RuntimeError, ValueError) as e:
    raise ExportError(
        f"CTranslate2 cannot load {model_dir!r} as {compute_type}: {str(e).rstrip('.')}. "
        "Choose another --ctranslate2_compute_type (float32 and int8 run on any CPU), or "
        "export the run again if the folder is damaged.") from None


def ctranslate2_translate_fn(translator, pieces: list[str], decode_config, *,
                             batch_size: int | None = None, **overrides):
  """(B, S) source ids -> (B, L) output ids by CTranslate2, the translate
  function of ``ctranslate2_engine``, searched as the JAX engine is, in
  batches of ``batch_size`` (default ``decode.batch_size``) sentences.

  Each sentence gets the JAX path's limits: at most its source length (EOS
  included) + ``max_extra_length`` tokens with the EOS, at least
  ``min_length`` before it. PAD and BOS are never emitted (suppressed, as the
  JAX search forbids them). CTranslate2 takes one limit per call, so the
  batch runs to its longest sentence's limit and shorter sentences' outputs
  are cut at theirs: what the JAX search gives in greedy search, where it
  forces EOS at the limit. One difference remains: CTranslate2 does not
  decode an empty source line and returns an empty translation, where the
  JAX search (min_length=1) still emits a token.
  """
  from transformer import evaluate as evaluate_lib

  search = evaluate_lib.decode_options(decode_config, **overrides)
  batch_size = decode_config.batch_size if batch_size is None else batch_size
  extra = search["max_extra_length"]
  options = {"beam_size": search["beam_size"],
             # CTranslate2's penalty: log P / |Y|^alpha (ours is GNMT's, see above).
             "length_penalty": search["alpha"],
             "min_decoding_length": search["min_length"]}
  index = {piece: i for i, piece in enumerate(pieces)}
  suppress = [[pieces[PAD_ID]], [pieces[BOS_ID]]]

  def translate(inputs):
    inputs = np.asarray(inputs)
    sources, limits = [], []
    for row in inputs:
      ids = [int(t) for t in row if t != PAD_ID]
      limits.append(len(ids) + extra - 1)  # Tokens before the EOS.
      if ids and ids[-1] == EOS_ID:
        ids = ids[:-1]  # The model adds it (add_source_eos).
      sources.append([pieces[t] for t in ids])
    longest = max(max(limits, default=1), 1)
    try:
      results = translator.translate_batch(
          sources, max_batch_size=batch_size, max_input_length=0,
          max_decoding_length=longest, suppress_sequences=suppress,
          # The length limit wins over min_length, as in the JAX search.
          **dict(options, min_decoding_length=min(options["min_decoding_length"], longest)))
    except RuntimeError as e:  # E.g. a sentence longer than the position table.
      raise ExportError(
          f"CTranslate2 could not translate a batch of {len(sources)} sentences (the "
          f"longest {max(map(len, sources), default=0)} tokens): {e}. The exported model "
          f"knows {SINUSOIDAL_POSITIONS} positions (sinusoidal) or model.max_len (learned); "
          "translate longer sentences with --engine=jax.") from None
    rows = [[index[t] for t in r.hypotheses[0][:limit]] + [EOS_ID]
            for r, limit in zip(results, limits, strict=True)]
    out = np.full((len(rows), max(map(len, rows), default=1)), PAD_ID, np.int32)
    for i, row in enumerate(rows):
      out[i, :len(row)] = row
    return out

  return translate


def ctranslate2_engine(model_dir: str, tokenizer, decode_config, *,
                       compute_type: str = "default", threads: int | None = None,
                       **overrides):
  """An exported model as an ``evaluate.Engine`` ("ctranslate2"), searched
  as ``config.decode`` says (``overrides`` replace single fields);
  ``tokenizer`` must be the one the model was exported with (the run's), or
  the ids would mean other pieces. Its steps are the checkpoints chosen at
  export."""
  from transformer import evaluate as evaluate_lib

  metadata = load_metadata(model_dir)
  if metadata.get("tokenizer_fingerprint") != tokenizer.fingerprint:
    raise ExportError(
        f"The CTranslate2 model {model_dir!r} was exported with another tokenizer than "
        f"{tokenizer.path} (fingerprints {metadata.get('tokenizer_fingerprint')} and "
        f"{tokenizer.fingerprint}): it is not this run's model. Export this run again.")
  translator = load_translator(model_dir, compute_type=compute_type, threads=threads)
  pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
  translate = ctranslate2_translate_fn(translator, pieces, decode_config, **overrides)
  return evaluate_lib.Engine(
      translate, name="ctranslate2", dtype=translator.compute_type,
      steps=tuple(int(s) for s in metadata["checkpoint_steps"]),
      report={"ctranslate2_model": os.path.abspath(model_dir),
              "quantization": metadata.get("quantization")})


def score(translator, pieces: list[str], sources: list[list[int]],
          targets: list[list[int]]) -> list[np.ndarray]:
  """Per-token log P(y_t | y_<t, x) of ``targets`` given ``sources`` (ids
  without EOS), EOS's included, by CTranslate2's ``score_batch``."""
  as_pieces = lambda rows: [[pieces[t] for t in r] for r in rows]  # noqa: E731
  results = translator.score_batch(as_pieces(sources), as_pieces(targets),
                                   max_input_length=0)
  return [np.asarray(r.log_probs, np.float64) for r in results]


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------


def main(argv):
  """The command (run by cli.run: a ConfigError exits with 2; an ExportError,
  a missing run or checkpoint with 1)."""
  from absl import flags

  f = flags.FLAGS
  if len(argv) > 1:
    raise checks.ConfigError(f"Unexpected arguments: {argv[1:]}")
  if not f.workdir or not f.out:
    raise checks.ConfigError("--workdir (a train.py run) and --out (the folder to write) "
                             "are required.")
  metadata = export(f.workdir, f.out, average_last=f.average_last, step=f.step,
                    quantization=f.quantization, overwrite=f.overwrite,
                    command="python -m transformer.export " + " ".join(sys.argv[1:]))
  print(f"Wrote the CTranslate2 model of {f.workdir} (steps "
        f"{metadata['checkpoint_steps']}, {metadata['quantization']}) to "
        f"{os.path.abspath(f.out)}.")


def _define_flags():
  from absl import flags

  flags.DEFINE_string("workdir", None, "The train.py run to export.")
  flags.DEFINE_string("out", None, "The CTranslate2 model folder to write.")
  flags.DEFINE_integer("average_last", None, "Average the last N checkpoints (default: "
                       "the run's decode.average_last).")
  flags.DEFINE_integer("step", None, "Use checkpoints up to this step (default: latest).")
  flags.DEFINE_enum("quantization", "float32", QUANTIZATIONS, "How the weights are stored.")
  flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")


if __name__ == "__main__":
  from transformer import cli

  _define_flags()
  cli.run(main, config_flag=None)  # Flag errors: one "error:" line, exit code 2.
