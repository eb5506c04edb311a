"""Helpers of the zoo tests."""
from model_zoo import cli
from spinesearch.errors import run_cli


def run_zoo_cli(argv, capsys):
  """(exit status, stdout, stderr) of `python -m model_zoo ARGV`, run in this process."""
  try:
    status = run_cli(cli.main, argv)
  except SystemExit as e:
    status = e.code
  out, err = capsys.readouterr()
  return status, out, err
