"""The one schema for architectures: a search trial, a zoo entry and a Model
Garden config value are all the same JSON document.

Indexing follows Model Garden. A SpineNet block's `input_offsets` index the list
[stem block 1, stem block 2, block 0, block 1, ...]; a NAS-FPN cell's index
[P_min, ..., P_max, cell 0, cell 1, ...] where P_min..P_max are the backbone's
output features.

Example document (`space` says which parts are present)::

  {"version": 1, "space": "spinenet",
   "blocks": [{"level": 2, "block_fn": "bottleneck", "input_offsets": [0, 1],
               "is_output": false}, ...],
   "scaling": {"filter_size_scale": 1.0, ...}}
"""
import dataclasses
import json
import math
from typing import Any, Mapping, Optional, Sequence, Tuple

from spinesearch.errors import ArchitectureError
from spinesearch.files import write_text_atomically

SCHEMA_VERSION = 1
SPACES = ("spinenet", "nasfpn", "joint")
BLOCK_FNS = ("bottleneck", "residual", "mbconv")
COMBINE_FNS = ("sum", "attention")
# How a block merges its inputs: Model Garden's plain sum, or EfficientDet's
# fast normalised fusion (a learned non-negative weight per input).
FUSIONS = ("sum", "weighted")
NUM_STEM_BLOCKS = 2
MIN_BLOCK_LEVEL = 1
MAX_BLOCK_LEVEL = 7
MAX_DILATION = 3
MAX_HEAD_CONVS = 8


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One block of a scale-permuted backbone (Model Garden's SpineNet BlockSpec),
  plus the dilation rate of its convolutions (CR-NAS; its 3x3 convolutions,
  the depthwise one of an MBConv block). A dilation of 1 is left
  out of the JSON, so documents without dilation read and write as before."""
  level: int
  block_fn: str
  input_offsets: Tuple[int, int]
  is_output: bool
  dilation: int = 1

  def as_tuple(self) -> tuple:
    """Model Garden's BlockSpec arguments (without the dilation)."""
    return (self.level, self.block_fn, tuple(self.input_offsets), self.is_output)

  def key(self) -> tuple:
    """Everything that defines the block."""
    return self.as_tuple() + ((self.dilation,) if self.dilation != 1 else ())

  def replace(self, **changes) -> "BlockSpec":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class CellSpec:
  """One merging cell of a NAS-FPN (Model Garden's NAS-FPN BlockSpec)."""
  level: int
  combine_fn: str
  input_offsets: Tuple[int, int]
  is_output: bool

  def as_tuple(self) -> tuple:
    return (self.level, self.combine_fn, tuple(self.input_offsets),
            self.is_output)


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """Searched head settings (NAS-FCOS, Hit-Detector), applied on top of the
  scaling, so a proxy's scaling keeps them: `num_convs` convolutions per head
  (0: the scaling's head_num_convs), `filters_scale` times the scaling's
  head_num_filters, depthwise-separable convolutions or not."""
  num_convs: int = 0
  filters_scale: float = 1.0
  separable: bool = False

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Any, where: str = "head") -> "HeadSpec":
    _require_mapping(data, where)
    _refuse_unknown_keys(data, [f.name for f in dataclasses.fields(cls)], where)
    num_convs = data.get("num_convs", 0)
    if isinstance(num_convs, bool) or not isinstance(num_convs, int) or \
        not 0 <= num_convs <= MAX_HEAD_CONVS:
      raise ArchitectureError(f"{where}.num_convs: expected an integer 0..{MAX_HEAD_CONVS} "
                              f"(0: the scaling's), got {num_convs!r}")
    scale = data.get("filters_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or \
        not math.isfinite(scale) or scale <= 0:
      raise ArchitectureError(f"{where}.filters_scale: expected a number > 0, got {scale!r}")
    separable = data.get("separable", False)
    if not isinstance(separable, bool):
      raise ArchitectureError(f"{where}.separable: expected true or false, got {separable!r}")
    return cls(num_convs, float(scale), separable)


@dataclasses.dataclass(frozen=True)
class Scaling:
  """How wide and deep an architecture is built; defaults are SpineNet-49's.

  `resnet_model_id` is the fixed backbone of architectures from the NAS-FPN
  space (which searches only the feature pyramid).
  """
  filter_size_scale: float = 1.0
  resample_alpha: float = 0.5
  endpoints_num_filters: int = 256
  block_repeats: int = 1
  head_num_convs: int = 4
  head_num_filters: int = 256
  fpn_num_filters: int = 256
  fpn_num_repeats: int = 5
  resnet_model_id: int = 50

  def replace(self, **changes) -> "Scaling":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], where: str = "scaling") -> "Scaling":
    _require_mapping(data, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _refuse_unknown_keys(data, fields, where)
    values = {}
    for name, value in data.items():
      kind = fields[name].type
      if kind in (int, "int"):
        if isinstance(value, bool) or not isinstance(value, int):
          raise ArchitectureError(f"{where}.{name}: expected an integer, got {value!r}")
      elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArchitectureError(f"{where}.{name}: expected a number, got {value!r}")
      if not math.isfinite(value) or value <= 0:
        raise ArchitectureError(f"{where}.{name}: must be a positive finite number, got {value!r}")
      values[name] = value
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A detector architecture: backbone blocks and/or merging cells, plus scaling."""
  space: str
  blocks: Tuple[BlockSpec, ...] = ()
  cells: Tuple[CellSpec, ...] = ()
  scaling: Scaling = dataclasses.field(default_factory=Scaling)
  name: str = ""
  version: int = SCHEMA_VERSION
  # Searched settings that a proxy's scaling does not replace (0 / default:
  # the scaling's): the head, and the number of NAS-FPN repeats.
  head: HeadSpec = dataclasses.field(default_factory=HeadSpec)
  fpn_repeats: int = 0
  # How every searched block merges its inputs (FUSIONS); Model Garden's
  # SpineNet and SpineNetMobile offer weighted fusion for a whole backbone.
  fusion: str = "sum"

  def __post_init__(self):
    object.__setattr__(self, "blocks", tuple(self.blocks))
    object.__setattr__(self, "cells", tuple(self.cells))

  # ---- derived facts -------------------------------------------------------

  @property
  def output_levels(self) -> Tuple[int, ...]:
    """Levels of the detection features, ascending (P3..P7 by default)."""
    if self.blocks:
      return tuple(sorted(b.level for b in self.blocks if b.is_output))
    return tuple(sorted(c.level for c in self.cells if c.is_output))

  @property
  def min_level(self) -> int:
    return self.output_levels[0]

  @property
  def max_level(self) -> int:
    return self.output_levels[-1]

  def replace(self, **changes) -> "Architecture":
    return dataclasses.replace(self, **changes)

  def with_scaling(self, scaling: Optional[Scaling] = None, **changes) -> "Architecture":
    return self.replace(scaling=(scaling or self.scaling).replace(**changes))

  @property
  def built_scaling(self) -> Scaling:
    """The scaling the model is built with: `scaling` with the searched head
    and NAS-FPN repeats applied."""
    changes = {}
    if self.head.num_convs:
      changes["head_num_convs"] = self.head.num_convs
    if self.head.filters_scale != 1.0:
      changes["head_num_filters"] = max(1, round(self.scaling.head_num_filters *
                                                 self.head.filters_scale))
    if self.fpn_repeats:
      changes["fpn_num_repeats"] = self.fpn_repeats
    return self.scaling.replace(**changes)

  def check_image_size(self, image_size: int) -> None:
    """Model Garden needs the input to divide by the coarsest stride."""
    stride = 2 ** self.max_level
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
      raise ArchitectureError(f"image size must be a positive integer, got {image_size!r}")
    if image_size % stride:
      lower = image_size // stride * stride
      nearest = " or ".join(str(n) for n in (lower, lower + stride) if n > 0)
      raise ArchitectureError(
          f"image size {image_size} is not a multiple of {stride} "
          f"(2^max_level, max_level={self.max_level}); use e.g. {nearest}")

  # ---- validation ----------------------------------------------------------

  def validate(self) -> "Architecture":
    """Checks everything that makes an architecture buildable; returns self."""
    if type(self.version) is not int or self.version != SCHEMA_VERSION:
      raise ArchitectureError(
          f"version: this SpineSearch reads architecture schema version "
          f"{SCHEMA_VERSION}, got {self.version!r}")
    if self.space not in SPACES:
      raise ArchitectureError(f"space: must be one of {', '.join(SPACES)}, got {self.space!r}")
    has_blocks = self.space in ("spinenet", "joint")
    has_cells = self.space in ("nasfpn", "joint")
    if has_blocks and not self.blocks:
      raise ArchitectureError(f"blocks: a {self.space} architecture needs backbone blocks")
    if not has_blocks and self.blocks:
      raise ArchitectureError(f"blocks: a {self.space} architecture has no searched backbone blocks")
    if has_cells and not self.cells:
      raise ArchitectureError(f"cells: a {self.space} architecture needs merging cells")
    if not has_cells and self.cells:
      raise ArchitectureError(f"cells: a {self.space} architecture has no merging cells")
    if self.blocks:
      _validate_blocks(self.blocks)
    if isinstance(self.fpn_repeats, bool) or not isinstance(self.fpn_repeats, int) or \
        self.fpn_repeats < 0:
      raise ArchitectureError(f"fpn_repeats: expected an integer >= 0 (0: the scaling's), "
                              f"got {self.fpn_repeats!r}")
    if self.fpn_repeats and not self.cells:
      raise ArchitectureError("fpn_repeats: only an architecture with merging cells has "
                              "NAS-FPN repeats")
    if self.fusion not in FUSIONS:
      raise ArchitectureError(f"fusion: must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
    if self.fusion != "sum" and not self.blocks:
      raise ArchitectureError(f"fusion: {self.fusion} fusion merges the inputs of searched "
                              f"backbone blocks; a {self.space} architecture has none")
    if self.cells:
      # Without searched blocks the fixed backbone serves whatever levels the
      # cells' outputs span (Model Garden's NAS-FPN adds missing coarse levels).
      if not self.blocks:
        _check_output_levels([c.level for c in self.cells if c.is_output], "cells")
      _validate_cells(self.cells, self.output_levels if self.blocks else
                      tuple(sorted(c.level for c in self.cells if c.is_output)))
    return self

  # ---- JSON ----------------------------------------------------------------

  def to_dict(self) -> dict:
    data = {"version": self.version, "space": self.space}
    if self.name:
      data["name"] = self.name
    if self.blocks:
      data["blocks"] = [_spec_dict(b) for b in self.blocks]
    if self.cells:
      data["cells"] = [_spec_dict(c) for c in self.cells]
    data["scaling"] = self.scaling.to_dict()
    if self.head != HeadSpec():
      data["head"] = self.head.to_dict()
    if self.fpn_repeats:
      data["fpn_repeats"] = self.fpn_repeats
    if self.fusion != "sum":
      data["fusion"] = self.fusion
    return data

  def to_json(self, indent: Optional[int] = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent)

  def fingerprint(self) -> str:
    """Canonical text of the structure alone (no name, no scaling): equal
    fingerprints mean the same searched architecture."""
    structure = {"space": self.space,
                 "blocks": [b.key() for b in self.blocks],
                 "cells": [c.as_tuple() for c in self.cells]}
    if self.head != HeadSpec():
      structure["head"] = self.head.to_dict()
    if self.fpn_repeats:
      structure["fpn_repeats"] = self.fpn_repeats
    if self.fusion != "sum":
      structure["fusion"] = self.fusion
    return json.dumps(structure, separators=(",", ":"))

  @classmethod
  def from_dict(cls, data: Any) -> "Architecture":
    _require_mapping(data, "architecture")
    allowed = {"version", "space", "name", "blocks", "cells", "scaling", "head", "fpn_repeats",
               "fusion"}
    _refuse_unknown_keys(data, allowed, "architecture")
    for key in ("version", "space"):
      if key not in data:
        raise ArchitectureError(f"architecture: missing required key {key!r}")
    name = data.get("name", "")
    if not isinstance(name, str):
      raise ArchitectureError(f"name: expected a string, got {name!r}")
    arch = cls(
        version=data["version"],
        space=data["space"],
        name=name,
        blocks=tuple(_parse_spec(BlockSpec, "block_fn", b, f"blocks[{i}]")
                     for i, b in enumerate(_list(data, "blocks"))),
        cells=tuple(_parse_spec(CellSpec, "combine_fn", c, f"cells[{i}]")
                    for i, c in enumerate(_list(data, "cells"))),
        scaling=Scaling.from_dict(data.get("scaling", {})),
        head=HeadSpec.from_dict(data.get("head", {})),
        fpn_repeats=data.get("fpn_repeats", 0),
        fusion=data.get("fusion", "sum"),
    )
    return arch.validate()

  @classmethod
  def from_json(cls, text: str, source: str = "architecture JSON") -> "Architecture":
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ArchitectureError(f"{source}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})")
    except RecursionError:
      raise ArchitectureError(f"{source}: not valid JSON (nested too deeply)")
    try:
      return cls.from_dict(data)
    except ArchitectureError as e:
      raise ArchitectureError(f"{source}: {e}") from None

  @classmethod
  def load(cls, path: str) -> "Architecture":
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except OSError as e:
      raise ArchitectureError(f"{path}: cannot read ({e.strerror})")
    except UnicodeDecodeError:
      raise ArchitectureError(f"{path}: not a UTF-8 text file")
    return cls.from_json(text, source=path)

  def save(self, path: str) -> None:
    """Writes atomically: a reader never sees a half-written file."""
    write_text_atomically(path, self.to_json() + "\n")


# ---- helpers -----------------------------------------------------------------

def _spec_dict(spec) -> dict:
  data = dataclasses.asdict(spec)
  data["input_offsets"] = list(spec.input_offsets)
  if data.get("dilation") == 1:
    del data["dilation"]
  return data


def _require_mapping(data: Any, where: str) -> None:
  if not isinstance(data, Mapping):
    raise ArchitectureError(f"{where}: expected a JSON object, got {type(data).__name__}")


def _refuse_unknown_keys(data: Mapping, allowed, where: str) -> None:
  unknown = sorted(set(data) - set(allowed))
  if unknown:
    raise ArchitectureError(
        f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}")


def _list(data: Mapping, key: str) -> Sequence:
  value = data.get(key, [])
  if not isinstance(value, list):
    raise ArchitectureError(f"{key}: expected a list, got {type(value).__name__}")
  return value


def _parse_spec(spec_cls, fn_key: str, data: Any, where: str):
  _require_mapping(data, where)
  keys = ("level", fn_key, "input_offsets", "is_output")
  optional = ("dilation",) if spec_cls is BlockSpec else ()
  _refuse_unknown_keys(data, keys + optional, where)
  missing = [k for k in keys if k not in data]
  if missing:
    raise ArchitectureError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
  level, offsets, is_output = data["level"], data["input_offsets"], data["is_output"]
  if isinstance(level, bool) or not isinstance(level, int):
    raise ArchitectureError(f"{where}.level: expected an integer, got {level!r}")
  if not isinstance(data[fn_key], str):
    raise ArchitectureError(f"{where}.{fn_key}: expected a string, got {data[fn_key]!r}")
  if (not isinstance(offsets, list) or len(offsets) != 2 or
      any(isinstance(o, bool) or not isinstance(o, int) for o in offsets)):
    raise ArchitectureError(f"{where}.input_offsets: expected two integers, got {offsets!r}")
  if not isinstance(is_output, bool):
    raise ArchitectureError(f"{where}.is_output: expected true or false, got {is_output!r}")
  extra = {}
  if "dilation" in data:
    dilation = data["dilation"]
    if isinstance(dilation, bool) or not isinstance(dilation, int):
      raise ArchitectureError(f"{where}.dilation: expected an integer, got {dilation!r}")
    extra["dilation"] = dilation
  return spec_cls(level, data[fn_key], tuple(offsets), is_output, **extra)


def _check_offsets(offsets, num_available: int, where: str, pool: str) -> None:
  a, b = offsets
  if a == b:
    raise ArchitectureError(f"{where}.input_offsets: {list(offsets)} names the same input twice")
  for o in offsets:
    if not 0 <= o < num_available:
      raise ArchitectureError(
          f"{where}.input_offsets: {o} is not an earlier {pool} "
          f"(valid: 0..{num_available - 1})")


def _check_output_levels(levels: Sequence[int], where: str) -> None:
  seen = set()
  for level in levels:
    if level in seen:
      raise ArchitectureError(f"{where}: level {level} is produced by two output {where}")
    seen.add(level)
  if not levels:
    raise ArchitectureError(f"{where}: no output {where}; need one per level, e.g. P3..P7")
  expected = set(range(min(levels), max(levels) + 1))
  if seen != expected or min(levels) < 2:
    raise ArchitectureError(
        f"{where}: output levels {sorted(seen)} must be one contiguous range from level 2 "
        f"or above, each level once (e.g. 3..7)")


def _validate_blocks(blocks: Sequence[BlockSpec]) -> None:
  for i, b in enumerate(blocks):
    where = f"blocks[{i}]"
    if not MIN_BLOCK_LEVEL <= b.level <= MAX_BLOCK_LEVEL:
      raise ArchitectureError(
          f"{where}.level: {b.level} is outside {MIN_BLOCK_LEVEL}..{MAX_BLOCK_LEVEL}")
    if b.block_fn not in BLOCK_FNS:
      raise ArchitectureError(f"{where}.block_fn: must be one of {', '.join(BLOCK_FNS)}, got {b.block_fn!r}")
    if isinstance(b.dilation, bool) or not isinstance(b.dilation, int) or \
        not 1 <= b.dilation <= MAX_DILATION:
      raise ArchitectureError(
          f"{where}.dilation: must be an integer 1..{MAX_DILATION}, got {b.dilation!r}")
    _check_offsets(b.input_offsets, NUM_STEM_BLOCKS + i, where, "block (2 stem blocks, then blocks[0..])")
  kinds = {b.block_fn == "mbconv" for b in blocks}
  if len(kinds) > 1:
    raise ArchitectureError("blocks: mbconv blocks cannot be mixed with bottleneck/residual blocks")
  _check_output_levels([b.level for b in blocks if b.is_output], "blocks")


def _validate_cells(cells: Sequence[CellSpec], backbone_levels: Sequence[int]) -> None:
  lo, hi = min(backbone_levels), max(backbone_levels)
  for i, c in enumerate(cells):
    where = f"cells[{i}]"
    if not lo <= c.level <= hi:
      raise ArchitectureError(f"{where}.level: {c.level} is outside the pyramid's levels {lo}..{hi}")
    if c.combine_fn not in COMBINE_FNS:
      raise ArchitectureError(
          f"{where}.combine_fn: must be one of {', '.join(COMBINE_FNS)}, got {c.combine_fn!r}")
    _check_offsets(c.input_offsets, len(backbone_levels) + i, where,
                   f"feature (P{lo}..P{hi}, then cells[0..])")
  outputs = [c.level for c in cells if c.is_output]
  _check_output_levels(outputs, "cells")
  if set(outputs) != set(backbone_levels):
    raise ArchitectureError(
        f"cells: output levels {sorted(outputs)} must match the backbone's levels {lo}..{hi}")
