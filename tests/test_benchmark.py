"""The benchmark runs end to end on a tiny model and its figures are consistent."""

import jax.numpy as jnp
import pytest
from flax import nnx

from benchmarks import benchmark
from transformer import model as model_lib
from transformer import summary

VOCAB = 300


@pytest.fixture
def config(tiny_config):
  """The suite's tiny model (one layer, d_model 32) in the paper's base config."""
  return tiny_config(base="paper", **{"model.vocab_size": VOCAB})


@pytest.mark.slow
def test_benchmark_figures(config):
  r = benchmark.run_benchmark(config, batch_size=4, seq_len=8, repeats=1,
                              decode_sentences=2, decode_steps=6, scaling_lengths=(8, 16),
                              scaling_tokens=32, decode_lengths=(4, 8))
  t = r["train"]
  assert t["flops_per_step"] == 3 * summary.flops_per_token(config.model, 8) * 32
  assert t["target_tokens_per_second"] == pytest.approx(32 / t["step_seconds"])
  assert t["mfu_vs_measured_matmul_peak"] == pytest.approx(
      t["achieved_flops_per_second"] / r["measured_matmul_peak_flops_per_second"])
  assert [(d["beam_size"], d["cached"]) for d in r["decode"]] == [
      (1, True), (1, False), (4, True), (4, False)]
  assert all(d["output_tokens"] == 6 for d in r["decode"])
  assert [t["seq_len"] for t in r["train_scaling"]] == [8, 16]
  assert [t["batch_size"] for t in r["train_scaling"]] == [4, 2]
  assert r["peak_memory_bytes"] > 0
  assert "H100" not in r["device"] or r["spec_peak_flops_per_second"]


@pytest.mark.slow
def test_recomputation_decodes_the_same_tokens_as_the_cache(config):
  model = model_lib.Transformer(config.model, rngs=nnx.Rngs(0))
  inputs = jnp.asarray(benchmark.random_batch(2, 5, VOCAB)["inputs"])
  for beam in (1, 4):
    cached = benchmark._decode_fixed(model, inputs, beam_size=beam, steps=6, cached=True)
    recomputed = benchmark._decode_fixed(model, inputs, beam_size=beam, steps=6,
                                         cached=False)
    assert (cached == recomputed).all()
    assert cached.shape[-1] == 6


@pytest.mark.slow
def test_dtype_comparison_reports_both_peaks_and_speedups(config):
  r = benchmark.compare_dtypes(config, ["float32", "bfloat16"], batch_size=4,
                               seq_len=8, repeats=1, decode_sentences=2, decode_steps=6,
                               skip=("scaling",))
  f32, bf16 = r["runs"]["float32"], r["runs"]["bfloat16"]
  assert (f32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
  assert (f32["measured_matmul_peak_flops_per_second"]
          == f32["measured_float32_matmul_peak_flops_per_second"])
  # MFU of the bf16 run is against the peak of its own form (bf16 x bf16 -> f32).
  assert bf16["train"]["mfu_vs_measured_matmul_peak"] == pytest.approx(
      bf16["train"]["achieved_flops_per_second"]
      / bf16["measured_matmul_peak_flops_per_second"])
  speedups = r["speedup_vs_float32"]["bfloat16"]
  assert speedups["train_step"] == pytest.approx(
      f32["train"]["step_seconds"] / bf16["train"]["step_seconds"])
  assert speedups["decode_beam4_cached"] == pytest.approx(
      f32["decode"][2]["seconds"] / bf16["decode"][2]["seconds"])
  assert set(speedups) == {"train_step", "decode_greedy_cached", "decode_greedy_recompute",
                           "decode_beam4_cached", "decode_beam4_recompute"}
