"""`python -m model_zoo ...`: see `model_zoo.cli`."""
import sys

from model_zoo.cli import main
from spinesearch.errors import run_cli

if __name__ == "__main__":
  sys.exit(run_cli(main, sys.argv[1:]))
