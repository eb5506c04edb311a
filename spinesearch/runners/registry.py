"""Runners by name: `--runner=NAME` resolves here."""
from typing import Callable, Dict, Tuple, Type

from spinesearch.errors import ConfigError
from spinesearch.runners.base import Runner

_RUNNERS: Dict[str, Callable[[], Type[Runner]]] = {}


def register_runner(name: str, loader: Callable[[], Type[Runner]]) -> None:
  """Registers a runner class; `loader` imports it only when it is used, so an
  optional dependency (Ray) is needed only by searches that choose it."""
  _RUNNERS[name] = loader


def runner_names() -> Tuple[str, ...]:
  return tuple(sorted(_RUNNERS))


def build_runner(name: str, **options) -> Runner:
  if name not in _RUNNERS:
    raise ConfigError(f"--runner={name}: unknown runner; choose one of {', '.join(runner_names())}")
  return _RUNNERS[name]()(**options)


def _local_runner() -> Type[Runner]:
  from spinesearch.runners.local import LocalRunner
  return LocalRunner


def _inline_runner() -> Type[Runner]:
  from spinesearch.runners.inline import InlineRunner
  return InlineRunner


def _ray_runner() -> Type[Runner]:
  try:
    from spinesearch.runners.ray_runner import RayRunner
  except ModuleNotFoundError as e:
    if e.name != "ray":
      raise
    raise ConfigError("--runner=ray needs Ray, the optional extra 'distributed': "
                      "pip install 'spinesearch[distributed]' (in a source checkout: "
                      "pip install -e '.[distributed]')") from None
  return RayRunner


register_runner("local", _local_runner)
register_runner("inline", _inline_runner)
register_runner("ray", _ray_runner)
