"""Backbone and feature pyramid searched together: the scale-permuted backbone's
decisions, then the merging cells' decisions, as one sequence.

The cells' pool starts with the backbone's output features, so the cell space's
levels must be the backbone space's output levels.
"""
from typing import Dict, List, Optional, Tuple

from spinesearch.errors import ConfigError
from spinesearch.space.architecture import Architecture
from spinesearch.space.base import Decision, DecisionCursor, Mask, SearchSpace
from spinesearch.space.nasfpn import PRESETS as NASFPN_PRESETS, MergingCellSpace
from spinesearch.space.spinenet import ScalePermutedSpace

BACKBONE_PREFIX = "backbone/"
FPN_PREFIX = "fpn/"


class JointSpace(SearchSpace):
  """A SpineNet backbone followed by NAS-FPN merging cells."""

  name = "joint"

  def __init__(self, backbone: Optional[ScalePermutedSpace] = None,
               fpn: Optional[MergingCellSpace] = None):
    self.backbone = backbone if backbone is not None else ScalePermutedSpace()
    self.fpn = fpn if fpn is not None else MergingCellSpace()
    if not isinstance(self.backbone, ScalePermutedSpace):
      raise ConfigError(f"joint space: backbone must be a ScalePermutedSpace, "
                        f"got {type(self.backbone).__name__}")
    if not isinstance(self.fpn, MergingCellSpace):
      raise ConfigError(f"joint space: fpn must be a MergingCellSpace, "
                        f"got {type(self.fpn).__name__}")
    if self.fpn.levels != self.backbone.output_levels:
      raise ConfigError(
          f"joint space: the cells' levels {list(self.fpn.levels)} must equal the backbone's "
          f"output levels {list(self.backbone.output_levels)}")
    self._decisions = (
        tuple(Decision(BACKBONE_PREFIX + d.name, d.kind, d.choices)
              for d in self.backbone.decisions()) +
        tuple(Decision(FPN_PREFIX + d.name, d.kind, d.choices) for d in self.fpn.decisions()))

  @classmethod
  def preset(cls, name: str) -> "JointSpace":
    """The backbone and cell spaces' presets of the same name; a backbone-only
    preset ("mobile") takes the paper's cells."""
    cells = name if name in NASFPN_PRESETS else "default"
    return cls(ScalePermutedSpace.preset(name), MergingCellSpace.preset(cells))

  @classmethod
  def vertex(cls) -> "JointSpace":
    return cls.preset("vertex")

  def decisions(self) -> Tuple[Decision, ...]:
    return self._decisions

  def start(self) -> "_JointCursor":
    return _JointCursor(self)

  def _encode(self, architecture: Architecture) -> List[int]:
    return self.backbone.encode_blocks(architecture.blocks) + \
        self.fpn.encode_cells(architecture.cells)

  def log10_size(self) -> float:
    return self.backbone.log10_size() + self.fpn.log10_size()

  def config(self) -> Dict:
    return {"name": self.name, "backbone": self.backbone.config(), "fpn": self.fpn.config()}


class _JointCursor(DecisionCursor):
  """The backbone's cursor until its decisions are made, then the cells'."""

  def __init__(self, space: JointSpace):
    self._space = space
    self._backbone = space.backbone.start()
    self._fpn = space.fpn.start()
    self._num_backbone = len(space.backbone.decisions())

  @property
  def position(self) -> int:
    if self._backbone.position < self._num_backbone:
      return self._backbone.position
    return self._num_backbone + self._fpn.position

  def _current(self) -> DecisionCursor:
    return self._backbone if self._backbone.position < self._num_backbone else self._fpn

  def mask(self) -> Mask:
    return self._current().mask()

  def choose(self, choice: int) -> None:
    self._current().choose(choice)

  def architecture(self) -> Architecture:
    return Architecture(space=self._space.name, blocks=self._backbone.blocks(),
                        cells=self._fpn.cells())
