"""The RNN controller: an LSTM policy trained with PPO or REINFORCE.

Asynchronous like the search driver: `propose()` samples at once from the
current policy and returns the per-decision log-probs; `observe()` buffers
finished trials and, once `batch_size` of them are buffered, updates the policy
on that batch. Proposals made before an update may finish after it; PPO's
importance ratio uses the log-probs recorded at proposal time as the "old"
policy, which is exactly the policy that sampled them.

Each architecture is one episode whose reward arrives at the end, so every
decision of it shares one advantage: reward minus an exponential moving average
of earlier rewards (the baseline; it starts at the first batch's mean reward),
divided, with `normalize_advantages` (the default), by the batch's standard
deviation of those differences. Normalised, an update's size does not depend on
the reward's scale: one-shot AP differences of 0.01 and similarity
differences of 0.3 move the policy alike, and neither is swamped by the
entropy bonus (un-normalised, AP-sized advantages let the bonus drag a fitted
policy back towards uniform: measured in `make search`).
PPO clips the probability ratio of every decision (the standard per-step
clipped surrogate of an episodic task); at a ratio of 1 its gradient equals
REINFORCE's. Both add an entropy bonus.

With `initial_mutations=K`, the policy first learns, by maximum likelihood,
to propose what regularized evolution's first population would be: the
space's published architecture with 0 to K decisions mutated
(`evolution.near`). A uniform LSTM proposes architectures far from every
published one, where a supernet trained around that point (`--sampling=
around_reference`) has no trained weights and scores noise; the fitted policy
starts where the scores mean something, and PPO / REINFORCE move it from there.
The fit runs before the first proposal (a few seconds); Adam's moments are
reset after it, so the first policy update is an ordinary one.

Failed trials (reward None) and non-finite rewards get `failure_reward`
(default 0.0: no worse reward exists for accuracy-like rewards, so the policy
learns to avoid what failed); with `failure_reward=None` they are skipped.
"""
import math
import random
from typing import Any, Dict, List, Optional

import numpy as np

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow loads)
import tensorflow as tf

from spinesearch.algorithms.base import Observation, Proposal, SearchAlgorithm
from spinesearch.algorithms.evolution import near, published_decisions
from spinesearch.algorithms.policy import (LSTMPolicy, NASNET_POLICY, ZOPH_LE_POLICY,
                                           PolicyConfig)
from spinesearch.errors import ConfigError
from spinesearch.space.base import SearchSpace

# The published policy and optimiser settings each algorithm was introduced with.
PRESETS = {"ppo": NASNET_POLICY, "reinforce": ZOPH_LE_POLICY}

# The fit of the policy to the published point's neighbourhood
# (`initial_mutations`): sequences drawn, and full-batch Adam steps on their
# log-likelihood at their own learning rate (the algorithms' rates are tuned
# for small policy-gradient steps).
PRIOR_SAMPLES = 128
PRIOR_STEPS = 80
PRIOR_LEARNING_RATE = 3e-2

# What a saved state that lacks an option meant: the behaviour before the
# option existed (`registry.algorithm_from_state` builds with these too).
STATE_DEFAULTS = {"initial_mutations": None, "normalize_advantages": False}

# Keeps a batch of equal rewards (zero spread) from dividing by zero.
ADVANTAGE_EPSILON = 1e-8

# Defaults for searches of about a thousand trials, measured with
# scripts/benchmark_controller.py on the spinenet space. The published learning
# rates and NASNet's entropy weight of 1e-5 were set for 10^4 samples and
# barely move the policy within 10^3 (PPO: best reward 0.66 after 1,000 trials,
# random search 0.55); larger steps without a stronger entropy bonus collapse
# the policy onto a mediocre architecture within a few hundred trials.
TUNED_DEFAULTS = {
    "ppo": {"learning_rate": 3e-3, "entropy_weight": 1e-3, "batch_size": 20},
    "reinforce": {"learning_rate": 2e-2, "entropy_weight": 1e-3, "batch_size": 10},
}


def reinforce_loss(log_probs: tf.Tensor, entropies: tf.Tensor, advantages: tf.Tensor,
                   entropy_weight: float):
  """-mean_b(A_b * log p(sequence_b)) - entropy_weight * mean_b(H_b).

  `log_probs` and `entropies` are per decision, [batch, decisions]; H_b is the
  summed entropy along sequence b. Returns (loss, mean sequence entropy).
  """
  sequence_log_probs = tf.reduce_sum(log_probs, axis=1)
  entropy = tf.reduce_mean(tf.reduce_sum(entropies, axis=1))
  loss = -tf.reduce_mean(advantages * sequence_log_probs) - entropy_weight * entropy
  return loss, entropy


def ppo_loss(log_probs: tf.Tensor, old_log_probs: tf.Tensor, entropies: tf.Tensor,
             advantages: tf.Tensor, clip_epsilon: float, entropy_weight: float):
  """PPO's clipped surrogate, per decision, summed over a sequence.

  loss = -mean_b sum_t min(r_bt A_b, clip(r_bt, 1-eps, 1+eps) A_b)
         - entropy_weight * mean_b(H_b), with r_bt = p(d_bt) / p_old(d_bt).
  Returns (loss, mean sequence entropy, fraction of clipped ratios).
  """
  ratio = tf.exp(log_probs - old_log_probs)
  advantage = advantages[:, None]
  clipped = tf.clip_by_value(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon)
  surrogate = tf.minimum(ratio * advantage, clipped * advantage)
  entropy = tf.reduce_mean(tf.reduce_sum(entropies, axis=1))
  loss = -tf.reduce_mean(tf.reduce_sum(surrogate, axis=1)) - entropy_weight * entropy
  clip_fraction = tf.reduce_mean(tf.cast(tf.abs(ratio - 1.0) > clip_epsilon, tf.float32))
  return loss, entropy, clip_fraction


class RNNController(SearchAlgorithm):
  """An LSTM policy over the space's decisions, trained by PPO or REINFORCE.

  The policy's shape and initialisation left as None come from the algorithm's
  published preset (PPO: NASNet, 1x100 LSTM, init +-0.1; REINFORCE: Zoph & Le,
  2x35 LSTM, init +-0.08). `learning_rate`, `entropy_weight` and `batch_size`
  left as None take TUNED_DEFAULTS; the published values are Adam 3.5e-4 and
  entropy weight 1e-5 (NASNet) and Adam 6e-4 (Zoph & Le).
  """

  name = "ppo"  # Set per instance: the registry name of the training algorithm.

  def __init__(self, space: SearchSpace, seed: int, *, algorithm: str = "ppo",
               batch_size: Optional[int] = None, ppo_epochs: int = 8,
               clip_epsilon: float = 0.2, entropy_weight: Optional[float] = None,
               baseline_decay: float = 0.95,
               learning_rate: Optional[float] = None, num_layers: Optional[int] = None,
               units: Optional[int] = None, init_range: Optional[float] = None,
               failure_reward: Optional[float] = 0.0,
               initial_mutations: Optional[int] = None,
               normalize_advantages: bool = True):
    super().__init__(space, seed)
    if algorithm not in PRESETS:
      raise ConfigError(f"algorithm: must be one of {', '.join(PRESETS)}, got {algorithm!r}")
    tuned = TUNED_DEFAULTS[algorithm]
    batch_size = tuned["batch_size"] if batch_size is None else batch_size
    entropy_weight = tuned["entropy_weight"] if entropy_weight is None else entropy_weight
    learning_rate = tuned["learning_rate"] if learning_rate is None else learning_rate
    _check_int("batch_size", batch_size, 1)
    _check_int("ppo_epochs", ppo_epochs, 1)
    _check_number("clip_epsilon", clip_epsilon, 0.0, 1.0)
    _check_number("entropy_weight", entropy_weight, 0.0, math.inf, low_inclusive=True)
    _check_number("baseline_decay", baseline_decay, 0.0, 1.0, low_inclusive=True)
    if failure_reward is not None:
      _check_number("failure_reward", failure_reward, -math.inf, math.inf)
    if not isinstance(normalize_advantages, bool):
      raise ConfigError(f"normalize_advantages: expected true or false, "
                        f"got {normalize_advantages!r}")
    self._prior_start = None
    if initial_mutations is not None:
      _check_int("initial_mutations", initial_mutations, 0)
      self._prior_start = published_decisions(space)
    self.name = algorithm
    overrides = {k: v for k, v in (("num_layers", num_layers), ("units", units),
                                   ("init_range", init_range)) if v is not None}
    overrides["learning_rate"] = learning_rate
    config: PolicyConfig = PRESETS[algorithm].replace(**overrides)
    self.options = {
        "batch_size": batch_size, "ppo_epochs": ppo_epochs, "clip_epsilon": clip_epsilon,
        "entropy_weight": entropy_weight, "baseline_decay": baseline_decay,
        "learning_rate": config.learning_rate, "num_layers": config.num_layers,
        "units": config.units, "init_range": config.init_range,
        "failure_reward": failure_reward, "initial_mutations": initial_mutations,
        "normalize_advantages": normalize_advantages}
    self.policy = LSTMPolicy(space.decisions(), seed, config)
    self.sampling_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 1])))
    self.baseline: Optional[float] = None
    self.buffer: List[Dict[str, Any]] = []
    self.num_updates = 0
    self.prior_loss: Optional[float] = None  # set once the prior is fitted

  # ---- propose / observe -----------------------------------------------------

  def propose(self) -> Proposal:
    if self._prior_start is not None and self.prior_loss is None:
      self.fit_prior()
    decisions, log_probs = self.policy.sample(self.space.start(), self.sampling_rng)
    return Proposal(decisions=decisions, log_probs=log_probs)

  def fit_prior(self) -> float:
    """Fits the policy to the published point's neighbourhood (module
    docstring); returns the final mean negative log-likelihood per sequence."""
    rng = random.Random(self.seed * 7919 + 1)
    samples = [near(self.space, self._prior_start, rng, self.options["initial_mutations"])
               for _ in range(PRIOR_SAMPLES)]
    decisions = tf.constant(np.array(samples, dtype=np.int32))
    masks = tf.constant(self.policy.pad_masks([self.space.masks(s) for s in samples]))
    optimizer = self.policy.optimizer
    rate = float(optimizer.learning_rate)
    optimizer.learning_rate.assign(PRIOR_LEARNING_RATE)
    for _ in range(PRIOR_STEPS):
      with tf.GradientTape() as tape:
        log_probs, _ = self.policy.evaluate(decisions, masks)
        loss = -tf.reduce_mean(tf.reduce_sum(log_probs, axis=1))
      self.policy.apply_gradients(tape.gradient(loss, self.policy.trainable_variables))
    optimizer.learning_rate.assign(rate)
    for slot in optimizer.variables:
      slot.assign(tf.zeros_like(slot))
    self.policy.refresh()
    self.prior_loss = float(loss)
    return self.prior_loss

  def _observe(self, observation: Observation) -> Dict[str, float]:
    reward = observation.reward
    if reward is None or not math.isfinite(reward):
      if self.options["failure_reward"] is None:
        return {}
      reward = self.options["failure_reward"]
    log_probs = observation.proposal.log_probs
    self.buffer.append({"decisions": [int(d) for d in observation.proposal.decisions],
                        "log_probs": None if log_probs is None else [float(p) for p in log_probs],
                        "reward": float(reward)})
    if len(self.buffer) < self.options["batch_size"]:
      return {}
    batch = self.buffer[:self.options["batch_size"]]
    self.buffer = self.buffer[self.options["batch_size"]:]
    return self._update(batch)

  def _update(self, batch: List[Dict[str, Any]]) -> Dict[str, float]:
    rewards = np.array([item["reward"] for item in batch])
    if self.baseline is None:
      self.baseline = float(rewards.mean())
    advantages = rewards - self.baseline
    if self.options["normalize_advantages"]:
      advantages = advantages / (advantages.std() + ADVANTAGE_EPSILON)
    decay = self.options["baseline_decay"]
    for reward in rewards:
      self.baseline = decay * self.baseline + (1.0 - decay) * float(reward)

    decisions = np.array([item["decisions"] for item in batch], dtype=np.int32)
    masks = self.policy.pad_masks([self.space.masks(item["decisions"]) for item in batch])
    old_log_probs = self._old_log_probs(batch, decisions, masks)
    epochs = self.options["ppo_epochs"] if self.name == "ppo" else 1
    decisions, masks = tf.constant(decisions), tf.constant(masks)
    old_log_probs = tf.constant(old_log_probs)
    advantages = tf.constant(advantages, tf.float32)
    for _ in range(epochs):
      loss, entropy, clip_fraction = self._train_step(
          decisions, masks, old_log_probs, advantages)
    self.policy.refresh()
    self.num_updates += 1
    metrics = {"baseline": self.baseline, "entropy": float(entropy), "loss": float(loss),
               "mean_reward": float(rewards.mean()), "num_updates": float(self.num_updates)}
    if self.name == "ppo":
      metrics["clip_fraction"] = float(clip_fraction)
    return metrics

  def _old_log_probs(self, batch, decisions: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Log-probs recorded at proposal time; the current policy's for proposals
    that carry none (e.g. architectures the driver seeded by hand)."""
    missing = [i for i, item in enumerate(batch) if item["log_probs"] is None]
    current = self.policy.log_probs(decisions[missing], masks[missing]).numpy() if missing else None
    rows = []
    for i, item in enumerate(batch):
      if item["log_probs"] is None:
        rows.append(current[missing.index(i)])
      else:
        rows.append(np.asarray(item["log_probs"], dtype=np.float32))
    return np.stack(rows).astype(np.float32)

  def _train_step(self, decisions, masks, old_log_probs, advantages):
    # Only the forward pass over the sequences is a traced graph (shared by all
    # policies of one structure); the loss and Adam's update are a few eager ops.
    with tf.GradientTape() as tape:
      log_probs, entropies = self.policy.evaluate(decisions, masks)
      if self.name == "ppo":
        loss, entropy, clip_fraction = ppo_loss(
            log_probs, old_log_probs, entropies, advantages,
            self.options["clip_epsilon"], self.options["entropy_weight"])
      else:
        loss, entropy = reinforce_loss(log_probs, entropies, advantages,
                                       self.options["entropy_weight"])
        clip_fraction = tf.constant(0.0)
    self.policy.apply_gradients(tape.gradient(loss, self.policy.trainable_variables))
    return loss, entropy, clip_fraction

  # ---- state -----------------------------------------------------------------

  def state(self) -> Dict[str, Any]:
    state = super().state()
    state.update({
        "space": self.space.name,
        "options": dict(self.options),
        "policy": self.policy.state(),
        "sampling_rng": self.sampling_rng.bit_generator.state,
        "baseline": self.baseline,
        "buffer": [dict(item) for item in self.buffer],
        "num_updates": self.num_updates,
        "prior_loss": self.prior_loss,
    })
    return state

  def load_state(self, state: Dict[str, Any]) -> None:
    if state.get("name") != self.name:
      raise ConfigError(f"controller state: saved by {state.get('name')!r}, not {self.name!r}")
    saved = {**STATE_DEFAULTS, **(state.get("options") or {})}
    if saved != self.options:
      raise ConfigError(
          f"controller state: saved with options {saved}, "
          f"this controller has {self.options}")
    super().load_state(state)
    self.policy.load_state(state["policy"])
    self.sampling_rng.bit_generator.state = state["sampling_rng"]
    self.baseline = state["baseline"]
    self.buffer = [dict(item) for item in state["buffer"]]
    self.num_updates = int(state["num_updates"])
    self.prior_loss = state.get("prior_loss")


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value, low: float, high: float, low_inclusive: bool = False) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
    raise ConfigError(f"{name}: expected a number, got {value!r}")
  above = value >= low if low_inclusive else value > low
  if not above or value >= high:
    bracket = "[" if low_inclusive else "("
    raise ConfigError(f"{name}: must be in {bracket}{low}, {high}), got {value!r}")
