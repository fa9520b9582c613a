"""Shared defaults for every experiment config.

Each experiment file (``wmt14_ende.py``, ``table3.py``, ...) starts from
``get_base_config()`` and changes only what differs, so that a config reads as
a diff against the paper's base model. The four sections are:

* ``model``:  the architecture (§3) and its ablation switches.
* ``data``:   dataset, tokenizer and batching (§5.1).
* ``train``:  objective, optimizer, schedule, parallelism, checkpoints (§5.2-5.4).
* ``decode``: beam search and checkpoint averaging (§6.1).

Every default is the paper's choice. Switches that depart from it say so in
their comment.
"""

import ml_collections

# Model sizes of Table 3 ("base" and "big" rows). Paper: Vaswani et al. 2017.
MODEL_SIZES = {
    #        N  d_model  d_ff  h  d_k  d_v  P_drop
    "base": (6, 512, 2048, 8, 64, 64, 0.1),
    "big": (6, 1024, 4096, 16, 64, 64, 0.3),
}


def model_config(size="base"):
  """The ``model`` section for a Table 3 size."""
  num_layers, d_model, d_ff, num_heads, d_k, d_v, dropout = MODEL_SIZES[size]
  m = ml_collections.ConfigDict()
  m.vocab_size = 37000  # Shared source/target BPE vocabulary (§5.1).
  m.num_layers = num_layers  # N, both stacks (§3.1).
  m.d_model = d_model
  m.d_ff = d_ff
  m.num_heads = num_heads  # h (§3.2.2).
  m.d_k = d_k  # Per-head query/key size.
  m.d_v = d_v  # Per-head value size.
  m.dropout_rate = dropout  # P_drop: sub-layer outputs and embedding sums (§5.4).
  # Deviation from the paper when > 0: dropout on attention weights and on the
  # FFN hidden activation (tensor2tensor's defaults, not in the paper).
  m.attention_dropout_rate = 0.0
  m.ffn_dropout_rate = 0.0
  # relu is Eq. (2). Deviation from the paper: gelu, elu, silu, reglu, geglu,
  # swiglu (Shazeer 2020).
  m.activation = "relu"
  # "post": LayerNorm(x + Dropout(Sublayer(x))) as in §3.1. Deviation from the
  # paper: "pre" (x + Dropout(Sublayer(LayerNorm(x))) and a final LayerNorm).
  m.norm_position = "post"
  m.layer_norm_epsilon = 1e-6
  # "sinusoidal" (§3.5) or "learned" (Table 3 row E).
  m.positional_encoding = "sinusoidal"
  m.max_len = 1024  # Longest position a learned embedding can encode.
  # Three-way weight tying (§3.4): source embedding = target embedding =
  # pre-softmax projection. Each tie can be switched off.
  m.share_source_target_embedding = True
  m.share_output_embedding = True
  # Compute dtype of activations and matmul operands; matmuls accumulate in
  # float32, and LayerNorm statistics, softmax, logits and the loss stay
  # float32 (mixed precision: parameters and Adam state stay param_dtype).
  # "auto": bfloat16 on GPU/TPU and on a CPU with a bfloat16 matrix engine
  # (AMX-BF16 or AVX512-BF16 in /proc/cpuinfo), float32 on other CPUs, where
  # bfloat16 matmuls are emulated and slower. Or "float32" / "bfloat16"
  # ("float16": GPU/TPU only).
  m.dtype = "auto"
  m.param_dtype = "float32"
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
  m.attention_impl = "auto"
  return m


def data_config():
  """The ``data`` section, read by the input pipeline (transformer/data/)."""
  d = ml_collections.ConfigDict()
  # "tfds": a TFDS translate builder; "text": a folder of {split}.{lang} files;
  # "synthetic": the project's generated EN->DE corpus (offline).
  d.source = "tfds"
  d.tfds_name = "wmt14_translate/de-en"
  d.tfds_data_dir = ""  # Empty: $TFDS_DATA_DIR or TFDS's default.
  # False: a dataset that is not prepared is an error naming the command that
  # prepares it. True: download and prepare it on first use (needs network).
  d.tfds_download = False
  d.dir = ""  # Folder of {split}.{lang} files for source="text".
  d.source_lang = "en"  # Direction comes from these, never from TFDS key order.
  d.target_lang = "de"
  d.train_split = "train"
  d.dev_split = "validation"  # newstest2013 for wmt14_translate.
  d.test_split = "test"  # newstest2014 for wmt14_translate.
  # SentencePiece, one vocabulary shared by source and target; its size is
  # model.vocab_size.
  d.tokenizer_type = "bpe"  # "bpe" (the paper's byte-pair encoding) or "unigram".
  d.tokenizer_path = ""  # Existing .model file; empty: train one in the workdir.
  # Training sample of the tokenizer, in sentences (half source, half
  # target): a uniform sample of pairs of the whole training split, drawn in
  # one streaming pass. 2M sentences cover WMT's vocabulary; the whole split
  # when it is smaller (Multi30k, the quickstart).
  d.tokenizer_sample_sentences = 2_000_000
  # Fraction of the sample's characters given their own piece; the rest are
  # UNK. 1.0 keeps every character, so decoding is exact detokenization.
  d.tokenizer_character_coverage = 1.0
  # Training pairs longer than this (in tokens, EOS included, either side) are
  # dropped, and counted in the log. Also the row length of packed batches.
  # Evaluation sentences are never dropped or truncated.
  d.max_length = 256
  # Token budget per update, summed over all devices and hosts, per side:
  # each step holds at most this many source and this many target tokens
  # (the paper: about 25000 + 25000 on 8 GPUs, §5.1).
  d.batch_tokens = 25000
  # "pack": several pairs per row of max_length tokens, with segment ids and
  # positions (one static shape). "bucket": one pair per row, rows of a few
  # fixed lengths (one shape per bucket).
  d.batching = "pack"
  d.eval_batch_size = 64  # Sentences per evaluation batch (padded, never dropped).
  d.prefetch = 4  # Batches planned ahead in a background thread.
  # Threads that assemble the planned batches (compiled, without the GIL, so
  # they use the host's spare cores); 0: the prefetch thread does it alone.
  d.workers = 2
  d.seed = 0  # Shuffle seed; epochs are reshuffled deterministically.
  d.cache_dir = ""  # Token-id cache; empty: <workdir>/data_cache.
  # Generated corpus (source="synthetic").
  d.synthetic_train_size = 50_000
  d.synthetic_dev_size = 500
  d.synthetic_test_size = 500
  d.synthetic_seed = 0
  return d


def train_config(num_steps=100_000):
  """The ``train`` section: objective, optimizer and run management."""
  t = ml_collections.ConfigDict()
  t.seed = 0
  t.num_steps = num_steps
  t.label_smoothing = 0.1  # epsilon_ls (§5.4).
  # Adam (§5.3).
  t.adam_b1 = 0.9
  t.adam_b2 = 0.98
  t.adam_eps = 1e-9
  # Eq. (3): lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).
  t.warmup_steps = 4000
  t.learning_rate_scale = 1.0  # Deviation from the paper when != 1.
  t.grad_clip_norm = 0.0  # Deviation from the paper when > 0 (global norm clip).
  t.weight_decay = 0.0  # Deviation from the paper when > 0 (decoupled, AdamW).
  # The loss and its gradient take at most this many target tokens per device
  # at a time (transformer/loss.py, chunked_cross_entropy_sums), so that
  # float32 logits (4 bytes x vocab_size per token) never exist for a whole
  # large batch; 0: the whole batch at once. The same loss either way.
  t.loss_chunk_tokens = 8192
  # Micro-batches per update: k micro-batches of data.batch_tokens each give
  # the same update as one batch of k * data.batch_tokens (losses, gradients
  # and token counts are summed, then divided once).
  t.accumulate_steps = 1
  # Parallelism: mesh axis sizes over all devices of all hosts (-1: the rest).
  # transformer/sharding.py maps the model's logical axes to these axes. Data
  # parallel by default. FSDP for big models: --config.train.fsdp=True
  # --config.train.mesh_shape.data=1 --config.train.mesh_shape.fsdp=-1.
  t.mesh_shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  t.fsdp = False  # True: shard parameters and optimizer state over "fsdp".
  # On a GPU or TPU, compile the train step before any data work and stop with
  # one error naming the bytes needed and available if it does not fit (one
  # extra compile; CPUs report no memory limit and skip it). The same check
  # ahead of time, without the devices: python -m transformer.plan.
  t.check_memory = True
  # Logging (console, DIR/metrics.jsonl, TensorBoard), evaluation, checkpoints.
  t.log_every_steps = 100
  t.eval_every_steps = 5000  # Dev loss/perplexity and greedy BLEU; 0: never.
  t.eval_bleu_sentences = 500  # Dev sentences decoded for the periodic BLEU.
  # A checkpoint is saved every N steps and every M minutes (0: that trigger
  # off), at the end, and on SIGTERM/SIGINT; the last K are kept.
  t.checkpoint_every_steps = 5000
  t.checkpoint_every_minutes = 10.0  # The paper averages 10-minute checkpoints.
  t.keep_checkpoints = 20
  return t


def decode_config(average_last=5):
  """The ``decode`` section: beam search of §6.1."""
  d = ml_collections.ConfigDict()
  d.beam_size = 4
  d.alpha = 0.6  # Length penalty lp(Y) = ((5 + |Y|) / 6)^alpha.
  d.max_extra_length = 50  # Output length <= input length + 50.
  # Deviation from the paper: no EOS before the first real token, so no empty
  # translation (see transformer/search.py); 0 is the paper's search.
  d.min_length = 1
  d.average_last = average_last  # Checkpoints averaged: 5 (base), 20 (big).
  d.batch_size = 64  # Sentences per decoding batch.
  # Compute dtype of decoding; the parameters are the trained ones either way.
  # "auto": float32 on a CPU (where bfloat16 decoding is slower, even with
  # bfloat16 instructions), model.dtype on GPU/TPU. "model": model.dtype as
  # trained. Or "float32" / "bfloat16" ("float16": GPU/TPU only).
  d.dtype = "auto"
  return d


def get_base_config(size="base"):
  """The paper's WMT14 EN-DE configuration for a model size."""
  config = ml_collections.ConfigDict()
  config.model = model_config(size)
  config.data = data_config()
  config.train = train_config(num_steps=100_000 if size == "base" else 300_000)
  config.decode = decode_config(average_last=5 if size == "base" else 20)
  return config


def parse_variant(arg, choices, default):
  """Returns the ``file.py:variant`` suffix, checked against ``choices``."""
  variant = arg or default
  if variant not in choices:
    raise ValueError(
        f"Unknown config variant {variant!r}; choose one of {sorted(choices)} "
        "(e.g. --config=configs/wmt14_ende.py:base).")
  return variant
