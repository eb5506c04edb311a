"""A ResNet-like backbone space: the CR-NAS experiment on SpineNet's blocks.

Blocks come in level order (decreasing resolution), each fed by the two
features built before it (as `known.scale_decreased` orders SpineNet-49's
blocks), and the last block of each output level is that level's output, as a
ResNet's C3..C5 are. Nothing about the order or the connections is searched;
the decisions are

  1. how many blocks each level gets (`allocation.AllocationChoice`: the total
     fixed, every level at least `min_blocks_per_level`, optionally under a
     block-cost budget), one decision per level;
  2. per block: its type, then (with more than one `dilations`) its dilation
     rate.

The architectures are SpineNet-schema architectures (`space` "spinenet") that
Model Garden's SpineNet builds, so a scale-permuted and a scale-decreased
architecture train, score and compare through the same code.
"""
import collections
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space import architecture as schema
from spinesearch.space.allocation import AllocationChoice
from spinesearch.space.architecture import Architecture, BlockSpec
from spinesearch.space.base import Decision, Mask, SearchSpace, SequentialCursor
from spinesearch.space.spinenet import dilation_list, slot_names

# SpineNet-49's 15 blocks by level (10 intermediate, outputs P3..P7).
DEFAULT_ALLOCATION = {2: 1, 3: 2, 4: 5, 5: 5, 6: 1, 7: 1}

PRESETS: Dict[str, Dict] = {
    "default": {},
    # CR-NAS's dilation search on top of the reallocation.
    "dilated": {"dilations": (1, 2, 3)},
}


class ScaleDecreasedSpace(SearchSpace):
  """Blocks in level order; the allocation and block types are searched."""

  name = "scale_decreased"
  architecture_space = "spinenet"

  def __init__(self,
               allocation: Optional[Mapping[int, int]] = None,
               output_levels: Sequence[int] = (3, 4, 5, 6, 7),
               block_fns: Sequence[str] = ("bottleneck", "residual"),
               min_blocks_per_level: int = 1,
               allocation_budget: Optional[float] = None,
               dilations: Sequence[int] = (1,)):
    where = "scale_decreased space"
    counts = {}
    for key, count in (allocation or DEFAULT_ALLOCATION).items():
      level = int(key) if isinstance(key, str) and key.isdigit() else key
      if isinstance(level, bool) or not isinstance(level, int) or \
          not schema.MIN_BLOCK_LEVEL < level <= schema.MAX_BLOCK_LEVEL:
        raise ConfigError(f"{where}: allocation level {key!r} is not a level 2..7")
      if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{where}: allocation[{level}] must be a count >= 1, got {count!r}")
      counts[level] = count
    self.output_levels = tuple(sorted(output_levels))
    levels = sorted(counts)
    if levels != list(range(levels[0], levels[-1] + 1)) or \
        not set(self.output_levels) <= set(levels) or self.output_levels[-1] != levels[-1]:
      raise ConfigError(f"{where}: the allocation's levels {levels} must be contiguous and "
                        f"end with the output levels {list(self.output_levels)}")
    if min_blocks_per_level < 1:
      raise ConfigError(f"{where}: min_blocks_per_level must be >= 1 (every level of a "
                        f"scale-decreased backbone has a block), got {min_blocks_per_level!r}")
    self.choice = AllocationChoice(counts, min_count=min_blocks_per_level,
                                   budget=allocation_budget, where=where)
    if isinstance(block_fns, str) or not block_fns or len(set(block_fns)) != len(block_fns) \
        or any(fn not in ("bottleneck", "residual") for fn in block_fns):
      raise ConfigError(f"{where}: block_fns must be distinct values of bottleneck, residual; "
                        f"got {block_fns!r}")
    self.block_fns = tuple(block_fns)
    self.dilations = dilation_list(dilations, where)
    self.levels = self.choice.levels
    self.num_blocks = self.choice.total
    self._decisions = tuple(self._build_decisions())

  @classmethod
  def preset(cls, name: str, **overrides) -> "ScaleDecreasedSpace":
    if name not in PRESETS:
      raise ConfigError(f"scale_decreased space: unknown preset {name!r}; "
                        f"valid: {', '.join(PRESETS)}")
    return cls(**{**PRESETS[name], **overrides})

  def _build_decisions(self) -> List[Decision]:
    decisions = self.choice.decisions()
    for b in range(self.num_blocks):
      decisions.append(Decision(f"block[{b}].block_fn", "block_fn", self.block_fns))
      if len(self.dilations) > 1:
        decisions.append(Decision(f"block[{b}].dilation", "dilation",
                                  tuple(str(d) for d in self.dilations)))
    return decisions

  def blocks_for(self, allocation: Mapping[int, int],
                 types: Sequence[Tuple[str, int]]) -> Tuple[BlockSpec, ...]:
    """The blocks of an allocation, given each block's (type, dilation)."""
    levels = [level for level in self.levels for _ in range(allocation[level])]
    return tuple(
        BlockSpec(level, fn, (i, i + 1),
                  level in self.output_levels and (i + 1 == len(levels) or levels[i + 1] != level),
                  dilation)
        for i, (level, (fn, dilation)) in enumerate(zip(levels, types)))

  # ---- SearchSpace ------------------------------------------------------------

  def decisions(self) -> Tuple[Decision, ...]:
    return self._decisions

  def start(self) -> "_ScaleDecreasedCursor":
    return _ScaleDecreasedCursor(self)

  def _encode(self, architecture: Architecture) -> List[int]:
    blocks = architecture.blocks
    if architecture.cells:
      raise ArchitectureError("cells: a scale-decreased architecture has no merging cells")
    allocation = dict(sorted(collections.Counter(b.level for b in blocks).items()))
    self.choice.check(allocation)
    types = []
    for b, block in enumerate(blocks):
      if block.block_fn not in self.block_fns:
        raise ArchitectureError(f"blocks[{b}].block_fn: {block.block_fn!r} is not a block type "
                                f"of this space ({', '.join(self.block_fns)})")
      if block.dilation not in self.dilations:
        raise ArchitectureError(f"blocks[{b}].dilation: {block.dilation} is not a dilation rate "
                                f"of this space ({', '.join(map(str, self.dilations))})")
      types.append((block.block_fn, block.dilation))
    expected = self.blocks_for(allocation, types)
    for b, (block, want) in enumerate(zip(blocks, expected)):
      if block != want:
        raise ArchitectureError(
            f"blocks[{b}]: a scale-decreased backbone has its blocks in level order, each "
            f"fed by the two features before it, and the last block of each output level "
            f"as the output: expected {want}, got {block}")
    decisions = self.choice.encode(allocation)
    for fn, dilation in types:
      decisions.append(self.block_fns.index(fn))
      if len(self.dilations) > 1:
        decisions.append(self.dilations.index(dilation))
    return decisions

  def log10_size(self) -> float:
    per_block = len(self.block_fns) * len(self.dilations)
    count = sum(1 for _ in self.choice.allocations())
    return (math.log(count) + self.num_blocks * math.log(per_block)) / math.log(10)

  def config(self) -> Dict:
    return {"name": self.name,
            "allocation": {str(k): v for k, v in self.choice.reference.items()},
            "output_levels": list(self.output_levels),
            "block_fns": list(self.block_fns),
            "min_blocks_per_level": self.choice.min_count,
            "allocation_budget": self.choice.budget,
            "dilations": list(self.dilations)}

  def block_names(self, blocks: Sequence[BlockSpec]) -> List[str]:
    """'L4.2' for the second non-output level-4 block, 'P5' for the level-5
    output: the scale-permuted space's names of the same blocks, so one
    supernet's weights serve both orderings."""
    return slot_names(blocks, [b.level for b in blocks if not b.is_output])


class _ScaleDecreasedCursor(SequentialCursor):

  def __init__(self, space: ScaleDecreasedSpace):
    super().__init__(space)
    self._counts: List[int] = []
    self._types: List[List] = []

  def _compute_mask(self, decision: Decision) -> Mask:
    space = self._space
    if decision.kind == "allocation_count":
      return space.choice.mask(self._counts)
    if decision.kind == "dilation":
      return (True,) * len(space.dilations)
    return (True,) * len(space.block_fns)

  def _apply(self, decision: Decision, choice: int) -> None:
    space = self._space
    if decision.kind == "allocation_count":
      self._counts.append(choice)
    elif decision.kind == "dilation":
      self._types[-1][1] = space.dilations[choice]
    else:
      self._types.append([space.block_fns[choice], 1])

  def architecture(self) -> Architecture:
    self._require_complete()
    space = self._space
    allocation = dict(zip(space.levels, self._counts))
    return Architecture(space=space.architecture_space,
                        blocks=space.blocks_for(allocation, [tuple(t) for t in self._types]))
