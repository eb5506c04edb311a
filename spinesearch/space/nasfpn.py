"""The merging-cell space of NAS-FPN (Ghiasi et al. 2019).

The pool starts with the backbone's features P_min..P_max (indices 0..L-1);
each merging cell takes two distinct features of the pool, resamples them to
its output level, combines them and joins the pool. The first
`num_cells - L` cells are intermediate; the last L cells are the outputs, one
per level (Model Garden reads the pyramid from the last L features). Decisions
per cell, in order: input 0, input 1, output level, combine op.

Inputs are ordered: Model Garden's attention op, f0 + f1 * sigmoid(max_pool(f0)),
gates with its first input when both inputs come from the same level.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space import architecture as schema
from spinesearch.space.architecture import Architecture, CellSpec
from spinesearch.space.base import Decision, Mask, SearchSpace, SequentialCursor

# Keyword arguments of each preset; "vertex" is Vertex AI NAS's NAS-FPN space.
PRESETS: Dict[str, Dict] = {
    "default": {},
    "vertex": {"intermediate_levels": (4, 5, 6, 7)},
}


def _int_list(value, name: str, where: str) -> List[int]:
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value or any(
      isinstance(v, bool) or not isinstance(v, int) for v in value):
    raise ConfigError(f"{where}: {name} must be a non-empty list of integers, got {value!r}")
  if len(set(value)) != len(value):
    raise ConfigError(f"{where}: {name} lists a value twice: {list(value)}")
  return sorted(value)


class MergingCellSpace(SearchSpace):
  """NAS-FPN's merging-cell feature-pyramid space."""

  name = "nasfpn"

  def __init__(self,
               num_cells: int = 7,
               levels: Sequence[int] = (3, 4, 5, 6, 7),
               intermediate_levels: Optional[Sequence[int]] = None,
               combine_fns: Sequence[str] = ("sum", "attention")):
    where = "nasfpn space"
    self.levels = tuple(_int_list(levels, "levels", where))
    if (len(self.levels) < 2 or self.levels[0] < 2 or self.levels[-1] > schema.MAX_BLOCK_LEVEL
        or len(self.levels) != self.levels[-1] - self.levels[0] + 1):
      raise ConfigError(f"{where}: levels {list(self.levels)} must be a contiguous range of at "
                        f"least two levels within 2..{schema.MAX_BLOCK_LEVEL}")
    if isinstance(num_cells, bool) or not isinstance(num_cells, int) \
        or num_cells < len(self.levels):
      raise ConfigError(f"{where}: num_cells must be an integer >= {len(self.levels)} "
                        f"(one output cell per level), got {num_cells!r}")
    self.num_cells = num_cells
    if intermediate_levels is None:
      intermediate_levels = self.levels
    self.intermediate_levels = tuple(
        _int_list(intermediate_levels, "intermediate_levels", where))
    outside = [level for level in self.intermediate_levels if level not in self.levels]
    if outside:
      raise ConfigError(f"{where}: intermediate_levels {outside} are not among the levels "
                        f"{list(self.levels)}")
    if isinstance(combine_fns, str) or not isinstance(combine_fns, Sequence) or not combine_fns:
      raise ConfigError(f"{where}: combine_fns must be a non-empty list, got {combine_fns!r}")
    for fn in combine_fns:
      if fn not in schema.COMBINE_FNS:
        raise ConfigError(f"{where}: unknown combine_fn {fn!r}; "
                          f"valid: {', '.join(schema.COMBINE_FNS)}")
    if len(set(combine_fns)) != len(combine_fns):
      raise ConfigError(f"{where}: combine_fns lists a value twice: {list(combine_fns)}")
    self.combine_fns = tuple(combine_fns)
    self.num_intermediate = num_cells - len(self.levels)
    self._decisions = self._build_decisions()

  @classmethod
  def preset(cls, name: str, **overrides) -> "MergingCellSpace":
    if name not in PRESETS:
      raise ConfigError(f"nasfpn space: unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return cls(**{**PRESETS[name], **overrides})

  @classmethod
  def vertex(cls) -> "MergingCellSpace":
    """Vertex AI NAS: intermediate cells at levels 4..7, 2 intermediate cells."""
    return cls.preset("vertex")

  def _build_decisions(self) -> Tuple[Decision, ...]:
    inputs = tuple(str(f) for f in range(len(self.levels) + self.num_cells - 1))
    levels = tuple(str(level) for level in self.levels)
    decisions = []
    for c in range(self.num_cells):
      decisions.append(Decision(f"cell[{c}].input0", "cell_input", inputs))
      decisions.append(Decision(f"cell[{c}].input1", "cell_input", inputs))
      decisions.append(Decision(f"cell[{c}].level", "cell_level", levels))
      decisions.append(Decision(f"cell[{c}].combine_fn", "combine_fn", self.combine_fns))
    return tuple(decisions)

  def pool_size(self, cell: int) -> int:
    """Features cell `cell` may take as inputs: the backbone's, then earlier cells'."""
    return len(self.levels) + cell

  # ---- SearchSpace ------------------------------------------------------------

  def decisions(self) -> Tuple[Decision, ...]:
    return self._decisions

  def start(self) -> "_MergingCellCursor":
    return _MergingCellCursor(self)

  def _encode(self, architecture: Architecture) -> List[int]:
    return self.encode_cells(architecture.cells)

  def log10_size(self) -> float:
    log_count = sum(math.log(self.pool_size(c) * (self.pool_size(c) - 1))
                    for c in range(self.num_cells))
    log_count += self.num_intermediate * math.log(len(self.intermediate_levels))
    log_count += math.lgamma(len(self.levels) + 1)
    log_count += self.num_cells * math.log(len(self.combine_fns))
    return log_count / math.log(10)

  def config(self) -> Dict:
    return {"name": self.name,
            "num_cells": self.num_cells,
            "levels": list(self.levels),
            "intermediate_levels": list(self.intermediate_levels),
            "combine_fns": list(self.combine_fns)}

  def encode_cells(self, cells: Sequence[CellSpec]) -> List[int]:
    """Decisions for `cells`; ArchitectureError naming why they are not in the space."""
    n = self.num_intermediate
    if len(cells) != self.num_cells:
      raise ArchitectureError(
          f"cells: this space builds {self.num_cells} cells ({n} intermediate, then "
          f"{len(self.levels)} outputs), got {len(cells)}")
    decisions = []
    for c, cell in enumerate(cells):
      where = f"cells[{c}]"
      if cell.is_output != (c >= n):
        role = "an output" if c >= n else "an intermediate"
        raise ArchitectureError(
            f"{where}.is_output: must be {str(c >= n).lower()}; cell {c} is {role} cell "
            f"(this space builds {n} intermediate cells, then the output cells)")
      offsets = tuple(cell.input_offsets)
      if len(offsets) != 2:
        raise ArchitectureError(f"{where}.input_offsets: expected two inputs, got {list(offsets)}")
      if offsets[0] == offsets[1]:
        raise ArchitectureError(
            f"{where}.input_offsets: {list(offsets)} names the same input twice")
      for offset in offsets:
        if isinstance(offset, bool) or not isinstance(offset, int) \
            or not 0 <= offset < self.pool_size(c):
          raise ArchitectureError(
              f"{where}.input_offsets: {offset!r} is not an earlier feature "
              f"(valid: 0..{self.pool_size(c) - 1})")
      allowed = self.intermediate_levels if c < n else self.levels
      if cell.level not in allowed:
        role = "an intermediate" if c < n else "an output"
        raise ArchitectureError(
            f"{where}.level: {cell.level} is not a level {role} cell may have in this space "
            f"({', '.join(map(str, allowed))})")
      if cell.combine_fn not in self.combine_fns:
        raise ArchitectureError(
            f"{where}.combine_fn: {cell.combine_fn!r} is not an op of this space "
            f"({', '.join(self.combine_fns)})")
      decisions += [offsets[0], offsets[1], self.levels.index(cell.level),
                    self.combine_fns.index(cell.combine_fn)]
    out_levels = [cell.level for cell in cells[n:]]
    if sorted(out_levels) != list(self.levels):
      raise ArchitectureError(
          f"cells: output cell levels {out_levels} are not one each of this space's "
          f"levels {list(self.levels)}")
    return decisions


class _MergingCellCursor(SequentialCursor):
  """Keeps the state the masks depend on: the current cell's first input and
  the output levels not yet produced."""

  def __init__(self, space: MergingCellSpace):
    super().__init__(space)
    self._inputs: List[int] = []
    self._level = 0
    self._unused_outputs = set(space.levels)
    self._cells: List[CellSpec] = []

  def _compute_mask(self, decision: Decision) -> Mask:
    space = self._space
    cell = len(self._cells)
    if decision.kind == "cell_input":
      pool = space.pool_size(cell)
      return tuple(f < pool and f not in self._inputs for f in range(decision.num_choices))
    if decision.kind == "cell_level":
      if cell < space.num_intermediate:
        return tuple(level in space.intermediate_levels for level in space.levels)
      return tuple(level in self._unused_outputs for level in space.levels)
    return (True,) * decision.num_choices

  def _apply(self, decision: Decision, choice: int) -> None:
    if decision.kind == "cell_input":
      self._inputs.append(choice)
    elif decision.kind == "cell_level":
      self._level = self._space.levels[choice]
      if len(self._cells) >= self._space.num_intermediate:
        self._unused_outputs.discard(self._level)
    else:
      is_output = len(self._cells) >= self._space.num_intermediate
      self._cells.append(CellSpec(self._level, self._space.combine_fns[choice],
                                  tuple(self._inputs), is_output))
      self._inputs = []

  def cells(self) -> Tuple[CellSpec, ...]:
    """The cells, once every decision is made."""
    self._require_complete()
    return tuple(self._cells)

  def architecture(self) -> Architecture:
    return Architecture(space=self._space.name, cells=self.cells())
