"""Structural keys: the name under which a supernet keeps each variable.

A key depends on what a variable does, never on where the permutation puts its
block, so every architecture of a space that uses the same part reads and
trains the same tensor, and a key always names tensors of one shape:

  stem/<i>                                  the fixed stem (7x7 conv, two L2 blocks)
  block/<name>/<type>@L<level>/<i>          a searched block: its identity in the
                                            allocation ('L4.2', the 2nd base-level-4
                                            block; 'P5', the level-5 output block),
                                            the level and type it has in this path
  resample/<type>@L<l>-<type>@L<l>/<i>      a parent-to-child resampling edge, by the
                                            level and type of the parent and the child
  endpoint/<type>@L<level>/<i>              the 1x1 projection of an output block
  resnet/<i>                                the fixed ResNet of the NAS-FPN space
  fpn_input/L<from>-L<to>/<i>               NAS-FPN's projection of a backbone level
  cell/<repeat>.<cell>/<i>                  a merging cell's convolution, by identity
  cell_input/<repeat>.<cell>/<role>/<i>     a cell's input projection (input0, input1,
                                            or an extra: an unconsumed feature)
  head/<i>                                  the RetinaNet head

`<i>` counts the variables of the part in creation order.

Resampling edges are shared by the levels and types they join rather than by
the identities of the two blocks: a path has about 30 edges out of some 20,000
(parent, child) identity pairs in the default space, so per-identity edges
would hardly ever be trained; there are 144 level-and-type pairs. Two edges of
one path that join the same levels and types therefore share their weights.
Their batch-norm moving statistics, which the one-shot reward recomputes per
path anyway, are kept per pair of identities (keys with a '|<parent>-<child>'
part), so that each edge of a path normalizes with statistics of its own
inputs. The same holds for a cell's input projections ('|<source>').
"""
from typing import List, Optional

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


def variable_key(part: Part, ordinal: int, trainable: bool) -> str:
  """The key of the `ordinal`-th variable created in `part`."""
  k = part.kind
  if k in ("stem", "head", "resnet"):
    return f"{k}/{ordinal}"
  if k == "block":
    return f"block/{part.name}/{part.block_fn}@L{part.level}/{ordinal}"
  if k == "resample":
    shared = f"resample/{part.parent_block_fn}@L{part.parent_level}-{part.block_fn}@L{part.level}"
    return f"{shared}/{ordinal}" if trainable else f"{shared}|{part.parent}-{part.name}/{ordinal}"
  if k == "endpoint":
    return f"endpoint/{part.block_fn}@L{part.level}/{ordinal}"
  if k == "fpn_input":
    return f"fpn_input/L{part.parent_level}-L{part.level}/{ordinal}"
  if k == "cell":
    return f"cell/{part.name}/{ordinal}"
  if k == "cell_input":
    shared = f"cell_input/{part.name}/{part.role}"
    return f"{shared}/{ordinal}" if trainable else f"{shared}|{part.parent}/{ordinal}"
  raise ValueError(f"no key for a variable of a {k!r} part")
