"""How a supernet draws its paths (SupernetConfig.sampling)."""
import random

import pytest

from spinesearch.errors import ConfigError
from spinesearch.oneshot.config import SupernetConfig
from spinesearch.oneshot.train import near_reference, reference_architecture
from spinesearch.space.registry import build_space


@pytest.mark.parametrize("space_name", ["spinenet", "nasfpn"])
def test_paths_near_the_reference_differ_in_at_most_the_mutations_and_repairs(space_name):
  space = build_space(space_name)
  base = space.encode(reference_architecture(space))
  rng = random.Random(0)
  distances = []
  for _ in range(100):
    architecture = near_reference(space, rng, max_mutations=3)
    space.validate(architecture)
    decisions = space.encode(architecture)
    distances.append(sum(a != b for a, b in zip(base, decisions)))
  # 0 mutations gives the reference itself; a mutation may force repairs of
  # later decisions, so a path can differ in a few more than it mutated.
  assert min(distances) == 0
  assert 0 < sum(distances) / len(distances) < 8
  assert max(distances) < len(base) // 2


def test_near_reference_sampling_needs_a_mutation_count():
  with pytest.raises(ConfigError, match="max_mutations >= 1"):
    SupernetConfig(sampling="around_reference")
  with pytest.raises(ConfigError, match="only with sampling=around_reference"):
    SupernetConfig(sampling="uniform", max_mutations=2)
  assert SupernetConfig(sampling="around_reference", max_mutations=2).max_mutations == 2
