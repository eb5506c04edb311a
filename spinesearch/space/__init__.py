"""Search spaces and the architecture schema. Pure Python: no TensorFlow here."""
from spinesearch.space.architecture import (Architecture, BlockSpec, CellSpec,
                                            Scaling, SCHEMA_VERSION)
from spinesearch.space.base import Decision, DecisionCursor, SearchSpace
from spinesearch.space.spinenet import ScalePermutedSpace
from spinesearch.space.nasfpn import MergingCellSpace
from spinesearch.space.joint import JointSpace
from spinesearch.space.registry import SPACES, build_space, space_for, space_from_config
