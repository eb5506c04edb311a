"""The one-line refusals shared by the command-line tools."""
import pytest

from spinesearch.errors import ConfigError, check_choices


def test_a_list_flag_must_name_known_values_and_not_be_empty():
  check_choices("runners", ["local", "ray"], ("local", "ray"))
  with pytest.raises(ConfigError, match=r"^--runners: choose from local, ray; got local,foo$"):
    check_choices("runners", ["local", "foo"], ("local", "ray"))
  with pytest.raises(ConfigError, match=r"got none$"):
    check_choices("isolations", [], ("worker", "process"))
