"""How a backbone's blocks merge their inputs, as a decision (EfficientDet).

`WithFusion(space)` appends one decision to the decisions of a space with
searched backbone blocks:

  fusion.kind   sum       Model Garden's SpineNet: the resampled inputs are summed
                weighted  EfficientDet's fast normalised fusion: input i is scaled
                          by relu(w_i) / (sum_j relu(w_j) + 1e-4), w learned

Model Garden's SpineNet and SpineNetMobile have the weighted fusion for a
whole backbone (`weighted_fusion`), not per block, so the decision is one per
architecture; `modeling.structure` makes its weights trainable. The wrapped
space's `config()` gains a "fusion" entry (`options.ArchitectureOptions`).
"""
from typing import Any, Dict, Mapping, Sequence

from spinesearch.errors import ConfigError
from spinesearch.space.architecture import FUSIONS, Architecture
from spinesearch.space.base import SearchSpace
from spinesearch.space.options import ArchitectureOptions, choices


class WithFusion(ArchitectureOptions):
  """`space` and the fusion decision (module docstring)."""

  config_key = "fusion"

  def __init__(self, space: SearchSpace, kind: Sequence[str] = FUSIONS):
    where = f"{space.name} space fusion"
    if space.name == "nasfpn":
      raise ConfigError(f"{where}: the nasfpn space has no searched backbone blocks to fuse "
                        f"the inputs of (its merging cells choose sum or attention already)")
    super().__init__(space, {"kind": choices(kind, where, "kind", str,
                                             lambda v: v in FUSIONS)})

  def values_of(self, architecture: Architecture) -> Dict[str, Any]:
    return {"kind": architecture.fusion}

  def apply(self, architecture: Architecture, values: Mapping[str, Any]) -> Architecture:
    return architecture.replace(fusion=values["kind"])

  def published(self, point: Architecture) -> Architecture:
    return point  # SpineNet sums its blocks' inputs
