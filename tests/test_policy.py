"""The LSTM policy and the PPO / REINFORCE losses, checked against numbers
computed by hand and by finite differences."""
import math
import random

import numpy as np
import pytest

from spinesearch.algorithms.base import Observation
from spinesearch.algorithms.policy import (LSTMPolicy, NASNET_POLICY, PolicyConfig,
                                           ZOPH_LE_POLICY, decode_array)
from spinesearch.algorithms.rnn_controller import (RNNController, TUNED_DEFAULTS, ppo_loss,
                                                   reinforce_loss)
from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space.base import Decision, DecisionCursor, SearchSpace
from spinesearch.space.registry import build_space

import tensorflow as tf  # after spinesearch: the Keras 2 environment is set


class TwoDecisionSpace(SearchSpace):
  """Decision 0 (kind "a"): choices x, y, z, where z is never valid.
  Decision 1 (kind "b"): choices u, v, where u is valid only after x."""

  name = "two_decisions"

  def decisions(self):
    return (Decision("first", "a", ("x", "y", "z")), Decision("second", "b", ("u", "v")))

  def start(self):
    return _TwoDecisionCursor()

  def _encode(self, architecture):
    raise ArchitectureError("the two-decision test space has no architectures")

  def log10_size(self):
    return math.log10(3)

  def config(self):
    return {"name": self.name}


class _TwoDecisionCursor(DecisionCursor):

  def __init__(self):
    self.choices = []

  @property
  def position(self):
    return len(self.choices)

  def mask(self):
    if not self.choices:
      return (True, True, False)
    return (self.choices[0] == 0, True)

  def choose(self, choice):
    assert self.mask()[choice]
    self.choices.append(choice)

  def architecture(self):
    raise ArchitectureError("the two-decision test space has no architectures")


SPACE = TwoDecisionSpace()
BIAS_A = np.array([0.3, -0.2, 0.5])
BIAS_B = np.array([0.1, -0.4])


def bias_only_policy(num_layers=1) -> LSTMPolicy:
  """All weights zero except the softmax biases: the LSTM's output is 0 at every
  step (z = 0 gives c = 0.5*0 + 0.5*tanh(0) = 0), so the logits are the biases."""
  policy = LSTMPolicy(SPACE.decisions(), seed=0,
                      config=PolicyConfig(num_layers=num_layers, units=4, learning_rate=0.01))
  for variable in policy.trainable_variables:
    variable.assign(tf.zeros_like(variable))
  policy.variables["a/softmax_bias"].assign(BIAS_A.astype(np.float32))
  policy.variables["b/softmax_bias"].assign(BIAS_B.astype(np.float32))
  policy.refresh()
  return policy


def masked_softmax(logits, mask):
  e = np.where(mask, np.exp(logits), 0.0)
  return e / e.sum()


def entropy_and_gradient(p):
  """H = -sum p log p over valid choices and dH/dlogit_j = -p_j (log p_j + H)."""
  log_p = np.log(np.where(p > 0, p, 1.0))
  h = -np.sum(p * log_p)
  return h, np.where(p > 0, -p * (log_p + h), 0.0)


# The batch of the hand-checked cases: sequences (x, u) and (y, v).
DECISIONS = np.array([[0, 0], [1, 1]], dtype=np.int32)
MASKS = [[(True, True, False), (True, True)], [(True, True, False), (False, True)]]
ADVANTAGES = np.array([0.5, -0.25], dtype=np.float32)
ENTROPY_WEIGHT = 0.1
P_A = masked_softmax(BIAS_A, np.array([True, True, False]))  # [0.622459, 0.377541, 0]
P_B = masked_softmax(BIAS_B, np.array([True, True]))  # [0.622459, 0.377541]
ONE_HOT = np.eye(3)


def loss_and_bias_gradients(policy, loss_fn):
  masks = policy.pad_masks(MASKS)
  with tf.GradientTape() as tape:
    log_probs, entropies = policy.evaluate(DECISIONS, masks)
    loss = loss_fn(log_probs, entropies)[0]
  grads = tape.gradient(loss, [policy.variables["a/softmax_bias"],
                               policy.variables["b/softmax_bias"]])
  return float(loss), [g.numpy() for g in grads]


def test_reinforce_loss_and_gradient_by_hand():
  policy = bias_only_policy()
  loss, (grad_a, grad_b) = loss_and_bias_gradients(
      policy, lambda lp, ent: reinforce_loss(lp, ent, ADVANTAGES, ENTROPY_WEIGHT))

  h_a, dh_a = entropy_and_gradient(P_A)
  h_b, dh_b = entropy_and_gradient(P_B)
  # log p(x, u) = log P_A[0] + log P_B[0]; log p(y, v) = log P_A[1] + 0 (v is forced).
  log_p = np.array([math.log(P_A[0]) + math.log(P_B[0]), math.log(P_A[1])])
  entropy = np.array([h_a + h_b, h_a])
  expected_loss = -np.mean(ADVANTAGES * log_p) - ENTROPY_WEIGHT * entropy.mean()
  assert expected_loss == pytest.approx(0.015852, abs=1e-6)  # worked out on paper
  assert loss == pytest.approx(expected_loss, abs=1e-6)

  # d log p(c) / d logits = onehot(c) - p over the valid choices.
  expected_a = -(ADVANTAGES[0] * (ONE_HOT[0] - P_A) + ADVANTAGES[1] * (ONE_HOT[1] - P_A)) / 2 \
      - ENTROPY_WEIGHT * (dh_a + dh_a) / 2
  expected_b = -ADVANTAGES[0] * (ONE_HOT[0, :2] - P_B) / 2 - ENTROPY_WEIGHT * dh_b / 2
  np.testing.assert_allclose(grad_a, expected_a, atol=1e-6)
  np.testing.assert_allclose(grad_b, expected_b, atol=1e-6)
  assert grad_a[2] == 0.0  # the never-valid choice gets no gradient


def test_ppo_loss_and_gradient_by_hand():
  policy = bias_only_policy()
  # Ratios: (x, u): 0.6225/0.5 = 1.245 (clipped, A > 0) and 1; (y, v): 0.3775/0.4 = 0.944 and 1.
  old = np.log(np.array([[0.5, P_B[0]], [0.4, 1.0]])).astype(np.float32)
  loss, (grad_a, grad_b) = loss_and_bias_gradients(
      policy, lambda lp, ent: ppo_loss(lp, old, ent, ADVANTAGES, 0.2, ENTROPY_WEIGHT))

  h_a, dh_a = entropy_and_gradient(P_A)
  h_b, dh_b = entropy_and_gradient(P_B)
  ratio_y = P_A[1] / 0.4
  surrogate = np.array([0.5 * 1.2 + 0.5 * 1.0, -0.25 * ratio_y - 0.25 * 1.0])
  expected_loss = -surrogate.mean() - ENTROPY_WEIGHT * (2 * h_a + h_b) / 2
  assert loss == pytest.approx(expected_loss, abs=1e-6)

  # The clipped step (x) contributes nothing; d ratio = ratio * (onehot - p).
  expected_a = -(-0.25 * ratio_y * (ONE_HOT[1] - P_A)) / 2 - ENTROPY_WEIGHT * dh_a
  expected_b = -0.5 * (ONE_HOT[0, :2] - P_B) / 2 - ENTROPY_WEIGHT * dh_b / 2
  np.testing.assert_allclose(grad_a, expected_a, atol=1e-6)
  np.testing.assert_allclose(grad_b, expected_b, atol=1e-6)


def numpy_loss(policy, weights, algorithm, old_log_probs):
  """The losses recomputed in float64 from the numpy forward pass."""
  total_surrogate, total_entropy = 0.0, 0.0
  for decisions, masks, advantage, old in zip(DECISIONS, MASKS, ADVANTAGES, old_log_probs):
    log_p, entropy = policy.numpy_log_probs(decisions, masks, weights)
    if algorithm == "reinforce":
      total_surrogate += advantage * log_p.sum()
    else:
      ratio = np.exp(log_p - old)
      total_surrogate += np.minimum(ratio * advantage,
                                    np.clip(ratio, 0.8, 1.2) * advantage).sum()
    total_entropy += entropy.sum()
  return -(total_surrogate + ENTROPY_WEIGHT * total_entropy) / len(DECISIONS)


@pytest.mark.parametrize("algorithm", ["reinforce", "ppo"])
def test_gradient_of_every_weight_matches_finite_differences(algorithm):
  policy = LSTMPolicy(SPACE.decisions(), seed=3,
                      config=PolicyConfig(num_layers=2, units=3, embedding_size=2,
                                          init_range=0.8))
  masks = policy.pad_masks(MASKS)
  current = policy.log_probs(DECISIONS, masks).numpy()
  # Old log-probs a little off the current ones: ratios inside the clip range.
  old = (current + np.array([[0.05, -0.1], [0.1, 0.0]])).astype(np.float32)
  with tf.GradientTape() as tape:
    log_probs, entropies = policy.evaluate(DECISIONS, masks)
    if algorithm == "reinforce":
      loss = reinforce_loss(log_probs, entropies, ADVANTAGES, ENTROPY_WEIGHT)[0]
    else:
      loss = ppo_loss(log_probs, old, entropies, ADVANTAGES, 0.2, ENTROPY_WEIGHT)[0]
  names = list(policy.variables)
  grads = dict(zip(names, tape.gradient(loss, [policy.variables[n] for n in names])))

  weights = {k: v.numpy().astype(np.float64) for k, v in policy.variables.items()}
  assert float(loss) == pytest.approx(numpy_loss(policy, weights, algorithm, old), abs=1e-5)
  step = 1e-6
  for name in names:
    expected = np.zeros_like(weights[name])
    for index in np.ndindex(weights[name].shape):
      shifted = {k: v.copy() for k, v in weights.items()}
      shifted[name][index] += step
      up = numpy_loss(policy, shifted, algorithm, old)
      shifted[name][index] -= 2 * step
      down = numpy_loss(policy, shifted, algorithm, old)
      expected[index] = (up - down) / (2 * step)
    np.testing.assert_allclose(grads[name].numpy(), expected, atol=2e-5, err_msg=name)


def test_ppo_gradient_equals_reinforce_gradient_at_ratio_one():
  policy = LSTMPolicy(SPACE.decisions(), seed=1, config=PolicyConfig(units=5, init_range=0.5))
  masks = policy.pad_masks(MASKS)
  variables = policy.trainable_variables

  def gradients(loss_fn):
    with tf.GradientTape() as tape:
      log_probs, entropies = policy.evaluate(DECISIONS, masks)
      loss = loss_fn(log_probs, entropies)
    return [g.numpy() for g in tape.gradient(loss, variables)]

  old = policy.log_probs(DECISIONS, masks)
  ppo = gradients(lambda lp, ent: ppo_loss(lp, old, ent, ADVANTAGES, 0.2, ENTROPY_WEIGHT)[0])
  reinforce = gradients(lambda lp, ent: reinforce_loss(lp, ent, ADVANTAGES, ENTROPY_WEIGHT)[0])
  for a, b in zip(ppo, reinforce):
    np.testing.assert_allclose(a, b, atol=1e-6)


# ---- sampling -----------------------------------------------------------------------

def test_sampling_follows_the_masked_softmax():
  policy = bias_only_policy(num_layers=2)
  rng = np.random.default_rng(0)
  counts = {}
  for _ in range(4000):
    decisions, log_probs = policy.sample(SPACE.start(), rng)
    counts[tuple(decisions)] = counts.get(tuple(decisions), 0) + 1
    assert log_probs == pytest.approx(
        list(policy.numpy_log_probs(decisions, SPACE.masks(decisions))[0]), abs=1e-12)
  # Only the three valid sequences, at the policy's probabilities.
  expected = {(0, 0): P_A[0] * P_B[0], (0, 1): P_A[0] * P_B[1], (1, 1): P_A[1]}
  assert set(counts) == set(expected)
  for sequence, probability in expected.items():
    assert counts[sequence] / 4000 == pytest.approx(probability, abs=0.025)


def test_numpy_sampling_and_tensorflow_training_agree_on_a_real_space():
  space = build_space("joint")
  policy = LSTMPolicy(space.decisions(), seed=5)
  rng = np.random.default_rng(5)
  samples = [policy.sample(space.start(), rng) for _ in range(6)]
  decisions = np.array([d for d, _ in samples], dtype=np.int32)
  masks = policy.pad_masks([space.masks(d) for d, _ in samples])
  log_probs, entropies = policy.evaluate(decisions, masks)
  np.testing.assert_allclose(log_probs.numpy(), [lp for _, lp in samples], atol=2e-5)
  for row, (d, _) in enumerate(samples):
    space.decode(d)  # every sample is a valid architecture
    reference = policy.numpy_log_probs(d, space.masks(d))[1]
    np.testing.assert_allclose(entropies.numpy()[row], reference, atol=2e-5)


def test_same_seed_same_policy_and_samples():
  space = build_space("nasfpn")
  first, second, other = (LSTMPolicy(space.decisions(), seed=s) for s in (2, 2, 3))
  for name in first.variables:
    np.testing.assert_array_equal(first.variables[name].numpy(), second.variables[name].numpy())
  assert not np.array_equal(first.variables["start"].numpy(), other.variables["start"].numpy())
  draws = [[p.sample(space.start(), np.random.default_rng(9))[0] for _ in range(3)]
           for p in (first, second)]
  assert draws[0] == draws[1]


def test_policy_shape_from_the_published_presets_step_size_from_the_tuned_defaults():
  assert (NASNET_POLICY.num_layers, NASNET_POLICY.units, NASNET_POLICY.init_range,
          NASNET_POLICY.learning_rate) == (1, 100, 0.1, 3.5e-4)
  assert (ZOPH_LE_POLICY.num_layers, ZOPH_LE_POLICY.units, ZOPH_LE_POLICY.init_range,
          ZOPH_LE_POLICY.learning_rate) == (2, 35, 0.08, 6e-4)
  space = build_space("nasfpn")
  ppo = RNNController(space, 0, algorithm="ppo")
  assert (ppo.policy.config.num_layers, ppo.policy.config.units) == (1, 100)
  assert ppo.policy.config.learning_rate == TUNED_DEFAULTS["ppo"]["learning_rate"]
  assert ppo.options["entropy_weight"] == TUNED_DEFAULTS["ppo"]["entropy_weight"]
  published = RNNController(space, 0, algorithm="reinforce", learning_rate=6e-4,
                            entropy_weight=0.0, batch_size=5)
  assert published.policy.config == ZOPH_LE_POLICY
  assert (published.options["entropy_weight"], published.options["batch_size"]) == (0.0, 5)
  for v in published.policy.trainable_variables:
    assert np.abs(v.numpy()).max() <= 0.08


def test_decisions_of_one_kind_must_share_their_choices():
  decisions = (Decision("p", "parent", ("0", "1")), Decision("q", "parent", ("0", "1", "2")))
  with pytest.raises(ConfigError, match="kind 'parent'"):
    LSTMPolicy(decisions, seed=0)


def test_state_round_trip_restores_weights_and_optimizer_exactly():
  space = build_space("nasfpn")
  controller = RNNController(space, 0, batch_size=4)
  rng = random.Random(0)
  for trial_id in range(8):
    controller.observe(Observation(trial_id, controller.propose(), rng.random()))
  state = controller.policy.state()
  fresh = LSTMPolicy(space.decisions(), seed=99, config=controller.policy.config)
  fresh.load_state(state)
  for name, variable in controller.policy.variables.items():
    np.testing.assert_array_equal(fresh.variables[name].numpy(), variable.numpy())
  slots = [decode_array(s) for s in state["optimizer"]]
  assert int(slots[0]) == 2 * controller.options["ppo_epochs"]  # Adam's step count
  for restored, saved in zip(fresh.optimizer.variables, slots):
    np.testing.assert_array_equal(restored.numpy(), saved)
  smaller = LSTMPolicy(space.decisions(), seed=0, config=PolicyConfig(units=8))
  with pytest.raises(ConfigError, match="policy settings"):
    smaller.load_state(state)
