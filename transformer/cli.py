"""What the command lines share: flag parsing, one-line errors, exit codes.

Every entry point (``train.py``, ``evaluate.py``, ``python -m
transformer.export``, ``python -m transformer.plan``) runs its ``main``
through ``run``, absl's ``app.run`` where a user's mistake is one ``error:``
line on stderr, never a traceback:

  exit code 2   a flag or config error: a misspelt field (the closest one is
                named), a missing or broken config file, an unknown variant,
                a wrongly typed value, a ``checks.ConfigError`` (a config
                value out of range, a malformed config.json)
  exit code 1   any other user error: ``OSError`` or ``ValueError`` (missing
                data or checkpoint, an unwritable workdir), and what a
                command adds with ``user_errors`` (a diverged run)

Anything else is a bug and keeps its traceback. Importing this module starts
no JAX, so that a flag error is answered in about a second.
"""

import contextlib
import importlib.util
import os
import sys

from absl import app, flags

from transformer import checks

EXIT_CONFIG = 2  # A flag, config file or config value that cannot work.
EXIT_USER = 1  # Any other user error.


def error_line(e: BaseException) -> str:
  """``e`` as one line (an OSError names its path and the reason)."""
  if isinstance(e, OSError) and e.strerror and e.filename:
    text = f"{e.filename}: {e.strerror}"
  else:
    text = str(e) or type(e).__name__
  return " ".join(text.split())


def exit_with_error(e: BaseException, code: int):
  """Prints ``e`` as one ``error:`` line on stderr and exits with ``code``."""
  print(f"error: {error_line(e)}", file=sys.stderr)
  sys.stderr.flush()
  sys.exit(code)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException], code: int = EXIT_USER):
  """Inside, an error of ``kinds`` is one ``error:`` line and exit ``code``:
  for the errors a command adds to ``run``'s (a diverged run, another
  process's failure), where their classes are imported only after the flags."""
  try:
    yield
  except kinds as e:
    exit_with_error(e, code)


def run(main, *, config_flag: str | None = "config", load_config=None):
  """``app.run(main)`` with every user error one ``error:`` line: flag errors
  (``parse_flags``) and a ``ConfigError`` from ``main`` exit with 2, an
  ``OSError`` or ``ValueError`` with 1 (see the module's docstring).

  ``config_flag``: the config flag whose ``--config.*`` overrides are
  diagnosed (None: the command has none). ``load_config(argv)``: for a config
  that is not a file (evaluate.py's saved config.json), a function returning
  it or raising ``ConfigError``.
  """
  def main_with_user_errors(argv):
    try:
      return main(argv)
    except checks.ConfigError as e:  # A ValueError too: caught first.
      exit_with_error(e, EXIT_CONFIG)
    except (OSError, ValueError) as e:
      exit_with_error(e, EXIT_USER)

  app.run(main_with_user_errors, flags_parser=lambda argv: parse_flags(
      argv, config_flag=config_flag, load_config=load_config))


# ---------------------------------------------------------------------------
# Flags.
# ---------------------------------------------------------------------------


def flag_value(argv, name: str) -> str | None:
  """The value of ``--name=VALUE`` or ``--name VALUE`` in ``argv``, before the
  flags are parsed (None if absent)."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def load_config_file(value: str):
  """The config of ``--config=FILE[:VARIANT]``, or a ``ConfigError`` naming it."""
  path, _, variant = value.partition(":")
  flag = f"--config={value}"
  if not os.path.isfile(path):
    raise checks.ConfigError(f"{flag}: no such config file {path!r}.")
  try:
    spec = importlib.util.spec_from_file_location("_checked_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise checks.ConfigError(f"{flag}: syntax error in {path} line {e.lineno}: "
                             f"{e.msg}.") from e
  except Exception as e:  # Anything the file raises while it is imported.
    raise checks.ConfigError(f"{flag}: {path} fails to load: {error_line(e)}") from e
  if not callable(getattr(module, "get_config", None)):
    raise checks.ConfigError(f"{flag}: {path} defines no get_config().")
  try:
    return module.get_config(variant) if variant else module.get_config()
  except Exception as e:
    raise checks.ConfigError(f"{flag}: {error_line(e)}") from e


def _check_override(arg, config, name):
  """A ``--config.a.b=value`` flag whose path is not a field of ``config``."""
  path = arg[len(f"--{name}."):].split("=", 1)[0]
  node, done = config, name
  for part in path.split("."):
    keys = list(node.keys()) if checks.has_type(node, dict) else []
    if part not in keys:
      where = f"{done} has no field {part!r}" if keys else f"{done} is not a section"
      hint = checks.did_you_mean(part, keys) if keys else "."
      raise checks.ConfigError(f"{arg.split('=', 1)[0]}: {where}{hint}")
    node, done = node[part], f"{done}.{part}"


def parse_flags(argv, *, config_flag: str | None = "config", load_config=None):
  """absl's flag parsing with every error as one ``error:`` line naming the
  flag, exit code 2 (``run`` passes it to ``app.run``; arguments as ``run``'s)."""
  try:
    rest = flags.FLAGS(argv)
    if config_flag is not None:
      config = flags.FLAGS[config_flag].value
      if config is not None:
        config.keys()  # A config file that failed to load raises only when used.
    return rest
  except Exception as e:  # Any error of parsing is the user's; say which flag.
    exit_for_flag_error(e, argv, config_flag=config_flag, load_config=load_config)


def exit_for_flag_error(e: Exception, argv, *, config_flag: str | None = "config",
                        load_config=None):
  """Prints the flag error ``e`` as one ``error:`` line naming the flag (for a
  misspelt field, the closest one) and exits with code 2.

  A config that cannot be read for the diagnosis is the error instead: code
  2 for a ``ConfigError``, 1 for a missing workdir (evaluate.py's --workdir).
  """
  message = error_line(e)
  try:
    if config_flag is None:
      config = None
    elif load_config is not None:
      config = load_config(argv)
    else:
      value = flag_value(argv[1:], config_flag)
      config = load_config_file(value) if value is not None else None
    if config is not None:
      for arg in argv[1:]:
        if arg.startswith(f"--{config_flag}."):
          _check_override(arg, config, config_flag)
  except checks.ConfigError as diagnosed:
    message = error_line(diagnosed)
  except (OSError, ValueError) as unreadable:
    exit_with_error(unreadable, EXIT_USER)
  exit_with_error(checks.ConfigError(message), EXIT_CONFIG)
