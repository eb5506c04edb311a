"""The bundled search flagfiles name only the controller's flags, with values
its enums accept, and their spaces build."""
import pathlib
import subprocess
import sys

import pytest

from spinesearch import controller
from spinesearch.space.registry import build_space

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs" / "search").glob("*.flags"))
SUPERNET_CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs" / "oneshot").glob("*.flags"))


def _flags(path):
  values = {}
  for line in path.read_text().splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
      name, _, value = line.lstrip("-").partition("=")
      values[name] = value
  return values


def test_the_mobile_flagfile_is_bundled():
  assert "mobile.flags" in [p.name for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_flagfile_names_known_flags_and_valid_choices(path):
  flags = controller.FLAGS
  for name, value in _flags(path).items():
    assert name in flags, f"{path.name}: unknown flag --{name}"
    enum_values = getattr(flags[name].parser, "enum_values", None)
    if enum_values:
      assert value in enum_values, f"{path.name}: --{name}={value} not in {enum_values}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_flagfile_space_builds(path):
  values = _flags(path)
  space = build_space(values.get("search_space", "spinenet"), values.get("space_preset", "default"),
                      search_head="search_head" in values, search_fusion="search_fusion" in values)
  assert space.log10_size() > 0


@pytest.mark.parametrize("path", SUPERNET_CONFIGS, ids=lambda p: p.stem)
def test_supernet_flagfile_parses_and_its_space_builds(path):
  # In a process of its own: the supernet CLI defines flags the controller also defines.
  script = ("import sys; from spinesearch.oneshot import __main__ as cli; "
            "cli.FLAGS(['oneshot', '--flagfile=' + sys.argv[1]]); "
            "from spinesearch.space.registry import build_space; "
            "print(build_space(cli.FLAGS.search_space, cli.FLAGS.space_preset).log10_size())")
  run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                       timeout=120, cwd=str(path.parents[2]))
  assert run.returncode == 0, run.stderr[-2000:]
  assert float(run.stdout.split()[-1]) > 0
