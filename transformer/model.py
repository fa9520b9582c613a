"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017), Flax NNX.

Read it next to the paper: each class is a box of Figure 1, each docstring
cites its section, and each equation sits above the line that computes it.
It computes the paper's function and nothing else: compute precision (the
"auto" dtype, the mixed-precision ``matmul`` every projection uses, the
attention kernel) is transformer/precision.py's, the checks of a config are
transformer/checks.py's (a model trusts the config it is given), and the
layout of the beam-search cache is decoding's (transformer/search.py, which
runs the decoder one position at a time through ``Transformer.decode_step``).

Dimension legend (einsum letters and shape comments):
  B batch                     D d_model
  S source length             F d_ff
  T target length             H number of heads h
  Q query length              K d_k (query/key size per head)
  M memory (key) length       J d_v (value size per head)
                              V vocabulary size

Logical axis names on parameters (mapped to mesh axes only by
transformer/sharding.py): "vocab", "embed", "mlp", "heads", "kv".

Initialization (our choice; the paper does not state one):
  * Projections (W^Q, W^K, W^V, W^O, W_1, W_2) are Xavier-uniform,
    U(+-sqrt(6 / (fan_in + fan_out))): it keeps activation variance roughly
    constant through each linear map. tensor2tensor's transformer_base_v1
    sets initializer="uniform_unit_scaling", initializer_gain=1.0, which it
    builds as tf.variance_scaling_initializer(1.0, mode="fan_avg",
    distribution="uniform"): the same distribution under another name.
  * Embeddings are N(0, d_model^-1). Multiplied by sqrt(d_model) (§3.4) they
    have unit variance, the same scale as the sinusoids; and when tied to the
    pre-softmax projection, the initial logits of a unit-variance decoder
    output also have unit variance.
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from transformer import choices, tokens
from transformer import sharding as sharding_lib
from transformer.precision import (
  DTYPES,
  add_bias,
  fused_attention,
  fused_attention_implementation,
  get_dtype,
  matmul,
  matmul_output_dtype,
)

# Logical axes of the activations between sub-layers (B, T, D): rows split like
# the batch, d_model whole. Training pins them there (sharding_lib.constrain);
# left to itself, XLA follows FSDP's split of d_model from the parameters into
# the activations and reshards them with all-to-alls.
BTD = ("batch", None, None)


# ----------------------------------------------------------------------------
# Registries: swappable parts are strings in config, resolved here.
# ----------------------------------------------------------------------------

# Activation of the position-wise feed-forward network, by the names of
# transformer/choices.py (config.model.activation's choices), in its order.
# relu is Eq. (2). Deviation from the paper (config switch model.activation):
# the others.
ACTIVATIONS = dict(zip(choices.ACTIVATIONS, (
    jax.nn.relu,
    functools.partial(jax.nn.gelu, approximate=False),  # Exact, not tanh's.
    jax.nn.elu,
    jax.nn.silu,
), strict=True))
# Gated linear units (Shazeer 2020, "GLU Variants Improve Transformer"):
# FFN(x) = (act(x W) * x W') W_2, without biases, hidden size d_ff; ReGLU,
# GEGLU, SwiGLU in choices.GATED_ACTIVATIONS' order.
GATED_ACTIVATIONS = dict(zip(choices.GATED_ACTIVATIONS, (
    jax.nn.relu,
    functools.partial(jax.nn.gelu, approximate=False),
    jax.nn.silu,
), strict=True))


def _param(rngs, init, shape, names, dtype):
  """A parameter annotated with logical axis names (never mesh axes)."""
  return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names,
                   eager_sharding=False)


_xavier = jax.nn.initializers.xavier_uniform
_zeros = jax.nn.initializers.zeros
_ones = jax.nn.initializers.ones


# ----------------------------------------------------------------------------
# The Transformer (Figure 1)
# ----------------------------------------------------------------------------

class Transformer(nnx.Module):
  """Encoder-decoder Transformer (§3, Figure 1).

  Call it on a batch to get float32 logits (B, T, V) that predict ``targets``;
  the decoder input is ``targets`` shifted right. Generation
  (transformer/search.py) calls ``encode`` once and then ``decode_step``, the
  same decoder layers over a key/value cache that it lays out itself.
  """

  def __init__(self, cfg, *, rngs, platform=None, remat="none"):
    """``platform``: the kind of device the model is compiled for ("cpu",
    "gpu", "tpu"; default: JAX's default backend). It resolves
    ``dtype="auto"`` and the fused attention kernel. ``remat``: what each
    layer's backward pass recomputes (``REMAT_POLICIES``; training's
    ``train.remat``). ``cfg`` is trusted: the entry points check it
    (``checks.check_config``)."""
    platform = platform or jax.default_backend()
    self.cfg = cfg
    self.remat = remat
    dtype, param_dtype = get_dtype(cfg.dtype, platform), DTYPES[cfg.param_dtype]
    self.dtype = dtype
    self.products = matmul_output_dtype(cfg, platform)  # Of the logits' input gradient.
    embed = functools.partial(Embedding, cfg.vocab_size, cfg.d_model, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)
    # Three-way weight tying (§3.4), each tie switchable.
    self.target_embedding = embed()
    # Deviation from the paper when False (model.share_source_target_embedding):
    # a separate source embedding.
    self.source_embedding = (self.target_embedding
                             if cfg.share_source_target_embedding else embed())
    if not cfg.share_output_embedding:
      # Deviation from the paper: a separate pre-softmax projection.
      self.output_projection = _param(rngs, _xavier(), (cfg.d_model, cfg.vocab_size),
                                      ("embed", "vocab"), param_dtype)
    if cfg.positional_encoding == "learned":
      self.source_positions = LearnedPositionalEmbedding(
          cfg.max_len, cfg.d_model, param_dtype=param_dtype, rngs=rngs)
      self.target_positions = LearnedPositionalEmbedding(
          cfg.max_len, cfg.d_model, param_dtype=param_dtype, rngs=rngs)
    # §5.4: dropout on the sums of embeddings and positional encodings.
    self.source_dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
    self.target_dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
    self.encoder_layers = nnx.List([
        EncoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs, platform=platform)
        for _ in range(cfg.num_layers)])
    self.decoder_layers = nnx.List([
        DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs, platform=platform)
        for _ in range(cfg.num_layers)])
    if cfg.norm_position == "pre":
      # Deviation from the paper (model.norm_position="pre"): pre-LN stacks
      # need a final LayerNorm on each stack's output.
      norm = functools.partial(layer_norm, cfg.d_model, epsilon=cfg.layer_norm_epsilon,
                               dtype=dtype, param_dtype=param_dtype, rngs=rngs)
      self.encoder_norm = norm()
      self.decoder_norm = norm()

  # -- embeddings -------------------------------------------------------------

  def _embed(self, ids, positions, embedding, learned, dropout):
    """Token embedding * sqrt(d_model) + positional encoding, then dropout."""
    x = embedding(ids)  # (B, T, D)
    if self.cfg.positional_encoding == "learned":
      pe = learned(positions)
    else:
      pe = sinusoidal_encoding(positions, self.cfg.d_model)
    return sharding_lib.constrain(dropout(x + pe.astype(self.dtype)), BTD)  # (B, T, D)

  def embed_source(self, ids, positions):
    return self._embed(ids, positions, self.source_embedding,
                       getattr(self, "source_positions", None), self.source_dropout)

  def embed_target(self, ids, positions):
    return self._embed(ids, positions, self.target_embedding,
                       getattr(self, "target_positions", None), self.target_dropout)

  def output_layer(self):
    """The pre-softmax linear transformation (§3.4) as ``(w, project)``:
    ``project(w, y)`` gives float32 logits (B, T, V) of y (B, T, D). Tied
    (§3.4), w is the target embedding E (V, D) and logits = y E^T; untied, w
    is ``output_projection`` (D, V). The training loss takes the two apart to
    differentiate w a chunk of positions at a time (transformer/loss.py)."""
    if self.cfg.share_output_embedding:
      w, spec = self.target_embedding.embedding[...], "BTD,VD->BTV"
    else:
      w, spec = self.output_projection[...], "BTD,DV->BTV"
    # float32 logits (the loss's log-softmax); y's gradient is activation-sized.
    return w, lambda w, y: matmul(spec, y, w, self.dtype, grads=self.products)

  def logits(self, y):
    """The pre-softmax linear transformation, float32 logits (B, T, V)."""
    w, project = self.output_layer()
    return project(w, y)

  # -- encoder ----------------------------------------------------------------

  def encode(self, inputs, inputs_segmentation=None, inputs_position=None,
             return_attention=False):
    """Encoder stack: (B, S) ids -> (B, S, D) representations.
    ``return_attention``: the layers record their weights, which only
    ``__call__(..., return_attention=True)`` collects (inside ``nnx.capture``)."""
    segments, positions = _segments_and_positions(
        inputs, inputs_segmentation, inputs_position)
    x = self.embed_source(inputs, positions)
    mask = attention_mask(segments, segments)  # (B, 1, S, S)
    for layer in self.encoder_layers:
      if return_attention:
        x = layer(x, mask, return_attention)
      else:
        x = _rematerialized(EncoderLayer.__call__, self.remat)(layer, x, mask)
    if self.cfg.norm_position == "pre":
      x = self.encoder_norm(x)
    return x

  # -- decoder ----------------------------------------------------------------

  def decoder(self, y, memory, self_mask, cross_mask, return_attention=False, cache=None,
              cache_index=None):
    """The decoder stack on the embedded decoder input y (B, T, D): the N
    layers, then for pre-LN the final LayerNorm; memory (B, S, D) is the
    encoder's output. ``cache``: incremental decoding's (see ``decode_step``),
    one entry per layer; the stack then returns (y, the updated cache)."""
    new_cache = None if cache is None else []
    for i, layer in enumerate(self.decoder_layers):
      if return_attention:
        y = layer(y, memory, self_mask, cross_mask, return_attention)
      elif cache is None:
        y = _rematerialized(DecoderLayer.__call__, self.remat)(
            layer, y, memory, self_mask, cross_mask)
      else:
        y, layer_cache = layer(y, memory, self_mask, cross_mask, cache=cache[i],
                               cache_index=cache_index)
        new_cache.append(layer_cache)
    if self.cfg.norm_position == "pre":
      y = self.decoder_norm(y)
    return y if cache is None else (y, new_cache)  # (B, T, D)

  def decode(self, encoded, inputs_segmentation, targets, targets_segmentation=None,
             targets_position=None, return_attention=False, return_hidden=False):
    """Teacher forcing: the decoder stack over the whole (shifted) target,
    float32 (B, T, V), or with ``return_hidden`` its output (B, T, D) before
    the projection. ``return_attention``: as in ``encode``."""
    segments, positions = _segments_and_positions(
        targets, targets_segmentation, targets_position)
    y = self.embed_target(shift_right(targets, segments), positions)
    self_mask = attention_mask(segments, segments, causal=True)  # (B, 1, T, T)
    cross_mask = attention_mask(segments, inputs_segmentation)  # (B, 1, T, S)
    y = self.decoder(y, encoded, self_mask, cross_mask, return_attention)
    return y if return_hidden else self.logits(y)  # (B, T, D) or (B, T, V)

  def decode_step(self, ids, positions, self_mask, cross_mask, cache, cache_index):
    """Incremental decoding: the decoder stack at new positions only, their
    self-attention reading the keys and values of the earlier ones from
    ``cache``. Returns float32 logits (B, T, V) and the updated cache.

    ids, positions: (B, T) the new positions' inputs (each one the token
    output at the position before) and positions. cache: one entry per
    decoder layer (``DecoderLayer.__call__``: its self-attention's key/value
    slots and encoder-decoder attention's keys and values of the memory),
    laid out by transformer/search.py (``init_cache``), which also gives the
    masks: self_mask (B, 1, T, slots), cross_mask broadcastable to
    (B, 1, T, S). The new positions write to slots cache_index onwards.
    """
    y = self.embed_target(ids, positions)  # (B, T, D)
    y, cache = self.decoder(y, None, self_mask, cross_mask, cache=cache,
                            cache_index=cache_index)
    return self.logits(y), cache  # (B, T, V)

  def __call__(self, inputs, targets, inputs_segmentation=None,
               targets_segmentation=None, inputs_position=None,
               targets_position=None, return_attention=False, return_hidden=False):
    """Teacher-forced forward pass: float32 logits (B, T, V) for ``targets``.

    With ``return_attention``, also returns a dict of per-layer attention
    weights (B, H, Q, M): "encoder_self", "decoder_self", "encoder_decoder".
    With ``return_hidden``, the decoder's output (B, T, D) takes the logits'
    place: the input of ``output_layer`` (the training loss's path).
    """
    args = (inputs, targets, inputs_segmentation, targets_segmentation, inputs_position,
            targets_position, return_attention, return_hidden)
    if not return_attention:
      return self._forward(*args)
    # Each attention records its weights (MultiHeadAttention.attend); collect them.
    out, recorded = nnx.capture(Transformer._forward, nnx.Intermediate)(self, *args)
    def weights(stack, attention):
      return [recorded[stack][i][attention]["attention_weights"].get_value()[0]
              for i in range(self.cfg.num_layers)]
    return out, {"encoder_self": weights("encoder_layers", "self_attention"),
                 "decoder_self": weights("decoder_layers", "self_attention"),
                 "encoder_decoder": weights("decoder_layers", "cross_attention")}

  def _forward(self, inputs, targets, inputs_segmentation, targets_segmentation,
               inputs_position, targets_position, return_attention, return_hidden):
    inputs_segmentation, inputs_position = _segments_and_positions(
        inputs, inputs_segmentation, inputs_position)
    encoded = self.encode(inputs, inputs_segmentation, inputs_position, return_attention)
    return self.decode(encoded, inputs_segmentation, targets, targets_segmentation,
                       targets_position, return_attention, return_hidden)


# ----------------------------------------------------------------------------
# Encoder and decoder stacks (§3.1)
# ----------------------------------------------------------------------------

def layer_norm(d_model, *, epsilon, dtype, param_dtype, rngs):
  """LayerNorm over d_model, its scale and bias on the "embed" logical axis."""
  return nnx.LayerNorm(
      d_model, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
      scale_init=nnx.with_partitioning(_ones, ("embed",), eager_sharding=False),
      bias_init=nnx.with_partitioning(_zeros, ("embed",), eager_sharding=False),
      rngs=rngs)


class SublayerConnection(nnx.Module):
  """The residual connection around each sub-layer, followed by LayerNorm.

  post (the paper, §3.1): LayerNorm(x + Dropout(Sublayer(x))).
  pre (Deviation from the paper, model.norm_position="pre"):
      x + Dropout(Sublayer(LayerNorm(x))).
  """

  def __init__(self, d_model, *, norm_position, dropout_rate, epsilon, dtype,
               param_dtype, rngs):
    self.pre_norm = norm_position == "pre"
    self.norm = layer_norm(d_model, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
                           rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)  # §5.4, before the add

  def __call__(self, x, sublayer):
    """``sublayer``: a function (B, T, D) -> (B, T, D), the sub-layer itself."""
    if self.pre_norm:
      return x + self.dropout(sublayer(self.norm(x)))
    return self.norm(x + self.dropout(sublayer(x)))


def _sublayer_connection(cfg, dtype, param_dtype, rngs):
  return SublayerConnection(cfg.d_model, norm_position=cfg.norm_position,
                            dropout_rate=cfg.dropout_rate, epsilon=cfg.layer_norm_epsilon,
                            dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _attention(cfg, dtype, param_dtype, rngs, platform):
  return MultiHeadAttention(
      cfg.d_model, cfg.num_heads, cfg.d_k, cfg.d_v,
      attention_dropout_rate=cfg.attention_dropout_rate,
      fused_implementation=fused_attention_implementation(cfg, platform),
      attention_impl=cfg.attention_impl, dtype=dtype, param_dtype=param_dtype,
      products=matmul_output_dtype(cfg, platform), rngs=rngs)


def _feed_forward(cfg, dtype, param_dtype, rngs, platform):
  return FeedForward(cfg.d_model, cfg.d_ff, activation=cfg.activation,
                     ffn_dropout_rate=cfg.ffn_dropout_rate, dtype=dtype,
                     param_dtype=param_dtype, products=matmul_output_dtype(cfg, platform),
                     rngs=rngs)


# train.remat's policies: what a layer keeps from its forward pass for the
# backward pass; the rest is recomputed (the same gradients). "matmuls": the
# products of precision.matmul (named "matmul"), so the backward pass
# recomputes only the element-wise work; "full": nothing but the layer's input.
REMAT_POLICIES = dict(zip(choices.REMAT_POLICIES, (
    None,
    jax.checkpoint_policies.save_only_these_names("matmul"),
    jax.checkpoint_policies.nothing_saveable,
), strict=True))


def _rematerialized(call, policy):
  """``call`` (a layer's) under rematerialization ``policy`` (REMAT_POLICIES)."""
  if policy == "none":
    return call

  def rematerialized(layer, *args):
    graphdef, state = nnx.split(layer)

    def pure(state, *args):  # The layer as a function of its state (RNG counts too).
      layer = nnx.merge(graphdef, state)
      return call(layer, *args), nnx.state(layer)

    out, state = jax.checkpoint(pure, policy=REMAT_POLICIES[policy])(state, *args)
    nnx.update(layer, state)
    return out

  return rematerialized


class EncoderLayer(nnx.Module):
  """Self-attention, then the feed-forward network (§3.1)."""

  def __init__(self, cfg, *, dtype, param_dtype, rngs, platform=None):
    self.self_attention = _attention(cfg, dtype, param_dtype, rngs, platform)
    self.residual_1 = _sublayer_connection(cfg, dtype, param_dtype, rngs)
    self.feed_forward = _feed_forward(cfg, dtype, param_dtype, rngs, platform)
    self.residual_2 = _sublayer_connection(cfg, dtype, param_dtype, rngs)

  def __call__(self, x, mask, return_weights=False):
    x = self.residual_1(x, lambda x: self.self_attention(x, x, mask, return_weights))
    x = self.residual_2(x, self.feed_forward)
    return sharding_lib.constrain(x, BTD)


class DecoderLayer(nnx.Module):
  """Masked self-attention, encoder-decoder attention, feed-forward (§3.1)."""

  def __init__(self, cfg, *, dtype, param_dtype, rngs, platform=None):
    self.self_attention = _attention(cfg, dtype, param_dtype, rngs, platform)
    self.residual_1 = _sublayer_connection(cfg, dtype, param_dtype, rngs)
    self.cross_attention = _attention(cfg, dtype, param_dtype, rngs, platform)
    self.residual_2 = _sublayer_connection(cfg, dtype, param_dtype, rngs)
    self.feed_forward = _feed_forward(cfg, dtype, param_dtype, rngs, platform)
    self.residual_3 = _sublayer_connection(cfg, dtype, param_dtype, rngs)

  def __call__(self, y, memory, self_mask, cross_mask, return_weights=False, cache=None,
               cache_index=None):
    """y: (B, T, D) decoder input, memory: (B, S, D) encoder output.

    Incremental decoding (``Transformer.decode_step``) passes ``cache``, this
    layer's keys and values, and no memory; it gets (y, the updated cache):
      "self_k_t" (B, H, K, slots), "self_v" (B, H, slots, J): self-attention's
        keys and values of the earlier positions; the T positions of y write
        theirs to slots cache_index ... cache_index + T - 1 and attend to
        every slot self_mask (B, 1, T, slots) allows.
      "cross_k_t" (B, H, K, S), "cross_v" (B, H, S, J): encoder-decoder
        attention's keys and values of the memory (its ``project_kv``).
    Keys lie transposed, (K, slots), so that Q K^T reads them as they lie.
    """
    if cache is None:
      self_kv = self.self_attention.project_kv  # K W^K, V W^V of y itself
      cross_kv = lambda: self.cross_attention.project_kv(memory)
    else:
      cache = dict(cache)
      self_kv = functools.partial(_write_self_keys_values, self.self_attention, cache,
                                  cache_index)
      cross_kv = lambda: (cache["cross_k_t"].swapaxes(2, 3), cache["cross_v"])
    y = self.residual_1(y, lambda y: self.self_attention.attend(
        y, *self_kv(y), self_mask, return_weights))
    y = self.residual_2(y, lambda y: self.cross_attention.attend(
        y, *cross_kv(), cross_mask, return_weights))
    y = self.residual_3(y, self.feed_forward)
    y = sharding_lib.constrain(y, BTD)
    return y if cache is None else (y, cache)


def _write_self_keys_values(attention, cache, index, y):
  """Incremental decoding's self-attention keys and values: those of the new
  positions y (B, T, D) written to ``cache`` (a layer's, see
  ``DecoderLayer.__call__``; updated in place) at slots index ... index + T - 1,
  then those of every slot, (B, H, slots, K) and (B, H, slots, J)."""
  k, v = attention.project_kv(y)  # (B, H, T, K), (B, H, T, J)
  cache["self_k_t"] = jax.lax.dynamic_update_slice_in_dim(
      cache["self_k_t"], k.swapaxes(2, 3), index, 3)
  cache["self_v"] = jax.lax.dynamic_update_slice_in_dim(cache["self_v"], v, index, 2)
  return cache["self_k_t"].swapaxes(2, 3), cache["self_v"]


# ----------------------------------------------------------------------------
# Attention (§3.2)
# ----------------------------------------------------------------------------

def scaled_dot_product_attention(q, k, v, mask, *, dropout=None, products=jnp.float32):
  """Eq. (1): Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V.

  Heads lead the sequence axis (B, H, T, ...) so that each head's keys and
  values are contiguous: the per-head matmuls then read them in place, which
  matters most when decoding reads a long cache for one query.

  Args:
    q: (B, H, Q, K) queries.   k: (B, H, M, K) keys.   v: (B, H, M, J) values.
    mask: bool, broadcastable to (B, H, Q, M); True where attending is allowed.
    dropout: optional callable applied to the attention weights.
    products: the dtype P V and the gradients of Q and K are written in
      (``precision.matmul_output_dtype``); Q K^T is float32 either way.
  Returns:
    (B, H, Q, J) outputs and float32 (B, H, Q, M) attention weights.
  """
  d_k = q.shape[-1]
  # Q K^T / sqrt(d_k), accumulated and soft-maxed in float32.
  logits = matmul("BHQK,BHMK->BHQM", q, k, q.dtype, grads=products)
  logits = logits / math.sqrt(d_k)
  # Masked positions get the lowest float: a row with no allowed key (padding
  # queries) becomes uniform instead of NaN, and is itself masked downstream.
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)  # (B, H, Q, M)
  probs = dropout(weights) if dropout is not None else weights
  out = matmul("BHQM,BHMJ->BHQJ", probs, v, v.dtype, out=products).astype(v.dtype)
  return out, weights


class MultiHeadAttention(nnx.Module):
  """Multi-head attention (§3.2.2).

  MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,
  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

  The per-head sizes d_k and d_v are independent of d_model (Table 3 A, B).
  The projections have no bias, as in the paper's equations.
  """

  def __init__(self, d_model, num_heads, d_k, d_v, *, attention_dropout_rate,
               dtype, param_dtype, rngs, fused_implementation=None, attention_impl=None,
               products=jnp.float32):
    self.dtype = dtype
    self.products = products  # The dtype its products are written in (precision.py).
    # What computes Eq. (1) is transformer/precision.py's choice, for the
    # config (fused_implementation: "cudnn", "xla" or None, the einsums, from
    # precision.fused_attention_implementation) and, when traced, for the
    # shapes (precision.fused_attention, given config.model.attention_impl).
    # Decoding with a cache takes it too (cuDNN compiles for a step's beams x
    # (L * beams) slots).
    self.fused_implementation = fused_implementation
    self.attention_impl = attention_impl
    x_in = _xavier(in_axis=0, out_axis=(1, 2))  # fan_in = D, fan_out = H * K
    x_out = _xavier(in_axis=(0, 1), out_axis=2)  # fan_in = H * J, fan_out = D
    self.w_q = _param(rngs, x_in, (d_model, num_heads, d_k), ("embed", "heads", "kv"),
                      param_dtype)
    self.w_k = _param(rngs, x_in, (d_model, num_heads, d_k), ("embed", "heads", "kv"),
                      param_dtype)
    self.w_v = _param(rngs, x_in, (d_model, num_heads, d_v), ("embed", "heads", "kv"),
                      param_dtype)
    self.w_o = _param(rngs, x_out, (num_heads, d_v, d_model), ("heads", "kv", "embed"),
                      param_dtype)
    # Deviation from the paper when rate > 0 (model.attention_dropout_rate).
    self.attention_dropout = nnx.Dropout(attention_dropout_rate, rngs=rngs)

  def _project(self, x, w):
    """x (B, T, D) times a projection w (D, H, ·): (B, H, T, ·)."""
    # Projected as (B, T, H, ·), then heads moved forward: XLA then keeps the
    # weight as it is stored instead of transposing it at every decoding step.
    xw = matmul("BTD,DHX->BTHX", x, w[...], self.dtype, out=self.products).astype(self.dtype)
    return xw.swapaxes(1, 2)

  def project_kv(self, x):
    """K W^K and V W^V for memory x (B, M, D): the cacheable part,
    (B, H, M, K) and (B, H, M, J)."""
    return self._project(x, self.w_k), self._project(x, self.w_v)

  def attend(self, x_q, k, v, mask, return_weights=False):
    """Attention of queries x_q (B, Q, D) over projected keys and values:
    (B, Q, D). ``return_weights`` records the float32 (B, H, Q, M) weights as
    the ``nnx.Intermediate`` "attention_weights" (``Transformer.__call__``
    collects them with ``nnx.capture``) and takes the einsum path whatever
    ``attention_impl``: a fused kernel never forms the weights."""
    q = self._project(x_q, self.w_q)
    out = weights = None
    if self.fused_implementation and not return_weights:
      # None where the kernel declines these shapes: the einsums compute them.
      out = fused_attention(q, k, v, mask, implementation=self.fused_implementation,
                            attention_impl=self.attention_impl)
    if out is None:
      out, weights = scaled_dot_product_attention(
          q, k, v, mask, dropout=self.attention_dropout, products=self.products)
    if return_weights:
      self.sow(nnx.Intermediate, "attention_weights", weights)
    # Concat(head_1, ..., head_h) W^O
    return matmul("BHQJ,HJD->BQD", out, self.w_o[...], self.dtype,
                  out=self.products).astype(self.dtype)

  def __call__(self, x_q, x_kv, mask, return_weights=False):
    """MultiHead(x_q, x_kv, x_kv): (B, Q, D)."""
    k, v = self.project_kv(x_kv)
    return self.attend(x_q, k, v, mask, return_weights)


# ----------------------------------------------------------------------------
# Masks (§3.2.3), packed rows, the shifted decoder input
# ----------------------------------------------------------------------------

def attention_mask(query_segments, key_segments, causal=False):
  """True where a query may attend to a key: (B, 1, Q, M).

  Segment ids are 1..n for the sentences packed in a row and 0 for padding, so
  one rule covers padding masks and packed rows: attend only within your own
  segment, never to padding. ``causal`` adds the decoder's mask of future
  positions (§3.2.3).
  """
  mask = (query_segments[:, :, None] == key_segments[:, None, :])
  mask &= (key_segments[:, None, :] != 0)
  if causal:
    q_len, k_len = query_segments.shape[1], key_segments.shape[1]
    mask &= jnp.tril(jnp.ones((q_len, k_len), bool))
  return mask[:, None, :, :]


def shift_right(targets, segments):
  """Decoder inputs: targets shifted right, BOS at every segment's start."""
  prev_ids = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  prev_segments = jnp.pad(segments, ((0, 0), (1, 0)))[:, :-1]
  return jnp.where(segments != prev_segments, tokens.BOS_ID, prev_ids)


def _segments_and_positions(ids, segments, positions):
  if segments is None:
    segments = (ids != tokens.PAD_ID).astype(jnp.int32)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  return segments, positions


# ----------------------------------------------------------------------------
# Position-wise feed-forward network (§3.3)
# ----------------------------------------------------------------------------

class FeedForward(nnx.Module):
  """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, Eq. (2); inner size d_ff."""

  def __init__(self, d_model, d_ff, *, activation, ffn_dropout_rate, dtype,
               param_dtype, rngs, products=jnp.float32):
    self.dtype = dtype
    # The dtype the products, biases and activation are computed in (precision.py).
    self.products = products
    self.gated = activation in GATED_ACTIVATIONS
    self.activation = (GATED_ACTIVATIONS if self.gated else ACTIVATIONS)[activation]
    init = _xavier()
    self.w_1 = _param(rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype)
    self.w_2 = _param(rngs, init, (d_ff, d_model), ("mlp", "embed"), param_dtype)
    if self.gated:
      # Deviation from the paper (model.activation): the GLU's second input
      # projection; no biases, as in Shazeer (2020).
      self.w_gate = _param(rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype)
    else:
      self.b_1 = _param(rngs, _zeros, (d_ff,), ("mlp",), param_dtype)
      self.b_2 = _param(rngs, _zeros, (d_model,), ("embed",), param_dtype)
    # Deviation from the paper when rate > 0 (model.ffn_dropout_rate).
    self.hidden_dropout = nnx.Dropout(ffn_dropout_rate, rngs=rngs)

  def __call__(self, x):
    xw = lambda x, p: matmul("BTD,DF->BTF", x, p[...], self.dtype, out=self.products)  # noqa: E731
    hw = lambda h, p: matmul("BTF,FD->BTD", h, p[...], self.dtype, out=self.products)  # noqa: E731
    if self.gated:
      # act(x W_1) * (x W_gate)
      h = self.activation(xw(x, self.w_1)) * xw(x, self.w_gate)  # (B, T, F)
      return hw(self.hidden_dropout(h.astype(self.dtype)), self.w_2).astype(self.dtype)
    h = self.activation(add_bias(xw(x, self.w_1), self.b_1[...]))  # max(0, x W_1 + b_1)
    y = add_bias(hw(self.hidden_dropout(h.astype(self.dtype)), self.w_2), self.b_2[...])
    return y.astype(self.dtype)  # (B, T, D)


# ----------------------------------------------------------------------------
# Embeddings (§3.4)
# ----------------------------------------------------------------------------

class Embedding(nnx.Module):
  """Token embedding, multiplied by sqrt(d_model) (§3.4). Tied, its table E is
  also the pre-softmax linear transformation (``Transformer.output_layer``)."""

  def __init__(self, vocab_size, d_model, *, dtype, param_dtype, rngs):
    init = jax.nn.initializers.normal(stddev=d_model ** -0.5)
    self.d_model = d_model
    self.dtype = dtype
    self.embedding = _param(rngs, init, (vocab_size, d_model), ("vocab", "embed"),
                            param_dtype)

  def __call__(self, ids):
    # The whole rows: under FSDP the table's d_model is gathered (a parameter
    # all-gather) rather than each row's shards looked up and resharded.
    table = sharding_lib.constrain(self.embedding[...], ("vocab", None))  # (V, D)
    x = jnp.take(table, ids, axis=0)  # (B, T, D)
    return (x * math.sqrt(self.d_model)).astype(self.dtype)


# ----------------------------------------------------------------------------
# Positional encoding (§3.5)
# ----------------------------------------------------------------------------

def sinusoidal_encoding(positions, d_model):
  """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...).

  Sin and cos are interleaved by dimension, exactly as §3.5 writes them.

  Args:
    positions: integer positions, any shape (...).
  Returns:
    float32 array (..., d_model).
  """
  i = jnp.arange(d_model // 2, dtype=jnp.float32)
  inv_freq = 1.0 / (10000.0 ** (2.0 * i / d_model))  # 1 / 10000^(2i/d_model)
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # (..., D/2)
  pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # (..., D/2, 2)
  return pe.reshape(*positions.shape, d_model)  # dims 2i = sin, 2i+1 = cos


class LearnedPositionalEmbedding(nnx.Module):
  """Learned positional embeddings, Table 3 row (E)."""

  def __init__(self, max_len, d_model, *, param_dtype, rngs):
    # Deviation from the paper only when selected (model.positional_encoding).
    # N(0, 1/2) per dimension: the mean square of the sinusoids it replaces.
    init = jax.nn.initializers.normal(stddev=math.sqrt(0.5))
    self.embedding = _param(rngs, init, (max_len, d_model), (None, "embed"),
                            param_dtype)

  def __call__(self, positions):
    return jnp.take(self.embedding[...], positions, axis=0)



def build_model(model_config, *, seed: int = 0, platform: str | None = None,
                remat: str = "none") -> Transformer:
  """The Transformer of a ``config.model`` section: the one place a model is
  built (training, evaluation, the summary and the benchmarks call it).

  Parameters are drawn from the PRNG stream ``params`` seeded with ``seed``,
  dropout masks from the stream ``dropout`` seeded with ``seed + 1``. Wrap it
  in ``nnx.eval_shape`` for the shapes alone. ``platform``: the kind of
  device it is compiled for (default: JAX's default backend). ``remat``:
  training's rematerialization policy (``train.remat``).
  """
  return Transformer(model_config, rngs=nnx.Rngs(params=seed, dropout=seed + 1),
                     platform=platform, remat=remat)


def with_compute_dtype(model: Transformer, dtype: str) -> Transformer:
  """``model`` computing in ``dtype`` ("float32", "bfloat16", ...), in eval
  mode: the same parameter arrays (nothing is copied), only the compute dtype
  of the activations and matmul operands differs. Decoding uses it to run a
  model trained in one precision in another (``config.decode.dtype``)."""
  if model.dtype == get_dtype(dtype):
    return model
  cfg = ml_collections.ConfigDict(model.cfg.to_dict())
  cfg.dtype = dtype
  graphdef = nnx.graphdef(nnx.eval_shape(
      lambda: Transformer(cfg, rngs=nnx.Rngs(params=0, dropout=1))))
  other = nnx.merge(graphdef, nnx.state(model))
  other.eval()
  return other
