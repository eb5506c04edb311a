"""Random search: every proposal is uniform over the valid choices, step by step.

A strong baseline for architecture search (Li & Talwalkar 2019): any method
worth its cost has to beat it at an equal trial budget.
"""
from typing import Any, Dict

from spinesearch.algorithms.base import Observation, Proposal, SearchAlgorithm


class RandomSearch(SearchAlgorithm):
  """Samples each decision uniformly among the choices its mask allows."""

  name = "random"

  def propose(self) -> Proposal:
    return Proposal(decisions=self.space.sample(self.rng))

  def _observe(self, observation: Observation) -> Dict[str, float]:
    return {}

  def state(self) -> Dict[str, Any]:
    state = super().state()
    state.update({"space": self.space.name, "options": {}})
    return state
