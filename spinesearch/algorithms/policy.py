"""An LSTM policy over a search space's decisions (Zoph & Le 2016; NASNet 2017).

At every decision the LSTM emits a softmax over that decision's choices; choices
the space's mask rules out get a logit of -inf (numpy) or a large negative value
(TensorFlow) before sampling and in every log-probability, so the policy can
neither sample nor be credited with an invalid choice. The embedding of the
chosen token is the next step's input; the first input is a learned vector.
Decisions of one `kind` share a softmax layer and an embedding table.

Two forward passes compute the same function:
- `sample` runs in numpy on a copy of the weights, one step at a time, because
  each mask comes from the space's cursor after the previous choice; a whole
  architecture takes a few milliseconds on a CPU.
- `evaluate` runs in TensorFlow over a batch of recorded decisions and masks
  (teacher forcing) and is what the training losses differentiate.

All randomness (initial weights, sampling) comes from numpy generators seeded
from the seed; TensorFlow's random generators are never used.
"""
import base64
import dataclasses
import functools
import io
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow loads)
import tensorflow as tf
import tf_keras

from spinesearch.errors import ConfigError
from spinesearch.space.base import Decision, DecisionCursor

# Large enough that exp() underflows to exactly 0 in float32, small enough that
# products with zero probabilities stay finite (0 * -1e9 = 0, unlike -inf).
_MASKED_LOGIT = -1e9


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  """Size, initialisation and optimiser of an LSTM policy."""
  num_layers: int = 1
  units: int = 100
  embedding_size: int = 0  # 0: the same as `units`.
  init_range: float = 0.1  # Weights start uniform in [-init_range, init_range].
  learning_rate: float = 3.5e-4  # Adam.

  def __post_init__(self):
    for name in ("num_layers", "units"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"policy {name}: expected a positive integer, got {value!r}")
    if isinstance(self.embedding_size, bool) or not isinstance(self.embedding_size, int) \
        or self.embedding_size < 0:
      raise ConfigError(
          f"policy embedding_size: expected a non-negative integer, got {self.embedding_size!r}")
    for name in ("init_range", "learning_rate"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"policy {name}: expected a positive number, got {value!r}")

  @property
  def input_size(self) -> int:
    return self.embedding_size or self.units

  def replace(self, **changes) -> "PolicyConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# NASNet (Zoph et al. 2017), trained with PPO.
NASNET_POLICY = PolicyConfig(num_layers=1, units=100, init_range=0.1, learning_rate=3.5e-4)
# Zoph & Le (2016), trained with REINFORCE.
ZOPH_LE_POLICY = PolicyConfig(num_layers=2, units=35, init_range=0.08, learning_rate=6e-4)


def _kinds_of(decisions: Sequence[Decision]) -> Dict[str, int]:
  """Number of choices per kind, in order of first appearance."""
  kinds: Dict[str, Tuple[str, ...]] = {}
  for d in decisions:
    if d.kind in kinds and kinds[d.kind] != d.choices:
      raise ConfigError(
          f"decision {d.name}: kind {d.kind!r} has choices {list(d.choices)} here but "
          f"{list(kinds[d.kind])} elsewhere; decisions of one kind must share their choices")
    kinds.setdefault(d.kind, d.choices)
  return {kind: len(choices) for kind, choices in kinds.items()}


class LSTMPolicy:
  """A distribution over decision sequences, with its Adam optimiser."""

  def __init__(self, decisions: Sequence[Decision], seed: int,
               config: PolicyConfig = NASNET_POLICY):
    if not decisions:
      raise ConfigError("policy: the search space has no decisions")
    self.config = config
    self.decision_specs = tuple(decisions)
    self.num_choices = _kinds_of(self.decision_specs)
    self.max_choices = max(self.num_choices.values())
    self._step_kinds = tuple(d.kind for d in self.decision_specs)

    init_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    self.variables: Dict[str, tf.Variable] = {}
    for name, shape in self._variable_shapes():
      value = init_rng.uniform(-config.init_range, config.init_range, shape)
      self.variables[name] = tf.Variable(value.astype(np.float32), name=name.replace("/", "_"))
    self.trainable_variables = list(self.variables.values())
    self.optimizer = tf_keras.optimizers.Adam(learning_rate=config.learning_rate)
    self.optimizer.build(self.trainable_variables)
    # Adam's step as a graph: ten times faster than eager, traced in a fraction of a second.
    self._apply_gradients = tf.function(
        lambda gradients: self.optimizer.apply_gradients(zip(gradients, self.trainable_variables)))
    self._structure = _Structure(
        names=tuple(self.variables),
        shapes=tuple(tuple(v.shape.as_list()) for v in self.variables.values()),
        step_kinds=self._step_kinds,
        kind_sizes=tuple(self.num_choices.items()), num_layers=config.num_layers,
        units=config.units, max_choices=self.max_choices)
    self.refresh()

  def _variable_shapes(self) -> List[Tuple[str, Tuple[int, ...]]]:
    units, width = self.config.units, self.config.input_size
    shapes = [("start", (width,))]
    for layer in range(self.config.num_layers):
      fan_in = (width if layer == 0 else units) + units
      shapes += [(f"lstm_{layer}/kernel", (fan_in, 4 * units)),
                 (f"lstm_{layer}/bias", (4 * units,))]
    for kind, n in self.num_choices.items():
      shapes += [(f"{kind}/softmax_kernel", (units, n)),
                 (f"{kind}/softmax_bias", (n,)),
                 (f"{kind}/embedding", (n, width))]
    return shapes

  def refresh(self) -> None:
    """Copies the weights for numpy sampling; call after changing them."""
    self._numpy_weights = {k: v.numpy().astype(np.float64) for k, v in self.variables.items()}

  # ---- numpy forward: sampling and reference log-probs ----------------------

  def _numpy_steps(self, weights):
    """Yields (kind, logits) per decision; send() the chosen index back."""
    units = self.config.units
    hidden = [np.zeros(units) for _ in range(self.config.num_layers)]
    cell = [np.zeros(units) for _ in range(self.config.num_layers)]
    x = weights["start"]
    for kind in self._step_kinds:
      for layer in range(self.config.num_layers):
        z = np.concatenate([x, hidden[layer]]) @ weights[f"lstm_{layer}/kernel"] \
            + weights[f"lstm_{layer}/bias"]
        i, f, g, o = np.split(z, 4)
        cell[layer] = _sigmoid(f) * cell[layer] + _sigmoid(i) * np.tanh(g)
        hidden[layer] = _sigmoid(o) * np.tanh(cell[layer])
        x = hidden[layer]
      logits = x @ weights[f"{kind}/softmax_kernel"] + weights[f"{kind}/softmax_bias"]
      choice = yield kind, logits
      x = weights[f"{kind}/embedding"][choice]

  def sample(self, cursor: DecisionCursor,
             rng: np.random.Generator) -> Tuple[List[int], List[float]]:
    """Samples a complete, valid decision sequence by walking `cursor`.

    Returns the decisions and the log-probability of each under this policy.
    """
    decisions, log_probs = [], []
    steps = self._numpy_steps(self._numpy_weights)
    _, logits = next(steps)
    for t in range(len(self._step_kinds)):
      mask = np.asarray(cursor.mask(), dtype=bool)
      if not mask.any():
        raise RuntimeError(
            f"decision {t} ({self.decision_specs[t].name}): the space left no valid choice")
      log_p = _masked_log_softmax(logits, mask)
      cumulative = np.cumsum(np.exp(log_p))
      choice = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
      # Rounding could land past the last valid choice; step back onto a valid one.
      choice = min(choice, len(mask) - 1)
      while not mask[choice]:
        choice -= 1
      cursor.choose(choice)
      decisions.append(choice)
      log_probs.append(float(log_p[choice]))
      if t + 1 < len(self._step_kinds):
        _, logits = steps.send(choice)
    return decisions, log_probs

  def numpy_log_probs(self, decisions: Sequence[int], masks: Sequence[Sequence[bool]],
                      weights: Optional[Dict[str, np.ndarray]] = None
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Per-decision log-probs and entropies of one sequence, in float64.

    A reference for the TensorFlow forward; `weights` (default: the current
    ones) lets a test perturb single weights for finite differences.
    """
    steps = self._numpy_steps(self._numpy_weights if weights is None else weights)
    log_probs, entropies = [], []
    kind, logits = next(steps)
    for t, (choice, mask) in enumerate(zip(decisions, masks)):
      mask = np.asarray(mask[:self.num_choices[kind]], dtype=bool)
      log_p = _masked_log_softmax(logits, mask)
      log_probs.append(log_p[choice])
      entropies.append(-np.sum(np.exp(log_p[mask]) * log_p[mask]))
      if t + 1 < len(decisions):
        kind, logits = steps.send(choice)
    return np.array(log_probs), np.array(entropies)

  # ---- TensorFlow forward: training ------------------------------------------

  def pad_masks(self, masks: Sequence[Sequence[Sequence[bool]]]) -> np.ndarray:
    """[batch][decision][choice] masks -> a bool array padded to max_choices."""
    padded = np.zeros((len(masks), len(self.decision_specs), self.max_choices), dtype=bool)
    for b, sequence in enumerate(masks):
      for t, mask in enumerate(sequence):
        padded[b, t, :len(mask)] = mask
    return padded

  def evaluate(self, decisions, masks) -> Tuple[tf.Tensor, tf.Tensor]:
    """Per-decision log-probs and entropies, both [batch, num_decisions].

    `decisions` is [batch, num_decisions] ints; `masks` is the padded bool
    array of `pad_masks` (or anything of that shape).
    """
    # The weights go in as tensors read here, under the caller's gradient tape:
    # a traced function that took the variables themselves would keep
    # referring to the first policy's variables.
    weights = [tf.convert_to_tensor(v) for v in self.trainable_variables]
    return _evaluator(self._structure)(weights, tf.convert_to_tensor(decisions, tf.int32),
                                       tf.convert_to_tensor(masks, tf.bool))

  def log_probs(self, decisions, masks) -> tf.Tensor:
    return self.evaluate(decisions, masks)[0]

  def entropy(self, decisions, masks) -> tf.Tensor:
    """Entropy of each step's (masked) distribution along the given sequences."""
    return self.evaluate(decisions, masks)[1]

  def apply_gradients(self, gradients: Sequence[tf.Tensor]) -> None:
    """One Adam step; `gradients` in the order of `trainable_variables`."""
    self._apply_gradients(list(gradients))

  # ---- state -----------------------------------------------------------------

  def state(self) -> dict:
    """Weights and optimiser slots as JSON-able data (exact float32 bytes)."""
    return {"config": self.config.to_dict(),
            "weights": {name: encode_array(v.numpy()) for name, v in self.variables.items()},
            "optimizer": [encode_array(v.numpy()) for v in self.optimizer.variables]}

  def load_state(self, state: dict) -> None:
    if state["config"] != self.config.to_dict():
      raise ConfigError(
          f"policy state: saved with policy settings {state['config']}, "
          f"this policy has {self.config.to_dict()}")
    weights = state["weights"]
    if sorted(weights) != sorted(self.variables):
      raise ConfigError("policy state: its weights do not match this search space's decisions")
    for name, variable in self.variables.items():
      variable.assign(_checked(decode_array(weights[name]), variable, f"weight {name}"))
    slots = self.optimizer.variables
    if len(state["optimizer"]) != len(slots):
      raise ConfigError("policy state: its optimizer slots do not match this policy")
    for i, variable in enumerate(slots):
      variable.assign(_checked(decode_array(state["optimizer"][i]), variable, "optimizer slot"))
    self.refresh()


class _Structure(NamedTuple):
  """What the TensorFlow forward pass depends on besides the weights' values."""
  names: Tuple[str, ...]  # of the weights, in the order they are passed
  shapes: Tuple[Tuple[int, ...], ...]
  step_kinds: Tuple[str, ...]
  kind_sizes: Tuple[Tuple[str, int], ...]
  num_layers: int
  units: int
  max_choices: int


@functools.lru_cache(maxsize=None)
def _evaluator(structure: _Structure):
  """One traced forward pass per policy structure, shared by every policy of
  that structure: the weights are arguments, so a new controller (a test, a
  resumed search) does not pay for tracing again."""
  num_decisions = len(structure.step_kinds)
  return tf.function(functools.partial(_evaluate, structure), input_signature=[
      [tf.TensorSpec(shape, tf.float32) for shape in structure.shapes],
      tf.TensorSpec([None, num_decisions], tf.int32),
      tf.TensorSpec([None, num_decisions, structure.max_choices], tf.bool)])


def _evaluate(structure: _Structure, weights: Sequence[tf.Tensor], decisions: tf.Tensor,
              masks: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Per-decision log-probs and entropies of recorded sequences (teacher forcing).

  One loop body serves every step (tf.scan), so tracing costs the same for any
  number of decisions: each kind's softmax layer and embedding table are
  zero-padded to max_choices and stacked, and a step gathers its kind's slice.
  Padded choices are always masked out.
  """
  v = dict(zip(structure.names, weights))
  kinds = [kind for kind, _ in structure.kind_sizes]
  pad = lambda n: [[0, structure.max_choices - n]]
  kernels = tf.stack([tf.pad(v[f"{k}/softmax_kernel"], [[0, 0]] + pad(n))
                      for k, n in structure.kind_sizes])
  biases = tf.stack([tf.pad(v[f"{k}/softmax_bias"], pad(n)) for k, n in structure.kind_sizes])
  embeddings = tf.stack([tf.pad(v[f"{k}/embedding"], pad(n) + [[0, 0]])
                         for k, n in structure.kind_sizes])
  kind_ids = tf.constant([kinds.index(k) for k in structure.step_kinds], tf.int32)

  batch = tf.shape(decisions)[0]
  zeros = tf.zeros([batch, structure.units])
  layers = range(structure.num_layers)
  initial = (tf.tile(v["start"][None, :], [batch, 1]),
             tuple(zeros for _ in layers), tuple(zeros for _ in layers),
             tf.zeros([batch]), tf.zeros([batch]))

  def step(carry, inputs):
    x, hidden, cell = carry[0], list(carry[1]), list(carry[2])
    kind, choice, mask = inputs
    for layer in layers:
      z = tf.matmul(tf.concat([x, hidden[layer]], 1), v[f"lstm_{layer}/kernel"]) \
          + v[f"lstm_{layer}/bias"]
      i, f, g, o = tf.split(z, 4, axis=1)
      cell[layer] = tf.sigmoid(f) * cell[layer] + tf.sigmoid(i) * tf.tanh(g)
      hidden[layer] = tf.sigmoid(o) * tf.tanh(cell[layer])
      x = hidden[layer]
    logits = tf.matmul(x, kernels[kind]) + biases[kind]
    log_p = tf.nn.log_softmax(tf.where(mask, logits, _MASKED_LOGIT))
    log_prob = tf.gather(log_p, choice, axis=1, batch_dims=1)
    entropy = -tf.reduce_sum(tf.exp(log_p) * tf.where(mask, log_p, 0.0), axis=1)
    return (tf.gather(embeddings[kind], choice), tuple(hidden), tuple(cell), log_prob, entropy)

  outputs = tf.scan(step, (kind_ids, tf.transpose(decisions), tf.transpose(masks, [1, 0, 2])),
                    initializer=initial)
  return tf.transpose(outputs[3]), tf.transpose(outputs[4])


def encode_array(array: np.ndarray) -> str:
  """An array as base64 text of its .npy bytes: exact, and JSON-able."""
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(array), allow_pickle=False)
  return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_array(text: str) -> np.ndarray:
  return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def _checked(array: np.ndarray, variable: tf.Variable, what: str) -> np.ndarray:
  if tuple(array.shape) != tuple(variable.shape):
    raise ConfigError(
        f"policy state: {what} has shape {list(array.shape)}, expected {variable.shape.as_list()}")
  return array


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def _masked_log_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
  masked = np.where(mask, logits, -np.inf)
  top = masked.max()
  return masked - top - np.log(np.sum(np.exp(masked - top)))
