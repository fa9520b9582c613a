"""Tests for transformer/cli.py and the command lines that use it: a user's
mistake is one ``error:`` line, no traceback, exit code 2 for a flag or config
error and 1 otherwise.

CLI tests that stop at flag parsing run in about a second (JAX is not
started); those that need a trained run are marked slow.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from absl import flags

from transformer import checks, cli, config_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# The module: one line, the exit codes, flags read before parsing.
# ---------------------------------------------------------------------------


def test_error_line_is_one_line_and_names_an_os_errors_path():
  assert cli.error_line(ValueError("two\n  lines")) == "two lines"
  assert cli.error_line(FileNotFoundError(2, "No such file or directory", "/x/y")) == (
      "/x/y: No such file or directory")
  assert cli.error_line(KeyError()) == "KeyError"


def test_user_errors_exit_with_the_code_and_one_line(capsys):
  def fail():
    raise FloatingPointError("the loss is nan")
  with pytest.raises(SystemExit) as stop:
    with cli.user_errors(FloatingPointError):
      fail()
  assert stop.value.code == cli.EXIT_USER == 1
  assert capsys.readouterr().err == "error: the loss is nan\n"
  with pytest.raises(SystemExit) as stop:
    with cli.user_errors(checks.ConfigError, code=cli.EXIT_CONFIG):
      raise checks.ConfigError("config.train.num_steps=0 must be >= 1.")
  assert stop.value.code == cli.EXIT_CONFIG == 2
  assert capsys.readouterr().err == "error: config.train.num_steps=0 must be >= 1.\n"
  with pytest.raises(RuntimeError):  # Not a user error: a bug keeps its traceback.
    with cli.user_errors(FloatingPointError):
      raise RuntimeError("a bug")


@pytest.mark.parametrize("error,code", [
    (checks.ConfigError("bad value"), 2), (ValueError("bad data"), 1),
    (FileNotFoundError("no run"), 1), (PermissionError("read-only"), 1)])
def test_run_maps_config_errors_to_2_and_other_user_errors_to_1(monkeypatch, capsys,
                                                                 error, code):
  def main(argv):
    raise error

  # app.run as the command line calls it, without absl's flag parsing.
  monkeypatch.setattr(cli.app, "run", lambda main, flags_parser: main(["prog"]))
  with pytest.raises(SystemExit) as stop:
    cli.run(main)
  assert stop.value.code == code
  assert capsys.readouterr().err == f"error: {error}\n"


def test_flag_value_reads_both_spellings():
  argv = ["prog", "--workdir=/a", "--config", "c.py", "--x"]
  assert cli.flag_value(argv, "workdir") == "/a"
  assert cli.flag_value(argv, "config") == "c.py"
  assert cli.flag_value(argv, "x") is None and cli.flag_value(argv, "y") is None


def test_config_files_load_or_are_one_config_error(tmp_path):
  config = cli.load_config_file(os.path.join(REPO, "configs", "table3.py") + ":C7")
  assert config.model.d_ff == 4096
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  for value, message in [
      (str(broken), f"--config={broken}: syntax error in {broken} line 1"),
      (str(tmp_path / "none.py"), "no such config file"),
      (os.path.join(REPO, "configs", "wmt14_ende.py") + ":huge",
       "Unknown config variant 'huge'")]:
    with pytest.raises(checks.ConfigError, match=message):
      cli.load_config_file(value)


def test_a_misspelt_override_names_the_closest_field(capsys):
  argv = ["prog", f"--config={os.path.join(REPO, 'configs', 'quickstart.py')}",
          "--config.model.activaton=gelu"]
  with pytest.raises(SystemExit) as stop:
    cli.exit_for_flag_error(flags.Error("whatever absl said"), argv)
  assert stop.value.code == 2
  assert capsys.readouterr().err == (
      "error: --config.model.activaton: config.model has no field 'activaton'; did you "
      "mean 'activation'?\n")
  with pytest.raises(SystemExit) as stop:  # A command without a config flag.
    cli.exit_for_flag_error(flags.Error("Unknown command line flag 'bogus'"), ["prog"],
                            config_flag=None)
  assert stop.value.code == 2
  assert capsys.readouterr().err == "error: Unknown command line flag 'bogus'\n"


# ---------------------------------------------------------------------------
# The command lines.
# ---------------------------------------------------------------------------


def _env():
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")


def run_cli(script, *args, cwd=REPO):
  """(exit code, stderr) of a root script ("train.py") or a module
  ("transformer.export", run with -m)."""
  program = [os.path.join(REPO, script)] if script.endswith(".py") else ["-m", script]
  out = subprocess.run([sys.executable, *program, *args], env=_env(),
                       capture_output=True, text=True, timeout=300, cwd=cwd)
  return out.returncode, out.stderr


def assert_one_error_line(stderr, *parts):
  assert "Traceback" not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), stderr[-3000:]
  for part in parts:
    assert part in last, last
  return last


QUICKSTART = "--config=" + os.path.join(REPO, "configs", "quickstart.py")


@pytest.mark.parametrize("args,parts", [
    ([QUICKSTART, "--config.model.activaton=gelu"],
     ["--config.model.activaton", "did you mean 'activation'"]),
    ([QUICKSTART, "--config.trian.num_steps=3"], ["--config.trian", "did you mean 'train'"]),
    ([QUICKSTART, "--config.train.num_steps=abc"], ["--config.train.num_steps=abc"]),
    ([QUICKSTART, "--config.train.fsdp=maybe"], ["--config.train.fsdp=maybe"]),
    (["--config=configs/no_such.py"], ["--config=configs/no_such.py", "no such config file"]),
    (["--config=configs/wmt14_ende.py:huge"], ["Unknown config variant 'huge'"]),
    (["--config=configs/quickstart.py:huge"], ["quickstart.py has no variants"]),
    ([], ["--config"]),
])
def test_train_flag_errors_are_one_line_exit_2(tmp_path, args, parts):
  code, stderr = run_cli("train.py", *args, f"--workdir={tmp_path / 'run'}")
  assert code == 2
  assert_one_error_line(stderr, *parts)
  assert not (tmp_path / "run").exists()  # Nothing was started.


def test_broken_config_file_is_one_line(tmp_path):
  path = tmp_path / "broken.py"
  path.write_text("def get_config(:\n")
  code, stderr = run_cli("train.py", f"--config={path}", f"--workdir={tmp_path / 'run'}")
  assert code == 2
  assert_one_error_line(stderr, f"--config={path}", "syntax error", "line 1")


@pytest.mark.slow
def test_bad_value_stops_train_before_any_work(tmp_path):
  code, stderr = run_cli("train.py", QUICKSTART, "--config.train.num_steps=0",
                         f"--workdir={tmp_path / 'run'}")
  assert code == 2
  assert_one_error_line(stderr, "config.train.num_steps=0 must be >= 1")
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / "run"
  path.write_text("x")
  code, stderr = run_cli("train.py", QUICKSTART, f"--workdir={path}")
  assert code == 1
  assert_one_error_line(stderr, str(path), "is a file")
  code, stderr = run_cli("evaluate.py", f"--workdir={path}")
  assert code == 1
  assert_one_error_line(stderr, str(path), "is a file")


def test_evaluate_without_a_run_is_one_line_also_with_an_override(tmp_path):
  missing, file = tmp_path / "none", tmp_path / "file"
  file.write_text("x")
  for workdir, part in [(missing, "does not exist"), (file, "is a file")]:
    code, stderr = run_cli("evaluate.py", f"--workdir={workdir}",
                           "--config.decode.beam_size=2")
    assert code == 1
    assert_one_error_line(stderr, f"Workdir '{workdir}' {part}")


@pytest.mark.slow
def test_export_flag_errors_are_one_line_exit_2(tmp_path):
  for args, part in [
      ([], "--workdir (a train.py run) and --out (the folder to write) are required"),
      (["--bogus"], "Unknown command line flag 'bogus'"),
      ([f"--workdir={tmp_path}", f"--out={tmp_path / 'out'}", "--quantization=int3"],
       "flag --quantization=int3: value should be one of"),
      ([f"--workdir={tmp_path}", f"--out={tmp_path / 'out'}", "extra"],
       "Unexpected arguments: ['extra']")]:
    code, stderr = run_cli("transformer.export", *args)
    assert code == 2
    assert_one_error_line(stderr, part)


@pytest.mark.slow
def test_evaluate_malformed_config_json_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text("{\"model\": ")
  for extra in ([], ["--config.decode.beam_size=2"]):
    code, stderr = run_cli("evaluate.py", f"--workdir={tmp_path}", *extra)
    assert code == 2
    assert_one_error_line(stderr, "config.json is not valid JSON")
  (tmp_path / "config.json").write_text("")
  code, stderr = run_cli("evaluate.py", f"--workdir={tmp_path}")
  assert code == 2
  assert_one_error_line(stderr, "config.json is not valid JSON")


# ---------------------------------------------------------------------------
# Against a trained run: bad inputs leave its files as they were.
# ---------------------------------------------------------------------------


def _digest(workdir):
  digests = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        digests[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return digests


@pytest.mark.slow
@pytest.mark.parametrize("script,args,code,part", [
    ("train.py", [QUICKSTART, "--config.train.keep_checkpoints=0"], 2, "keep_checkpoints=0"),
    ("train.py", [QUICKSTART, "--config.decode.beam_size=0"], 2, "beam_size=0"),
    ("train.py", [QUICKSTART, "--config.model.vocab_size=4"], 2, "vocab_size=4"),
    ("train.py", [QUICKSTART, "--config.model.d_ff=128"], 1, "different model"),
    ("evaluate.py", ["--beam_size=0"], 2, "--beam_size: config.decode.beam_size=0"),
    ("evaluate.py", ["--alpha=-1"], 2, "--alpha: config.decode.alpha=-1.0"),
    ("evaluate.py", ["--average_last=0"], 2, "average_last=0"),
    ("evaluate.py", ["--average_last=9"], 1, "only 2"),
    ("evaluate.py", ["--config.decode.max_extra_length=-1"], 2, "max_extra_length=-1"),
    ("evaluate.py", ["--config.decode.bem_size=2"], 2, "did you mean 'beam_size'"),
    ("evaluate.py", ["--step=4"], 1, "No checkpoint at step 4"),
])
def test_bad_input_leaves_a_run_unchanged(trained_run, tmp_path, script, args, code, part,
                                          tiny_flags):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  before = _digest(workdir)
  if script == "train.py":
    args = [args[0], *tiny_flags, *args[1:]]
  exit_code, stderr = run_cli(script, *args, f"--workdir={workdir}")
  assert exit_code == code, stderr[-3000:]
  assert_one_error_line(stderr, part)
  after = _digest(workdir)  # The run's files as they were (a token cache may be added).
  assert {k: after.get(k) for k in before} == before
  assert {k for k in after.keys() - before.keys() if not k.startswith("data_cache/")} == set()


@pytest.mark.slow
def test_config_json_with_a_bad_value_is_one_line(trained_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  path = os.path.join(workdir, config_io.CONFIG_FILE)
  config = json.load(open(path))
  config["train"]["num_steps"] = "many"
  with open(path, "w") as f:
    json.dump(config, f)
  before = _digest(workdir)
  exit_code, stderr = run_cli("evaluate.py", f"--workdir={workdir}")
  assert exit_code == 2
  assert_one_error_line(stderr, "num_steps='many' must be an integer")
  assert _digest(workdir) == before
