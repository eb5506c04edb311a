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
`config()` gains a "head" entry (`options.ArchitectureOptions`).
"""
from typing import Any, Dict, Mapping, Sequence

from spinesearch.space.architecture import Architecture, HeadSpec
from spinesearch.space.base import SearchSpace
from spinesearch.space.options import ArchitectureOptions, choices

DEFAULTS = {"num_convs": (1, 2, 3, 4), "filters_scale": (0.5, 1.0, 2.0),
            "separable": (False, True), "fpn_repeats": (1, 3, 5, 7)}
# RetinaNet's head as published (4 convolutions at the scaling's width) and
# Model Garden's 5 NAS-FPN repeats.
PUBLISHED_HEAD = HeadSpec(4, 1.0, False)
PUBLISHED_FPN_REPEATS = 5


class WithHead(ArchitectureOptions):
  """`space` and the head decisions (module docstring)."""

  config_key = "head"

  def __init__(self, space: SearchSpace, num_convs: Sequence[int] = DEFAULTS["num_convs"],
               filters_scale: Sequence[float] = DEFAULTS["filters_scale"],
               separable: Sequence[bool] = DEFAULTS["separable"],
               fpn_repeats: Sequence[int] = DEFAULTS["fpn_repeats"]):
    where = f"{space.name} space head"
    options = {
        "num_convs": choices(num_convs, where, "num_convs", int, lambda v: 1 <= v <= 8),
        "filters_scale": choices(filters_scale, where, "filters_scale", float,
                                 lambda v: v > 0),
        "separable": choices(separable, where, "separable", bool, lambda v: True),
    }
    self.has_cells = space.name in ("nasfpn", "joint")
    if self.has_cells:
      options["fpn_repeats"] = choices(fpn_repeats, where, "fpn_repeats", int,
                                       lambda v: v >= 1)
    super().__init__(space, options)

  def decision_name(self, key: str) -> str:
    return "fpn.repeats" if key == "fpn_repeats" else f"head.{key}"

  def values_of(self, architecture: Architecture) -> Dict[str, Any]:
    head = architecture.head
    return {"num_convs": head.num_convs, "filters_scale": head.filters_scale,
            "separable": head.separable, "fpn_repeats": architecture.fpn_repeats}

  def apply(self, architecture: Architecture, values: Mapping[str, Any]) -> Architecture:
    return architecture.replace(
        head=HeadSpec(values["num_convs"], values["filters_scale"], values["separable"]),
        fpn_repeats=values.get("fpn_repeats", 0))

  def published(self, point: Architecture) -> Architecture:
    return point.replace(head=PUBLISHED_HEAD,
                         fpn_repeats=PUBLISHED_FPN_REPEATS if self.has_cells else 0)
