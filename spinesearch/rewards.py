"""Rewards: turning a trial's measurements into the number a search maximises.

No TensorFlow here: rewards are plain arithmetic on measured values.

- `cost_constrained_reward`: MnasNet's multi-objective reward (arXiv 1807.11626),
  R = ACC * (COST / TARGET)^w with w = alpha if COST <= TARGET else beta.
  Soft constraint: alpha = beta = -0.07; hard constraint: alpha = 0, beta = -1.
- `TargetSimilarity`: a reward computed from the architecture alone, with a
  known optimum (a hidden target architecture), for testing and benchmarking
  search algorithms without training anything.
"""
import json
import math
import random
from typing import Dict, List, Optional, Sequence, Tuple

from spinesearch.errors import ConfigError
from spinesearch.space.base import SearchSpace

SOFT_COST_WEIGHT = 0.07


def cost_constrained_reward(accuracy: float, cost: float, target: float, *,
                            alpha: float = -SOFT_COST_WEIGHT,
                            beta: float = -SOFT_COST_WEIGHT) -> float:
  """ACC * (COST / TARGET)^w, w = alpha when within the target, else beta."""
  if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0 \
      or math.isinf(target):
    raise ConfigError(f"cost target: expected a positive number, got {target!r}")
  if not cost > 0 or math.isinf(cost):
    raise ValueError(f"cost must be a positive finite number, got {cost!r}")
  exponent = alpha if cost <= target else beta
  return float(accuracy) * (cost / target) ** exponent


def reward_with_cost_target(accuracy: float, cost: Optional[float] = None,
                            target: Optional[float] = None, *,
                            cost_weight: float = SOFT_COST_WEIGHT,
                            hard_constraint: bool = False) -> float:
  """The reward as the command-line flags describe it.

  Without a target the reward is the accuracy. With one, `hard_constraint`
  leaves architectures within the target unpenalised and divides the accuracy
  of the others by COST/TARGET (alpha=0, beta=-1); otherwise both sides use
  w = -cost_weight.
  """
  if target is None:
    return float(accuracy)
  if isinstance(cost_weight, bool) or not isinstance(cost_weight, (int, float)) \
      or not cost_weight >= 0 or math.isinf(cost_weight):
    raise ConfigError(f"cost weight: expected a non-negative number, got {cost_weight!r}")
  if cost is None:
    raise ValueError("a cost target needs the trial's measured cost")
  if hard_constraint:
    return cost_constrained_reward(accuracy, cost, target, alpha=0.0, beta=-1.0)
  return cost_constrained_reward(accuracy, cost, target, alpha=-cost_weight, beta=-cost_weight)


def canonical_decisions(space: SearchSpace, decisions: Sequence[int]) -> List[int]:
  """The space's own encoding of the architecture `decisions` decode to: two
  sequences giving the same architecture have the same canonical form."""
  return space.encode(space.decode(decisions))


class TargetSimilarity:
  """Reward = the fraction of canonical decisions equal to a hidden target's.

  The target is drawn uniformly from the space with `seed`. The reward is in
  [0, 1] and 1.0 exactly for the target architecture; each decision
  contributes on its own, so a search algorithm can climb it step by step.
  """

  def __init__(self, space: SearchSpace, seed: int):
    self.space = space
    self.seed = seed
    # A stream of its own: algorithms seeded with the same number start from
    # random.Random(seed), and must not propose the target as their first trial.
    self.target = tuple(canonical_decisions(
        space, space.sample(random.Random(f"target-similarity-{seed}"))))

  def __call__(self, decisions: Sequence[int]) -> float:
    candidate = canonical_decisions(self.space, decisions)
    matches = sum(a == b for a, b in zip(candidate, self.target))
    return matches / len(self.target)

  @property
  def target_architecture(self):
    return self.space.decode(self.target)


_TARGETS: Dict[Tuple[str, str, int], TargetSimilarity] = {}


def target_similarity(space: SearchSpace, decisions: Sequence[int], seed: int) -> float:
  """TargetSimilarity(space, seed)(decisions), with the target drawn once per
  space configuration and seed."""
  key = (space.name, json.dumps(space.config(), sort_keys=True), seed)
  if key not in _TARGETS:
    _TARGETS[key] = TargetSimilarity(space, seed)
  return _TARGETS[key](decisions)
