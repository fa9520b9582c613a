r"""One command that measures on one GPU what the planner estimates.

  python benchmarks/gpu_check.py --out=gpu_check.json          # on one GPU, < 8 min on an H100
  python benchmarks/gpu_check.py --tiny --out=/tmp/check.json  # tiny sizes, any device (CPU)

Sections (``--sections``, default all), each recorded in one JSON beside the
versions and the device, and printed as a short table:

  train        the base model's real update step (train.make_update_fn) at
               ``--batch_tokens`` per device (default 3125, the paper's 25000
               over 8 GPUs, and 25000): median step time of ``--steps`` timed
               steps after two warm-up steps (block_until_ready), target
               tokens/s, MFU from the model's FLOPs (summary.flops_per_token,
               backward = 2 x forward) and from XLA's count, the real peak
               memory (``peak_bytes_in_use``), each beside the planner's
               compile-time figures for the same program on this device
               (compiled.report of the program the steps ran, and
               plan.roofline with the target's published peaks).
  attention    cuDNN's fused attention (attention_impl=dot_product_attention)
               against the einsums from the same parameters: the loss, the
               logits and every gradient (max |diff| and relative norm of the
               difference, at bf16 tolerance), and the step time with each.
               On a CPU the fused path is XLA's, not cuDNN's (said in the JSON).
  determinism  two runs of ``--determinism_steps`` updates from the same seed
               and batches: bitwise equal or not; if not, again in a
               subprocess with XLA_FLAGS=--xla_gpu_deterministic_ops=true.
  quickstart   configs/quickstart.py trained for its 400 steps
               (train.train_and_evaluate: dev evals, checkpoints, beam-4 test
               BLEU; the CPU reference is 93.56 in float32), then beam-4
               decoding of its test split timed (evaluate.translate_sentences).

It needs the project's runtime packages without TensorFlow: the quickstart
corpus is generated, and nothing imported here imports tensorflow (the JSON
says whether it was loaded). A missing package is named, with the install
line, before any work. ``peak_bytes_in_use`` is the process's high-water
mark: the train section runs its batches from the smallest up, first.
A failing section is recorded with its error and the others still run.
"""

import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Modules the check imports, by the package that provides them.
REQUIRED = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax.checkpoint": "orbax-checkpoint",
            "ml_collections": "ml-collections", "absl": "absl-py", "numpy": "numpy",
            "numba": "numba", "sentencepiece": "sentencepiece", "sacrebleu": "sacrebleu",
            "sacremoses": "sacremoses", "tensorboardX": "tensorboardX"}
SECTIONS = ("train", "attention", "determinism", "quickstart")
# The tiny model of --tiny (and of tests/test_gpu_check.py).
TINY_MODEL = {"vocab_size": 256, "num_layers": 1, "d_model": 32, "d_ff": 64, "num_heads": 2,
              "d_k": 16, "d_v": 16}
TINY_QUICKSTART = {
    "data.synthetic_train_size": 2000, "data.synthetic_dev_size": 24,
    "data.synthetic_test_size": 24, "data.max_length": 32, "data.batch_tokens": 256,
    "data.eval_batch_size": 16, "model.vocab_size": 256, "model.num_layers": 1,
    "model.d_model": 32, "model.d_ff": 64, "model.num_heads": 2, "model.d_k": 16,
    "model.d_v": 16, "train.num_steps": 6, "train.warmup_steps": 10,
    "train.eval_every_steps": 3, "train.checkpoint_every_steps": 3,
    "train.eval_bleu_sentences": 8}


def missing_packages() -> list[str]:
  import importlib.util
  return [pkg for module, pkg in REQUIRED.items()
          if importlib.util.find_spec(module.split(".")[0]) is None
          or (module == "orbax.checkpoint" and importlib.util.find_spec(module) is None)]


def check_packages():
  missing = missing_packages()
  if missing:
    sys.exit(f"error: gpu_check needs {', '.join(missing)}: pip install {' '.join(missing)} "
             "(on an offline GPU image: ../shared/gpu/fetch_wheels.sh here, then the install "
             "line it prints; docs/gpu.md).")


def versions() -> dict:
  from importlib import metadata
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
               "orbax-checkpoint", "numpy"):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


# ---------------------------------------------------------------------------
# Train step: measured beside the planner.
# ---------------------------------------------------------------------------


def base_config(tiny: bool, **model):
  from configs import wmt14_ende
  config = wmt14_ende.get_config("base")
  if tiny:
    config.model.update(TINY_MODEL)
    config.data.max_length = 32
  config.model.update(model)
  return config


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


class Step:
  """The real update step of ``config`` on this process's first device, on
  a batch of random all-real rows (every slot a target token)."""

  def __init__(self, config, batch_tokens):
    import jax

    from benchmarks import benchmark
    from transformer import checks
    from transformer import sharding as sharding_lib
    from transformer import train as train_lib
    config.data.batch_tokens = int(batch_tokens)
    config.train.mesh_shape.data = 1
    self.config = config = checks.resolve_config(config, num_devices=1)
    self.mesh = sharding_lib.make_mesh(config.train, devices=jax.devices()[:1])
    self.setup = train_lib.setup_state(config, self.mesh)
    self.update = train_lib.make_update_fn(self.setup)
    self.shapes = train_lib.batch_shapes(config.data, self.setup)
    self.rows, self.length = self.shapes["targets"].shape
    self.batches = [sharding_lib.global_batch(
        benchmark.random_batch(self.rows, self.length, config.model.vocab_size, seed=i),
        self.mesh, self.setup.rules) for i in range(2)]

  def run(self, steps, state=None):
    """(state, seconds of each step) after ``steps`` updates."""
    import jax

    from transformer import train as train_lib
    state = train_lib.init_state(self.setup) if state is None else state
    seconds = []
    for i in range(steps):
      start = time.perf_counter()
      state, metrics = self.update(state, [self.batches[i % 2]])
      jax.block_until_ready((state, metrics))
      seconds.append(time.perf_counter() - start)
    return state, seconds


def planner_target(device_kind: str):
  for name, key in (("H100", "h100"), ("H200", "h200")):
    if name in device_kind:
      return key
  return None


def measure_train(config, batch_tokens, steps, log) -> dict:
  import jax
  import jax.numpy as jnp

  from transformer import compiled, plan, precision, train
  from transformer import summary as summary_lib
  device = jax.devices()[0]
  start = time.perf_counter()
  step = Step(config, batch_tokens)
  cfg = step.config.model
  state, warmup = step.run(2)
  _, seconds = step.run(steps, state)
  stats = device.memory_stats() or {}
  median = _median(seconds)
  slots = step.rows * step.length
  model_flops = 3 * summary_lib.flops_per_token(cfg, step.length) * slots
  # The program the steps ran (compiled once: jit's cache holds it).
  report = {"programs": {name: compiled.report(lowered.compile())
                         for name, lowered in step.update.lower(step.shapes).items()},
            "rows": step.rows, "length": step.length}
  program = report["programs"]["update"]
  key = planner_target(device.device_kind)
  target = plan.TARGETS[key] if key else None
  peak = target.peak_flops if target else None
  out = {
      "batch_tokens": batch_tokens, "rows": step.rows, "length": step.length,
      "dtype": precision.dtype_name(cfg.dtype),
      "attention": precision.fused_attention_implementation(cfg) or "einsum",
      # The step's program: its products' dtype, its XLA options, the optimizer split.
      "matmul_output": str(jnp.dtype(precision.matmul_output_dtype(cfg))),
      "xla_options": train.xla_options(step.config.train, step.update.setup.mesh.devices.flat[0]
                                       .platform),
      "shard_optimizer": step.update.setup.shard_optimizer, "remat": step.config.train.remat,
      "steps_timed": steps, "step_seconds_median": median,
      "step_seconds_min": min(seconds), "first_step_seconds": warmup[0],
      "target_tokens_per_second": slots / median,
      "model_flops_per_step": model_flops, "xla_flops_per_step": program["cost"]["flops"],
      "mfu": model_flops / median / peak if peak else None,
      "xla_flops_mfu": program["cost"]["flops"] / median / peak if peak else None,
      "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
      "bytes_limit": stats.get("bytes_limit"),
      "planner": {"target": key, "peak_bytes": program["memory"]["peak"],
                  "memory": program["memory"], "bytes_accessed": program["cost"]["bytes_accessed"],
                  "custom_calls": program["custom_calls"]},
      "seconds": None,
  }
  if target:
    e = plan.roofline(report, step.config, target)
    out["planner"].update({"step_seconds": e["step_seconds"], "bound": e["bound"],
                           "best_case_mfu": e["best_case_mfu"],
                           "target_tokens_per_second": e["target_tokens_per_second"]})
  out["seconds"] = round(time.perf_counter() - start, 1)
  log(f"  train {batch_tokens} tokens: {median * 1e3:.2f} ms/step ({out['seconds']} s)")
  return out


# ---------------------------------------------------------------------------
# cuDNN attention against the einsums.
# ---------------------------------------------------------------------------


def compare_attention(config, batch_tokens, steps, log) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from transformer import train as train_lib
  runs = {}
  for impl in ("dot_product_attention", "xla"):
    c = type(config)(config.to_dict())  # A copy.
    c.model.attention_impl = impl
    step = Step(c, batch_tokens)
    params = train_lib.init_state(step.setup)["params"]
    batch = step.batches[0]

    def loss(params, step=step, batch=batch):
      model = nnx.merge(step.setup.graphdef, params, step.setup.rest, copy=True)
      model.eval()
      logits = model(**train_lib._model_inputs(batch))
      logp = jax.nn.log_softmax(logits.astype(jnp.float32))
      nll = -jnp.take_along_axis(logp, batch["targets"][..., None], -1).mean()
      return nll, logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    state, _ = step.run(2)
    _, seconds = step.run(steps, state)
    from transformer import precision
    runs[impl] = {"loss": float(value), "logits": np.asarray(logits, np.float32),
                  "grads": jax.tree.map(lambda g: np.asarray(g, np.float32), grads),
                  "step_seconds_median": _median(seconds),
                  "computes": precision.fused_attention_implementation(step.config.model)
                  or "einsum"}
    log(f"  attention {impl}: {runs[impl]['step_seconds_median'] * 1e3:.2f} ms/step")
  fused, ref = runs["dot_product_attention"], runs["xla"]
  diff = lambda a, b: float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
  grad_rel = {"/".join(str(getattr(k, "key", k)) for k in path): diff(a, b)
              for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(fused["grads"]),
                                      jax.tree.leaves(ref["grads"]), strict=True)}
  fa, ra = jax.tree.leaves(fused["grads"]), jax.tree.leaves(ref["grads"])
  cos = float(sum((a * b).sum() for a, b in zip(fa, ra, strict=True))
              / np.sqrt(sum((a * a).sum() for a in fa) * sum((b * b).sum() for b in ra)))
  worst = max(grad_rel, key=grad_rel.get)
  logits_rel = diff(fused["logits"], ref["logits"])
  # bf16 tolerance: a relative error of a few bf16 epsilons (2^-8) per quantity.
  tolerance = 3e-2
  return {
      "fused_computes": fused["computes"], "batch_tokens": batch_tokens,
      "loss": {"fused": fused["loss"], "einsum": ref["loss"]},
      "logits_max_abs_diff": float(np.abs(fused["logits"] - ref["logits"]).max()),
      "logits_relative_diff": logits_rel,
      "grads_cosine": cos, "grads_worst_relative_diff": grad_rel[worst],
      "grads_worst_parameter": worst, "tolerance": tolerance,
      "agree": bool(logits_rel < tolerance and grad_rel[worst] < tolerance
                    and abs(fused["loss"] - ref["loss"]) < tolerance * abs(ref["loss"])),
      "step_seconds_median": {"fused": fused["step_seconds_median"],
                              "einsum": ref["step_seconds_median"]},
  }


# ---------------------------------------------------------------------------
# Determinism.
# ---------------------------------------------------------------------------


def run_twice(config, batch_tokens, steps) -> dict:
  import jax
  import numpy as np
  step = Step(config, batch_tokens)
  a, _ = step.run(steps)
  a = [np.asarray(x) for x in jax.tree.leaves(a["params"])]
  b, _ = step.run(steps)
  b = [np.asarray(x) for x in jax.tree.leaves(b["params"])]
  same = [x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True)]
  return {"steps": steps, "bitwise_equal": all(same), "arrays": len(same),
          "arrays_differing": same.count(False),
          "max_abs_diff": float(max(np.abs(x - y).max() for x, y in zip(a, b, strict=True)))}


def determinism(config, batch_tokens, steps, args, log, retry=True) -> dict:
  import jax
  out = {"default": run_twice(config, batch_tokens, steps)}
  log(f"  determinism: bitwise equal {out['default']['bitwise_equal']}")
  if retry and not out["default"]["bitwise_equal"] and jax.default_backend() == "gpu":
    flag = "--xla_gpu_deterministic_ops=true"
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flag).strip())
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
      cmd = [sys.executable, __file__, "--sections=determinism", "--no_retry",
             f"--out={f.name}", f"--determinism_steps={steps}", *args]
      subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
      out["with_" + flag.lstrip("-").split("=")[0]] = json.load(open(f.name))[
          "determinism"]["default"]
  return out


# ---------------------------------------------------------------------------
# The quickstart on this device.
# ---------------------------------------------------------------------------


def quickstart(tiny: bool, workdir: str, log) -> dict:
  from configs import quickstart as quickstart_config
  from transformer import bleu as bleu_lib
  from transformer import data
  from transformer import evaluate as evaluate_lib
  from transformer import train as train_lib
  config = quickstart_config.get_config()
  for key, value in (TINY_QUICKSTART if tiny else {}).items():
    section, field = key.split(".")
    config[section][field] = value
  start = time.perf_counter()
  final = train_lib.train_and_evaluate(config, workdir)
  train_seconds = time.perf_counter() - start
  log(f"  quickstart: {final['step']} steps, test BLEU {final.get('test/bleu', 0):.2f} "
      f"({train_seconds:.0f} s)")
  config = evaluate_lib.load_run_config(workdir)
  split = config.data.test_split
  sources, references = data.load_split_text(config.data, split, workdir=workdir)
  sources, references = list(sources), list(references)
  tokenizer = evaluate_lib.load_run_tokenizer(config, workdir)
  engine = evaluate_lib.restore_jax_engine(config, workdir)
  rounds = []
  for _ in range(3):  # The first compiles.
    t = time.perf_counter()
    hyps = evaluate_lib.translate_sentences(engine, tokenizer, sources,
                                            batch_size=config.decode.batch_size)
    rounds.append(time.perf_counter() - t)
  decode_s = _median(rounds[1:])
  return {"steps": int(final["step"]), "test_bleu": final.get("test/bleu"),
          "train_and_evaluate_seconds": train_seconds, "cpu_reference_bleu_float32": 93.56,
          "decode": {"split": split, "sentences": len(sources),
                     "beam_size": config.decode.beam_size, "first_round_seconds": rounds[0],
                     "seconds_median": decode_s, "sentences_per_second": len(sources) / decode_s,
                     "bleu": bleu_lib.sacrebleu_bleu(hyps, references)[0]}}


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def run_check(*, sections=SECTIONS, tiny=False, batch_tokens=(3125, 25000), steps=20,
              determinism_steps=3, retry=True, workdir=None, args=(), log=print) -> dict:
  import jax

  started = time.perf_counter()
  if not jax.config.jax_compilation_cache_dir:
    # A cache of this run only: the determinism runs' programs, compiled
    # already by the train section's runs, are then cache hits.
    cache = tempfile.mkdtemp(prefix="gpu-check-cache-")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  device = jax.devices()[0]
  result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": versions(),
            "backend": jax.default_backend(), "device": device.device_kind,
            "num_devices": jax.device_count(), "tiny": tiny,
            "note": ("tiny sizes on a " + jax.default_backend() + ": these are not GPU figures"
                     if tiny or jax.default_backend() != "gpu" else "measured on the GPU"),
            "sections": {}}
  for name in sections:
    log(f"{name} ...")
    start = time.perf_counter()
    try:
      if name == "train":
        value = [measure_train(base_config(tiny), b, steps, log) for b in sorted(batch_tokens)]
      elif name == "attention":
        value = compare_attention(base_config(tiny), min(batch_tokens), steps, log)
      elif name == "determinism":
        value = determinism(base_config(tiny), min(batch_tokens), determinism_steps,
                            list(args), log, retry=retry)
      else:
        with tempfile.TemporaryDirectory() as tmp:
          value = quickstart(tiny, workdir or tmp, log)
      result[name] = value
      result["sections"][name] = {"ok": True, "seconds": round(time.perf_counter() - start, 1)}
    except Exception as e:  # noqa: BLE001  (one section's failure is a finding; go on)
      log(f"  {name} failed: {type(e).__name__}: {e}")
      result["sections"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000],
                                  "traceback": traceback.format_exc()[-4000:],
                                  "seconds": round(time.perf_counter() - start, 1)}
  result["tensorflow_imported"] = "tensorflow" in sys.modules
  result["seconds"] = round(time.perf_counter() - started, 1)
  return result


def format_report(r: dict) -> str:
  lines = [f"{r['device']} ({r['backend']}), jax {r['versions'].get('jax')}, "
           f"python {r['versions']['python']}; {r['note']}; {r['seconds']} s"]
  for t in r.get("train", []):
    p = t["planner"]
    mfu = f"{100 * t['mfu']:.1f}%" if t["mfu"] is not None else "-"
    est = (f"{p['step_seconds'] * 1e3:.2f} ms, best-case MFU {100 * p['best_case_mfu']:.1f}%"
           if "step_seconds" in p else "no roofline for this device")
    peak = t["peak_bytes_in_use"]
    lines.append(
        f"train {t['batch_tokens']} tok ({t['rows']}x{t['length']}, {t['dtype']}, "
        f"{t['attention']}): {t['step_seconds_median'] * 1e3:.2f} ms, "
        f"{t['target_tokens_per_second']:,.0f} tok/s, MFU {mfu}; planner {est}; peak "
        + (f"{peak / 2**30:.2f} GiB" if peak else "n/a")
        + f" (planner {p['peak_bytes'] / 2**30:.2f} GiB)")
  if "attention" in r:
    a = r["attention"]
    lines.append(
        f"attention {a['fused_computes']} vs einsum: logits rel diff "
        f"{a['logits_relative_diff']:.2e}, grads cosine {a['grads_cosine']:.6f}, worst "
        f"{a['grads_worst_relative_diff']:.2e} ({a['grads_worst_parameter']}), agree "
        f"{a['agree']}; step {a['step_seconds_median']['fused'] * 1e3:.2f} vs "
        f"{a['step_seconds_median']['einsum'] * 1e3:.2f} ms")
  if "determinism" in r:
    lines.append("determinism: " + ", ".join(
        f"{k} bitwise equal {v['bitwise_equal']} ({v['arrays_differing']} of {v['arrays']} "
        "arrays differ)" for k, v in r["determinism"].items()))
  if "quickstart" in r:
    q, d = r["quickstart"], r["quickstart"]["decode"]
    lines.append(f"quickstart: {q['steps']} steps in {q['train_and_evaluate_seconds']:.0f} s, "
                 f"test BLEU {q['test_bleu']:.2f}; beam-{d['beam_size']} decode of "
                 f"{d['sentences']} sentences {d['seconds_median']:.2f} s "
                 f"({d['sentences_per_second']:.0f}/s)")
  for name, s in r["sections"].items():
    if not s["ok"]:
      lines.append(f"{name} FAILED: {s['error'][:300]}")
  lines.append(f"tensorflow imported: {r['tensorflow_imported']}")
  return "\n".join(lines)


def main(argv=None):
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="gpu_check.json", help="JSON written here.")
  parser.add_argument("--sections", default=",".join(SECTIONS))
  parser.add_argument("--tiny", action="store_true", help="Tiny sizes (a CPU test).")
  parser.add_argument("--batch_tokens", default="3125,25000")
  parser.add_argument("--steps", type=int, default=20, help="Timed steps (median).")
  parser.add_argument("--determinism_steps", type=int, default=3)
  parser.add_argument("--no_retry", action="store_true", help=argparse.SUPPRESS)
  a = parser.parse_args(argv)
  check_packages()
  sections = [s for s in a.sections.split(",") if s]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    sys.exit(f"error: unknown --sections {unknown}; choose from {list(SECTIONS)}.")
  log = lambda *x: print(*x, file=sys.stderr, flush=True)
  passed = (["--tiny"] if a.tiny else []) + [f"--batch_tokens={a.batch_tokens}"]
  r = run_check(sections=sections, tiny=a.tiny,
                batch_tokens=[int(b) for b in a.batch_tokens.split(",")], steps=a.steps,
                determinism_steps=a.determinism_steps, retry=not a.no_retry, args=passed,
                log=log)
  pathlib.Path(a.out).write_text(json.dumps(r, indent=2))
  print(format_report(r))
  print(f"JSON: {a.out}")


if __name__ == "__main__":
  main()
