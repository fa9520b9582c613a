"""Every config field, declared once: its default, type, valid values and meaning.

configs/common.py builds every experiment's defaults from this table, and
transformer/checks.py checks a config against it, so a new field is one entry
here. Each entry is ``Field(default, type, valid, doc)``:

* default: the paper's choice. Switches that depart from it say so in their
  comment (``# Deviation from the paper``). ``PER_SIZE``: the field is a
  column of Table 3's model sizes (configs/common.py's ``MODEL_SIZES``).
* type: int (not bool), float (an int is accepted; finite), str, bool, or
  dict (a section of its own).
* valid: what a value must satisfy, as (test, what the test means).
* doc: what the field is, in one line.

The four sections:

* ``model``:  the architecture (§3) and its ablation switches.
* ``data``:   dataset, tokenizer and batching (§5.1).
* ``train``:  objective, optimizer, schedule, parallelism, checkpoints (§5.2-5.4).
* ``decode``: beam search and checkpoint averaging (§6.1).

Choice lists are transformer/choices.py's (the registries' own names). This
module imports no JAX: a config is built and checked before JAX starts.
"""

import copy
import dataclasses
from collections.abc import Callable

import ml_collections

from transformer import choices, tokens

# Special ids of the shared vocabulary; a vocabulary needs at least one more.
SPECIAL_IDS = (tokens.PAD_ID, tokens.EOS_ID, tokens.UNK_ID, tokens.BOS_ID)
# lp(Y) = ((5 + |Y|) / 6)^alpha (§6.1, Wu et al. 2016): GNMT tunes alpha in
# [0, 1]; beyond 10, lp of a few hundred tokens overflows float32.
MAX_ALPHA = 10.0
# The default of a column of configs/common.py's MODEL_SIZES (Table 3).
PER_SIZE = "<Table 3 size>"


@dataclasses.dataclass(frozen=True)
class Field:
  default: object
  kind: type
  valid: tuple[Callable[[object], bool], str]  # (test, what it means)
  doc: str


# ---------------------------------------------------------------------------
# What a value must satisfy: (test, what the test means).
# ---------------------------------------------------------------------------

ONE_OF = "one of "  # The start of a choice's meaning ("is not one of [...]").


def at_least(n):
  return (lambda v: v >= n), f">= {n}"


def positive():
  return (lambda v: v > 0), "> 0"


def in_range(lo, hi, *, lo_open=False, hi_open=False):
  def test(v):
    return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  return test, f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def non_empty():
  return bool, "non-empty"


def one_of(*names):
  """A choice, named in the message as a sorted list."""
  return (lambda v: v in names), f"{ONE_OF}{sorted(names)}"


def either(*names):
  """A choice of a few, named in the message in order: 'a' or 'b'."""
  return (lambda v: v in names), " or ".join(map(repr, names))


ANY = (lambda v: True), ""
PROBABILITY = in_range(0.0, 1.0, hi_open=True)


# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------

MODEL = {
    # More than the special ids; SentencePiece also needs one piece per
    # character of the text (checked when the tokenizer is trained).
    "vocab_size": Field(37000, int, at_least(len(SPECIAL_IDS) + 1),
                        "Shared source/target BPE vocabulary (§5.1)."),
    "num_layers": Field(PER_SIZE, int, at_least(1), "N, both stacks (§3.1)."),
    "d_model": Field(PER_SIZE, int, at_least(1), "Width of every sub-layer output (§3.1)."),
    "d_ff": Field(PER_SIZE, int, at_least(1), "Inner size of the feed-forward network (§3.3)."),
    "num_heads": Field(PER_SIZE, int, at_least(1), "h (§3.2.2)."),
    "d_k": Field(PER_SIZE, int, at_least(1), "Per-head query/key size."),
    "d_v": Field(PER_SIZE, int, at_least(1), "Per-head value size."),
    "dropout_rate": Field(PER_SIZE, float, PROBABILITY,
                          "P_drop: sub-layer outputs and embedding sums (§5.4)."),
    # Deviation from the paper when > 0: dropout on attention weights and on the
    # FFN hidden activation (tensor2tensor's defaults, not in the paper).
    "attention_dropout_rate": Field(0.0, float, PROBABILITY,
                                    "Dropout on the attention weights."),
    "ffn_dropout_rate": Field(0.0, float, PROBABILITY,
                              "Dropout on the FFN's hidden activation."),
    # relu is Eq. (2). Deviation from the paper: gelu, elu, silu, reglu, geglu,
    # swiglu (Shazeer 2020).
    "activation": Field("relu", str, one_of(*choices.ACTIVATIONS, *choices.GATED_ACTIVATIONS),
                        "Activation of the position-wise feed-forward network."),
    # "post": LayerNorm(x + Dropout(Sublayer(x))) as in §3.1. Deviation from the
    # paper: "pre" (x + Dropout(Sublayer(LayerNorm(x))) and a final LayerNorm).
    "norm_position": Field("post", str, one_of(*choices.NORM_POSITIONS),
                           "Where each sub-layer's LayerNorm is."),
    "layer_norm_epsilon": Field(1e-6, float, positive(), "LayerNorm's epsilon."),
    # "sinusoidal" (§3.5) or "learned" (Table 3 row E).
    "positional_encoding": Field("sinusoidal", str, one_of(*choices.POSITIONAL_ENCODINGS),
                                 "How positions are encoded."),
    "max_len": Field(1024, int, at_least(1), "Longest position a learned embedding can encode."),
    # Three-way weight tying (§3.4): source embedding = target embedding =
    # pre-softmax projection. Each tie can be switched off.
    "share_source_target_embedding": Field(True, bool, ANY,
                                           "One embedding for source and target."),
    "share_output_embedding": Field(True, bool, ANY,
                                    "The pre-softmax projection is the target embedding."),
    # Compute dtype of activations and matmul operands; matmuls accumulate in
    # float32, and LayerNorm statistics, softmax, logits and the loss stay
    # float32 (mixed precision: parameters and Adam state stay param_dtype).
    # "auto": bfloat16 on GPU/TPU and on a CPU with a bfloat16 matrix engine
    # (AMX-BF16 or AVX512-BF16 in /proc/cpuinfo), float32 on other CPUs, where
    # bfloat16 matmuls are emulated and slower. Or "float32" / "bfloat16"
    # ("float16": GPU/TPU only).
    "dtype": Field("auto", str, ANY,  # Checked for the platform: precision.dtype_name.
                   "Compute dtype."),
    "param_dtype": Field("float32", str, one_of(*choices.DTYPES),
                         "Dtype of the parameters and the optimizer state."),
    # "auto": cuDNN's fused attention on a GPU where the model allows it (below),
    # else the einsums: the same function (Eq. 1), and on a GPU the (B, H, Q, M)
    # weights are never stored (base: about 1/5 fewer bytes moved per step).
    # "xla": einsum implementation of Eq. (1). "dot_product_attention":
    # jax.nn.dot_product_attention, which is cuDNN's fused attention (forward and
    # backward, training and decoding) on a GPU and XLA's attention elsewhere.
    # cuDNN needs dtype bfloat16/float16 (auto is bfloat16 on a GPU), d_k == d_v
    # a multiple of 8 up to 256 (128 before Hopper) and an even data.max_length;
    # the fused path has no attention dropout (attention_dropout_rate=0). A model
    # config it cannot take is one error at model build; an odd sequence length,
    # one error when the step is traced ("auto" takes the einsums then).
    "attention_impl": Field("auto", str, one_of(*choices.ATTENTION_IMPLS),
                            "What computes Eq. (1)."),
    # The dtype the activation-sized matmul products are written in (the
    # projections, Eq. (2)'s two products, P V, and their input gradients),
    # with their biases and activations applied in it; the GEMM accumulates in
    # float32 either way, weight gradients stay float32, and Q K^T, the
    # softmax of Eq. (1), LayerNorm's statistics and the loss's log-softmax
    # stay float32. "float32": every product written float32. "compute": in
    # model.dtype (MaxText's, t5x's and the Flax WMT example's form), which
    # halves the bytes those products move. "auto": "compute" on a GPU,
    # "float32" on a TPU and a CPU, as the planner showed
    # (precision.matmul_output_dtype).
    "matmul_output": Field("auto", str, one_of(*choices.MATMUL_OUTPUTS),
                           "Dtype of the activation-sized matmul products."),
}

DATA = {
    # "tfds": a TFDS translate builder; "text": a folder of {split}.{lang} files;
    # "synthetic": the project's generated EN->DE corpus (offline).
    "source": Field("tfds", str, ANY,  # Choices: data.sources.check_config.
                    "Where the parallel text comes from."),
    "tfds_name": Field("wmt14_translate/de-en", str, ANY, "The TFDS builder."),
    "tfds_data_dir": Field("", str, ANY, "Empty: $TFDS_DATA_DIR or TFDS's default."),
    # False: a dataset that is not prepared is an error naming the command that
    # prepares it. True: download and prepare it on first use (needs network).
    "tfds_download": Field(False, bool, ANY, "Download and prepare on first use."),
    "dir": Field("", str, ANY, "Folder of {split}.{lang} files for source=\"text\"."),
    "source_lang": Field("en", str, non_empty(),
                         "Direction comes from these, never from TFDS key order."),
    "target_lang": Field("de", str, non_empty(), "The language translated into."),
    "train_split": Field("train", str, non_empty(), "The training split."),
    "dev_split": Field("validation", str, non_empty(), "newstest2013 for wmt14_translate."),
    "test_split": Field("test", str, non_empty(), "newstest2014 for wmt14_translate."),
    # SentencePiece, one vocabulary shared by source and target; its size is
    # model.vocab_size.
    "tokenizer_type": Field("bpe", str, either(*choices.TOKENIZER_TYPES),
                            "\"bpe\" (the paper's byte-pair encoding) or \"unigram\"."),
    "tokenizer_path": Field("", str, ANY, "Existing .model file; empty: train one in the workdir."),
    # Training sample of the tokenizer, in sentences (half source, half
    # target): a uniform sample of pairs of the whole training split, drawn in
    # one streaming pass. 2M sentences cover WMT's vocabulary; the whole split
    # when it is smaller (Multi30k, the quickstart).
    "tokenizer_sample_sentences": Field(2_000_000, int, at_least(2),  # One pair.
                                        "Sentences the tokenizer is trained on."),
    # Fraction of the sample's characters given their own piece; the rest are
    # UNK. 1.0 keeps every character, so decoding is exact detokenization.
    "tokenizer_character_coverage": Field(1.0, float, in_range(0.0, 1.0, lo_open=True),
                                          "Characters given their own piece."),
    # Training pairs longer than this (in tokens, EOS included, either side) are
    # dropped, and counted in the log. Also the row length of packed batches.
    # Evaluation sentences are never dropped or truncated.
    "max_length": Field(256, int, at_least(2),  # One token and EOS.
                        "Longest training pair, in tokens."),
    # Token budget per update, summed over all devices and hosts, per side:
    # each step holds at most this many source and this many target tokens
    # (the paper: about 25000 + 25000 on 8 GPUs, §5.1).
    "batch_tokens": Field(25000, int, at_least(1), "Tokens per update and side."),
    # "pack": several pairs per row of max_length tokens, with segment ids and
    # positions (one static shape). "bucket": one pair per row, rows of a few
    # fixed lengths (one shape per bucket).
    "batching": Field("pack", str, ANY,  # Choices: data.sources.check_config.
                      "How pairs are put into rows."),
    "eval_batch_size": Field(64, int, at_least(1),
                             "Sentences per evaluation batch (padded, never dropped)."),
    "prefetch": Field(4, int, at_least(0), "Batches planned ahead in a background thread."),
    # Threads that assemble the planned batches (compiled, without the GIL, so
    # they use the host's spare cores); 0: the prefetch thread does it alone.
    "workers": Field(2, int, at_least(0), "Threads that assemble the batches."),
    "seed": Field(0, int, at_least(0),
                  "Shuffle seed; epochs are reshuffled deterministically."),
    "cache_dir": Field("", str, ANY, "Token-id cache; empty: <workdir>/data_cache."),
    # Generated corpus (source="synthetic").
    "synthetic_train_size": Field(50_000, int, at_least(1), "Generated training pairs."),
    "synthetic_dev_size": Field(500, int, at_least(1), "Generated dev pairs."),
    "synthetic_test_size": Field(500, int, at_least(1), "Generated test pairs."),
    "synthetic_seed": Field(0, int, at_least(0), "Seed of the generated corpus."),
}

TRAIN = {
    "seed": Field(0, int, at_least(0), "Seed of the initialization and of dropout."),
    # configs/common.py: 300K for the big model (Table 3).
    "num_steps": Field(100_000, int, at_least(1), "Updates (Table 3, base model)."),
    "label_smoothing": Field(0.1, float, PROBABILITY, "epsilon_ls (§5.4)."),
    # Adam (§5.3).
    "adam_b1": Field(0.9, float, PROBABILITY, "Adam's beta_1 (§5.3)."),
    "adam_b2": Field(0.98, float, PROBABILITY, "Adam's beta_2 (§5.3)."),
    "adam_eps": Field(1e-9, float, positive(), "Adam's epsilon (§5.3)."),
    # Eq. (3): lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).
    "warmup_steps": Field(4000, int, at_least(1),  # Eq. (3) divides by it.
                          "Steps of the linear warmup of Eq. (3)."),
    "learning_rate_scale": Field(1.0, float, positive(),  # Deviation from the paper when != 1.
                                 "Factor on Eq. (3)'s rate."),
    # Deviation from the paper when > 0 (global norm clip).
    "grad_clip_norm": Field(0.0, float, at_least(0.0), "Largest global gradient norm."),
    # Deviation from the paper when > 0 (decoupled, AdamW).
    "weight_decay": Field(0.0, float, at_least(0.0), "Decoupled weight decay."),
    # The loss and its gradient take at most this many target tokens per device
    # at a time (transformer/loss.py, chunked_cross_entropy_sums), so that
    # float32 logits (4 bytes x vocab_size per token) never exist for a whole
    # large batch; 0: the whole batch at once. The same loss either way.
    "loss_chunk_tokens": Field(8192, int, at_least(0),  # 0: one chunk.
                               "Target tokens per chunk of the loss."),
    # Micro-batches per update: k micro-batches of data.batch_tokens each give
    # the same update as one batch of k * data.batch_tokens (losses, gradients
    # and token counts are summed, then divided once).
    "accumulate_steps": Field(1, int, at_least(1), "Micro-batches per update."),
    # Parallelism: mesh axis sizes over all devices of all hosts (-1: the rest).
    # transformer/sharding.py maps the model's logical axes to these axes. Data
    # parallel by default. FSDP for big models: --config.train.fsdp=True
    # --config.train.mesh_shape.data=1 --config.train.mesh_shape.fsdp=-1.
    "mesh_shape": Field({"data": -1, "fsdp": 1, "tensor": 1}, dict,
                        ANY,  # Axes and sizes: checks._check_mesh_shape.
                        "Mesh axis sizes."),
    "fsdp": Field(False, bool, ANY, "True: shard parameters and optimizer state over \"fsdp\"."),
    # On a GPU or TPU, compile the train step before any data work and stop with
    # one error naming the bytes needed and available if it does not fit (the
    # programs the loop then runs, so no extra compile; CPUs report no memory
    # limit and skip it). The same check
    # ahead of time, without the devices: python -m transformer.plan.
    "check_memory": Field(True, bool, ANY, "Check that the train step fits the devices."),
    # Rematerialisation, per encoder and decoder layer: what the backward pass
    # recomputes instead of keeping from the forward pass. "none": keep
    # everything. "matmuls": keep only the matmul products, recompute the
    # element-wise work (norms, activations, dropout, softmax). "full": keep
    # only each layer's input, recompute the layer. The same gradients (up to
    # the order of float sums); less memory, more FLOPs (python -m
    # transformer.plan shows both).
    "remat": Field("none", str, one_of(*choices.REMAT_POLICIES),
                   "What each layer recomputes in the backward pass."),
    # XLA options the train step is compiled with (jax.jit compiler_options),
    # the same in training and in the planner: "auto" is the project's set for
    # the platform (train.XLA_OPTIONS: on a GPU the latency-hiding scheduler
    # and cuBLAS GEMMs; nothing on a CPU or a TPU); "none": XLA's defaults.
    # Either may be followed by comma-separated name=value pairs that add or
    # override options, e.g. "auto,xla_gpu_enable_triton_gemm=true".
    "xla_options": Field("auto", str, ANY,  # Parsed: train.xla_options.
                         "XLA options of the train step."),
    # "data": Adam's moments split over the "data" axis (ZeRO stage 1): the
    # gradient is reduce-scattered to them, each data-parallel device updates
    # its share and the update is gathered; the same update. "none": the
    # moments are whole on every data-parallel device and the gradient is
    # all-reduced. "auto": "data" on a GPU (base on 8 x H100: 9% fewer bytes
    # per step, 0.4 GiB less memory), "none" on a TPU (v5e: XLA reshards the
    # split moments with hundreds of permutes, 15% more bytes) and a CPU
    # (docs/wmt14.md). One device, or a mesh with data=1 (FSDP): no change.
    "shard_optimizer": Field("auto", str, one_of(*choices.SHARD_OPTIMIZER),
                             "Adam's moments split over the data-parallel devices."),
    # A JAX profiler trace of train.profile_steps steps, after the first
    # train.profile_skip_steps steps this process runs (compilation and
    # warm-up stay out of it), written to DIR/profile/ (TensorBoard's profile
    # plugin, or Perfetto); 0: no trace.
    "profile_steps": Field(0, int, at_least(0), "Steps traced by the JAX profiler; 0: none."),
    "profile_skip_steps": Field(3, int, at_least(0),
                                "Steps this process runs before the trace starts."),
    # Logging (console, DIR/metrics.jsonl, TensorBoard), evaluation, checkpoints.
    "log_every_steps": Field(100, int, at_least(1), "Steps between log lines."),
    "eval_every_steps": Field(5000, int, at_least(0),
                              "Dev loss/perplexity and greedy BLEU; 0: never."),
    "eval_bleu_sentences": Field(500, int, at_least(0),
                                 "Dev sentences decoded for the periodic BLEU."),
    # A checkpoint is saved every N steps and every M minutes (0: that trigger
    # off), at the end, and on SIGTERM/SIGINT; the last K are kept.
    "checkpoint_every_steps": Field(5000, int, at_least(0), "N: steps between checkpoints."),
    "checkpoint_every_minutes": Field(10.0, float, at_least(0.0),
                                      "M. The paper averages 10-minute checkpoints."),
    "keep_checkpoints": Field(20, int, at_least(1),  # 0 would delete every one.
                              "K: checkpoints kept."),
}

DECODE = {
    "beam_size": Field(4, int, at_least(1), "Beam size (§6.1); 1 is greedy."),
    "alpha": Field(0.6, float, in_range(0.0, MAX_ALPHA),
                   "Length penalty lp(Y) = ((5 + |Y|) / 6)^alpha."),
    "max_extra_length": Field(50, int, at_least(0), "Output length <= input length + 50."),
    # Deviation from the paper: no EOS before the first real token, so no empty
    # translation (see transformer/search.py); 0 is the paper's search.
    "min_length": Field(1, int, at_least(0), "Real tokens before EOS."),
    # configs/common.py: 20 for the big model (§6.1).
    "average_last": Field(5, int, at_least(1), "Checkpoints averaged (§6.1, base model)."),
    "batch_size": Field(64, int, at_least(1), "Sentences per decoding batch."),
    # Compute dtype of decoding; the parameters are the trained ones either way.
    # "auto": float32 on a CPU (where bfloat16 decoding is slower, even with
    # bfloat16 instructions), model.dtype on GPU/TPU. "model": model.dtype as
    # trained. Or "float32" / "bfloat16" ("float16": GPU/TPU only).
    "dtype": Field("auto", str, either(*choices.DECODE_DTYPES), "Compute dtype of decoding."),
}

SECTIONS = {"model": MODEL, "data": DATA, "train": TRAIN, "decode": DECODE}

# Optional section: configs/table3.py's paper figures of its row (read by the
# summary, never by training). The numbers are None where Table 3 is blank.
PAPER_FIELDS = {"row": str, "dev_ppl": float, "dev_bleu": float, "params_millions": float}


def default_value(field: Field):
  """``field``'s default as a config holds it (a section: a new ConfigDict)."""
  if isinstance(field.default, dict):
    return ml_collections.ConfigDict(copy.deepcopy(field.default))
  return field.default


def defaults(section: str, **per_size) -> ml_collections.ConfigDict:
  """The ``section`` of the config with every field at its default, and the
  ``PER_SIZE`` fields at the values given (configs/common.py)."""
  values = ml_collections.ConfigDict()
  for name, field in SECTIONS[section].items():
    if field.default == PER_SIZE:
      if name not in per_size:
        raise TypeError(f"config.{section}.{name} takes its default from the model size; "
                        "pass it.")
      values[name] = per_size.pop(name)
    else:
      values[name] = default_value(field)
  if per_size:
    raise TypeError(f"config.{section} has no per-size fields {sorted(per_size)}.")
  return values
