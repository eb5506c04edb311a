"""Tests for spinesearch.modeling.cost: parameters, multiply-adds, latency."""
import pytest
import tf_keras

from spinesearch.modeling import builder, cost
from spinesearch.space import known
from spinesearch.space.architecture import Architecture, BlockSpec, Scaling

TINY = Scaling(filter_size_scale=0.25, resample_alpha=0.25, endpoints_num_filters=16,
               head_num_convs=1, head_num_filters=16)

# Outputs P3..P5 (coarsest stride 32), so the same graph builds at 64 and 128 px.
SHALLOW = Architecture(space="spinenet", blocks=(
    BlockSpec(3, "residual", (0, 1), False), BlockSpec(4, "residual", (1, 2), False),
    BlockSpec(3, "bottleneck", (2, 3), True), BlockSpec(4, "bottleneck", (2, 3), True),
    BlockSpec(5, "bottleneck", (3, 4), True)))


def _tiny_model(image_size, num_classes=3):
  return builder.build_retinanet(SHALLOW, num_classes=num_classes, image_size=image_size,
                                 scaling=TINY)


@pytest.fixture(scope="module")
def model_64():
  return _tiny_model(64)


def test_count_params_counts_trainable_and_batch_norm_statistics():
  inputs = tf_keras.Input(shape=(8, 8, 3))
  x = tf_keras.layers.Conv2D(4, 3)(inputs)   # 3*3*3*4 + 4 = 112
  x = tf_keras.layers.BatchNormalization()(x)  # gamma, beta, mean, variance: 16
  model = tf_keras.Model(inputs, x)
  assert cost.count_params(model) == 128
  assert cost.count_params(model, trainable_only=True) == 120


def test_count_params_of_a_retinanet_is_backbone_plus_head(model_64):
  backbone = cost.count_params(model_64.backbone)
  head = sum(int(w.shape.num_elements()) for w in model_64.head.weights)
  assert head > 0
  assert cost.count_params(model_64) == backbone + head


def test_multiply_adds_are_deterministic_and_grow_with_the_image_area(model_64):
  first = cost.count_multiply_adds(model_64, 64)
  assert first > 0
  assert cost.count_multiply_adds(model_64, 64) == first
  ratio = cost.count_multiply_adds(_tiny_model(128), 128) / first
  assert 3.6 < ratio < 4.4


def test_a_multiply_add_counts_once_not_twice(model_64):
  # One more class adds 9 output channels (one per anchor) to the head's 3x3
  # class-prediction conv over 16 channels, on P3..P5 of a 64 px image
  # (8x8 + 4x4 + 2x2 positions); nothing else changes.
  one_more_class = _tiny_model(64, num_classes=4)
  expected = 16 * 9 * (8 * 8 + 4 * 4 + 2 * 2) * 9
  difference = (cost.count_multiply_adds(one_more_class, 64) -
                cost.count_multiply_adds(model_64, 64))
  assert difference == pytest.approx(expected, rel=0.01)


def test_measuring_at_another_size_than_built_is_refused(model_64):
  with pytest.raises(ValueError, match="built for 64 x 64"):
    cost.count_multiply_adds(model_64, 128)


def test_latency_is_a_positive_number_of_milliseconds(model_64):
  latency = cost.measure_latency_ms(model_64, 64, warmup=1, repeats=3)
  assert isinstance(latency, float) and latency > 0
  with pytest.raises(ValueError, match="repeats"):
    cost.measure_latency_ms(model_64, 64, repeats=0)


@pytest.mark.slow
def test_spinenet49_matches_the_reference_figures():
  model = builder.build_retinanet(known.spinenet49(), num_classes=91, image_size=640)
  assert cost.count_params(model) == 28_652_567
  assert cost.count_params(model, trainable_only=True) == 28_543_383
  assert cost.count_multiply_adds(model, 640) / 1e9 == pytest.approx(85.4, rel=0.005)
