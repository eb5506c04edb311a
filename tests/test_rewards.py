"""Rewards: MnasNet's cost-constrained reward and the target-similarity reward."""
import random
import subprocess
import sys

import pytest

from spinesearch import rewards
from spinesearch.errors import ConfigError
from spinesearch.space.registry import build_space

SPACES = ("spinenet", "nasfpn", "joint")


# ---- cost-constrained reward ------------------------------------------------------

def test_soft_constraint_follows_the_mnasnet_formula():
  assert rewards.cost_constrained_reward(0.4, 10.0, 10.0) == pytest.approx(0.4)
  # Twice the target: 0.4 * 2^-0.07; half of it: 0.4 * 0.5^-0.07 (a small bonus).
  assert rewards.cost_constrained_reward(0.4, 20.0, 10.0) == pytest.approx(0.4 * 0.952638, 1e-6)
  assert rewards.cost_constrained_reward(0.4, 5.0, 10.0) == pytest.approx(0.4 * 1.049717, 1e-6)


def test_hard_constraint_penalises_only_above_the_target():
  hard = dict(alpha=0.0, beta=-1.0)
  assert rewards.cost_constrained_reward(0.4, 5.0, 10.0, **hard) == pytest.approx(0.4)
  assert rewards.cost_constrained_reward(0.4, 10.0, 10.0, **hard) == pytest.approx(0.4)
  assert rewards.cost_constrained_reward(0.4, 20.0, 10.0, **hard) == pytest.approx(0.2)


def test_flag_style_reward_matches_the_formula():
  assert rewards.reward_with_cost_target(0.3) == 0.3
  assert rewards.reward_with_cost_target(0.3, 50.0) == 0.3
  assert rewards.reward_with_cost_target(0.3, 20.0, 10.0) == pytest.approx(
      rewards.cost_constrained_reward(0.3, 20.0, 10.0, alpha=-0.07, beta=-0.07))
  assert rewards.reward_with_cost_target(0.3, 20.0, 10.0, cost_weight=1.0) == pytest.approx(0.15)
  assert rewards.reward_with_cost_target(0.3, 8.0, 10.0, hard_constraint=True) == pytest.approx(0.3)
  assert rewards.reward_with_cost_target(0.3, 30.0, 10.0, hard_constraint=True) == \
      pytest.approx(0.1)


@pytest.mark.parametrize("target", [0.0, -1.0, float("inf"), "10", True])
def test_a_bad_target_is_a_config_error(target):
  with pytest.raises(ConfigError, match="cost target"):
    rewards.cost_constrained_reward(0.4, 10.0, target)


def test_a_bad_cost_weight_is_a_config_error():
  with pytest.raises(ConfigError, match="cost weight"):
    rewards.reward_with_cost_target(0.4, 10.0, 10.0, cost_weight=-0.1)


@pytest.mark.parametrize("cost", [0.0, -3.0, float("inf")])
def test_a_non_positive_cost_is_refused(cost):
  with pytest.raises(ValueError, match="cost"):
    rewards.cost_constrained_reward(0.4, cost, 10.0)


# ---- target similarity ------------------------------------------------------------

@pytest.mark.parametrize("space_name", SPACES)
def test_similarity_is_one_exactly_at_the_target(space_name):
  space = build_space(space_name)
  reward = rewards.TargetSimilarity(space, seed=3)
  assert reward(list(reward.target)) == 1.0
  assert reward.target_architecture == space.decode(list(reward.target))
  rng = random.Random(0)
  values = [reward(space.sample(rng)) for _ in range(100)]
  assert all(0.0 <= v < 1.0 for v in values)
  # Uniform samples share some decisions with the target, by chance, not all.
  assert 0.1 < sum(values) / len(values) < 0.9


@pytest.mark.parametrize("space_name", SPACES)
def test_one_changed_decision_costs_one_share_of_the_reward(space_name):
  space = build_space(space_name)
  reward = rewards.TargetSimilarity(space, seed=5)
  target = list(reward.target)
  masks = space.masks(target)
  # The last decision constrains nothing after it: change it alone.
  alternatives = [c for c, ok in enumerate(masks[-1]) if ok and c != target[-1]]
  assert alternatives
  neighbour = target[:-1] + [alternatives[0]]
  assert reward(neighbour) == pytest.approx(1.0 - 1.0 / len(target))


def test_similarity_compares_canonical_decisions():
  space = build_space("spinenet")
  reward = rewards.TargetSimilarity(space, seed=1)
  rng = random.Random(2)
  for _ in range(20):
    decisions = space.sample(rng)
    canonical = rewards.canonical_decisions(space, decisions)
    assert space.decode(canonical) == space.decode(decisions)
    assert reward(decisions) == reward(canonical)


def test_target_depends_on_the_seed_only():
  space = build_space("spinenet")
  assert rewards.TargetSimilarity(space, 7).target == \
      rewards.TargetSimilarity(build_space("spinenet"), 7).target
  assert rewards.TargetSimilarity(space, 7).target != rewards.TargetSimilarity(space, 8).target


def test_function_form_matches_the_class():
  space = build_space("nasfpn")
  rng = random.Random(4)
  for seed in (0, 1):
    reward = rewards.TargetSimilarity(space, seed)
    for _ in range(10):
      decisions = space.sample(rng)
      assert rewards.target_similarity(space, decisions, seed) == reward(decisions)


def test_rewards_import_no_tensorflow():
  code = ("import sys, spinesearch.rewards; "
          "sys.exit(1 if 'tensorflow' in sys.modules else 0)")
  assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("space_name", ["spinenet", "nasfpn"])
def test_target_is_not_what_an_algorithm_with_the_same_seed_proposes_first(space_name):
  from spinesearch.algorithms.registry import build_algorithm
  from spinesearch.space.registry import build_space
  space = build_space(space_name)
  for seed in range(5):
    first = build_algorithm("random", space, seed).propose().decisions
    assert rewards.target_similarity(space, first, seed) < 1.0
