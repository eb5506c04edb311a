"""Search spaces and the architecture schema. Pure Python: no TensorFlow here."""
from spinesearch.space.architecture import (Architecture, BlockSpec, CellSpec,
                                            Scaling, SCHEMA_VERSION)
from spinesearch.space.base import Decision, DecisionCursor, SearchSpace
