"""The interface every search algorithm offers the search driver.

The driver is asynchronous: whenever a worker frees up it asks `propose()` for
a new architecture, and whenever a trial ends it calls `observe()`. Algorithms
never block and never see TensorFlow models, only the space's decisions.

State and resume: `state()` returns everything needed to continue (JSON-able,
plus arrays for a neural policy) and `load_state()` restores it. The driver
saves the state after every `observe()` that changed it and, on resume, replays
`observe()` for finished trials the saved state has not seen (`observed_ids`).
"""
import abc
import dataclasses
import random
from typing import Any, ClassVar, Dict, List, Optional, Sequence

from spinesearch.space.base import SearchSpace


@dataclasses.dataclass(frozen=True)
class Proposal:
  """An architecture to try: its decisions and, for a policy, their log-probs
  under the policy that sampled them (PPO's "old" probabilities)."""
  decisions: List[int]
  log_probs: Optional[List[float]] = None


@dataclasses.dataclass(frozen=True)
class Observation:
  """A finished trial as the algorithm sees it. `reward` is None for a failed trial."""
  trial_id: int
  proposal: Proposal
  reward: Optional[float]


class SearchAlgorithm(abc.ABC):
  """propose() / observe() over one search space."""

  name: ClassVar[str]

  def __init__(self, space: SearchSpace, seed: int):
    self.space = space
    self.seed = seed
    self.rng = random.Random(seed)
    self.observed_ids: List[int] = []

  @abc.abstractmethod
  def propose(self) -> Proposal:
    """A new architecture to evaluate; never blocks. The driver may drop a
    proposal unevaluated (--zero_shot_prefilter), so nothing here may wait
    for a proposal to be observed."""

  def observe(self, observation: Observation) -> Dict[str, float]:
    """Takes a finished trial into account. Returns scalars worth logging
    (e.g. baseline, entropy, loss after a policy update); may be empty."""
    self.observed_ids.append(observation.trial_id)
    return self._observe(observation)

  @abc.abstractmethod
  def _observe(self, observation: Observation) -> Dict[str, float]:
    ...

  def state(self) -> Dict[str, Any]:
    """Everything needed to continue the search (see load_state)."""
    return {"name": self.name, "seed": self.seed,
            "rng": _rng_state(self.rng), "observed_ids": list(self.observed_ids)}

  def load_state(self, state: Dict[str, Any]) -> None:
    self.rng.setstate(_rng_from_state(state["rng"]))
    self.observed_ids = list(state["observed_ids"])


def _rng_state(rng: random.Random) -> list:
  version, internal, gauss = rng.getstate()
  return [version, list(internal), gauss]


def _rng_from_state(state: Sequence) -> tuple:
  version, internal, gauss = state
  return (version, tuple(internal), gauss)
