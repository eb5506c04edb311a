"""Regularized (aging) evolution, Real et al. 2019 (arXiv 1802.01548).

A population of the P most recent successful trials. Until it holds P members
every proposal is random (uniform over the space, or, with
`initial_mutations=K`, the space's published architecture with 0 to K
decisions mutated: where a supernet trained around that point has weights
worth scoring); after that, a proposal is a mutation of the best of S
members drawn at random, and each new member pushes out the oldest one (not the
worst: aging keeps the search from resting on one lucky evaluation).

A mutation re-samples a few decisions and repairs the rest of the sequence by
walking the space's cursor: each later decision is kept when its mask still
allows it and re-sampled otherwise, so every child is a valid architecture.
Failed trials never join the population. Proposals while trials are pending are
fine: the population simply has not changed yet.
"""
import collections
import math
import random
from typing import Any, Dict, List, Optional, Sequence

from spinesearch.algorithms.base import Observation, Proposal, SearchAlgorithm
from spinesearch.errors import ConfigError
from spinesearch.space.base import SearchSpace


def mutate(space: SearchSpace, decisions: Sequence[int], rng: random.Random,
           num_mutations: int) -> List[int]:
  """A valid child of `decisions` with `num_mutations` decisions (of those
  that have an alternative) re-sampled to another choice and the rest of the
  sequence repaired (module docstring)."""
  masks = space.masks(decisions)
  mutable = [i for i, mask in enumerate(masks) if sum(mask) > 1]
  if not mutable or num_mutations < 1:
    return list(decisions)
  changed = set(rng.sample(mutable, min(num_mutations, len(mutable))))
  cursor = space.start()
  child = []
  for i, old in enumerate(decisions):
    valid = [c for c, ok in enumerate(cursor.mask()) if ok]
    if i in changed:
      alternatives = [c for c in valid if c != old]
      choice = rng.choice(alternatives) if alternatives else old
    elif old in valid:
      choice = old
    else:
      choice = rng.choice(valid)
    cursor.choose(choice)
    child.append(choice)
  return child


def published_decisions(space: SearchSpace) -> List[int]:
  """The decisions of the space's published architecture (SpineNet-49,
  NAS-FPN, ...), where `initial_mutations` starts; ConfigError if the space
  holds none."""
  from spinesearch.space import known
  published = known.published_point(space)
  if published is None:
    raise ConfigError(f"initial_mutations: the {space.name} space with these settings "
                      f"holds no published architecture to start from")
  return space.encode(published)


def near(space: SearchSpace, decisions: Sequence[int], rng: random.Random, max_mutations: int,
         min_mutations: int = 0) -> List[int]:
  """`decisions` mutated a number of times drawn uniformly from
  [min_mutations, max_mutations]: a random point of its neighbourhood."""
  return mutate(space, decisions, rng, rng.randint(min_mutations, max_mutations))


class RegularizedEvolution(SearchAlgorithm):
  """Tournament selection of size `sample_size` in an aging population."""

  name = "evolution"

  def __init__(self, space: SearchSpace, seed: int, *, population_size: int = 20,
               sample_size: int = 5, num_mutations: int = 1,
               initial_mutations: Optional[int] = None):
    super().__init__(space, seed)
    for option, value, minimum in (("population_size", population_size, 1),
                                   ("sample_size", sample_size, 1),
                                   ("num_mutations", num_mutations, 1)):
      if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{option}: expected an integer >= {minimum}, got {value!r}")
    if sample_size > population_size:
      raise ConfigError(
          f"sample_size: {sample_size} is larger than population_size {population_size}")
    self._start: Optional[List[int]] = None
    if initial_mutations is not None:
      if isinstance(initial_mutations, bool) or not isinstance(initial_mutations, int) \
          or initial_mutations < 0:
        raise ConfigError(
            f"initial_mutations: expected an integer >= 0, got {initial_mutations!r}")
      self._start = published_decisions(space)
    self.options = {"population_size": population_size, "sample_size": sample_size,
                    "num_mutations": num_mutations, "initial_mutations": initial_mutations}
    # Oldest first; each member is {"trial_id", "decisions", "reward"}.
    self.population: collections.deque = collections.deque()

  def propose(self) -> Proposal:
    if len(self.population) < self.options["population_size"]:
      if self._start is not None:
        return Proposal(decisions=near(self.space, self._start, self.rng,
                                       self.options["initial_mutations"]))
      return Proposal(decisions=self.space.sample(self.rng))
    contestants = self.rng.sample(list(self.population), self.options["sample_size"])
    parent = max(contestants, key=lambda member: member["reward"])
    return Proposal(decisions=self.mutate(parent["decisions"]))

  def mutate(self, decisions: Sequence[int]) -> List[int]:
    """A valid child that differs from `decisions` in at least one choice
    (unless no decision of the space has an alternative)."""
    return mutate(self.space, decisions, self.rng, self.options["num_mutations"])

  def _observe(self, observation: Observation) -> Dict[str, float]:
    reward = observation.reward
    if reward is None or not math.isfinite(reward):
      return {}
    self.population.append({"trial_id": observation.trial_id,
                            "decisions": [int(d) for d in observation.proposal.decisions],
                            "reward": float(reward)})
    if len(self.population) > self.options["population_size"]:
      self.population.popleft()
    rewards = [member["reward"] for member in self.population]
    return {"population_size": float(len(rewards)), "population_best": max(rewards),
            "population_mean": sum(rewards) / len(rewards)}

  def state(self) -> Dict[str, Any]:
    state = super().state()
    state.update({"space": self.space.name, "options": dict(self.options),
                  "population": [dict(member) for member in self.population]})
    return state

  def load_state(self, state: Dict[str, Any]) -> None:
    saved = dict(state.get("options") or {})
    saved.setdefault("initial_mutations", None)  # states saved before the option existed
    if saved != self.options:
      raise ConfigError(
          f"evolution state: saved with options {saved}, "
          f"this search has {self.options}")
    super().load_state(state)
    self.population = collections.deque(dict(member) for member in state["population"])
