"""Tests for transformer/model.py: each checks one claim of the paper."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from transformer import model as model_lib
from transformer import optim, tokens

VOCAB = 23


def tiny_config(**overrides):
  cfg = common.model_config("base")
  cfg.update(dict(vocab_size=VOCAB, num_layers=2, d_model=16, d_ff=32, num_heads=2,
                  d_k=4, d_v=6, max_len=32))
  cfg.update(overrides)
  return cfg


def build(seed=0, **overrides):
  model = model_lib.Transformer(tiny_config(**overrides), rngs=nnx.Rngs(seed))
  model.eval()
  return model


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


def test_fused_attention_impl_matches_einsum():
  a = build(attention_impl="xla", d_v=4)
  b = build(attention_impl="dot_product_attention", d_v=4)
  np.testing.assert_allclose(a(INPUTS, TARGETS), b(INPUTS, TARGETS),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pos,i", [(0, 0), (1, 0), (7, 3), (50, 1), (99, 7)])
def test_positional_encoding_closed_form(pos, i):
  d_model = 16
  pe = np.asarray(model_lib.sinusoidal_encoding(jnp.arange(100), d_model))
  angle = pos / 10000 ** (2 * i / d_model)
  np.testing.assert_allclose(pe[pos, 2 * i], math.sin(angle), atol=1e-5)
  np.testing.assert_allclose(pe[pos, 2 * i + 1], math.cos(angle), atol=1e-5)


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
def test_cached_decoding_equals_full_forward(overrides):
  model = build(**overrides)
  full = np.asarray(model(INPUTS, TARGETS))
  cache = model.init_cache(model.encode(INPUTS), INPUTS, max_length=TARGETS.shape[1])
  assert cache["shared"]["layers"][0]["self_v"].dtype == model.dtype  # bf16 cache in bf16
  # bfloat16: float32 sums over a different number of keys can round a bf16
  # activation the other way; a few bf16 steps (0.016 at |logit| ~ 3) remain.
  # Measured: at most 0.033 over seeds 0-3.
  tol = 1e-5 if model.dtype == jnp.float32 else 5e-2
  step = jax.jit(lambda tok, cache, t: model.decode_step(tok, cache, t))
  previous = jnp.full((2,), tokens.BOS_ID)
  for t in range(TARGETS.shape[1]):
    logits, cache = step(previous, cache, t)
    real = np.asarray(TARGETS[:, t] != tokens.PAD_ID)
    np.testing.assert_allclose(np.asarray(logits)[real], full[real, t],
                               rtol=tol, atol=tol)
    previous = TARGETS[:, t]


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
  def n_params(**kw):
    return sum(x.size for x in jax.tree.leaves(nnx.state(build(**kw), nnx.Param)))
  tied = n_params()
  emb = VOCAB * 16
  assert n_params(share_source_target_embedding=False) == tied + emb
  assert n_params(share_output_embedding=False) == tied + emb
  model = build()
  assert model.source_embedding is model.target_embedding


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


def test_dropout_only_in_train_mode():
  model = build(dropout_rate=0.3)
  a, b = model(INPUTS, TARGETS), model(INPUTS, TARGETS)
  np.testing.assert_array_equal(a, b)
  model.train()
  c = model(INPUTS, TARGETS)
  assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3


@pytest.mark.parametrize("activation", sorted(
    list(model_lib.ACTIVATIONS) + list(model_lib.GATED_ACTIVATIONS)))
def test_every_activation_runs(activation):
  logits = build(activation=activation)(INPUTS, TARGETS)
  assert logits.shape == (2, 5, VOCAB) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_gated_ffn_formula():
  ffn = model_lib.FeedForward(4, 8, activation="swiglu", ffn_dropout_rate=0.0,
                              dtype=jnp.float32, param_dtype=jnp.float32,
                              rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (1, 3, 4))
  w1, wg, w2 = ffn.w_1[...], ffn.w_gate[...], ffn.w_2[...]
  expected = (jax.nn.silu(x @ w1) * (x @ wg)) @ w2
  np.testing.assert_allclose(ffn(x), expected, rtol=1e-5, atol=1e-6)


def test_relu_ffn_is_eq2():
  ffn = model_lib.FeedForward(4, 8, activation="relu", ffn_dropout_rate=0.0,
                              dtype=jnp.float32, param_dtype=jnp.float32,
                              rngs=nnx.Rngs(0))
  ffn.b_1[...] = jnp.linspace(-1, 1, 8)
  x = jax.random.normal(jax.random.key(1), (1, 3, 4))
  expected = np.maximum(0, x @ ffn.w_1[...] + ffn.b_1[...]) @ ffn.w_2[...] + ffn.b_2[...]
  np.testing.assert_allclose(ffn(x), expected, rtol=1e-5, atol=1e-6)


def test_post_and_pre_layer_norm():
  post, pre = build(), build(norm_position="pre")
  assert not hasattr(post, "encoder_norm")
  assert hasattr(pre, "encoder_norm") and hasattr(pre, "decoder_norm")
  # Post-LN: every sub-layer output is normalized (zero mean, unit variance).
  x = post.encode(INPUTS)
  np.testing.assert_allclose(np.asarray(x).mean(-1), 0.0, atol=1e-5)


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


@pytest.mark.parametrize("field,value,message", [
    ("activation", "tanh", "activation"),
    ("norm_position", "sandwich", "norm_position"),
    ("dropout_rate", 1.5, "dropout_rate"),
    ("d_model", 15, "even"),
])
def test_impossible_config_has_clear_error(field, value, message):
  with pytest.raises(ValueError, match=message):
    build(**{field: value})


def test_auto_dtype_follows_the_cpu_flags_and_the_backend(tmp_path, monkeypatch):
  epyc = tmp_path / "epyc"  # An AMD Zen 3: AVX2, no bfloat16 matrix instructions.
  epyc.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
                  "processor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n")
  xeon = tmp_path / "xeon"  # A Sapphire Rapids Xeon.
  xeon.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 "
                  "amx_tile\n")
  expected = {epyc: "float32", xeon: "bfloat16", tmp_path / "no_such_file": "float32"}
  for cpuinfo, dtype in expected.items():
    monkeypatch.setattr(model_lib, "CPUINFO", str(cpuinfo))
    assert model_lib.dtype_name("auto") == dtype, cpuinfo.name
    assert model_lib.dtype_name("float32") == "float32"
  monkeypatch.setattr(model_lib, "CPUINFO", str(epyc))
  assert model_lib.get_dtype("auto") == jnp.float32
  assert build(dtype="auto").dtype == jnp.float32
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert model_lib.dtype_name("auto") == "bfloat16"
  assert model_lib.dtype_name("float16") == "float16"  # Allowed off the CPU.


@pytest.mark.parametrize("dtype,message", [
    ("fp8", "Unknown dtype config.model.dtype='fp8'"),
    ("float16", "'float16' is not supported on CPU"),
])
def test_bad_dtype_has_one_clear_error(dtype, message):
  with pytest.raises(ValueError, match=message):
    model_lib.dtype_name(dtype)
  with pytest.raises(ValueError, match=message):
    build(dtype=dtype)


# ----------------------------------------------------------------------------
# Mixed precision: the form of every matmul, forward and backward.
# ----------------------------------------------------------------------------

def test_matmul_and_its_gradient_vs_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4)).astype(np.float32)  # (B, T, D)
  w = rng.normal(size=(4, 5)).astype(np.float32)  # (D, F)
  g = rng.normal(size=(2, 3, 5)).astype(np.float32)  # cotangent of the output
  xd, wd, gd = (a.astype(np.float64) for a in (x, w, g))
  for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)):
    out, vjp = jax.vjp(functools.partial(model_lib.matmul, "BTD,DF->BTF", dtype=dtype),
                       x, w)
    dx, dw = vjp(jnp.asarray(g))
    assert out.dtype == dx.dtype == dw.dtype == jnp.float32
    np.testing.assert_allclose(out, xd @ wd, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, gd @ wd.T, rtol=tol, atol=tol)  # dL/dx = g W^T
    np.testing.assert_allclose(dw, np.einsum("btd,btf->df", xd, gd), rtol=tol, atol=tol)


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

  def loss(params):
    m = nnx.merge(graphdef, params, rest, copy=True)
    m.train()
    return optim.cross_entropy_sums(m(INPUTS, TARGETS), TARGETS, 0.1)["loss_sum"]

  return jax.jit(jax.grad(loss)).lower(params)


@pytest.mark.parametrize("overrides", [{}, {"activation": "swiglu",
                                            "share_output_embedding": False}])
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


def test_bfloat16_decode_step_matmuls_take_bf16_operands():
  model = build(dtype="bfloat16")
  cache = model.init_cache(model.encode(INPUTS), INPUTS, max_length=5, beam_size=2)
  cache["origin"] = jnp.repeat(cache["origin"], 2, axis=0)  # As beam search tiles it.
  tokens_in = jnp.full((4,), tokens.BOS_ID)
  lowered = jax.jit(lambda t, c: model.decode_step(t, c, 0)).lower(tokens_in, cache)
  dots = hlo_dots(lowered.as_text(dialect="hlo"))
  # Per layer: Q, K, V, O of self-attention, Q and O of cross-attention,
  # 2 x (Q K^T, weights x V), 2 FFN; plus the logits.
  assert len(dots) == 2 * 12 + 1
  assert {(ops, out) for ops, out, _ in dots} == {(("bf16", "bf16"), "f32")}
