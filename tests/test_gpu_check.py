"""benchmarks/gpu_check.py runs end to end at tiny sizes on the CPU (so that it
cannot rot before a GPU runs it) and its figures are consistent."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_check_reports_every_figure(tmp_path):
  out = tmp_path / "check.json"
  run = subprocess.run(
      [sys.executable, "-X", "importtime", os.path.join(ROOT, "benchmarks", "gpu_check.py"),
       "--tiny", f"--out={out}", "--batch_tokens=256,512", "--steps=3"],
      capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  r = json.loads(out.read_text())
  assert all(s["ok"] for s in r["sections"].values()), r["sections"]
  assert set(r["sections"]) == set(gpu_check.SECTIONS)
  assert r["backend"] == "cpu" and "not GPU figures" in r["note"]
  assert r["versions"]["jax"] and r["versions"]["python"]
  small, large = r["train"]
  assert (small["batch_tokens"], large["batch_tokens"]) == (256, 512)
  assert large["rows"] == 2 * small["rows"] and small["length"] == 32
  for t in r["train"]:
    assert t["target_tokens_per_second"] == pytest.approx(
        t["rows"] * t["length"] / t["step_seconds_median"])
    assert t["model_flops_per_step"] > 0 and t["xla_flops_per_step"] > 0
    assert t["planner"]["peak_bytes"] > 0 and t["mfu"] is None  # No spec peak for a CPU.
  a = r["attention"]
  assert a["fused_computes"] == "xla" and a["agree"], a
  assert a["grads_cosine"] > 0.999
  assert r["determinism"]["default"]["bitwise_equal"]  # The CPU is deterministic.
  q = r["quickstart"]
  assert q["steps"] == 6 and q["decode"]["sentences"] == 24
  assert 0 <= q["test_bleu"] <= 100
  # Nothing on the check's path (training, evaluation, decoding) imports TensorFlow.
  assert not r["tensorflow_imported"]
  imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines()
              if line.startswith("import time:")}
  assert "tensorflow" not in imported and "tensorflow_datasets" not in imported
  assert "train 256 tok" in run.stdout and "quickstart:" in run.stdout


def test_missing_package_is_named_with_the_fix(monkeypatch, capsys):
  monkeypatch.setitem(gpu_check.REQUIRED, "no_such_module_xyz", "no-such-package")
  assert gpu_check.missing_packages() == ["no-such-package"]
  with pytest.raises(SystemExit) as e:
    gpu_check.check_packages()
  assert "pip install no-such-package" in str(e.value) and "fetch_wheels" in str(e.value)


def test_unknown_section_is_one_error():
  with pytest.raises(SystemExit) as e:
    gpu_check.main(["--sections=train,speed"])
  assert "unknown --sections ['speed']" in str(e.value)
