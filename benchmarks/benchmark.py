r"""Training and decoding speed, MFU and scaling, on whatever device JAX sees.

  python benchmarks/benchmark.py --config=configs/wmt14_ende.py:base
  python benchmarks/benchmark.py --config=configs/wmt14_ende.py:base --json
  python benchmarks/benchmark.py --config=configs/wmt14_ende.py:base \
      --config.model.dtype=bfloat16 --batch_size=256 --seq_len=128   # on a GPU
  python benchmarks/benchmark.py --config=configs/wmt14_ende.py:base \
      --dtypes=auto,float32,bfloat16 --skip=scaling   # each dtype, one run

What it measures (random weights; speed does not depend on them):

* matmul peak: the best FLOP/s of a large square matmul in the form the
  model's matmuls take (transformer/precision.py:matmul): operands in the compute
  dtype, float32 accumulation and output. Measured in this run on this device,
  for the compute dtype and for float32. MFU is reported against the compute
  dtype's peak, and against the device's spec peak where one is known.
* train step: the real jitted update of transformer/train.py (forward,
  backward, Adam) on a batch of ``batch_size`` x ``seq_len`` source and
  target tokens, all real. FLOPs per step = 3 x the summary's forward FLOPs
  per target token x target tokens (backward = 2 x forward).
* decoding: ``decode_sentences`` sentences of ``seq_len`` source tokens,
  exactly ``decode_steps`` output tokens each (search.py's search with
  min_length at the length limit: EOS only comes last, so no sentence stops
  early), greedy and beam 4, each with the key/value cache (the jitted
  function translate_batch runs) and with full recomputation of the decoder
  over the whole prefix buffer.
* scaling: train step time for each of ``scaling_lengths`` at a constant
  number of tokens per batch, and the cached decode time per step as the
  output length grows (it should stay flat).
* ``--dtypes``: all of the above for each ``model.dtype`` in turn, in one
  process, and each one's train step and cached beam-4 speed-up over float32.

Every figure is the median of ``repeats`` timed runs after one warm-up run
(which compiles).
"""

import json
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from transformer import checks, precision, tokens
from transformer import search as search_lib
from transformer import sharding as sharding_lib
from transformer import summary as summary_lib
from transformer import train as train_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object with every figure.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Sentence pairs per train step.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 64, "Source and target length.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per figure (median).")
_DECODE_SENTENCES = flags.DEFINE_integer("decode_sentences", 8, "Sentences decoded.")
_DECODE_STEPS = flags.DEFINE_integer("decode_steps", 64, "Output tokens per sentence.")
_SCALING = flags.DEFINE_list("scaling_lengths", ["64", "128", "256", "512"],
                             "Sequence lengths for the train-step scaling table.")
_SCALING_TOKENS = flags.DEFINE_integer(
    "scaling_tokens", 1024, "Target tokens per batch in the scaling table.")
_DECODE_LENGTHS = flags.DEFINE_list("decode_lengths", ["16", "32", "64", "128"],
                                    "Output lengths for the decode scaling table.")
_SKIP = flags.DEFINE_list("skip", [], "Sections to skip: train, decode, scaling.")
_DTYPES = flags.DEFINE_list(
    "dtypes", [], "model.dtype values to benchmark in turn (e.g. auto,float32,bfloat16); "
    "empty: the config's model.dtype only.")

# Reference figures of the Flax WMT example's base model (63.05M parameters,
# shared 37000 vocabulary), float32 on a 2-core CPU of the kind this project
# is developed on: beam 4, 8 sentences x 64 steps in about 3.6 s, on a machine
# whose float32 matmul peak measured 160 GFLOP/s (its train step, 16 x 64,
# moved about 263 target tokens/s, 62% of that peak). The CPU targets set
# against them: the train step at >= 70% of the matmul peak measured in the
# same run, and beam 4 >= 1.3x faster than the reference as time x peak
# (docs/benchmarks.md, "Speed", says where they stand).
FLAX_BEAM4_SECONDS = 3.6
FLAX_MATMUL_PEAK = 160e9

# Dense peak FLOP/s from vendor spec sheets (no sparsity).
SPEC_PEAKS = {
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12,
}


def timed(fn, repeats, best=False):
  """Median (or, with ``best``, shortest) wall time of ``fn()`` (which must
  block) over ``repeats`` runs after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(min(times) if best else np.median(times))


def matmul_peak(dtype, repeats):
  """Best FLOP/s of an n x n x n matmul chain on device 0, in the model's
  form: ``dtype`` operands, float32 accumulation and output."""
  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  chain = 4

  @jax.jit
  def f(a, b):
    for _ in range(chain):
      a = (precision.matmul("ij,jk->ik", a, b, dtype) * 0.01).astype(dtype)
    return a

  # The peak is the best run: on a shared machine a slow run says nothing
  # about what the device can do, and a higher peak only lowers our MFU.
  seconds = timed(lambda: f(a, b).block_until_ready(), max(repeats, 5), best=True)
  return chain * 2 * n ** 3 / seconds


def spec_peak(dtype_name):
  kind = jax.devices()[0].device_kind
  for (name, dt), peak in SPEC_PEAKS.items():
    if name in kind and dt == dtype_name:
      return peak
  return None


def peak_memory_bytes():
  """Device peak memory where JAX reports it; else the process's peak RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def random_batch(batch, length, vocab, seed=0):
  """All-real sentence pairs of exactly ``length`` tokens, EOS-terminated."""
  rng = np.random.default_rng(seed)
  def ids():
    x = rng.integers(4, vocab, size=(batch, length), dtype=np.int32)
    x[:, -1] = tokens.EOS_ID
    return x
  inputs, targets = ids(), ids()
  ones = np.ones((batch, length), np.int32)
  pos = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy()
  return {"inputs": inputs, "targets": targets, "inputs_segmentation": ones,
          "targets_segmentation": ones.copy(), "inputs_position": pos,
          "targets_position": pos.copy()}


class Trainer:
  """The real sharded update step of transformer/train.py, on random weights."""

  def __init__(self, config):
    self.config = config
    self.mesh = sharding_lib.make_mesh(config.train)
    self.setup = train_lib.setup_state(config, self.mesh)
    self.state = train_lib.init_state(self.setup)
    self.update = train_lib.make_update_fn(self.setup)

  def step_seconds(self, batch_size, length, repeats):
    batch = sharding_lib.global_batch(
        random_batch(batch_size, length, self.config.model.vocab_size),
        self.mesh, self.setup.rules)

    def run():
      self.state, metrics = self.update(self.state, [batch])
      jax.block_until_ready(metrics)

    return timed(run, repeats)

  def model(self):
    return train_lib.make_model(self.setup, self.state["params"])


def train_figures(trainer, cfg, batch_size, length, peak, spec, repeats):
  seconds = trainer.step_seconds(batch_size, length, repeats)
  tokens_per_step = batch_size * length
  flops = 3 * summary_lib.flops_per_token(cfg, length) * tokens_per_step
  return {
      "batch_size": batch_size, "seq_len": length,
      "step_seconds": seconds,
      "target_tokens_per_second": tokens_per_step / seconds,
      "flops_per_step": flops,
      "achieved_flops_per_second": flops / seconds,
      "mfu_vs_measured_matmul_peak": flops / seconds / peak,
      "mfu_vs_spec_peak": flops / seconds / spec if spec else None,
  }


# -- decoding -----------------------------------------------------------------

@nnx.jit(static_argnames=("beam_size", "steps", "cached"))
def _decode_fixed(model, inputs, *, beam_size, steps, cached):
  """Decodes exactly ``steps`` tokens per sentence with search.py's search:
  min_length is the length limit, so EOS comes only at the limit."""
  limits = jnp.full((inputs.shape[0],), steps, jnp.int32)
  alpha, min_length = jnp.float32(0.6), jnp.int32(steps)
  if cached:  # What translate_batch runs.
    seqs, _ = search_lib.decode_padded(model, inputs, limits, alpha, min_length,
                                       beam_size=beam_size, max_length=steps)
    return seqs
  # Full recomputation: the decoder re-runs over the whole prefix buffer
  # (fixed shape, ``steps`` positions) at every step.
  model = nnx.view(model, deterministic=True)
  cache = {"encoded": model.encode(inputs), "inputs": inputs,
           "prefix": jnp.zeros((inputs.shape[0], steps), jnp.int32)}

  def step_fn(tok, cache, step):
    prefix = jax.lax.dynamic_update_index_in_dim(cache["prefix"], tok, step, 1)
    # decode() shifts right and puts BOS first: feed the prefix shifted left.
    targets = jnp.pad(prefix[:, 1:], ((0, 0), (0, 1)))
    segments = jnp.ones_like(targets)
    input_segments = (cache["inputs"] != tokens.PAD_ID).astype(jnp.int32)
    logits = model.decode(cache["encoded"], input_segments, targets, segments)
    return (jax.lax.dynamic_index_in_dim(logits, step, 1, keepdims=False),
            dict(cache, prefix=prefix))

  seqs, _ = search_lib.search(step_fn, cache, limits, beam_size=beam_size, alpha=alpha,
                              max_length=steps, min_length=min_length)
  return seqs


def decode_figures(model, sentences, src_len, steps, beam_size, cached, repeats):
  inputs = jnp.asarray(random_batch(sentences, src_len, model.cfg.vocab_size)["inputs"])
  run = lambda: _decode_fixed(model, inputs, beam_size=beam_size, steps=steps,
                              cached=cached).block_until_ready()
  seconds = timed(run, repeats)
  return {"beam_size": beam_size, "cached": cached, "sentences": sentences,
          "output_tokens": steps, "seconds": seconds,
          "sentences_per_second": sentences / seconds,
          "target_tokens_per_second": sentences * steps / seconds,
          "seconds_per_step": seconds / steps}


# -- report ---------------------------------------------------------------------

def run_benchmark(config, *, batch_size=16, seq_len=64, repeats=3, decode_sentences=8,
                  decode_steps=64, scaling_lengths=(64, 128, 256, 512),
                  scaling_tokens=1024, decode_lengths=(16, 32, 64, 128), skip=()):
  """Every figure, as one dict (the --json output)."""
  cfg = config.model
  dtype = precision.get_dtype(cfg.dtype)
  summary = summary_lib.summarize(cfg, seq_len)

  def peaks():  # (compute dtype, float32)
    peak = matmul_peak(dtype, repeats)
    return peak, peak if dtype == jnp.float32 else matmul_peak(jnp.float32, repeats)

  peak, peak_f32 = peaks()
  spec = spec_peak(precision.dtype_name(cfg.dtype))
  result = {
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "num_devices": jax.device_count(), "dtype": precision.dtype_name(cfg.dtype),
      "cpu_has_bf16_matmul": precision.cpu_has_bf16_matmul(),
      "total_params": summary["total_params"],
      "forward_flops_per_target_token": summary["flops_per_token"],
      "measured_matmul_peak_flops_per_second": peak,
      "measured_float32_matmul_peak_flops_per_second": peak_f32,
      "spec_peak_flops_per_second": spec,
  }
  trainer = Trainer(config)
  if "train" not in skip:
    result["train"] = train_figures(trainer, cfg, batch_size, seq_len, peak, spec, repeats)
  if "decode" not in skip:
    model = trainer.model()
    result["decode"] = [
        decode_figures(model, decode_sentences, seq_len, decode_steps, beam, cached,
                       repeats)
        for beam in (1, 4) for cached in (True, False)]
  if "scaling" not in skip:
    result["train_scaling"] = [
        train_figures(trainer, cfg, max(scaling_tokens // n, 1), n, peak, spec, repeats)
        for n in scaling_lengths]
    model = trainer.model()
    result["decode_scaling"] = [
        decode_figures(model, decode_sentences, seq_len, n, 4, True, repeats)
        for n in decode_lengths]
  # Measured again at the end; the higher of the two is the peak (the machine
  # may have been busier at one of the two moments).
  peak, peak_f32 = (max(a, b) for a, b in zip((peak, peak_f32), peaks(), strict=True))
  result["measured_matmul_peak_flops_per_second"] = peak
  result["measured_float32_matmul_peak_flops_per_second"] = peak_f32
  for figures in [result.get("train")] + result.get("train_scaling", []):
    if figures:
      figures["mfu_vs_measured_matmul_peak"] = figures["achieved_flops_per_second"] / peak
  beam4 = [d for d in result.get("decode", []) if d["beam_size"] == 4 and d["cached"]]
  if beam4 and (decode_sentences, decode_steps) == (8, 64):
    # The Flax WMT example's base model: beam 4, 8 sentences x 64 steps in
    # about 3.6 s on a machine of this kind whose float32 matmul peak measured
    # 160 GFLOP/s. Compared as time x float32 peak, so that faster machines
    # cancel out (and a faster compute dtype does not).
    result["beam4_speedup_vs_flax_wmt_reference"] = (
        (FLAX_BEAM4_SECONDS * FLAX_MATMUL_PEAK) / (beam4[0]["seconds"] * peak_f32))
  result["peak_memory_bytes"], result["peak_memory_source"] = peak_memory_bytes()
  return result


def _speedups(r, base):
  """Speed-up of run ``r`` over run ``base`` (time of base / time of r)."""
  out = {}
  if "train" in r and "train" in base:
    out["train_step"] = base["train"]["step_seconds"] / r["train"]["step_seconds"]
  for d, b in zip(r.get("decode", []), base.get("decode", []), strict=True):
    name = "greedy" if d["beam_size"] == 1 else f"beam{d['beam_size']}"
    out[f"decode_{name}_{'cached' if d['cached'] else 'recompute'}"] = (
        b["seconds"] / d["seconds"])
  return out


def compare_dtypes(config, dtypes, **kwargs):
  """``run_benchmark`` for each ``model.dtype`` in ``dtypes`` in turn (one
  process, the same machine state as far as possible), and each one's
  speed-ups over the float32 run."""
  runs = {}
  for name in dtypes:
    run_config = ml_collections.ConfigDict(config.to_dict())
    run_config.model.dtype = name
    runs[name] = run_benchmark(run_config, **kwargs)
  result = {"runs": runs}
  if "float32" in runs:
    result["speedup_vs_float32"] = {name: _speedups(r, runs["float32"])
                                    for name, r in runs.items() if name != "float32"}
  return result


def format_report(r):
  g = lambda x: f"{x / 1e9:.1f} GFLOP/s"
  lines = [
      f"device: {r['device']} x{r['num_devices']} ({r['backend']}), dtype {r['dtype']}, "
      f"{r['total_params'] / 1e6:.2f}M parameters",
      f"matmul peak (measured, {r['dtype']} operands, float32 accumulation): "
      f"{g(r['measured_matmul_peak_flops_per_second'])}; float32: "
      f"{g(r['measured_float32_matmul_peak_flops_per_second'])}"
      + (f"; spec peak {g(r['spec_peak_flops_per_second'])}"
         if r["spec_peak_flops_per_second"] else ""),
  ]
  if "train" in r:
    t = r["train"]
    lines.append(
        f"train step {t['batch_size']}x{t['seq_len']}: {t['step_seconds'] * 1e3:.0f} ms, "
        f"{t['target_tokens_per_second']:.0f} target tok/s, "
        f"{g(t['achieved_flops_per_second'])}, "
        f"MFU {100 * t['mfu_vs_measured_matmul_peak']:.1f}% of measured peak"
        + (f", {100 * t['mfu_vs_spec_peak']:.1f}% of spec" if t["mfu_vs_spec_peak"] else ""))
  for d in r.get("decode", []):
    name = "greedy" if d["beam_size"] == 1 else f"beam {d['beam_size']}"
    lines.append(
        f"decode {name:<7} {'cached' if d['cached'] else 'recompute':<9}: "
        f"{d['sentences']} sentences x {d['output_tokens']} tokens in {d['seconds']:.2f} s, "
        f"{d['sentences_per_second']:.2f} sent/s, {d['target_tokens_per_second']:.0f} tok/s")
  for t in r.get("train_scaling", []):
    lines.append(f"scaling train {t['batch_size']}x{t['seq_len']}: "
                 f"{t['step_seconds'] * 1e3:.0f} ms/step, "
                 f"MFU {100 * t['mfu_vs_measured_matmul_peak']:.1f}%")
  if "beam4_speedup_vs_flax_wmt_reference" in r:
    lines.append("beam-4 decode vs the Flax WMT example (time x matmul peak): "
                 f"{r['beam4_speedup_vs_flax_wmt_reference']:.2f}x")
  for d in r.get("decode_scaling", []):
    lines.append(f"scaling decode beam 4, {d['output_tokens']} tokens: "
                 f"{d['seconds_per_step'] * 1e3:.1f} ms/step")
  lines.append(f"peak memory: {r['peak_memory_bytes'] / 2**30:.2f} GiB "
               f"({r['peak_memory_source']})")
  return "\n".join(lines)


def format_comparison(result):
  lines = []
  for name, r in result["runs"].items():
    lines += [f"== model.dtype={name} ==", format_report(r)]
  for name, speedups in result.get("speedup_vs_float32", {}).items():
    lines.append(f"speed-up of model.dtype={name} ({result['runs'][name]['dtype']}) over "
                 "float32: " + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items()))
  return "\n".join(lines)


def main(argv):
  """The command (run by cli.run: a config error is one line and exit code 2,
  another bad value, e.g. float16 on a CPU, exit code 1)."""
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  kwargs = dict(
      batch_size=_BATCH.value, seq_len=_SEQ_LEN.value, repeats=_REPEATS.value,
      decode_sentences=_DECODE_SENTENCES.value, decode_steps=_DECODE_STEPS.value,
      scaling_lengths=[int(n) for n in _SCALING.value],
      scaling_tokens=_SCALING_TOKENS.value,
      decode_lengths=[int(n) for n in _DECODE_LENGTHS.value], skip=_SKIP.value)
  # A bad model field or dtype (unknown, or float16 on CPU) fails before any run.
  checks.check_model_config(config.model)
  for name in _DTYPES.value or [config.model.dtype]:
    precision.dtype_name(name)
  if _DTYPES.value:
    result = compare_dtypes(config, _DTYPES.value, **kwargs)
    print(json.dumps(result) if _JSON.value else format_comparison(result))
  else:
    result = run_benchmark(config, **kwargs)
    print(json.dumps(result) if _JSON.value else format_report(result))


if __name__ == "__main__":
  from transformer import cli

  flags.mark_flags_as_required(["config"])
  cli.run(main)
