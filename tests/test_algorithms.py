"""Search algorithms on the real search spaces: validity of every proposal,
learning on a reward with a known optimum, failed trials, exact resume."""
import json
import math
import random

import numpy as np
import pytest

from spinesearch.algorithms.base import Observation, Proposal
from spinesearch.algorithms.evolution import RegularizedEvolution
from spinesearch.algorithms.registry import (ALGORITHMS, algorithm_from_state,
                                             algorithm_options, build_algorithm)
from spinesearch.errors import ConfigError
from spinesearch.rewards import TargetSimilarity
from spinesearch.space import known
from spinesearch.space.registry import build_space

SPACES = ("spinenet", "nasfpn", "joint")


def run_async(algorithm, reward, num_trials, *, max_parallel=4, fail_every=0, seed=0,
              pending=(), next_id=0, drain=True):
  """Simulated asynchronous search: up to `max_parallel` trials in flight,
  finishing in random order; every `fail_every`-th trial fails. Without
  `drain` it stops once `num_trials` were proposed, trials still in flight.
  Returns the proposals in the order they were made and the trials in flight."""
  order = random.Random(seed)
  pending = list(pending)
  proposals = []
  while next_id < num_trials or (drain and pending):
    while next_id < num_trials and len(pending) < max_parallel:
      proposal = algorithm.propose()
      proposals.append(proposal)
      pending.append((next_id, proposal))
      next_id += 1
    if next_id == num_trials and not drain:
      break
    trial_id, proposal = pending.pop(order.randrange(len(pending)))
    failed = fail_every and trial_id % fail_every == fail_every - 1
    result = None if failed else reward(proposal.decisions)
    algorithm.observe(Observation(trial_id, proposal, result))
  return proposals, pending


def options_for(name, **rnn_options):
  return rnn_options if name in ("ppo", "reinforce") else {}


# ---- validity ------------------------------------------------------------------------

@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("name", ["random", "evolution", "ppo", "reinforce"])
def test_every_proposal_is_a_valid_architecture(name, space_name):
  if name in ("ppo", "reinforce") and space_name == "joint":
    pytest.skip("the joint space chains the other two spaces' cursors; the policies are "
                "checked on those (tracing a policy costs seconds)")
  space = build_space(space_name)
  # A large learning rate makes the policy peaked after a few updates: the
  # masks, not luck, have to keep it inside the space.
  algorithm = build_algorithm(name, space, 0, **options_for(
      name, batch_size=40, ppo_epochs=1, learning_rate=0.05))
  proposals, _ = run_async(algorithm, TargetSimilarity(space, 1), 200, fail_every=9)
  assert len(proposals) == 200
  for proposal in proposals:
    space.validate(space.decode(proposal.decisions))
    if name in ("ppo", "reinforce"):
      assert len(proposal.log_probs) == len(space.decisions())
      assert all(math.isfinite(p) and p <= 0.0 for p in proposal.log_probs)
  if name in ("ppo", "reinforce"):
    assert algorithm.num_updates >= 4


# ---- learning --------------------------------------------------------------------------

@pytest.mark.parametrize("name,num_trials,gain", [
    ("evolution", 300, 0.15),
    # PPO's learning through the controller's CLI is in test_controller.
    pytest.param("ppo", 400, 0.08, marks=pytest.mark.slow)])
def test_short_search_improves_over_its_first_trials(name, num_trials, gain):
  space = build_space("spinenet")
  reward = TargetSimilarity(space, 11)
  algorithm = build_algorithm(name, space, 3)
  proposals, _ = run_async(algorithm, reward, num_trials, max_parallel=8)
  rewards = [reward(p.decisions) for p in proposals]
  first, last = sum(rewards[:50]) / 50, sum(rewards[-50:]) / 50
  assert last > first + gain, (first, last)


# ---- resume ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["random", "evolution", "ppo", "reinforce"])
def test_state_round_trip_continues_identically(name):
  space = build_space("spinenet")
  reward = TargetSimilarity(space, 2)
  options = dict(population_size=6, sample_size=3) if name == "evolution" else \
      options_for(name, batch_size=6, ppo_epochs=2)
  algorithm = build_algorithm(name, space, 7, **options)
  _, pending = run_async(algorithm, reward, 25, fail_every=5, drain=False)
  assert pending  # proposals in flight when the state is saved
  saved = json.loads(json.dumps(algorithm.state()))

  def continuation(algo):
    proposals, _ = run_async(algo, reward, 60, fail_every=5, seed=1, pending=pending, next_id=25)
    return [(p.decisions, p.log_probs) for p in proposals], json.dumps(algo.state())

  original = continuation(algorithm)
  restored = continuation(algorithm_from_state(space, saved))
  assert restored == original
  if name in ("ppo", "reinforce"):
    assert saved["buffer"] and json.loads(original[1])["num_updates"] > saved["num_updates"]


def test_same_seed_same_proposals_other_seed_others():
  space = build_space("nasfpn")
  for name in ALGORITHMS:
    first, second, other = (build_algorithm(name, space, seed) for seed in (4, 4, 5))
    a, b, c = ([algo.propose().decisions for _ in range(3)] for algo in (first, second, other))
    assert a == b and a != c, name


# ---- failed trials -------------------------------------------------------------------

def test_controller_gives_failed_trials_the_failure_reward_or_skips_them():
  space = build_space("nasfpn")
  worst = build_algorithm("ppo", space, 0, batch_size=4)
  skip = build_algorithm("ppo", space, 0, batch_size=4, failure_reward=None)
  proposal = worst.propose()
  for algorithm in (worst, skip):
    algorithm.observe(Observation(0, proposal, None))
    algorithm.observe(Observation(1, proposal, float("nan")))
    algorithm.observe(Observation(2, proposal, 0.5))
  assert [item["reward"] for item in worst.buffer] == [0.0, 0.0, 0.5]
  assert [item["reward"] for item in skip.buffer] == [0.5]
  assert worst.observed_ids == skip.observed_ids == [0, 1, 2]
  metrics = worst.observe(Observation(3, proposal, 1.0))
  assert metrics["num_updates"] == 1 and worst.buffer == []
  assert skip.observe(Observation(3, proposal, 1.0)) == {}


@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_normalised_advantages_make_the_update_independent_of_the_reward_scale(algorithm):
  """The same trials rewarded r and 0.03 r (one-shot AP's scale against
  similarity's) give the same policy with normalised advantages; without,
  the small rewards move it differently (and the entropy bonus dominates)."""
  space = build_space("nasfpn")

  def updated(scale, normalize):
    controller = build_algorithm(algorithm, space, 0, batch_size=6,
                                 normalize_advantages=normalize)
    proposals = [controller.propose() for _ in range(6)]
    for i, proposal in enumerate(proposals):
      controller.observe(Observation(i, proposal, scale * (0.2 + 0.1 * i)))
    assert controller.num_updates == 1
    return [v.numpy() for v in controller.policy.trainable_variables]

  for big, small in zip(updated(1.0, True), updated(0.03, True)):
    np.testing.assert_allclose(big, small, atol=1e-5)
  assert any(not np.allclose(big, small, atol=1e-5)
             for big, small in zip(updated(1.0, False), updated(0.03, False)))


def test_controller_update_reports_scalars_and_moves_the_baseline():
  space = build_space("nasfpn")
  algorithm = build_algorithm("reinforce", space, 0, batch_size=3, baseline_decay=0.5)
  rewards = [0.2, 0.4, 0.9]
  for trial_id, r in enumerate(rewards[:2]):
    assert algorithm.observe(Observation(trial_id, algorithm.propose(), r)) == {}
  # A hand-made proposal without log-probs is scored under the current policy.
  seeded = Proposal(decisions=space.sample(random.Random(0)))
  metrics = algorithm.observe(Observation(2, seeded, rewards[2]))
  # The baseline starts at the first batch's mean (0.5), then averages each reward in.
  baseline = 0.5
  for r in rewards:
    baseline = 0.5 * baseline + 0.5 * r
  assert metrics["baseline"] == pytest.approx(baseline)
  assert metrics["mean_reward"] == pytest.approx(0.5)
  assert metrics["num_updates"] == 1.0
  assert metrics["entropy"] > 0 and math.isfinite(metrics["loss"])


def test_evolution_keeps_the_latest_successful_trials():
  space = build_space("spinenet")
  evolution = build_algorithm("evolution", space, 0, population_size=5, sample_size=2)
  for trial_id in range(12):
    reward = None if trial_id % 3 == 0 else trial_id / 100
    evolution.observe(Observation(trial_id, evolution.propose(), reward))
  # Successful trials: 1 2 4 5 7 8 10 11; aging keeps the newest five.
  assert [m["trial_id"] for m in evolution.population] == [5, 7, 8, 10, 11]


# ---- evolution ---------------------------------------------------------------------------

def test_evolution_mutates_the_best_of_its_sample():
  space = build_space("spinenet")
  evolution = RegularizedEvolution(space, 1, population_size=6, sample_size=6)
  rng = random.Random(5)
  for trial_id in range(6):
    evolution.observe(Observation(trial_id, Proposal(space.sample(rng)), rng.random()))
  best = max(evolution.population, key=lambda m: m["reward"])["decisions"]
  parents = []
  mutate = evolution.mutate
  evolution.mutate = lambda decisions: parents.append(list(decisions)) or mutate(decisions)
  children = [evolution.propose().decisions for _ in range(20)]
  assert parents == [best] * 20  # a sample of the whole population: the best wins
  for child in children:
    space.decode(child)
    assert child != best


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("num_mutations", [1, 3])
def test_mutations_stay_inside_the_space_and_change_little(space_name, num_mutations):
  space = build_space(space_name)
  evolution = RegularizedEvolution(space, 2, num_mutations=num_mutations)
  rng = random.Random(3)
  changed = []
  for _ in range(150):
    parent = space.sample(rng)
    child = evolution.mutate(parent)
    space.validate(space.decode(child))
    differing = [i for i, (a, b) in enumerate(zip(parent, child)) if a != b]
    assert differing
    changed.append(len(differing))
  # Repairs re-sample only the later decisions a change made invalid.
  assert sum(changed) / len(changed) < 3 * num_mutations + 2


def test_evolution_samples_at_random_until_the_population_is_full():
  space = build_space("nasfpn")
  evolution = RegularizedEvolution(space, 4, population_size=3, sample_size=2)
  twin = random.Random(4)
  # Nothing observed yet: proposals are the space's own uniform samples.
  assert [evolution.propose().decisions for _ in range(5)] == [space.sample(twin) for _ in range(5)]


@pytest.mark.parametrize("space_name,preset", [("spinenet", "default"), ("spinenet", "mobile"),
                                               ("nasfpn", "default")])
def test_evolution_can_start_near_the_published_architecture(space_name, preset):
  space = build_space(space_name, preset=preset)
  published = space.encode(known.published_point(space))
  evolution = RegularizedEvolution(space, 4, population_size=40, initial_mutations=2)
  distances = []
  for _ in range(40):
    decisions = evolution.propose().decisions
    space.validate(space.decode(decisions))
    distances.append(sum(a != b for a, b in zip(published, decisions)))
  # 0, 1 or 2 mutations, plus the repairs a mutation forces; uniform samples
  # of these spaces differ from the published point in most decisions.
  assert min(distances) == 0 and max(distances) < len(published) // 3
  uniform = [space.sample(random.Random(i)) for i in range(40)]
  assert min(sum(a != b for a, b in zip(published, d)) for d in uniform) > max(distances)


def test_evolution_refuses_to_start_near_a_point_its_space_lacks():
  with pytest.raises(ConfigError, match="holds no published architecture"):
    RegularizedEvolution(build_space("spinenet", preset="vertex"), 0, initial_mutations=2)
  with pytest.raises(ConfigError, match="initial_mutations: expected an integer >= 0"):
    RegularizedEvolution(build_space("nasfpn"), 0, initial_mutations=-1)


def test_an_evolution_state_saved_before_initial_mutations_still_resumes():
  space = build_space("nasfpn")
  state = json.loads(json.dumps(build_algorithm("evolution", space, 3).state()))
  del state["options"]["initial_mutations"]
  assert algorithm_from_state(space, state).options["initial_mutations"] is None


@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_the_controller_can_start_near_the_published_architecture(algorithm):
  """initial_mutations fits the policy to the published point's neighbourhood
  before its first proposal: its samples lie near NAS-FPN, a uniform policy's
  far from it; the fit is state, so a resumed controller does not fit again."""
  space = build_space("nasfpn")
  published = space.encode(known.published_point(space))

  def distances(controller, n=40):
    return [sum(a != b for a, b in zip(published, controller.propose().decisions))
            for _ in range(n)]

  uniform = build_algorithm(algorithm, space, 2)
  fitted = build_algorithm(algorithm, space, 2, initial_mutations=2)
  assert fitted.prior_loss is None
  near_points, far_points = distances(fitted), distances(uniform)
  assert fitted.prior_loss > 0 and uniform.prior_loss is None
  assert np.mean(near_points) < 0.5 * np.mean(far_points)
  assert min(near_points) <= 1
  state = json.loads(json.dumps(fitted.state()))
  restored = algorithm_from_state(space, state)
  assert restored.prior_loss == fitted.prior_loss
  assert [restored.propose().decisions for _ in range(5)] == \
      [fitted.propose().decisions for _ in range(5)]
  # States saved before the options existed resume as they were made: no fit,
  # advantages not normalised.
  old = json.loads(json.dumps(uniform.state()))
  del old["options"]["initial_mutations"], old["options"]["normalize_advantages"]
  del old["prior_loss"]
  resumed = algorithm_from_state(space, old)
  assert resumed.options["initial_mutations"] is None
  assert resumed.options["normalize_advantages"] is False
  with pytest.raises(ConfigError, match="holds no published architecture"):
    build_algorithm(algorithm, build_space("spinenet", preset="vertex"), 0, initial_mutations=2)


# ---- registry --------------------------------------------------------------------------

def test_registry_names_and_options():
  assert set(ALGORITHMS) == {"ppo", "reinforce", "random", "evolution"}
  assert algorithm_options("evolution") == {
      "population_size": 20, "sample_size": 5, "num_mutations": 1, "initial_mutations": None}
  assert algorithm_options("random") == {}
  assert {"batch_size", "learning_rate", "entropy_weight", "failure_reward"} <= \
      set(algorithm_options("ppo"))
  assert "algorithm" not in algorithm_options("reinforce")
  space = build_space("nasfpn")
  assert build_algorithm("reinforce", space, 0).name == "reinforce"


@pytest.mark.parametrize("name,options,message", [
    ("annealing", {}, "must be one of ppo, reinforce, random, evolution"),
    ("evolution", {"batch_size": 4}, "unknown option(s) batch_size"),
    ("random", {"population_size": 4}, "accepted: none"),
    ("evolution", {"population_size": 0}, "population_size"),
    ("evolution", {"population_size": 3, "sample_size": 4}, "larger than population_size"),
    ("ppo", {"clip_epsilon": 1.5}, "clip_epsilon"),
    ("ppo", {"batch_size": 0}, "batch_size"),
    ("reinforce", {"learning_rate": -1.0}, "learning_rate"),
])
def test_bad_names_and_options_are_config_errors(name, options, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    build_algorithm(name, build_space("nasfpn"), 0, **options)


def test_a_state_from_another_space_is_refused():
  state = build_algorithm("evolution", build_space("nasfpn"), 0).state()
  with pytest.raises(ConfigError, match="'nasfpn' space"):
    algorithm_from_state(build_space("spinenet"), state)
  with pytest.raises(ConfigError, match="not a saved"):
    algorithm_from_state(build_space("spinenet"), {"population": []})


def test_restored_algorithm_keeps_its_options():
  space = build_space("nasfpn")
  evolution = build_algorithm("evolution", space, 3, population_size=4, sample_size=2)
  restored = algorithm_from_state(space, json.loads(json.dumps(evolution.state())))
  assert isinstance(restored, RegularizedEvolution)
  assert restored.options == {"population_size": 4, "sample_size": 2, "num_mutations": 1,
                              "initial_mutations": None}
  assert json.dumps(restored.state()) == json.dumps(evolution.state())
