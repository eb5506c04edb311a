"""The detection head as a searchable part of any space (NAS-FCOS, Hit-Detector).

`WithHead(space)` appends to `space`'s decisions

  head.num_convs      convolutions per head (class and box), 1..4
  head.filters_scale  the head's width, times the scaling's head_num_filters
  head.separable      depthwise-separable convolutions or not
  fpn.repeats         (spaces with merging cells) how many times NAS-FPN's
                      cells are stacked

and writes them to the architecture's `head` and `fpn_repeats`, which a
proxy's scaling does not replace. Model Garden's RetinaNet head takes all
three head settings; its NASFPN takes the repeats. Everything else (name,
encoding of the rest, block names) is the wrapped space's; the wrapped space's
`config()` gains a "head" entry, which `registry.space_from_config` reads back.
"""
import math
from typing import Dict, List, Sequence, Tuple

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space.architecture import Architecture, HeadSpec
from spinesearch.space.base import Decision, DecisionCursor, Mask, SearchSpace

DEFAULTS = {"num_convs": (1, 2, 3, 4), "filters_scale": (0.5, 1.0, 2.0),
            "separable": (False, True), "fpn_repeats": (1, 3, 5, 7)}


class WithHead(SearchSpace):
  """`space` and the head decisions (module docstring)."""

  def __init__(self, space: SearchSpace, num_convs: Sequence[int] = DEFAULTS["num_convs"],
               filters_scale: Sequence[float] = DEFAULTS["filters_scale"],
               separable: Sequence[bool] = DEFAULTS["separable"],
               fpn_repeats: Sequence[int] = DEFAULTS["fpn_repeats"]):
    if isinstance(space, WithHead):
      raise ConfigError("head: the space searches its head already")
    self.inner = space
    where = f"{space.name} space head"
    self.options = {
        "num_convs": _choices(num_convs, where, "num_convs", int, lambda v: 1 <= v <= 8),
        "filters_scale": _choices(filters_scale, where, "filters_scale", float,
                                  lambda v: v > 0),
        "separable": _choices(separable, where, "separable", bool, lambda v: True),
    }
    self.has_cells = space.name in ("nasfpn", "joint")
    if self.has_cells:
      self.options["fpn_repeats"] = _choices(fpn_repeats, where, "fpn_repeats", int,
                                             lambda v: v >= 1)
    self._decisions = tuple(space.decisions()) + tuple(
        Decision(f"{'fpn.repeats' if key == 'fpn_repeats' else 'head.' + key}", f"head_{key}",
                 tuple(_label(v) for v in values))
        for key, values in self.options.items())

  @property
  def name(self) -> str:  # the wrapped space's, so architectures and stores agree
    return self.inner.name

  @property
  def architecture_space(self) -> str:
    return self.inner.architecture_space

  def __getattr__(self, attribute):
    # Block names, allocations and the like are the wrapped space's.
    if attribute == "inner":
      raise AttributeError(attribute)
    return getattr(self.inner, attribute)

  def decisions(self) -> Tuple[Decision, ...]:
    return self._decisions

  def start(self) -> "_HeadCursor":
    return _HeadCursor(self)

  def _encode(self, architecture: Architecture) -> List[int]:
    decisions = self.inner._encode(architecture)
    head = architecture.head
    values = {"num_convs": head.num_convs, "filters_scale": head.filters_scale,
              "separable": head.separable, "fpn_repeats": architecture.fpn_repeats}
    for key, choices in self.options.items():
      if values[key] not in choices:
        raise ArchitectureError(f"{'fpn_repeats' if key == 'fpn_repeats' else 'head.' + key}: "
                                f"{values[key]!r} is not a choice of this space "
                                f"({', '.join(map(_label, choices))})")
      decisions.append(choices.index(values[key]))
    return decisions

  def log10_size(self) -> float:
    return self.inner.log10_size() + sum(math.log10(len(c)) for c in self.options.values())

  def config(self) -> Dict:
    return {**self.inner.config(), "head": {k: list(v) for k, v in self.options.items()}}


def _label(value) -> str:
  if isinstance(value, bool):
    return "yes" if value else "no"
  return f"{value:g}" if isinstance(value, float) else str(value)


def _choices(values, where: str, name: str, kind, valid) -> Tuple:
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise ConfigError(f"{where}: {name} must be a non-empty list, got {values!r}")
  result = []
  for v in values:
    ok_type = isinstance(v, bool) if kind is bool else (
        not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else int))
    if not ok_type or not valid(v):
      raise ConfigError(f"{where}: {name} has a bad value {v!r}")
    result.append(kind(v))
  if len(set(result)) != len(result):
    raise ConfigError(f"{where}: {name} lists a value twice: {list(values)}")
  return tuple(result)


class _HeadCursor(DecisionCursor):
  """The wrapped space's cursor, then the head decisions."""

  def __init__(self, space: WithHead):
    self._space = space
    self._inner = space.inner.start()
    self._num_inner = len(space.inner.decisions())
    self._position = 0
    self._head: List[int] = []

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
      self._head.append(choice)
    self._position += 1

  def architecture(self) -> Architecture:
    if len(self._head) != len(self._space.options):
      raise ArchitectureError(f"{self._space.name} space: the head decisions are not all made")
    values = {key: choices[i] for (key, choices), i in zip(self._space.options.items(),
                                                            self._head)}
    return self._inner.architecture().replace(
        head=HeadSpec(values["num_convs"], values["filters_scale"], values["separable"]),
        fpn_repeats=values.get("fpn_repeats", 0))
