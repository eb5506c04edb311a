"""Decisions about a whole architecture, appended to any space's.

`ArchitectureOptions(space)` is `space` plus one decision per option (each a
small list of values), made after all of `space`'s own. A subclass says what
its options are, how an architecture holds their values (`values_of`) and how
a choice of values changes an architecture (`apply`); the cursor, encoding,
size and config are shared. The searched head (`head.WithHead`) and the input
fusion (`fusion.WithFusion`) are such options; wrappers stack, each adding its
entry to the wrapped space's `config()` under its `config_key`, which
`registry.space_from_config` reads back.
"""
import abc
import math
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space.architecture import Architecture
from spinesearch.space.base import Decision, DecisionCursor, Mask, SearchSpace


class ArchitectureOptions(SearchSpace):
  """`inner`'s decisions, then one decision per option (module docstring)."""

  config_key: str = ""

  def __init__(self, space: SearchSpace, options: Mapping[str, Tuple]):
    if any(isinstance(s, type(self)) for s in wrapped_spaces(space)):
      raise ConfigError(f"{self.config_key}: the space searches its {self.config_key} already")
    self.inner = space
    self.options: Dict[str, Tuple] = dict(options)
    self._decisions = tuple(space.decisions()) + tuple(
        Decision(self.decision_name(key), self.decision_kind(key),
                 tuple(label(v) for v in values))
        for key, values in self.options.items())

  # ---- what a subclass says ---------------------------------------------------

  def decision_name(self, key: str) -> str:
    return f"{self.config_key}.{key}"

  def decision_kind(self, key: str) -> str:
    return f"{self.config_key}_{key}"

  @abc.abstractmethod
  def values_of(self, architecture: Architecture) -> Dict[str, Any]:
    """The architecture's value of each option."""

  @abc.abstractmethod
  def apply(self, architecture: Architecture, values: Mapping[str, Any]) -> Architecture:
    """`architecture` with the options' `values`."""

  @abc.abstractmethod
  def published(self, point: Architecture) -> Architecture:
    """The published architecture `point` of the wrapped space, with the
    options' published values (`known.published_point`)."""

  # ---- SearchSpace -----------------------------------------------------------

  @property
  def name(self) -> str:  # the wrapped space's, so architectures and stores agree
    return self.inner.name

  @property
  def architecture_space(self) -> str:
    return self.inner.architecture_space

  def __getattr__(self, attribute):
    # Block names, allocations and the like are the wrapped space's.
    if attribute in ("inner", "options"):
      raise AttributeError(attribute)
    return getattr(self.inner, attribute)

  def decisions(self) -> Tuple[Decision, ...]:
    return self._decisions

  def start(self) -> "_OptionsCursor":
    return _OptionsCursor(self)

  def _encode(self, architecture: Architecture) -> List[int]:
    decisions = self.inner._encode(architecture)
    values = self.values_of(architecture)
    for key, choices in self.options.items():
      if values[key] not in choices:
        raise ArchitectureError(f"{self.decision_name(key)}: {values[key]!r} is not a choice "
                                f"of this space ({', '.join(map(label, choices))})")
      decisions.append(choices.index(values[key]))
    return decisions

  def log10_size(self) -> float:
    return self.inner.log10_size() + sum(math.log10(len(c)) for c in self.options.values())

  def config(self) -> Dict:
    return {**self.inner.config(), self.config_key: {k: list(v) for k, v in self.options.items()}}


def wrapped_spaces(space: SearchSpace) -> List[SearchSpace]:
  """`space` and every space it wraps, outermost first."""
  spaces = [space]
  while isinstance(spaces[-1], ArchitectureOptions):
    spaces.append(spaces[-1].inner)
  return spaces


def label(value) -> str:
  """A value as a decision's choice is named."""
  if isinstance(value, bool):
    return "yes" if value else "no"
  return f"{value:g}" if isinstance(value, float) else str(value)


def choices(values, where: str, name: str, kind, valid: Callable[[Any], bool]) -> Tuple:
  """The distinct values of an option, each of type `kind` and `valid`."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise ConfigError(f"{where}: {name} must be a non-empty list, got {values!r}")
  result = []
  for v in values:
    if kind is bool:
      ok_type = isinstance(v, bool)
    elif kind is str:
      ok_type = isinstance(v, str)
    else:
      ok_type = not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else int)
    if not ok_type or not valid(v):
      raise ConfigError(f"{where}: {name} has a bad value {v!r}")
    result.append(kind(v))
  if len(set(result)) != len(result):
    raise ConfigError(f"{where}: {name} lists a value twice: {list(values)}")
  return tuple(result)


class _OptionsCursor(DecisionCursor):
  """The wrapped space's cursor, then the options' decisions."""

  def __init__(self, space: ArchitectureOptions):
    self._space = space
    self._inner = space.inner.start()
    self._num_inner = len(space.inner.decisions())
    self._position = 0
    self._chosen: List[int] = []

  @property
  def position(self) -> int:
    return self._position

  def mask(self) -> Mask:
    if self._position < self._num_inner:
      return self._inner.mask()
    index = self._position - self._num_inner
    if index >= len(self._space.options):
      raise ArchitectureError(f"{self._space.name} space: every decision has been made")
    return (True,) * len(list(self._space.options.values())[index])

  def choose(self, choice: int) -> None:
    if self._position < self._num_inner:
      self._inner.choose(choice)
    else:
      mask = self.mask()
      if isinstance(choice, bool) or not isinstance(choice, int) or \
          not 0 <= choice < len(mask):
        name = self._space.decisions()[self._position].name
        raise ArchitectureError(f"{name}: choice {choice!r} is not valid at this point")
      self._chosen.append(choice)
    self._position += 1

  def architecture(self) -> Architecture:
    if len(self._chosen) != len(self._space.options):
      raise ArchitectureError(f"{self._space.name} space: the {self._space.config_key} "
                              f"decisions are not all made")
    values = {key: values[i] for (key, values), i in zip(self._space.options.items(),
                                                          self._chosen)}
    return self._space.apply(self._inner.architecture(), values)
