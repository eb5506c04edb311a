"""Structural keys: the name under which a supernet keeps each variable.

A key depends on what a variable does, never on where the permutation puts its
block, so every architecture of a space that uses the same part reads and
trains the same tensor, and a key always names tensors of one shape:

  stem/<i>                                  the fixed stem (7x7 conv, two L2 blocks)
  block/<name>/<type>x<filters>/<i>         a searched block: its identity in the
                                            allocation ('L4.2', the 2nd base-level-4
                                            block; 'P5', the level-5 output block),
                                            the type and width it has in this path
  resample/<child>.input<j>/<type>x<f>-<dir>-<type>x<f>/<i>
                                            a resampling edge: the child block's identity,
                                            which of its inputs (0: the parent built
                                            first), the parent's and the child's type
                                            and width, and its direction (down, same, up; an
                                            MBConv edge down by n > 1 levels: down<n>)
  fusion/<child>.<role>/<i>                 a block's learned weight of one input (weighted
                                            fusion): input0, input1, or extra<k>, the
                                            k-th unconsumed block an output block sums in
  endpoint/<type>@L<level>/<i>              the 1x1 projection of an output block
  resnet/<i>                                the fixed ResNet of the NAS-FPN space
  fpn_input/L<from>-L<to>/<i>               NAS-FPN's projection of a backbone level
  cell/<repeat>.<cell>/<i>                  a merging cell's convolution, by identity
  cell_input/<repeat>.<cell>/<role>/<i>     a cell's input projection (input0, input1,
                                            or extra.<source>: an unconsumed feature)
  head/<i>                                  the RetinaNet head of the scaling
  head/<layer>/<variable>/<shape>           a searched head (`space.head`): Model
                                            Garden's layer ('classnet-conv_1'), the
                                            variable and its shape, so heads of other
                                            depths, widths and separability share
                                            what has one shape

`<i>` counts the variables of the part in creation order.

Blocks are keyed by width, not level: a level-4..7 block has the same filters
at any of those levels, so a block identity's weights serve every level its
level offsets can give it (two variants per identity instead of up to eight),
and are trained about 1.5 times as often (measured over 60 sampled paths:
26 paths per SpineNet-49 block key against 17.5 by level).

Edges are keyed by their child so that no two edges of one path share a
tensor. Keying an edge only by the types and widths it joins would tie
SpineNet-49's 30 edges into 16 tensors: that path alone, trained 1,500 steps
through the supernet trainer, reached AP 0.0103 with tied edges and 0.0175
with these keys (stand-alone training of the same schedule: 0.0187). Keying by both blocks' identities would
leave most edges untrained: in 60 sampled paths only 15 of SpineNet-49's 30
edge keys appeared, each in 1.7 paths on average; keyed by the child, all 30
appeared, in 5.6 paths each.

A merging cell's input projections, which exist only when the pyramid's
width differs from Model Garden's 256, are shared by the cell's identity and
input role; their batch-norm statistics, which the one-shot reward recomputes
per path anyway, are kept per source feature ('|<source>').
"""
from typing import List, Optional, Sequence, Tuple

from spinesearch.errors import ArchitectureError
from spinesearch.modeling.structure import Part
from spinesearch.space.architecture import Architecture
from spinesearch.space.base import SearchSpace


def block_names(space: SearchSpace, architecture: Architecture) -> Optional[List[str]]:
  """The identities of the architecture's searched blocks in `space`, or None
  for an architecture without searched blocks (the NAS-FPN space)."""
  if not architecture.blocks:
    return None
  backbone = getattr(space, "backbone", space)
  if not hasattr(backbone, "block_names"):
    raise ArchitectureError(f"the {space.name} space does not name its blocks")
  return backbone.block_names(architecture.blocks)


def variable_key(part: Part, ordinal: int, trainable: bool,
                 variable: Optional[Tuple[str, str, Sequence[int]]] = None) -> str:
  """The key of the `ordinal`-th variable created in `part` (module
  docstring); `variable` is its (layer, name, shape), which a searched head's
  keys need."""
  k = part.kind
  if k == "head" and part.name == "searched":
    if variable is None:
      raise ValueError("a searched head's variables are keyed by layer, name and shape")
    layer, name, shape = variable
    return f"head/{layer}/{name}/{'x'.join(str(int(d)) for d in shape) or 'scalar'}"
  if k in ("stem", "head", "resnet"):
    return f"{k}/{ordinal}"
  if k == "block":
    return f"block/{part.name}/{part.block_fn}x{part.filters}/{ordinal}"
  if k == "resample":
    return (f"resample/{part.name}.{part.role}/{part.parent_block_fn}x{part.parent_filters}-"
            f"{_direction(part)}-{part.block_fn}x{part.filters}/{ordinal}")
  if k == "fusion":
    return f"fusion/{part.name}.{part.role}/{ordinal}"
  if k == "endpoint":
    return f"endpoint/{part.block_fn}@L{part.level}/{ordinal}"
  if k == "fpn_input":
    return f"fpn_input/L{part.parent_level}-L{part.level}/{ordinal}"
  if k == "cell":
    return f"cell/{part.name}/{ordinal}"
  if k == "cell_input":
    # A cell sums any number of unconsumed features: each is its own extra.
    role = f"extra.{part.parent}" if part.role == "extra" else part.role
    shared = f"cell_input/{part.name}/{role}"
    return f"{shared}/{ordinal}" if trainable else f"{shared}|{part.parent}/{ordinal}"
  raise ValueError(f"no key for a variable of a {k!r} part")


def _direction(part: Part) -> str:
  """'down', 'same' or 'up'; an MBConv edge down by more than one level is
  'down<levels>': SpineNetMobile gives it one depthwise convolution per level
  (SpineNet's edges have one strided convolution, then pooling)."""
  steps = part.level - part.parent_level
  if steps > 1 and part.block_fn == "mbconv":
    return f"down{steps}"
  return "down" if steps > 0 else "up" if steps < 0 else "same"
