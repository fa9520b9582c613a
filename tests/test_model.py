"""Tests for transformer/model.py: each checks one claim of the paper."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.tiny_configs import make_tiny_config
from transformer import loss, precision, search, tokens
from transformer import model as model_lib

VOCAB = 23


def tiny_config(**overrides):
  """The model section of conftest's tiny config in the paper's base config,
  narrower and with d_k != d_v, then ``overrides`` (model fields)."""
  # float32 whatever this CPU's bfloat16 support ("auto" would follow it).
  model = {**dict(vocab_size=VOCAB, num_layers=2, d_model=16, d_ff=32, num_heads=2, d_k=4,
                  d_v=6, max_len=32, dtype="float32"), **overrides}
  return make_tiny_config(
      "paper", **{f"model.{k}": v for k, v in model.items()}).model


def build(seed=0, **overrides):
  model = model_lib.Transformer(tiny_config(**overrides), rngs=nnx.Rngs(seed))
  model.eval()
  return model


def _randomize(module, seed):
  """Every parameter of ``module`` set to N(0, 0.5^2) values (LayerNorm gains
  and biases and the FFN biases would otherwise start at exactly 1 and 0)."""
  state = nnx.state(module, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.default_rng(seed)
  new = [jnp.asarray(0.5 * rng.normal(size=x.shape), x.dtype) for x in leaves]
  nnx.update(module, jax.tree.unflatten(treedef, new))


def _float64_params(module):
  """A module's direct parameters as float64 NumPy arrays, by attribute name."""
  return {name: np.asarray(value[...], np.float64) for name, value in vars(module).items()
          if isinstance(value, nnx.Param)}


# Two source sentences (EOS = 1, PAD = 0) and their targets.
INPUTS = jnp.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0]])
TARGETS = jnp.array([[11, 12, 13, 1, 0], [14, 15, 1, 0, 0]])


def test_attention_equals_numpy_eq1():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 2, 3, 4)).astype(np.float32)  # (B, H, Q, K)
  k = rng.normal(size=(2, 2, 5, 4)).astype(np.float32)  # (B, H, M, K)
  v = rng.normal(size=(2, 2, 5, 6)).astype(np.float32)  # (B, H, M, J)
  mask = rng.random((2, 1, 3, 5)) > 0.3
  mask[..., 0] = True  # every query sees at least one key
  out, weights = model_lib.scaled_dot_product_attention(
      jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask))
  # softmax(Q K^T / sqrt(d_k)) V, head by head, with NumPy.
  for b in range(2):
    for h in range(2):
      scores = q[b, h] @ k[b, h].T / math.sqrt(4)
      scores = np.where(mask[b, 0], scores, -np.inf)
      p = np.exp(scores - scores.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      np.testing.assert_allclose(weights[b, h], p, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(out[b, h], p @ v[b, h], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fused_attention_impl_matches_einsum():
  a = build(attention_impl="xla", d_v=4)
  b = build(attention_impl="dot_product_attention", d_v=4)
  np.testing.assert_allclose(a(INPUTS, TARGETS), b(INPUTS, TARGETS),
                             rtol=1e-4, atol=1e-4)


def _fused_implementations(cfg, platform):
  """The attention kernels of a model built (shapes only) for ``platform``."""
  model = nnx.eval_shape(lambda: model_lib.build_model(cfg, platform=platform))
  return {m.fused_implementation for _, m in nnx.iter_graph(model)
          if isinstance(m, model_lib.MultiHeadAttention)}


def test_dot_product_attention_is_cudnn_on_a_gpu_and_xla_elsewhere():
  cfg = tiny_config(attention_impl="dot_product_attention", d_k=8, d_v=8, dtype="auto")
  assert _fused_implementations(cfg, "gpu") == {"cudnn"}  # auto: bfloat16 on a GPU.
  assert _fused_implementations(cfg, "cpu") == {"xla"}
  assert _fused_implementations(tiny_config(d_k=8, d_v=8), "gpu") == {None}  # einsum


def test_auto_attention_is_cudnn_on_a_gpu_where_the_model_allows_it():
  cfg = tiny_config(attention_impl="auto", d_k=8, d_v=8, dtype="auto")
  assert _fused_implementations(cfg, "gpu") == {"cudnn"}
  assert _fused_implementations(cfg, "cpu") == {None}  # The einsums, as "xla".
  assert _fused_implementations(cfg, "tpu") == {None}
  # What cuDNN cannot take is no error under "auto": the einsums instead.
  for overrides in ({"dtype": "float32"}, {"d_k": 12, "d_v": 12}, {"d_v": 16},
                    {"attention_dropout_rate": 0.1}):
    cfg = tiny_config(attention_impl="auto", d_k=8, d_v=8, dtype="auto")
    cfg.update(overrides)
    assert _fused_implementations(cfg, "gpu") == {None}, overrides


def test_auto_attention_takes_the_einsums_where_cudnn_refuses_when_traced():
  # On this CPU cuDNN refuses every shape when traced (no GPU): "auto" then
  # computes the einsum path's values; "dot_product_attention" raises.
  kwargs = dict(attention_dropout_rate=0.0, dtype=jnp.float32, param_dtype=jnp.float32)
  einsum = model_lib.MultiHeadAttention(8, 2, 4, 4, rngs=nnx.Rngs(0), **kwargs)
  auto = model_lib.MultiHeadAttention(8, 2, 4, 4, rngs=nnx.Rngs(0), fused_implementation="cudnn",
                                      attention_impl="auto", **kwargs)
  strict = model_lib.MultiHeadAttention(8, 2, 4, 4, rngs=nnx.Rngs(0),
                                        fused_implementation="cudnn",
                                        attention_impl="dot_product_attention", **kwargs)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.float32)
  mask = jnp.ones((2, 1, 5, 5), bool)
  np.testing.assert_array_equal(auto(x, x, mask)[0], einsum(x, x, mask)[0])
  with pytest.raises(ValueError, match="cuDNN fused attention"):
    strict(x, x, mask)


@pytest.mark.parametrize("pos,i", [(0, 0), (1, 0), (7, 3), (50, 1), (99, 7)])
def test_positional_encoding_closed_form(pos, i):
  d_model = 16
  pe = np.asarray(model_lib.sinusoidal_encoding(jnp.arange(100), d_model))
  angle = pos / 10000 ** (2 * i / d_model)
  np.testing.assert_allclose(pe[pos, 2 * i], math.sin(angle), atol=1e-5)
  np.testing.assert_allclose(pe[pos, 2 * i + 1], math.cos(angle), atol=1e-5)


@pytest.mark.slow
def test_causality():
  model = build()
  logits = model(INPUTS, TARGETS)
  for t in range(3):
    changed = TARGETS.at[0, t].set(20)
    new = model(INPUTS, changed)
    # Target t is the input of position t + 1: logits up to t are unchanged...
    np.testing.assert_allclose(new[0, :t + 1], logits[0, :t + 1], atol=1e-6)
    # ...and the change is visible after it.
    assert np.abs(new[0, t + 1] - logits[0, t + 1]).max() > 1e-4
  np.testing.assert_allclose(new[1], logits[1], atol=1e-6)  # other row untouched


@pytest.mark.slow
def test_padding_invariance():
  model = build()
  logits = model(INPUTS, TARGETS)
  more_padding = model(jnp.pad(INPUTS, ((0, 0), (0, 4))),
                       jnp.pad(TARGETS, ((0, 0), (0, 3))))
  real = np.asarray(TARGETS != tokens.PAD_ID)
  np.testing.assert_allclose(np.asarray(more_padding)[:, :5][real],
                             np.asarray(logits)[real], rtol=1e-5, atol=1e-5)


def _packed_row():
  """Both sentence pairs of INPUTS / TARGETS packed into one row."""
  src = jnp.array([[5, 6, 7, 8, 1, 9, 10, 1, 0]])
  src_seg = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 0]])
  src_pos = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 0]])
  tgt = jnp.array([[11, 12, 13, 1, 14, 15, 1, 0]])
  tgt_seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]])
  tgt_pos = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]])
  return src, tgt, src_seg, tgt_seg, src_pos, tgt_pos


@pytest.mark.parametrize("positional_encoding", ["sinusoidal", "learned"])
@pytest.mark.slow
def test_packed_row_equals_separate_sentences(positional_encoding):
  model = build(positional_encoding=positional_encoding)
  separate = model(INPUTS, TARGETS)
  packed = model(*_packed_row())
  np.testing.assert_allclose(packed[0, :4], separate[0, :4], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 4:7], separate[1, :3], rtol=1e-5, atol=1e-5)


def test_shift_right_restarts_at_each_segment():
  _, tgt, _, tgt_seg, _, _ = _packed_row()
  shifted = model_lib.shift_right(tgt, tgt_seg)
  bos = tokens.BOS_ID
  np.testing.assert_array_equal(shifted[0, :7], [bos, 11, 12, 13, bos, 14, 15])


@pytest.mark.parametrize("overrides", [
    {}, {"norm_position": "pre"}, {"positional_encoding": "learned"},
    {"activation": "swiglu", "share_output_embedding": False},
    {"attention_impl": "dot_product_attention", "d_v": 4}, {"dtype": "bfloat16"}])
@pytest.mark.slow
def test_cached_decoding_equals_full_forward(overrides):
  model = build(**overrides)
  full = np.asarray(model(INPUTS, TARGETS))
  cache = search.init_cache(model, model.encode(INPUTS), INPUTS, max_length=TARGETS.shape[1])
  assert cache["shared"]["layers"][0]["self_v"].dtype == model.dtype  # bf16 cache in bf16
  # bfloat16: float32 sums over a different number of keys can round a bf16
  # activation the other way; a few bf16 steps (0.016 at |logit| ~ 3) remain.
  # Measured: at most 0.033 over seeds 0-3.
  tol = 1e-5 if model.dtype == jnp.float32 else 5e-2
  step = jax.jit(lambda tok, cache, t: search.decode_step(model, tok, cache, t))
  previous = jnp.full((2,), tokens.BOS_ID)
  for t in range(TARGETS.shape[1]):
    logits, cache = step(previous, cache, t)
    real = np.asarray(TARGETS[:, t] != tokens.PAD_ID)
    np.testing.assert_allclose(np.asarray(logits)[real], full[real, t],
                               rtol=tol, atol=tol)
    previous = TARGETS[:, t]


@pytest.mark.slow
def test_attention_weights_are_returned():
  model = build()
  logits, attention = model(INPUTS, TARGETS, return_attention=True)
  np.testing.assert_allclose(logits, model(INPUTS, TARGETS), atol=1e-6)
  assert [len(attention[k]) for k in attention] == [2, 2, 2]
  assert attention["encoder_self"][0].shape == (2, 2, 6, 6)  # (B, H, S, S)
  assert attention["decoder_self"][1].shape == (2, 2, 5, 5)  # (B, H, T, T)
  assert attention["encoder_decoder"][0].shape == (2, 2, 5, 6)  # (B, H, T, S)
  w = np.asarray(attention["encoder_decoder"][0])
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  assert np.all(w[1, :, :3, 3:] == 0)  # real queries never see source padding
  causal = np.asarray(attention["decoder_self"][0])
  assert np.all(np.triu(causal[0, 0], k=1) == 0)


def test_three_way_tying_and_untying():
  def n_params(**kw):  # Shapes only (eval_shape): nothing is initialised.
    abstract = nnx.eval_shape(lambda: build(**kw))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  tied = n_params()
  emb = VOCAB * 16
  assert n_params(share_source_target_embedding=False) == tied + emb
  assert n_params(share_output_embedding=False) == tied + emb
  model = build()
  assert model.source_embedding is model.target_embedding


@pytest.mark.slow
@pytest.mark.parametrize("share_output_embedding", [True, False])
def test_output_layer_of_the_hidden_states_gives_the_logits(share_output_embedding):
  """return_hidden and output_layer (the training loss's path) against the
  logits of the plain call, and the weights against a float64 x E^T / x W."""
  model = build(share_output_embedding=share_output_embedding)
  hidden = model(INPUTS, TARGETS, return_hidden=True)  # (B, T, D)
  assert hidden.shape == (*TARGETS.shape, 16)
  w, project = model.output_layer()
  np.testing.assert_allclose(project(w, hidden), model(INPUTS, TARGETS), rtol=1e-6,
                             atol=1e-6)
  x, w64 = np.asarray(hidden, np.float64), np.asarray(w, np.float64)
  expected = x @ (w64.T if share_output_embedding else w64)
  np.testing.assert_allclose(project(w, hidden), expected, rtol=1e-5, atol=1e-5)


def test_embedding_scaled_by_sqrt_d_model():
  model = build()
  ids = jnp.array([[4]])
  np.testing.assert_allclose(
      model.source_embedding(ids)[0, 0],
      model.source_embedding.embedding[...][4] * math.sqrt(16), rtol=1e-6)
  # Initialization: after the sqrt(d_model) scaling, unit variance.
  big = model_lib.Embedding(4000, 64, dtype=jnp.float32, param_dtype=jnp.float32,
                            rngs=nnx.Rngs(0))
  assert abs(float(jnp.var(big(jnp.arange(4000)[None]))) - 1.0) < 0.05


@pytest.mark.slow
def test_dropout_only_in_train_mode():
  model = build(dropout_rate=0.3)
  a, b = model(INPUTS, TARGETS), model(INPUTS, TARGETS)
  np.testing.assert_array_equal(a, b)
  model.train()
  c = model(INPUTS, TARGETS)
  assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3


# Each activation of the registry, written out in float64 NumPy from its
# formula. gelu is the exact one, x * Phi(x) (the tanh approximation differs
# by up to 5e-4, which these tolerances reject).
_erf = np.vectorize(math.erf)
_sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
ACTIVATION_FORMULAS = {
    "relu": lambda x: np.maximum(0.0, x),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "silu": lambda x: x * _sigmoid(x),
}
GATED_FORMULAS = {"reglu": "relu", "geglu": "gelu", "swiglu": "silu"}


def test_every_registered_activation_has_a_formula_here():
  assert set(model_lib.ACTIVATIONS) == set(ACTIVATION_FORMULAS)
  assert set(model_lib.GATED_ACTIVATIONS) == set(GATED_FORMULAS)


@pytest.mark.parametrize("name", sorted(ACTIVATION_FORMULAS))
def test_activation_vs_numpy_formula(name):
  x = np.linspace(-6.0, 6.0, 241).astype(np.float32)
  expected = ACTIVATION_FORMULAS[name](x.astype(np.float64))
  got = np.asarray(model_lib.ACTIVATIONS[name](jnp.asarray(x)))
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  if name in ("relu", "gelu", "silu"):  # their gated forms use the same function
    gated = {v: k for k, v in GATED_FORMULAS.items()}[name]
    got = np.asarray(model_lib.GATED_ACTIVATIONS[gated](jnp.asarray(x)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("activation", sorted(
    list(model_lib.ACTIVATIONS) + list(model_lib.GATED_ACTIVATIONS)))
def test_ffn_vs_numpy(activation):
  """Eq. (2) with relu, act(x W_1 + b_1) W_2 + b_2 with the others, and
  (act(x W_1) * x W_gate) W_2 for the gated ones (Shazeer 2020)."""
  ffn = model_lib.FeedForward(8, 32, activation=activation, ffn_dropout_rate=0.0,
                              dtype=jnp.float32, param_dtype=jnp.float32,
                              rngs=nnx.Rngs(0))
  _randomize(ffn, seed=1)
  x = np.random.default_rng(2).normal(size=(2, 3, 8)).astype(np.float32)  # (B, T, D)
  p = _float64_params(ffn)
  xd = x.astype(np.float64)
  if activation in GATED_FORMULAS:
    act = ACTIVATION_FORMULAS[GATED_FORMULAS[activation]]
    expected = (act(xd @ p["w_1"]) * (xd @ p["w_gate"])) @ p["w_2"]
  else:
    act = ACTIVATION_FORMULAS[activation]
    expected = act(xd @ p["w_1"] + p["b_1"]) @ p["w_2"] + p["b_2"]
  np.testing.assert_allclose(ffn(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Encoder and decoder layers vs the paper's equations in float64 NumPy.
# ----------------------------------------------------------------------------

def np_layer_norm(x, norm, epsilon):
  """LayerNorm over the last axis, gain g and bias b (Ba et al. 2016)."""
  g, b = _float64_params(norm)["scale"], _float64_params(norm)["bias"]
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + epsilon) * g + b


def np_multi_head_attention(x_q, x_kv, mha, mask):
  """§3.2.2: Concat(head_1, ..., head_h) W^O, head_i = Attention(x_q W_i^Q,
  x_kv W_i^K, x_kv W_i^V), Eq. (1) per head; one sentence, mask (Q, M) bool."""
  p = _float64_params(mha)
  num_heads, d_k = p["w_q"].shape[1:]
  heads = []
  for i in range(num_heads):
    q, k, v = x_q @ p["w_q"][:, i], x_kv @ p["w_k"][:, i], x_kv @ p["w_v"][:, i]
    scores = np.where(mask, q @ k.T / math.sqrt(d_k), -np.inf)  # (Q, M)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)  # softmax
    heads.append(weights @ v)  # (Q, d_v)
  w_o = p["w_o"].reshape(-1, p["w_o"].shape[-1])  # (h * d_v, D)
  return np.concatenate(heads, axis=-1) @ w_o


def np_ffn(x, ffn):
  """Eq. (2): max(0, x W_1 + b_1) W_2 + b_2."""
  p = _float64_params(ffn)
  return np.maximum(0.0, x @ p["w_1"] + p["b_1"]) @ p["w_2"] + p["b_2"]


def np_sublayer(x, sublayer, connection, norm_position, epsilon):
  """post (§3.1): LayerNorm(x + Sublayer(x)); pre: x + Sublayer(LayerNorm(x))."""
  if norm_position == "post":
    return np_layer_norm(x + sublayer(x), connection.norm, epsilon)
  return x + sublayer(np_layer_norm(x, connection.norm, epsilon))


def np_encoder_layer(x, layer, source_real, norm_position, epsilon):
  """One sentence x (S, D); source_real (S,) bool, False at padding."""
  mask = np.broadcast_to(source_real, (len(x), len(x)))  # no key is padding
  x = np_sublayer(x, lambda h: np_multi_head_attention(h, h, layer.self_attention, mask),
                  layer.residual_1, norm_position, epsilon)
  return np_sublayer(x, lambda h: np_ffn(h, layer.feed_forward), layer.residual_2,
                     norm_position, epsilon)


def np_decoder_layer(y, memory, layer, source_real, norm_position, epsilon):
  """One sentence y (T, D) over encoder output memory (S, D)."""
  t = len(y)
  causal = np.tril(np.ones((t, t), bool))  # position i sees positions <= i (§3.2.3)
  cross = np.broadcast_to(source_real, (t, len(memory)))  # no source padding
  y = np_sublayer(y, lambda h: np_multi_head_attention(h, h, layer.self_attention, causal),
                  layer.residual_1, norm_position, epsilon)
  y = np_sublayer(y, lambda h: np_multi_head_attention(h, memory, layer.cross_attention,
                                                       cross),
                  layer.residual_2, norm_position, epsilon)
  return np_sublayer(y, lambda h: np_ffn(h, layer.feed_forward), layer.residual_3,
                     norm_position, epsilon)


# Dropout rates are non-zero: layer.eval() must switch every dropout off. The
# epsilon is not the default, so a LayerNorm that ignored it would fail.
LAYER_CONFIG = dict(d_model=16, d_ff=32, num_heads=2, d_k=4, d_v=6, dtype="float32",
                    dropout_rate=0.3, attention_dropout_rate=0.3, ffn_dropout_rate=0.3,
                    layer_norm_epsilon=1e-3)


def _layer(layer_class, norm_position):
  cfg = tiny_config(norm_position=norm_position, **LAYER_CONFIG)
  layer = layer_class(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  _randomize(layer, seed=1)
  layer.eval()
  return layer, cfg.layer_norm_epsilon


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_encoder_layer_vs_numpy(norm_position):
  layer, epsilon = _layer(model_lib.EncoderLayer, norm_position)
  x = np.random.default_rng(2).normal(size=(2, 6, 16)).astype(np.float32)  # (B, S, D)
  segments = (INPUTS != tokens.PAD_ID).astype(jnp.int32)
  # Jitted: one compilation instead of one per operation.
  out = nnx.jit(lambda m, x, mask: m(x, mask))(
      layer, jnp.asarray(x), model_lib.attention_mask(segments, segments))
  for b in range(2):
    real = np.asarray(segments[b]) == 1
    expected = np_encoder_layer(x[b].astype(np.float64), layer, real, norm_position,
                                epsilon)
    # Padding positions attend to nothing; only real positions are compared.
    np.testing.assert_allclose(np.asarray(out[b])[real], expected[real], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_decoder_layer_vs_numpy(norm_position):
  layer, epsilon = _layer(model_lib.DecoderLayer, norm_position)
  rng = np.random.default_rng(2)
  y = rng.normal(size=(2, 5, 16)).astype(np.float32)  # (B, T, D)
  memory = rng.normal(size=(2, 6, 16)).astype(np.float32)  # (B, S, D) encoder output
  source = (INPUTS != tokens.PAD_ID).astype(jnp.int32)
  target = (TARGETS != tokens.PAD_ID).astype(jnp.int32)
  @nnx.jit  # One compilation instead of one per operation.
  def apply(m, y, memory, self_mask, cross_mask):
    return m(y, memory, self_mask, cross_mask)

  out = apply(layer, jnp.asarray(y), jnp.asarray(memory),
                    model_lib.attention_mask(target, target, causal=True),
                    model_lib.attention_mask(target, source))
  for b in range(2):
    real = np.asarray(target[b]) == 1
    expected = np_decoder_layer(y[b].astype(np.float64), memory[b].astype(np.float64),
                                layer, np.asarray(source[b]) == 1, norm_position, epsilon)
    np.testing.assert_allclose(np.asarray(out[b])[real], expected[real], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_decoder_layer_with_a_cache_equals_the_layer_over_the_whole_target(norm_position):
  """Incremental decoding runs the same layer code: one position at a time,
  each position's keys and values written to the cache and the earlier ones
  read from it, it gives the teacher-forced layer's outputs."""
  layer, _ = _layer(model_lib.DecoderLayer, norm_position)
  rng = np.random.default_rng(2)
  y = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)  # (B, T, D)
  memory = jnp.asarray(rng.normal(size=(2, 6, 16)), jnp.float32)  # (B, S, D)
  source = (INPUTS != tokens.PAD_ID).astype(jnp.int32)
  target = (TARGETS != tokens.PAD_ID).astype(jnp.int32)
  full = nnx.jit(lambda m, y, memory: m(
      y, memory, model_lib.attention_mask(target, target, causal=True),
      model_lib.attention_mask(target, source)))(layer, y, memory)
  cross_k, cross_v = layer.cross_attention.project_kv(memory)  # (B, H, S, K), (B, H, S, J)
  cache = {"self_k_t": jnp.zeros((2, 2, 4, 5)), "self_v": jnp.zeros((2, 2, 5, 6)),
           "cross_k_t": cross_k.swapaxes(2, 3), "cross_v": cross_v}
  step = nnx.jit(lambda m, y_t, cache, t: m(
      y_t, None, (jnp.arange(5) <= t)[None, None, None, :], (source != 0)[:, None, None, :],
      cache=cache, cache_index=t))
  for t in range(5):
    out, cache = step(layer, y[:, t:t + 1], cache, t)  # (B, 1, D)
    real = np.asarray(target[:, t]) == 1
    np.testing.assert_allclose(np.asarray(out[:, 0])[real], np.asarray(full[:, t])[real],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_encoder_stack_vs_numpy(norm_position):
  """Embedding * sqrt(d_model) + sinusoids (§3.4, §3.5), N layers, and for
  pre-LN the final LayerNorm on the stack's output."""
  model = build(norm_position=norm_position, **LAYER_CONFIG)
  _randomize(model, seed=1)
  epsilon = model.cfg.layer_norm_epsilon
  out = np.asarray(nnx.jit(lambda m, x: m.encode(x))(model, INPUTS))
  d_model = 16
  embedding = np.asarray(model.source_embedding.embedding[...], np.float64)
  pos = np.arange(INPUTS.shape[1])[:, None]
  i = np.arange(d_model // 2)[None, :]
  pe = np.zeros((INPUTS.shape[1], d_model))
  pe[:, 0::2] = np.sin(pos / 10000 ** (2 * i / d_model))
  pe[:, 1::2] = np.cos(pos / 10000 ** (2 * i / d_model))
  for b in range(2):
    real = np.asarray(INPUTS[b]) != tokens.PAD_ID
    x = embedding[np.asarray(INPUTS[b])] * math.sqrt(d_model) + pe
    for layer in model.encoder_layers:
      x = np_encoder_layer(x, layer, real, norm_position, epsilon)
    if norm_position == "pre":
      x = np_layer_norm(x, model.encoder_norm, epsilon)
    np.testing.assert_allclose(out[b][real], x[real], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bfloat16_forward_close_to_float32():
  f32 = build()
  bf16 = build(dtype="bfloat16")
  a = f32(INPUTS, TARGETS)
  b = bf16(INPUTS, TARGETS)
  assert b.dtype == jnp.float32  # loss-side logits stay float32
  assert np.all(np.isfinite(b))
  np.testing.assert_allclose(b, a, atol=0.1, rtol=0.05)
  params = jax.tree.leaves(nnx.state(bf16, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in params)  # parameters stay float32


def test_parameters_carry_logical_axis_names():
  model = build(positional_encoding="learned", share_output_embedding=False)
  allowed = {"vocab", "embed", "mlp", "heads", "kv", None}
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  for path, spec in nnx.to_flat_state(specs):
    spec = spec.get_value()
    assert len(spec) > 0, path
    assert set(spec) <= allowed, (path, spec)


def test_auto_dtype_model_computes_in_float32_on_a_cpu_without_bf16(tmp_path, monkeypatch):
  epyc = tmp_path / "epyc"  # An AMD Zen 3: AVX2, no bfloat16 matrix instructions.
  epyc.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
  monkeypatch.setattr(precision, "CPUINFO", str(epyc))
  assert build(dtype="auto").dtype == jnp.float32


def test_with_compute_dtype_shares_the_parameters_and_changes_only_the_dtype():
  bf16 = build(seed=3, dtype="bfloat16")
  f32 = model_lib.with_compute_dtype(bf16, "float32")
  assert bf16.dtype == jnp.bfloat16 and f32.dtype == jnp.float32
  assert model_lib.with_compute_dtype(bf16, "bfloat16") is bf16
  for a, b in zip(jax.tree.leaves(nnx.state(bf16, nnx.Param)),
                  jax.tree.leaves(nnx.state(f32, nnx.Param)), strict=True):
    assert a is b  # The same arrays: nothing copied.
  # The function of a model built in float32 with these parameters, exactly.
  np.testing.assert_array_equal(f32(INPUTS, TARGETS), build(seed=3)(INPUTS, TARGETS))
  assert not np.array_equal(bf16(INPUTS, TARGETS), f32(INPUTS, TARGETS))


# ----------------------------------------------------------------------------
# Mixed precision: the form of every matmul, forward and backward.
# ----------------------------------------------------------------------------

def hlo_dots(hlo_text):
  """Every dot and convolution of an HLO module, as (operand dtypes, result
  dtype, batched), e.g. (("bf16", "bf16"), "f32", False)."""
  dtypes, dots = {}, []
  for line in hlo_text.splitlines():
    defined = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[", line)
    if not defined:
      continue
    dtypes[defined[1]] = defined[2]
    op = re.search(r" (?:dot|convolution)\(%?([\w.\-]+), %?([\w.\-]+)\)", line)
    if op:
      dots.append(((dtypes[op[1]], dtypes[op[2]]), defined[2], "lhs_batch_dims" in line))
  return dots


def _loss_gradient(model):
  """jax.grad of the train step's loss (dropout on), lowered for XLA."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_sum(params):
    m = nnx.merge(graphdef, params, rest, copy=True)
    m.train()
    return loss.cross_entropy_sums(m(INPUTS, TARGETS), TARGETS, 0.1)["loss_sum"]

  return jax.jit(jax.grad(loss_sum)).lower(params)


@pytest.mark.parametrize("overrides", [{}, {"activation": "swiglu",
                                            "share_output_embedding": False}])
@pytest.mark.slow
def test_bfloat16_matmuls_take_bf16_operands_and_accumulate_in_float32(overrides):
  """Q/K/V/O, FFN, Q K^T, weights x V and logits, and the two gradient
  matmuls XLA derives from each: all bf16 x bf16 -> f32."""
  model = build(dtype="bfloat16", **overrides)
  forward = hlo_dots(jax.jit(lambda: model(INPUTS, TARGETS)).lower().as_text(dialect="hlo"))
  lowered = _loss_gradient(model)
  gradient = hlo_dots(lowered.as_text(dialect="hlo"))
  # Per layer: 4 attention projections + Q K^T + weights x V per attention,
  # 2 (3 gated) FFN matmuls; plus the logits. Each has a dx and a dw matmul.
  per_ffn = 3 if overrides else 2
  assert len(forward) == 2 * (6 + per_ffn) + 2 * (12 + per_ffn) + 1
  assert len(gradient) == 3 * len(forward)
  assert {(ops, out) for ops, out, _ in gradient} == {(("bf16", "bf16"), "f32")}
  # After XLA's passes, on this CPU. Unbatched dots (projections, FFN,
  # logits and their gradients) keep bf16 operands. XLA:CPU may widen the
  # operands of batched dots (Q K^T, weights x V) to f32 where it has no
  # bf16 kernel for them (an AVX2 CPU); their values are bf16 all the same.
  compiled = hlo_dots(lowered.compile().as_text())
  assert compiled and all(out == "f32" for _, out, _ in compiled)
  assert all(ops == ("bf16", "bf16") for ops, _, batched in compiled if not batched)
  assert sum(not batched for *_, batched in compiled) >= 2 * len(gradient) // 3


def test_float32_matmuls_stay_float32():
  dots = hlo_dots(_loss_gradient(build()).as_text(dialect="hlo"))
  assert dots and {(ops, out) for ops, out, _ in dots} == {(("f32", "f32"), "f32")}


@pytest.mark.slow
def test_bfloat16_decode_step_matmuls_take_bf16_operands():
  model = build(dtype="bfloat16")
  cache = search.init_cache(model, model.encode(INPUTS), INPUTS, max_length=5, beam_size=2)
  cache["origin"] = jnp.repeat(cache["origin"], 2, axis=0)  # As beam search tiles it.
  tokens_in = jnp.full((4,), tokens.BOS_ID)
  lowered = jax.jit(lambda t, c: search.decode_step(model, t, c, 0)).lower(tokens_in, cache)
  dots = hlo_dots(lowered.as_text(dialect="hlo"))
  # Per layer: Q, K, V, O of self-attention, Q and O of cross-attention,
  # 2 x (Q K^T, weights x V), 2 FFN; plus the logits.
  assert len(dots) == 2 * 12 + 1
  assert {(ops, out) for ops, out, _ in dots} == {(("bf16", "bf16"), "f32")}
