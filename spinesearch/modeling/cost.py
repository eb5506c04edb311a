"""What a model costs: parameters, multiply-adds and CPU latency.

All three count the same part of a Model Garden RetinaNetModel: the dense
forward pass backbone -> decoder -> head, from a [1, size, size, 3] image to the
per-level class and box outputs. Anchor generation, box decoding and NMS are
left out: they do not depend on the architecture and their cost depends on the
NMS implementation (the papers' FLOPs leave them out as well).

Parameters count every weight by default, trainable or not (batch-norm moving
statistics included), as Keras' `count_params` does: SpineNet-49 RetinaNet (91
classes, 9 anchors, 4 x 256 heads) has 28,652,567. The SpineNet paper's figures
leave the moving statistics out (`trainable_only=True`: 28,543,383 = 28.5M).
"""
import statistics
import time

import numpy as np
import tensorflow as tf
import tf_keras
# Imported for its FLOP statistics of ops TensorFlow's profiler lacks (Einsum).
from official.core import train_utils  # noqa: F401
from official.vision.modeling import retinanet_model

from spinesearch import phases
from spinesearch.modeling import builder


def count_params(model: tf_keras.Model, *, trainable_only: bool = False) -> int:
  """Number of weights: all of them, or only the trainable ones (without the
  batch-norm moving statistics, the papers' convention; a frozen layer counts
  as not trainable). A RetinaNetModel whose head was not built yet (Model
  Garden builds it lazily when there is no decoder) gets it built first."""
  if isinstance(model, retinanet_model.RetinaNetModel):
    builder.complete_build(model)
  weights = model.trainable_weights if trainable_only else model.weights
  return int(sum(np.prod(w.shape) for w in weights))


@phases.timed("cost")
def count_multiply_adds(model: tf_keras.Model, image_size: int) -> int:
  """Multiply-adds of the dense forward pass of one image, which is what the
  SpineNet and NAS-FPN papers call "FLOPs".

  TensorFlow's graph profiler counts 2 floating-point operations per
  multiply-add (plus one per element of bias adds, sums and multiplies, well
  under 1% here); this returns its count divided by 2. It runs on the traced
  forward graph as it is: its kernels read variables whose shapes the graph
  knows, which is all a FLOP count needs. (Model Garden's
  `train_utils.try_count_flops` first freezes the variables into constants,
  which copies every weight and takes 0.9-1.8 s of its 2.5 s for a x0.25
  SpineNet-49, for the same count on SpineNet, NAS-FPN and joint models.)
  `image_size` must be the size the model was built for. SpineNet-49
  RetinaNet at 640 px: 85.3 G with ReLU (85.4 G with swish, whose multiply
  the profiler counts).
  """
  dense = DenseForward(model, image_size)
  graph = tf.function(dense.call).get_concrete_function(dense.input_spec).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  flops = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(),
                                        options=options).total_float_ops
  if not flops:
    raise RuntimeError(f"TensorFlow's profiler could not count the FLOPs of {model.name}")
  return int(flops) // 2


@phases.timed("cost")
def measure_latency_ms(model: tf_keras.Model, image_size: int, *,
                       warmup: int = 2, repeats: int = 10, seed: int = 0) -> float:
  """Median wall time in milliseconds of the dense forward pass of one
  image_size x image_size image (the size the model was built for).

  Batch 1, inside a `tf.function` without XLA (XLA is never faster on this
  CPU), after `warmup` untimed calls (the first call traces the graph). The
  input is a fixed random image (`seed`); the time depends on the machine and
  its load, so compare latencies measured side by side.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be at least 1, got {repeats}")
  forward = tf.function(DenseForward(model, image_size).call)
  images = tf.random.stateless_normal([1, image_size, image_size, 3], seed=[seed, 0])
  for _ in range(warmup):
    forward(images)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    outputs = forward(images)
    # Reading one value back makes sure the computation has finished.
    tf.nest.flatten(outputs)[0].numpy()
    times.append(time.perf_counter() - start)
  return 1000.0 * statistics.median(times)


class DenseForward(tf.Module):
  """The dense forward pass of a RetinaNetModel's backbone, decoder and head
  (its weights, no NMS): images -> [class outputs, box outputs] by level.

  A tf.Module that calls the layers directly, rather than a Keras functional
  model wrapping them: a functional model calls every layer once more on
  symbolic inputs to build itself (0.7 s for a x0.25 SpineNet-49), only to be
  traced again.
  """

  def __init__(self, model: tf_keras.Model, image_size: int):
    super().__init__(name="dense_forward")
    _check_image_size(model, image_size)
    self.model = model
    self.input_spec = tf.TensorSpec([1, image_size, image_size, 3], tf.float32)

  def call(self, images):
    features = self.model.backbone(images, training=False)
    if self.model.decoder:
      features = self.model.decoder(features, training=False)
    class_outputs, box_outputs, _ = self.model.head(features, training=False)
    return [class_outputs, box_outputs]


def _check_image_size(model: tf_keras.Model, image_size: int) -> None:
  # A SpineNet's graph depends on its input size (which blocks meet at which
  # resolution), so a model runs only at the size it was built for.
  built_size = model.backbone.input_shape[1]
  if image_size != built_size:
    raise ValueError(f"{model.name} was built for {built_size} x {built_size} images, "
                     f"not {image_size!r}; build it at {image_size} to measure that size")
