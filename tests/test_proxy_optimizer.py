"""The proxy's fused optimizers: Adam equal to Keras' for a model trained
alone, a weight first trained late gets Adam's first step (its own update
count), SGD with momentum equal to Keras', and no slot created inside a step."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from spinesearch.proxy.optimizer import FusedOptimizer

GRADIENTS = [np.array([0.5, -0.25, 2.0], np.float32), np.array([-1.0, 0.5, 0.1], np.float32),
             np.array([0.3, 0.3, -0.7], np.float32)]


def run(optimizer, apply, steps=3):
  var = tf.Variable([1.0, -2.0, 3.0])
  for grad in GRADIENTS[:steps]:
    apply(optimizer, var, tf.constant(grad))
  return var.numpy()


def fused(optimizer, var, grad):
  optimizer.create_slots([var])
  optimizer.apply([grad], [var])


def keras(optimizer, var, grad):
  optimizer.apply_gradients([(grad, var)])


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_a_model_trained_alone_gets_keras_updates(kind):
  schedule = tf_keras.optimizers.schedules.CosineDecay(0.01, 10)
  ours = run(FusedOptimizer(kind, schedule, clip_norm=1.0, momentum=0.9), fused)
  reference = (tf_keras.optimizers.legacy.Adam(schedule, global_clipnorm=1.0) if kind == "adam"
               else tf_keras.optimizers.legacy.SGD(schedule, momentum=0.9, global_clipnorm=1.0))
  np.testing.assert_allclose(ours, run(reference, keras), rtol=1e-5)


def test_a_weight_first_trained_late_gets_adams_first_step():
  lr = 0.01
  optimizer = FusedOptimizer("adam", lambda step: lr, clip_norm=100.0)
  optimizer.iterations.assign(1000)
  late = run(optimizer, fused, steps=1)
  fresh = run(FusedOptimizer("adam", lambda step: lr, clip_norm=100.0), fused, steps=1)
  np.testing.assert_allclose(late, fresh, rtol=1e-6)
  np.testing.assert_allclose(np.abs(late - [1.0, -2.0, 3.0]), lr, rtol=1e-3)


def test_update_counts_are_per_variable_and_slots_are_made_outside_the_step():
  optimizer = FusedOptimizer("adam", lambda step: 0.01, clip_norm=10.0)
  a, b = tf.Variable([1.0]), tf.Variable([1.0])
  optimizer.create_slots([a, b])
  step = tf.function(lambda var: optimizer.apply([tf.constant([1.0])], [var]))
  for _ in range(3):
    step(a)
  optimizer.apply([tf.constant([1.0])], [b])
  assert optimizer.slots(a)["updates"].numpy() == 3.0
  assert optimizer.slots(b)["updates"].numpy() == 1.0
  assert int(optimizer.iterations.numpy()) == 4
  with pytest.raises(KeyError):
    optimizer.apply([tf.constant([1.0])], [tf.Variable([2.0])])
