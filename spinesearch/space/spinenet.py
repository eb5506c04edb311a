"""The scale-permuted backbone space of SpineNet (Du et al. 2020, section 3.1).

An architecture is a fixed stem (two level-2 blocks, feature indices 0 and 1)
followed by N intermediate blocks and then one output block per output level.
Decisions, in order:

  0. with `search_allocation`, how many intermediate blocks each base level
     gets (CR-NAS: the total fixed, optionally under a cost budget; see
     `allocation.py`), one decision per base level;
  1. the order of the intermediate blocks' base levels (a permutation of the
     multiset given by `intermediate_allocation`);
  2. the order of the output levels;
  3. per block in build order: two distinct parents (ascending), then, for
     intermediate blocks, a level offset added to the base level, then the
     block type, then (with more than one `dilations`) the block's dilation
     rate.

Intermediate blocks take their parents from the last `parent_window` features
built (stem included); output blocks from any earlier feature. Model Garden sums
the two resampled parents, so their order carries no meaning and the space
keeps them ascending.
"""
import collections
import functools
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space import architecture as schema
from spinesearch.space.allocation import AllocationChoice, log_multinomial, logsumexp
from spinesearch.space.architecture import Architecture, BlockSpec
from spinesearch.space.base import Decision, Mask, SearchSpace, SequentialCursor

DEFAULT_ALLOCATION = {2: 1, 3: 1, 4: 4, 5: 4}

# Mobile SpineNet's 11 intermediate blocks: SpineNet-49's allocation and one more
# level-2 block (arXiv 2010.11426; Model Garden spinenet_mobile).
MOBILE_ALLOCATION = {2: 2, 3: 1, 4: 4, 5: 4}

# Keyword arguments of each preset; "vertex" is Vertex AI NAS's SpineNet space,
# "mobile" the same decisions over MBConv blocks (Mobile SpineNet).
PRESETS: Dict[str, Dict] = {
    "default": {},
    "vertex": {"intermediate_allocation": {2: 1, 3: 3, 4: 5, 5: 2}, "parent_window": 4},
    "mobile": {"intermediate_allocation": MOBILE_ALLOCATION, "block_fns": ("mbconv",)},
    # CR-NAS on SpineNet: SpineNet-49's 10 intermediate blocks moved between
    # levels 2..5 at no more block cost, and a dilation rate per block.
    "realloc": {"search_allocation": True, "allocation_budget": 1.0, "dilations": (1, 2, 3)},
    # CR-NAS's dilation on Mobile SpineNet's MBConv blocks.
    "mobile_dilated": {"intermediate_allocation": MOBILE_ALLOCATION, "block_fns": ("mbconv",),
                       "dilations": (1, 2, 3)},
}


def _int_list(value, name: str, where: str) -> List[int]:
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
    raise ConfigError(f"{where}: {name} must be a list of integers, got {value!r}")
  for v in value:
    if isinstance(v, bool) or not isinstance(v, int):
      raise ConfigError(f"{where}: {name} must be a list of integers, got {value!r}")
  if not value:
    raise ConfigError(f"{where}: {name} must not be empty")
  if len(set(value)) != len(value):
    raise ConfigError(f"{where}: {name} lists a value twice: {list(value)}")
  return list(value)


def dilation_list(value, where: str) -> Tuple[int, ...]:
  """Dilation rates of a space: distinct integers >= 1, 1 among them."""
  rates = tuple(sorted(_int_list(value, "dilations", where)))
  if rates[0] < 1 or 1 not in rates:
    raise ConfigError(f"{where}: dilations must be integers >= 1 and include 1, "
                      f"got {list(value)}")
  return rates


def _int_setting(value, name: str, where: str, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
  return value


def _allocation(value, where: str) -> Dict[int, int]:
  """Levels -> counts; keys may be digit strings (as after a JSON round trip)."""
  if not isinstance(value, Mapping):
    raise ConfigError(f"{where}: intermediate_allocation must map levels to counts, got {value!r}")
  result = {}
  for key, count in value.items():
    level = key
    if isinstance(key, str) and key.lstrip("-").isdigit():
      level = int(key)
    if isinstance(level, bool) or not isinstance(level, int):
      raise ConfigError(f"{where}: intermediate_allocation has a non-integer level {key!r}")
    if level in result:
      raise ConfigError(f"{where}: intermediate_allocation lists level {level} twice")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
      raise ConfigError(
          f"{where}: intermediate_allocation[{level}] must be a count >= 0, got {count!r}")
    result[level] = count
  result = {level: result[level] for level in sorted(result) if result[level] > 0}
  if not result:
    raise ConfigError(f"{where}: intermediate_allocation has no intermediate block")
  return result


class ScalePermutedSpace(SearchSpace):
  """SpineNet's scale-permuted backbone space."""

  name = "spinenet"

  def __init__(self,
               intermediate_allocation: Optional[Mapping[int, int]] = None,
               output_levels: Sequence[int] = (3, 4, 5, 6, 7),
               level_offsets: Sequence[int] = (-1, 0, 1, 2),
               block_fns: Sequence[str] = ("bottleneck", "residual"),
               parent_window: int = 5,
               min_block_level: int = 2,
               max_block_level: int = 7,
               search_allocation: bool = False,
               min_blocks_per_level: int = 1,
               allocation_budget: Optional[float] = None,
               dilations: Sequence[int] = (1,)):
    where = "spinenet space"
    if intermediate_allocation is None:
      intermediate_allocation = DEFAULT_ALLOCATION
    self.min_block_level = _int_setting(min_block_level, "min_block_level", where,
                                        schema.MIN_BLOCK_LEVEL)
    self.max_block_level = _int_setting(max_block_level, "max_block_level", where,
                                        self.min_block_level)
    if self.max_block_level > schema.MAX_BLOCK_LEVEL:
      raise ConfigError(f"{where}: max_block_level must be <= {schema.MAX_BLOCK_LEVEL}, "
                        f"got {max_block_level}")
    level_range = range(self.min_block_level, self.max_block_level + 1)
    self.allocation = _allocation(intermediate_allocation, where)
    self.level_offsets = tuple(sorted(_int_list(level_offsets, "level_offsets", where)))
    for base in self.allocation:
      if base not in level_range:
        raise ConfigError(f"{where}: base level {base} is outside "
                          f"{self.min_block_level}..{self.max_block_level}")
      if not self.valid_offsets(base):
        raise ConfigError(f"{where}: no level offset in {list(self.level_offsets)} keeps base "
                          f"level {base} within {self.min_block_level}..{self.max_block_level}")
    self.output_levels = tuple(sorted(_int_list(output_levels, "output_levels", where)))
    if (self.output_levels[0] < 2 or self.output_levels[-1] not in level_range or
        self.output_levels[0] not in level_range or
        len(self.output_levels) != self.output_levels[-1] - self.output_levels[0] + 1):
      raise ConfigError(
          f"{where}: output_levels {list(self.output_levels)} must be a contiguous range "
          f"within {max(2, self.min_block_level)}..{self.max_block_level}")
    if isinstance(block_fns, str) or not isinstance(block_fns, Sequence) or not block_fns:
      raise ConfigError(f"{where}: block_fns must be a non-empty list, got {block_fns!r}")
    for fn in block_fns:
      if fn not in schema.BLOCK_FNS:
        raise ConfigError(f"{where}: unknown block_fn {fn!r}; "
                          f"valid: {', '.join(schema.BLOCK_FNS)}")
    if len(set(block_fns)) != len(block_fns):
      raise ConfigError(f"{where}: block_fns lists a value twice: {list(block_fns)}")
    if "mbconv" in block_fns and len(block_fns) > 1:
      raise ConfigError(f"{where}: mbconv cannot be mixed with other block_fns")
    self.block_fns = tuple(block_fns)
    self.parent_window = _int_setting(parent_window, "parent_window", where, 2)
    self.dilations = dilation_list(dilations, where)
    if not isinstance(search_allocation, bool):
      raise ConfigError(f"{where}: search_allocation must be true or false, "
                        f"got {search_allocation!r}")
    self.allocation_choice = None
    if search_allocation:
      self.allocation_choice = AllocationChoice(self.allocation, min_count=min_blocks_per_level,
                                                budget=allocation_budget, where=where)
    elif allocation_budget is not None or min_blocks_per_level != 1:
      raise ConfigError(f"{where}: allocation_budget and min_blocks_per_level apply only "
                        f"with search_allocation")

    self.base_levels = tuple(self.allocation)
    self.num_intermediate = sum(self.allocation.values())
    self.num_blocks = self.num_intermediate + len(self.output_levels)
    self._decisions = self._build_decisions()

  # ---- construction helpers -------------------------------------------------

  @classmethod
  def preset(cls, name: str, **overrides) -> "ScalePermutedSpace":
    if name not in PRESETS:
      raise ConfigError(f"spinenet space: unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return cls(**{**PRESETS[name], **overrides})

  @classmethod
  def vertex(cls) -> "ScalePermutedSpace":
    """Vertex AI NAS's allocation {L2: 1, L3: 3, L4: 5, L5: 2}, parent window 4."""
    return cls.preset("vertex")

  def valid_offsets(self, base: int) -> Tuple[int, ...]:
    """Level offsets that keep a block of base level `base` within the level range."""
    return tuple(o for o in self.level_offsets
                 if self.min_block_level <= base + o <= self.max_block_level)

  def _build_decisions(self) -> Tuple[Decision, ...]:
    bases = tuple(str(b) for b in self.base_levels)
    outputs = tuple(str(level) for level in self.output_levels)
    parents = tuple(str(f) for f in range(schema.NUM_STEM_BLOCKS + self.num_blocks - 1))
    offsets = tuple(f"{o:+d}" if o else "0" for o in self.level_offsets)
    decisions = list(self.allocation_choice.decisions()) if self.allocation_choice else []
    decisions += [Decision(f"intermediate[{i}].base_level", "intermediate_base_level", bases)
                  for i in range(self.num_intermediate)]
    decisions += [Decision(f"output[{j}].level", "output_level", outputs)
                  for j in range(len(self.output_levels))]
    for b in range(self.num_blocks):
      decisions.append(Decision(f"block[{b}].parent0", "parent", parents))
      decisions.append(Decision(f"block[{b}].parent1", "parent", parents))
      if b < self.num_intermediate:
        decisions.append(Decision(f"block[{b}].level_offset", "level_offset", offsets))
      decisions.append(Decision(f"block[{b}].block_fn", "block_fn", self.block_fns))
      if len(self.dilations) > 1:
        decisions.append(Decision(f"block[{b}].dilation", "dilation",
                                  tuple(str(d) for d in self.dilations)))
    return tuple(decisions)

  def parent_range(self, block: int) -> range:
    """Feature indices block `block` may take as parents."""
    feature = schema.NUM_STEM_BLOCKS + block
    if block < self.num_intermediate:
      return range(max(0, feature - self.parent_window), feature)
    return range(feature)

  # ---- SearchSpace ------------------------------------------------------------

  def decisions(self) -> Tuple[Decision, ...]:
    return self._decisions

  def start(self) -> "_ScalePermutedCursor":
    return _ScalePermutedCursor(self)

  def _encode(self, architecture: Architecture) -> List[int]:
    return self.encode_blocks(architecture.blocks)

  def log10_size(self) -> float:
    allocations = (self.allocation_choice.allocations() if self.allocation_choice
                   else [self.allocation])
    log_count = logsumexp([
        log_multinomial(tuple(a.values())) +
        sum(c * math.log(len(self.valid_offsets(base))) for base, c in a.items())
        for a in allocations])
    log_count += math.lgamma(len(self.output_levels) + 1)
    log_count += self.num_blocks * math.log(len(self.block_fns) * len(self.dilations))
    for b in range(self.num_blocks):
      log_count += math.log(math.comb(len(self.parent_range(b)), 2))
    return log_count / math.log(10)

  def config(self) -> Dict:
    return {"name": self.name,
            "intermediate_allocation": {str(k): v for k, v in self.allocation.items()},
            "output_levels": list(self.output_levels),
            "level_offsets": list(self.level_offsets),
            "block_fns": list(self.block_fns),
            "parent_window": self.parent_window,
            "min_block_level": self.min_block_level,
            "max_block_level": self.max_block_level,
            **self._option_config()}

  def _option_config(self) -> Dict:
    # Only the options set, so the configs stored with earlier searches stay valid.
    options = {}
    if self.allocation_choice:
      options["search_allocation"] = True
      options["min_blocks_per_level"] = self.allocation_choice.min_count
      options["allocation_budget"] = self.allocation_choice.budget
    if len(self.dilations) > 1:
      options["dilations"] = list(self.dilations)
    return options

  # ---- encoding ---------------------------------------------------------------

  def encode_blocks(self, blocks: Sequence[BlockSpec]) -> List[int]:
    """Decisions for `blocks`; ArchitectureError naming why they are not in the space."""
    n = self.num_intermediate
    if len(blocks) != self.num_blocks:
      raise ArchitectureError(
          f"blocks: this space builds {self.num_blocks} blocks ({n} intermediate, then "
          f"{len(self.output_levels)} outputs), got {len(blocks)}")
    for b, block in enumerate(blocks):
      if block.is_output != (b >= n):
        role = "an output" if b >= n else "an intermediate"
        raise ArchitectureError(
            f"blocks[{b}].is_output: must be {str(b >= n).lower()}; block {b} is {role} block "
            f"(this space builds {n} intermediate blocks, then the output blocks)")
      if block.block_fn not in self.block_fns:
        raise ArchitectureError(
            f"blocks[{b}].block_fn: {block.block_fn!r} is not a block type of this space "
            f"({', '.join(self.block_fns)})")
      if block.dilation not in self.dilations:
        raise ArchitectureError(
            f"blocks[{b}].dilation: {block.dilation} is not a dilation rate of this space "
            f"({', '.join(map(str, self.dilations))})")
    out_levels = [block.level for block in blocks[n:]]
    if sorted(out_levels) != list(self.output_levels):
      raise ArchitectureError(
          f"blocks: output block levels {out_levels} are not one each of this space's "
          f"output levels {list(self.output_levels)}")
    parents = [self._canonical_parents(b, block) for b, block in enumerate(blocks)]
    allocation, bases = self._match_allocation([block.level for block in blocks[:n]])

    decisions = self.allocation_choice.encode(allocation) if self.allocation_choice else []
    decisions += [self.base_levels.index(base) for base in bases]
    decisions += [self.output_levels.index(level) for level in out_levels]
    for b, block in enumerate(blocks):
      decisions += parents[b]
      if b < n:
        decisions.append(self.level_offsets.index(block.level - bases[b]))
      decisions.append(self.block_fns.index(block.block_fn))
      if len(self.dilations) > 1:
        decisions.append(self.dilations.index(block.dilation))
    return decisions

  def block_names(self, blocks: Sequence[BlockSpec]) -> List[str]:
    """Each block's identity in the allocation, independent of where the
    permutation puts it: 'L4.2' is the second non-output block (in build
    order) whose base level is 4, 'P5' the level-5 output block. Base levels
    are matched as `encode_blocks` matches them, so equal architectures get
    equal names. The blocks need not be in the space's order (the
    scale-decreased ordering of SpineNet-49 interleaves its outputs), only
    made of its allocation's blocks and one output per output level."""
    intermediate = [b for b in blocks if not b.is_output]
    outputs = sorted(b.level for b in blocks if b.is_output)
    if len(intermediate) != self.num_intermediate or outputs != list(self.output_levels):
      raise ArchitectureError(
          f"blocks: this space's architectures have {self.num_intermediate} intermediate "
          f"blocks and one output block per level {list(self.output_levels)}; got "
          f"{len(intermediate)} intermediate and outputs at levels {outputs}")
    return slot_names(blocks, self._match_allocation([b.level for b in intermediate])[1])

  def _canonical_parents(self, b: int, block: BlockSpec) -> Tuple[int, int]:
    where = f"blocks[{b}].input_offsets"
    offsets = tuple(block.input_offsets)
    if len(offsets) != 2:
      raise ArchitectureError(f"{where}: expected two parents, got {list(offsets)}")
    low, high = sorted(offsets)
    if low == high:
      raise ArchitectureError(f"{where}: {list(offsets)} names the same parent twice")
    allowed = self.parent_range(b)
    for parent in (low, high):
      if parent not in allowed:
        if b < self.num_intermediate and 0 <= parent < allowed.stop:
          raise ArchitectureError(
              f"{where}: parent {parent} is outside the window of the last "
              f"{self.parent_window} features an intermediate block may use "
              f"({allowed.start}..{allowed.stop - 1})")
        raise ArchitectureError(
            f"{where}: parent {parent} is not an earlier feature (valid: 0..{allowed.stop - 1})")
    return low, high

  def _preferred_bases(self, level: int) -> List[int]:
    """Base levels that reach `level`, preferring offset 0, then small |offset|."""
    offsets = sorted((o for o in self.level_offsets
                      if level - o in self.base_levels and o in self.valid_offsets(level - o)),
                     key=lambda o: (abs(o), o))
    return [level - o for o in offsets]

  def _match_allocation(self, levels: Sequence[int]) -> Tuple[Dict[int, int], List[int]]:
    """The allocation intermediate blocks of these levels come from, and each
    block's base level. A fixed allocation is the space's; a searched one is
    the first that fits, nearest (in blocks moved) to the blocks' own levels."""
    if not self.allocation_choice:
      return self.allocation, self._assign_base_levels(levels, self.allocation)
    own = collections.Counter(levels)
    candidates = sorted(self.allocation_choice.allocations(),
                        key=lambda a: (sum(abs(a[base] - own[base]) for base in a),
                                       tuple(a.values())))
    for allocation in candidates:
      try:
        return allocation, self._assign_base_levels(levels, allocation)
      except ArchitectureError:
        continue
    needed = dict(sorted(own.items()))
    raise ArchitectureError(
        f"blocks: intermediate levels (count per level {needed}) cannot be made from any "
        f"allocation of this space with offsets {list(self.level_offsets)}")

  def _assign_base_levels(self, levels: Sequence[int],
                          allocation: Mapping[int, int]) -> List[int]:
    """Matches intermediate levels to base levels (a multiset given by
    `allocation`); the first match in block order under _preferred_bases wins."""
    candidates = []
    for b, level in enumerate(levels):
      bases = self._preferred_bases(level)
      if not bases:
        raise ArchitectureError(
            f"blocks[{b}].level: level {level} cannot be reached from any base level "
            f"({', '.join(map(str, self.base_levels))}) with offsets "
            f"{list(self.level_offsets)} within {self.min_block_level}..{self.max_block_level}")
      candidates.append(bases)

    @functools.lru_cache(maxsize=None)
    def completes(i: int, remaining: Tuple[int, ...]) -> bool:
      if i == len(levels):
        return True
      return any(remaining[self.base_levels.index(base)] and
                 completes(i + 1, _taken(remaining, self.base_levels.index(base)))
                 for base in candidates[i])

    remaining = tuple(allocation.get(base, 0) for base in self.base_levels)
    if not completes(0, remaining):
      needed = dict(sorted(collections.Counter(levels).items()))
      raise ArchitectureError(
          f"blocks: intermediate levels (count per level {needed}) cannot be made from the "
          f"base levels {dict(allocation)} (count per level) with offsets "
          f"{list(self.level_offsets)}")
    bases = []
    for i in range(len(levels)):
      for base in candidates[i]:
        slot = self.base_levels.index(base)
        if remaining[slot] and completes(i + 1, _taken(remaining, slot)):
          bases.append(base)
          remaining = _taken(remaining, slot)
          break
    return bases


def slot_names(blocks: Sequence[BlockSpec], bases: Sequence[int]) -> List[str]:
  """'P<level>' for an output block; 'L<base>.<k>' for the k-th non-output
  block (in build order) of base level `bases[i]`, the i-th non-output block's."""
  bases = iter(bases)
  seen = collections.Counter()
  names = []
  for block in blocks:
    if block.is_output:
      names.append(f"P{block.level}")
    else:
      base = next(bases)
      seen[base] += 1
      names.append(f"L{base}.{seen[base]}")
  return names


def _taken(remaining: Tuple[int, ...], slot: int) -> Tuple[int, ...]:
  return remaining[:slot] + (remaining[slot] - 1,) + remaining[slot + 1:]


class _ScalePermutedCursor(SequentialCursor):
  """Keeps the state the masks depend on: levels left to place and the current
  block's base level and first parent."""

  def __init__(self, space: ScalePermutedSpace):
    super().__init__(space)
    self._counts: List[int] = []  # a searched allocation's counts so far
    self._remaining = dict(space.allocation)
    self._unused_outputs = set(space.output_levels)
    self._bases: List[int] = []
    self._outputs: List[int] = []
    self._blocks: List[BlockSpec] = []
    self._parents: List[int] = []
    self._offset = 0

  def _compute_mask(self, decision: Decision) -> Mask:
    space = self._space
    kind = decision.kind
    if kind == "allocation_count":
      return space.allocation_choice.mask(self._counts)
    if kind == "intermediate_base_level":
      return tuple(self._remaining[b] > 0 for b in space.base_levels)
    if kind == "output_level":
      return tuple(level in self._unused_outputs for level in space.output_levels)
    if kind == "parent":
      allowed = space.parent_range(len(self._blocks))
      num = decision.num_choices
      if not self._parents:
        return tuple(allowed.start <= f < allowed.stop - 1 for f in range(num))
      return tuple(self._parents[0] < f < allowed.stop for f in range(num))
    if kind == "level_offset":
      valid = space.valid_offsets(self._bases[len(self._blocks)])
      return tuple(o in valid for o in space.level_offsets)
    if kind == "dilation":
      return (True,) * len(space.dilations)
    return (True,) * len(space.block_fns)

  def _apply(self, decision: Decision, choice: int) -> None:
    space = self._space
    kind = decision.kind
    block = len(self._blocks)
    if kind == "allocation_count":
      self._counts.append(choice)
      if len(self._counts) == len(space.base_levels):
        self._remaining = dict(zip(space.base_levels, self._counts))
    elif kind == "dilation":
      self._blocks[-1] = self._blocks[-1].replace(dilation=space.dilations[choice])
    elif kind == "intermediate_base_level":
      base = space.base_levels[choice]
      self._remaining[base] -= 1
      self._bases.append(base)
    elif kind == "output_level":
      level = space.output_levels[choice]
      self._unused_outputs.discard(level)
      self._outputs.append(level)
    elif kind == "parent":
      self._parents.append(choice)
    elif kind == "level_offset":
      self._offset = space.level_offsets[choice]
    else:
      is_output = block >= space.num_intermediate
      level = (self._outputs[block - space.num_intermediate] if is_output
               else self._bases[block] + self._offset)
      self._blocks.append(BlockSpec(level, space.block_fns[choice], tuple(self._parents),
                                    is_output))
      self._parents = []

  def blocks(self) -> Tuple[BlockSpec, ...]:
    """The blocks, once every decision is made."""
    self._require_complete()
    return tuple(self._blocks)

  def architecture(self) -> Architecture:
    return Architecture(space=self._space.name, blocks=self.blocks())
