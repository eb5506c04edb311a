"""Errors a user can cause, and how a command-line tool reports them.

A user mistake (bad flag value, malformed architecture, broken dataset file) is
reported as one line on stderr with a non-zero exit status, never a traceback.
"""
import sys
from typing import Callable, List, NoReturn


class UserError(Exception):
  """Something the user can fix; its message is the whole report."""


class ArchitectureError(UserError, ValueError):
  """An architecture that is malformed or outside its search space."""


class DatasetError(UserError, ValueError):
  """A dataset file or record that cannot be used."""


class ConfigError(UserError, ValueError):
  """A flag, preset or configuration value that cannot be used."""


EXIT_USER_ERROR = 2


def check_choices(name: str, given, known) -> None:
  """Refuses a list flag `--name` that is empty or names a value not in
  `known`."""
  unknown = [value for value in given if value not in known]
  if unknown or not given:
    raise ConfigError(f"--{name}: choose from {', '.join(known)}; got "
                      f"{','.join(given) or 'none'}")


def fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def run_cli(main: Callable[..., object], *args, **kwargs) -> object:
  """Calls `main`, turning a UserError into one line and exit status 2."""
  try:
    return main(*args, **kwargs)
  except UserError as e:
    fail(str(e))


def parse_absl_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing (for `app.run(..., flags_parser=...)`), but a bad
  flag is one line and exit status 2."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    fail(message.removeprefix("ERROR:: "))
