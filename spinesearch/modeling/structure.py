"""Which structural part of a model each variable belongs to.

Model Garden's SpineNet, SpineNetMobile and NASFPN create their layers without names, in an
order that follows the block permutation, so a variable's Keras name
(`conv2d_17/kernel`) says nothing about the part of the network it serves. The
classes here extend Model Garden's and only mark, while the parent class builds,
which part is being built: the stem, a block (by the name the caller gives it,
its level and its block type), the resampling edge from a parent to a child
block, an endpoint, a NAS-FPN repeat, the fixed ResNet, the RetinaNet head.
Nothing of Model Garden's construction is repeated here.

Both also build each searched block at the dilation rate of its spec, and
with `weighted_fusion` merge each block's inputs with trainable weights
(`extensions`: what Model Garden's SpineNets lack).

A variable created while a part is marked can be read with `current_part()`
from a variable creator (`tf.variable_creator_scope`); the part and the
variable's ordinal within the part identify it structurally. Outside a creator
that asks, the marks cost nothing and change nothing: the models are exactly
Model Garden's.
"""
import collections
import contextlib
import dataclasses
import functools
import re
import threading
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

from official.vision.modeling.backbones import spinenet, spinenet_mobile
from official.vision.modeling.decoders import nasfpn

from spinesearch.modeling.extensions import FusionWeight, dilated, trainable_fusion

STEM_NAMES = ("stem1", "stem2")


@dataclasses.dataclass(frozen=True)
class Part:
  """A structural part of a model.

  kind: 'stem', 'block', 'resample' (a parent block to a child block),
    'fusion' (a block's learned weight of one input), 'endpoint',
    'fpn_input' (a backbone feature projected for NAS-FPN), 'cell_input' (a feature resampled for a merging cell), 'cell' (a merging
    cell's own convolution), 'resnet' or 'head'.
  name: the block's name ('block'); the child's ('resample'); the cell's,
    '<repeat>.<index>' ('cell', 'cell_input').
  level, block_fn, filters: the block's level, type and filter count (for
    'resample': the child's; for 'endpoint': the output block's it reads;
    for 'cell', 'cell_input': the cell's level).
  parent, parent_level, parent_block_fn, parent_filters: the input's name
    ('P3', 'cell2', a block's name), level, type and filter count
    ('resample', 'cell_input', 'fpn_input').
  role: which input of its block or cell: 'input0' (for a block: the parent
    built first), 'input1', or for 'cell_input' 'extra' (an unconsumed feature
    summed into an output cell); for 'fusion' also 'extra<k>' (the k-th
    unconsumed block summed into an output block).
  """
  kind: str
  name: str = ""
  level: int = 0
  block_fn: str = ""
  parent: str = ""
  parent_level: int = 0
  parent_block_fn: str = ""
  role: str = ""
  filters: int = 0
  parent_filters: int = 0


class _Marks(threading.local):
  def __init__(self):
    # [part or a function returning the part, {part: variables created in it}]
    self.stack: List[List] = []


_MARKS = _Marks()


@contextlib.contextmanager
def part(p: Union[Part, Callable[[], Part]]) -> Iterator[None]:
  """Marks the variables created inside as belonging to `p` (or to the part
  `p()` returns when each variable is created)."""
  _MARKS.stack.append([p, collections.Counter()])
  try:
    yield
  finally:
    _MARKS.stack.pop()


def current_part() -> Optional[Tuple[Part, int]]:
  """The innermost marked part and the ordinal of the next variable created in
  it (counted from 0), advancing the count; None outside any part."""
  if not _MARKS.stack:
    return None
  p, counts = _MARKS.stack[-1]
  if callable(p):
    p = p()
  counts[p] += 1
  return p, counts[p] - 1


class _MarkedBlocks:
  """The marks Model Garden's SpineNet and SpineNetMobile share: each searched
  block, each resampling edge (parent 0, then parent 1, of each block in
  order, as both build them) and each endpoint (one level at a time). A class
  mixes this in before the Model Garden class it marks and says how that class
  sizes blocks (`_FILTER_SIZE_MAP`) and builds its stem blocks."""

  _FILTER_SIZE_MAP: dict = {}
  _STEM_LEVELS: Tuple[int, ...] = ()
  _STEM_BLOCK_FN = ""
  _RESAMPLE_METHOD = ""
  _MODULE = None  # the Model Garden module that builds the network

  def _mark_structure(self, specs, block_names: Optional[Sequence[str]],
                      dilations: Optional[Sequence[int]], weighted_fusion: bool) -> None:
    if specs is None:
      raise ValueError(f"{type(self).__name__} needs block_specs")
    names = list(block_names) if block_names is not None else [
        f"block{i}" for i in range(len(specs))]
    if len(names) != len(specs) or len(set(names)) != len(names):
      raise ValueError(f"block_names: expected {len(specs)} distinct names, got {names}")
    rates = list(dilations) if dilations is not None else [1] * len(specs)
    if len(rates) != len(specs) or any(
        isinstance(rate, bool) or not isinstance(rate, int) or rate < 1 for rate in rates):
      raise ValueError(f"dilations: expected {len(specs)} rates >= 1, got {rates}")
    stems = len(self._STEM_LEVELS)
    self._structure = _SpineStructure(
        names=list(STEM_NAMES) + names,
        levels=list(self._STEM_LEVELS) + [s.level for s in specs],
        block_fns=[self._STEM_BLOCK_FN] * stems + [s.block_fn for s in specs],
        specs=list(specs),
        dilations=[1] * stems + rates,
        weighted_fusion=bool(weighted_fusion))

  def _build_scale_permuted_network(self, net, input_width, weighted_fusion=False):
    if not (weighted_fusion or self._structure.weighted_fusion):
      return super()._build_scale_permuted_network(net, input_width)
    make_weight = functools.partial(self._fusion_weight, net[0])
    with trainable_fusion(self._MODULE, make_weight):
      return super()._build_scale_permuted_network(net, input_width, weighted_fusion=True)

  def _fusion_weight(self, anchor, initial_value, name=None, **unused):
    """What the fusion's `tf.Variable(initial_value, name='block<i>_fusion<j>')`
    becomes: input j of searched block i's weight, a `FusionWeight` layer's
    output (it reads `anchor`, an input of the network, only to join the
    functional graph)."""
    block, j = map(int, re.fullmatch(r"block(\d+)_fusion(\d+)", name).groups())
    s = self._structure
    child = len(STEM_NAMES) + block
    offsets = list(s.specs[block].input_offsets)
    role = f"input{sorted(offsets).index(offsets[j])}" if j < 2 else f"extra{j - 2}"
    with part(Part("fusion", s.names[child], s.levels[child], s.block_fns[child], role=role,
                   filters=self._filters(child))):
      return FusionWeight(initial_value)(anchor)

  def _build_stem(self, inputs):
    with part(Part("stem")):
      return super()._build_stem(inputs)

  def _block_group(self, *args, name="block_group", **kwargs):
    s = self._structure
    # The stem builds its blocks inside the stem's part.
    marker, rate = contextlib.nullcontext(), 1
    if name.startswith("scale_permuted_block_"):
      index = len(STEM_NAMES) + int(name.rsplit("_", 1)[1]) - 1
      marker = part(Part("block", s.names[index], s.levels[index], s.block_fns[index],
                         filters=self._filters(index)))
      rate = s.dilations[index]
    with marker, dilated(self._MODULE, rate):
      return super()._block_group(*args, name=name, **kwargs)

  def _resample(self, *args, **kwargs):
    s = self._structure
    block, which = divmod(s.resamples, 2)
    s.resamples += 1
    child = len(STEM_NAMES) + block
    parent = s.specs[block].input_offsets[which]
    rank = sorted(s.specs[block].input_offsets).index(parent)
    with part(Part("resample", s.names[child], s.levels[child], s.block_fns[child],
                   s.names[parent], s.levels[parent], s.block_fns[parent],
                   role=f"input{rank}", filters=self._filters(child),
                   parent_filters=self._filters(parent))):
      return getattr(super(), self._RESAMPLE_METHOD)(*args, **kwargs)

  def _filters(self, index: int) -> int:
    # As Model Garden sizes a block of this level.
    return int(self._FILTER_SIZE_MAP[self._structure.levels[index]] * self._filter_size_scale)

  def _build_endpoints(self, net):
    # One level at a time, so that each endpoint's variables are marked with
    # the level and block type of the output block it reads.
    s = self._structure
    output_fns = {spec.level: spec.block_fn for spec in s.specs if spec.is_output}
    low, high = self._min_level, self._max_level
    endpoints = {}
    try:
      for level in range(low, high + 1):
        self._min_level = self._max_level = level
        with part(Part("endpoint", level=level, block_fn=output_fns[level])):
          endpoints.update(super()._build_endpoints(net))
    finally:
      self._min_level, self._max_level = low, high
    return endpoints


class StructuredSpineNet(_MarkedBlocks, spinenet.SpineNet):
  """Model Garden's SpineNet, with its variables marked by structural part.

  `block_names` names the searched blocks (one per block spec, default
  'block0', 'block1', ...); the two stem blocks are 'stem1' and 'stem2'.
  `dilations` gives each searched block's dilation rate (default 1).
  `weighted_fusion` merges each block's inputs with learned weights.
  """

  _FILTER_SIZE_MAP = spinenet.FILTER_SIZE_MAP
  _STEM_LEVELS = (2, 2)  # both stem blocks are level-2 bottlenecks
  _STEM_BLOCK_FN = "bottleneck"
  _RESAMPLE_METHOD = "_resample_with_alpha"
  _MODULE = spinenet

  def __init__(self, *args, block_names: Optional[Sequence[str]] = None,
               dilations: Optional[Sequence[int]] = None, weighted_fusion: bool = False,
               **kwargs):
    self._mark_structure(kwargs.get("block_specs"), block_names, dilations, weighted_fusion)
    super().__init__(*args, **kwargs)

  def _resample_with_alpha(self, *args, **kwargs):
    return self._resample(*args, **kwargs)


class StructuredSpineNetMobile(_MarkedBlocks, spinenet_mobile.SpineNetMobile):
  """Model Garden's SpineNetMobile, with its variables marked by structural
  part as `StructuredSpineNet`'s are. Its stem blocks are MBConv blocks at
  levels 1 and 2; its edges downsample with one depthwise convolution per
  level (so an edge's key says how many levels it spans: `keys`)."""

  _FILTER_SIZE_MAP = spinenet_mobile.FILTER_SIZE_MAP
  _STEM_LEVELS = (1, 2)
  _STEM_BLOCK_FN = "mbconv"
  _RESAMPLE_METHOD = "_resample_with_sepconv"
  _MODULE = spinenet_mobile

  def __init__(self, *args, block_names: Optional[Sequence[str]] = None,
               dilations: Optional[Sequence[int]] = None, weighted_fusion: bool = False,
               **kwargs):
    self._mark_structure(kwargs.get("block_specs"), block_names, dilations, weighted_fusion)
    super().__init__(*args, **kwargs)

  def _resample_with_sepconv(self, *args, **kwargs):
    return self._resample(*args, **kwargs)


@dataclasses.dataclass
class _SpineStructure:
  names: List[str]
  levels: List[int]
  block_fns: List[str]
  specs: List
  dilations: List[int]
  weighted_fusion: bool = False
  resamples: int = 0


class StructuredNASFPN(nasfpn.NASFPN):
  """Model Garden's NASFPN, with its variables marked: the projections of the
  backbone's features by level ('fpn_input'), then in each repeat each merging
  cell's resampled inputs ('cell_input') and its own convolution ('cell')."""

  def __init__(self, *args, **kwargs):
    self._repeat = -1
    self._feats = None  # the feature list of the repeat being built
    self._cell_inputs = (-1, 0)  # (cell, inputs resampled for it so far)
    super().__init__(*args, **kwargs)

  def _num_levels(self) -> int:
    return self._max_level - self._min_level + 1

  def _cell(self) -> int:
    # Model Garden appends a cell to the feature list after building it.
    return len(self._feats) - self._num_levels()

  def _build_feature_pyramid(self, feats):
    self._repeat += 1
    self._feats = feats
    try:
      with part(lambda: Part("cell", f"{self._repeat}.{self._cell()}")):
        return super()._build_feature_pyramid(feats)
    finally:
      self._feats = None

  def _resample_feature_map(self, inputs, input_level, target_level, target_num_filters=256):
    if self._feats is None:
      marker = part(Part("fpn_input", level=target_level, parent_level=input_level))
    else:
      # A cell resamples its input 0, then its input 1, then the unconsumed
      # features it sums in.
      cell = self._cell()
      count = self._cell_inputs[1] if self._cell_inputs[0] == cell else 0
      self._cell_inputs = (cell, count + 1)
      source = next(j for j, f in enumerate(self._feats) if f is inputs)
      levels = self._num_levels()
      parent = (f"P{self._min_level + source}" if source < levels
                else f"cell{source - levels}")
      marker = part(Part("cell_input", f"{self._repeat}.{cell}", target_level,
                         parent=parent, parent_level=input_level,
                         role=("input0", "input1", "extra")[min(count, 2)]))
    with marker:
      return super()._resample_feature_map(inputs, input_level, target_level,
                                           target_num_filters)
