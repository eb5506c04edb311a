"""The proxy's optimizers: Adam and SGD with momentum, applied with
TensorFlow's fused kernels (`ResourceApplyAdam`, `ResourceApplyKerasMomentum`)
inside the training step's `tf.function`.

Why not a Keras optimizer:
- Each training step Keras' optimizers trace leaks memory: about 90 MB per
  traced step here (measured with the legacy optimizers; a forward-only or
  gradient-only function leaks nothing), and a supernet traces one per path,
  a warm worker one per trial.
- A supernet step updates only the weights of the path it trains, so a weight
  first used late has had far fewer updates than the global step count, and
  Adam's bias correction with the global count scales its first updates up:
  some thousands of steps into a run, by about (1 - 0.9^k) / sqrt(1 - 0.999^k)
  after k of its own updates (3.2x for k = 1, 6.5x for k = 10, still 3.2x at
  k = 100). Here each weight counts its own updates; for a model trained
  alone the count equals the step and the update is Adam's.
- Slots are created for any variable not seen before, outside the traced
  function, so one optimizer serves models that share variables.

The learning rate follows a schedule of the global step; gradients are clipped
by their global norm first, as Keras' `global_clipnorm` does.
"""
from typing import Callable, Dict, List, Sequence

import tensorflow as tf

ADAM_SLOTS = ("m", "v", "updates")
MOMENTUM_SLOTS = ("momentum",)


class FusedOptimizer:
  """Adam (`kind='adam'`) or SGD with momentum (`kind='sgd'`)."""

  def __init__(self, kind: str, learning_rate: Callable[[tf.Tensor], tf.Tensor], *,
               clip_norm: float, momentum: float = 0.9, beta_1: float = 0.9,
               beta_2: float = 0.999, epsilon: float = 1e-7):
    if kind not in ("adam", "sgd"):
      raise ValueError(f"optimizer kind must be adam or sgd, got {kind!r}")
    self.kind = kind
    self.learning_rate = learning_rate
    self.clip_norm = clip_norm
    self.momentum = momentum
    self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
    self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
    self._slots: Dict[int, Dict[str, tf.Variable]] = {}

  @property
  def slot_names(self) -> Sequence[str]:
    return ADAM_SLOTS if self.kind == "adam" else MOMENTUM_SLOTS

  def create_slots(self, variables: Sequence[tf.Variable]) -> None:
    """Slots for the variables that have none yet (call outside tf.function)."""
    for var in variables:
      if id(var) in self._slots:
        continue
      slots = {name: tf.Variable(tf.zeros(var.shape, var.dtype), trainable=False)
               for name in self.slot_names if name != "updates"}
      if self.kind == "adam":
        slots["updates"] = tf.Variable(0.0, dtype=var.dtype, trainable=False)
      self._slots[id(var)] = slots

  def slots(self, var: tf.Variable) -> Dict[str, tf.Variable]:
    """The slots of `var` (KeyError if it has none)."""
    return self._slots[id(var)]

  def current_learning_rate(self) -> float:
    return float(self.learning_rate(self.iterations))

  def apply(self, gradients: List[tf.Tensor], variables: Sequence[tf.Variable]) -> tf.Operation:
    """The update of one step (inside the training step's tf.function)."""
    gradients, _ = tf.clip_by_global_norm(gradients, self.clip_norm)
    lr = tf.cast(self.learning_rate(self.iterations), tf.float32)
    updates = []
    for grad, var in zip(gradients, variables):
      if grad is None:
        continue
      slots = self._slots[id(var)]
      if self.kind == "adam":
        count = slots["updates"].assign_add(1.0, read_value=True)
        updates.append(tf.raw_ops.ResourceApplyAdam(
            var=var.handle, m=slots["m"].handle, v=slots["v"].handle,
            beta1_power=tf.pow(self.beta_1, count), beta2_power=tf.pow(self.beta_2, count),
            lr=lr, beta1=self.beta_1, beta2=self.beta_2, epsilon=self.epsilon, grad=grad))
      else:
        updates.append(tf.raw_ops.ResourceApplyKerasMomentum(
            var=var.handle, accum=slots["momentum"].handle, lr=lr, grad=grad,
            momentum=self.momentum))
    with tf.control_dependencies(updates):
      return self.iterations.assign_add(1)
