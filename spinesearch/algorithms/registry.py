"""Search algorithms by name: what `--algorithm` on the command line resolves to.

The RNN controller and its TensorFlow import load only when "ppo" or
"reinforce" is asked for, so random search and evolution start instantly.
"""
import functools
import inspect
from typing import Any, Callable, Dict, Mapping

from spinesearch.algorithms.base import SearchAlgorithm
from spinesearch.algorithms.evolution import RegularizedEvolution
from spinesearch.algorithms.random_search import RandomSearch
from spinesearch.errors import ConfigError
from spinesearch.space.base import SearchSpace


def _rnn_controller(algorithm: str, space: SearchSpace, seed: int, **options) -> SearchAlgorithm:
  from spinesearch.algorithms.rnn_controller import RNNController
  return RNNController(space, seed, algorithm=algorithm, **options)


def _rnn_options() -> Dict[str, inspect.Parameter]:
  from spinesearch.algorithms.rnn_controller import RNNController
  return _keyword_options(RNNController, exclude=("algorithm",))


def _rnn_state_defaults() -> Dict[str, Any]:
  from spinesearch.algorithms.rnn_controller import STATE_DEFAULTS
  return STATE_DEFAULTS


def _keyword_options(cls, exclude=()) -> Dict[str, inspect.Parameter]:
  parameters = inspect.signature(cls.__init__).parameters
  return {name: p for name, p in parameters.items()
          if p.kind == inspect.Parameter.KEYWORD_ONLY and name not in exclude}


# name -> factory(space, seed, **options)
ALGORITHMS: Dict[str, Callable[..., SearchAlgorithm]] = {
    "ppo": functools.partial(_rnn_controller, "ppo"),
    "reinforce": functools.partial(_rnn_controller, "reinforce"),
    "random": RandomSearch,
    "evolution": RegularizedEvolution,
}

_OPTIONS: Dict[str, Callable[[], Dict[str, inspect.Parameter]]] = {
    "ppo": _rnn_options,
    "reinforce": _rnn_options,
    "random": lambda: {},
    "evolution": lambda: _keyword_options(RegularizedEvolution),
}


# name -> the options a saved state that lacks them was made with (they did not
# exist yet), where that differs from a new search's default.
_STATE_DEFAULTS: Dict[str, Callable[[], Dict[str, Any]]] = {
    "ppo": _rnn_state_defaults,
    "reinforce": _rnn_state_defaults,
}


def algorithm_options(name: str) -> Dict[str, Any]:
  """The options an algorithm accepts, with their defaults."""
  _check_name(name)
  return {option: p.default for option, p in _OPTIONS[name]().items()}


def build_algorithm(name: str, space: SearchSpace, seed: int, **options) -> SearchAlgorithm:
  """A new search algorithm; ConfigError for an unknown name or option."""
  _check_name(name)
  accepted = _OPTIONS[name]()
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ConfigError(
        f"algorithm {name}: unknown option(s) {', '.join(unknown)}; "
        f"accepted: {', '.join(sorted(accepted)) or 'none'}")
  return ALGORITHMS[name](space, seed, **options)


def algorithm_from_state(space: SearchSpace, state: Mapping[str, Any]) -> SearchAlgorithm:
  """The algorithm a saved `state()` came from, continuing where it stopped."""
  if not isinstance(state, Mapping) or "name" not in state or "seed" not in state:
    raise ConfigError("algorithm state: not a saved search-algorithm state (no name/seed)")
  if state.get("space", space.name) != space.name:
    raise ConfigError(
        f"algorithm state: saved for the {state['space']!r} space, not {space.name!r}")
  _check_name(state["name"])
  defaults = _STATE_DEFAULTS.get(state["name"], dict)()
  algorithm = build_algorithm(state["name"], space, state["seed"],
                              **{**defaults, **state.get("options", {})})
  algorithm.load_state(dict(state))
  return algorithm


def _check_name(name: str) -> None:
  if name not in ALGORITHMS:
    raise ConfigError(f"algorithm: must be one of {', '.join(ALGORITHMS)}, got {name!r}")
