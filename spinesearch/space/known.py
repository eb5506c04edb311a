"""Published architectures and scalings, as data (facts from the papers and
Model Garden's module-level specs).

Model Garden lists a 16th SpineNet-49 block, a level-2 output used only for
segmentation; for detection with P3..P7 it feeds nothing, so it is left out.
"""
from typing import Dict, NamedTuple, Optional

from spinesearch.errors import ArchitectureError
from spinesearch.space.architecture import Architecture, BlockSpec, CellSpec, Scaling

# (level, block_fn, input_offsets, is_output); offsets index [stem1, stem2, blocks...].
SPINENET_49_BLOCKS = (
    (2, "bottleneck", (0, 1), False),
    (4, "residual", (0, 1), False),
    (3, "bottleneck", (2, 3), False),
    (4, "bottleneck", (2, 4), False),
    (6, "residual", (3, 5), False),
    (4, "bottleneck", (3, 5), False),
    (5, "residual", (6, 7), False),
    (7, "residual", (6, 8), False),
    (5, "bottleneck", (8, 9), False),
    (5, "bottleneck", (8, 10), False),
    (4, "bottleneck", (5, 10), True),
    (3, "bottleneck", (4, 10), True),
    (5, "bottleneck", (7, 12), True),
    (7, "bottleneck", (5, 14), True),
    (6, "bottleneck", (12, 14), True),
)

# Mobile SpineNet (arXiv 2010.11426): 11 intermediate MBConv blocks + 5 outputs.
SPINENET_MOBILE_BLOCKS = (
    (2, "mbconv", (0, 1), False),
    (2, "mbconv", (1, 2), False),
    (4, "mbconv", (1, 2), False),
    (3, "mbconv", (3, 4), False),
    (4, "mbconv", (3, 5), False),
    (6, "mbconv", (4, 6), False),
    (4, "mbconv", (4, 6), False),
    (5, "mbconv", (7, 8), False),
    (7, "mbconv", (7, 9), False),
    (5, "mbconv", (9, 10), False),
    (5, "mbconv", (9, 11), False),
    (4, "mbconv", (6, 11), True),
    (3, "mbconv", (5, 11), True),
    (5, "mbconv", (8, 13), True),
    (7, "mbconv", (6, 15), True),
    (6, "mbconv", (13, 15), True),
)

# (level, combine_fn, input_offsets, is_output); offsets index [P3..P7, cells...].
NASFPN_CELLS = (
    (4, "attention", (1, 3), False),
    (4, "sum", (1, 5), False),
    (3, "sum", (0, 6), True),
    (4, "sum", (6, 7), True),
    (5, "attention", (7, 8), True),
    (7, "attention", (6, 9), True),
    (6, "attention", (9, 10), True),
)


class Published(NamedTuple):
  """A published RetinaNet model: scaling, input size and the paper's figures."""
  scaling: Scaling
  image_size: int
  paper_params_m: float
  paper_gflops: float


# SpineNet paper table 3 / Model Garden SCALING_MAP; "gflops" are multiply-adds.
SPINENET_FAMILY: Dict[str, Published] = {
    "49S": Published(Scaling(filter_size_scale=0.65, endpoints_num_filters=128,
                             resample_alpha=0.5, block_repeats=1,
                             head_num_convs=4, head_num_filters=128), 640, 11.9, 33.8),
    "49": Published(Scaling(), 640, 28.5, 85.4),
    "96": Published(Scaling(block_repeats=2), 1024, 43.0, 265.4),
    "143": Published(Scaling(resample_alpha=1.0, block_repeats=3), 1280, 67.0, 524.0),
    "190": Published(Scaling(filter_size_scale=1.3, endpoints_num_filters=512,
                             resample_alpha=1.0, block_repeats=4,
                             head_num_convs=7, head_num_filters=512), 1280, 163.6, 1885.0),
}


def spinenet49(scaling: Scaling = Scaling()) -> Architecture:
  return Architecture(space="spinenet", name="spinenet49", scaling=scaling,
                      blocks=tuple(BlockSpec(*b) for b in SPINENET_49_BLOCKS))


# Mobile SpineNet scalings (Model Garden spinenet_mobile SCALING_MAP; head dims as
# the endpoints, per the paper): 49XS and 49S are 49 with filters x0.6 / x0.65.
MOBILE_SPINENET_SCALINGS: Dict[str, Scaling] = {
    name: Scaling(filter_size_scale=scale, endpoints_num_filters=dims, block_repeats=1,
                  head_num_convs=4, head_num_filters=dims)
    for name, scale, dims in (("49", 1.0, 48), ("49S", 0.65, 40), ("49XS", 0.6, 24))
}


def mobile_spinenet49(scaling: Scaling = MOBILE_SPINENET_SCALINGS["49"]) -> Architecture:
  """Mobile SpineNet-49's blocks (a point of the spinenet space's "mobile" preset)."""
  return Architecture(space="spinenet", name="mobile-spinenet49", scaling=scaling,
                      blocks=tuple(BlockSpec(*b) for b in SPINENET_MOBILE_BLOCKS))


def nasfpn(scaling: Scaling = Scaling()) -> Architecture:
  return Architecture(space="nasfpn", name="nasfpn", scaling=scaling,
                      cells=tuple(CellSpec(*c) for c in NASFPN_CELLS))


def spinenet49_nasfpn(scaling: Scaling = Scaling()) -> Architecture:
  return Architecture(space="joint", name="spinenet49-nasfpn", scaling=scaling,
                      blocks=spinenet49().blocks, cells=nasfpn().cells)


def published_point(space) -> Optional[Architecture]:
  """The published architecture that lies in `space` (a SearchSpace):
  SpineNet-49, Mobile SpineNet-49, NAS-FPN, SpineNet-49 + NAS-FPN, or
  SpineNet-49's blocks in scale-decreased order, at the default scaling, with
  the published values of a searched head or fusion (RetinaNet's head, 5
  NAS-FPN repeats, summed inputs); None if none does (e.g. the vertex
  preset's allocation)."""
  from spinesearch.space.options import ArchitectureOptions
  if isinstance(space, ArchitectureOptions):
    inner = published_point(space.inner)
    point = inner and space.published(inner)
    try:
      return point and (space.encode(point) and point)
    except ArchitectureError:
      return None
  candidates = {"spinenet": (spinenet49, mobile_spinenet49), "nasfpn": (nasfpn,),
                "joint": (spinenet49_nasfpn,),
                "scale_decreased": (lambda: scale_decreased(spinenet49()),)}.get(space.name, ())
  for make in candidates:
    architecture = make()
    try:
      space.encode(architecture)
    except ArchitectureError:
      continue
    return architecture
  return None


def scale_decreased(architecture: Architecture) -> Architecture:
  """The same blocks in a ResNet-like order: by increasing level (decreasing
  resolution), each fed by the two blocks before it, and the last block of
  each output level as that level's output (as a ResNet's C3..C5 are). The
  SpineNet paper's baseline for what scale permutation adds (its R0-SP53 and
  section 6.1), made from the blocks of `architecture`."""
  ordered = sorted(architecture.blocks, key=lambda b: b.level)  # stable
  output_levels = {b.level for b in architecture.blocks if b.is_output}
  last_of_level = {b.level: i for i, b in enumerate(ordered)}
  # Offsets index [stem1, stem2, blocks...]: block i has index i + 2.
  blocks = tuple(
      BlockSpec(b.level, b.block_fn, (i, i + 1),
                b.level in output_levels and last_of_level[b.level] == i)
      for i, b in enumerate(ordered))
  return architecture.replace(blocks=blocks, name=f"{architecture.name}-scale-decreased")
