"""The bundled search flagfiles name only the controller's flags, with values
its enums accept, and their spaces build."""
import pathlib

import pytest

from spinesearch import controller
from spinesearch.space.registry import build_space

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs" / "search").glob("*.flags"))


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
  space = build_space(values.get("search_space", "spinenet"), values.get("space_preset", "default"))
  assert space.log10_size() > 0
