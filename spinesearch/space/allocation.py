"""How many blocks each level gets, as decisions (CR-NAS's stage reallocation).

An `AllocationChoice` turns a block allocation {level: count} into one decision
per level, "allocation[L].count", with the total number of blocks fixed: each
level gets at least `min_count` blocks, the last level takes what is left, and
the masks never let a partial allocation become one that cannot be completed.

With a `budget`, the allocation's cost is also capped: the multiply-adds of its
blocks' own convolutions, as bottleneck blocks at their levels with Model
Garden's SpineNet widths, at most `budget` times those of the reference
allocation (the space's preset). The blocks' widths grow with the level as the
resolution falls, so a block costs 256 units at levels 2-4, 64 at level 5, 16
at level 6 and 4 at level 7 (multiply-adds per input pixel / 17 at filter scale
1); budget 1.0 is CR-NAS's "same computation, moved between resolutions". The
cap is on the allocation; the resampling between blocks, the block types and
level offsets chosen later are the model's, which the reward's
`--target_flops --hard_constraint` caps.
"""
import functools
import math
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space.base import Decision, Mask

# Model Garden's SpineNet FILTER_SIZE_MAP (filters of a block at each level).
FILTERS = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}


def block_cost(level: int) -> float:
  """A bottleneck block's convolution multiply-adds per input pixel at filter
  scale 1, divided by 17 (1x1 4c->c, 3x3 c->c, 1x1 c->4c: 17 c^2 per pixel at
  resolution 2^-level)."""
  return FILTERS[level] ** 2 / 4 ** level


class AllocationChoice:
  """The allocation over `levels` as decisions (module docstring)."""

  def __init__(self, reference: Mapping[int, int], *, min_count: int = 1,
               budget: Optional[float] = None, where: str = "allocation"):
    self.levels: Tuple[int, ...] = tuple(sorted(reference))
    self.reference = {level: reference[level] for level in self.levels}
    self.total = sum(self.reference.values())
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
      raise ConfigError(f"{where}: min_blocks_per_level must be an integer >= 0, "
                        f"got {min_count!r}")
    if min_count * len(self.levels) > self.total:
      raise ConfigError(f"{where}: {len(self.levels)} levels with at least {min_count} blocks "
                        f"each need more than the {self.total} blocks of the allocation")
    self.min_count = min_count
    if budget is not None:
      if isinstance(budget, bool) or not isinstance(budget, (int, float)) or \
          not math.isfinite(budget) or budget <= 0:
        raise ConfigError(f"{where}: allocation_budget must be a number > 0, got {budget!r}")
      if self._cheapest_completion(0, self.total) > budget * self.cost(self.reference) + 1e-9:
        raise ConfigError(f"{where}: no allocation of {self.total} blocks fits "
                          f"allocation_budget {budget}")
    self.budget = budget
    self.max_cost = None if budget is None else budget * self.cost(self.reference)

  # ---- costs ----------------------------------------------------------------

  def cost(self, allocation: Mapping[int, int]) -> float:
    """The allocation's block cost (module docstring's units)."""
    return sum(count * block_cost(level) for level, count in allocation.items())

  def relative_cost(self, allocation: Mapping[int, int]) -> float:
    return self.cost(allocation) / self.cost(self.reference)

  def _cheapest_completion(self, index: int, blocks: int) -> float:
    """The least cost of `blocks` blocks over levels[index:], each level at
    least min_count: the minimums, the rest at the cheapest level."""
    rest = self.levels[index:]
    if not rest:
      return 0.0 if blocks == 0 else math.inf
    spare = blocks - self.min_count * len(rest)
    if spare < 0:
      return math.inf
    return (self.min_count * sum(block_cost(level) for level in rest) +
            spare * min(block_cost(level) for level in rest))

  # ---- decisions --------------------------------------------------------------

  def decisions(self) -> List[Decision]:
    counts = tuple(str(c) for c in range(self.total + 1))
    return [Decision(f"allocation[{level}].count", "allocation_count", counts)
            for level in self.levels]

  def mask(self, chosen: Sequence[int]) -> Mask:
    """Valid counts for the next level, after the counts `chosen` so far."""
    index = len(chosen)
    used = sum(chosen)
    spent = sum(c * block_cost(level) for c, level in zip(chosen, self.levels))
    last = index == len(self.levels) - 1
    valid = []
    for count in range(self.total + 1):
      left = self.total - used - count
      ok = count >= self.min_count and left >= 0 and (left == 0 if last else True)
      if ok:
        completion = self._cheapest_completion(index + 1, left)
        ok = completion < math.inf
        if ok and self.max_cost is not None:
          ok = spent + count * block_cost(self.levels[index]) + completion <= \
              self.max_cost + 1e-9
      valid.append(ok)
    return tuple(valid)

  def fits(self, allocation: Mapping[int, int]) -> bool:
    counts = [allocation.get(level, 0) for level in self.levels]
    if set(allocation) - set(self.levels) or sum(counts) != self.total:
      return False
    if any(c < self.min_count for c in counts):
      return False
    return self.max_cost is None or self.cost(allocation) <= self.max_cost + 1e-9

  def check(self, allocation: Mapping[int, int], where: str = "blocks") -> None:
    """ArchitectureError unless `allocation` is one of the choices."""
    if not self.fits(allocation):
      shown = {level: allocation.get(level, 0) for level in sorted(set(allocation) |
                                                                   set(self.levels))}
      rule = (f"{self.total} blocks over levels {list(self.levels)}, at least "
              f"{self.min_count} per level")
      if self.budget is not None:
        rule += (f", block cost at most {self.budget:g}x the reference's "
                 f"(this one: {self.relative_cost(allocation):.3f}x)")
      raise ArchitectureError(f"{where}: allocation {shown} is not in this space ({rule})")

  def allocations(self) -> Iterator[Dict[int, int]]:
    """Every allocation the decisions can make, in decision order."""
    def walk(chosen: List[int]):
      if len(chosen) == len(self.levels):
        yield dict(zip(self.levels, chosen))
        return
      for count, ok in enumerate(self.mask(chosen)):
        if ok:
          yield from walk(chosen + [count])
    yield from walk([])

  def encode(self, allocation: Mapping[int, int]) -> List[int]:
    self.check(allocation)
    return [allocation.get(level, 0) for level in self.levels]

  def config(self) -> Dict:
    return {"min_blocks_per_level": self.min_count, "allocation_budget": self.budget}


@functools.lru_cache(maxsize=None)
def log_multinomial(counts: Tuple[int, ...]) -> float:
  """ln of the number of orderings of a multiset with these counts."""
  return math.lgamma(sum(counts) + 1) - sum(math.lgamma(c + 1) for c in counts)


def logsumexp(values: Sequence[float]) -> float:
  top = max(values)
  return top + math.log(sum(math.exp(v - top) for v in values))
