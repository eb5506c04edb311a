"""Tests for spinesearch.modeling.builder: architectures -> Model Garden RetinaNet."""
import random

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.core import exp_factory
from official.vision.modeling import factory

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.modeling import builder
from spinesearch.modeling.cost import count_params
from spinesearch.space import known
from spinesearch.space.architecture import Architecture, BlockSpec, Scaling
from spinesearch.space.registry import SPACES, build_space

TINY = Scaling(filter_size_scale=0.25, resample_alpha=0.25, endpoints_num_filters=16,
               head_num_convs=1, head_num_filters=16, fpn_num_filters=16,
               fpn_num_repeats=1, resnet_model_id=10)
NUM_CLASSES = 3
NUM_ANCHORS = 9

MOBILE = Architecture(space="spinenet", name="spinenet-mobile-49",
                      blocks=tuple(BlockSpec(*b) for b in known.SPINENET_MOBILE_BLOCKS))

# Outputs at P3..P5 only: the coarsest stride is 32, so 64 px is allowed.
SHALLOW = Architecture(space="spinenet", name="shallow", blocks=(
    BlockSpec(3, "residual", (0, 1), False), BlockSpec(4, "residual", (1, 2), False),
    BlockSpec(3, "bottleneck", (2, 3), True), BlockSpec(4, "bottleneck", (2, 3), True),
    BlockSpec(5, "bottleneck", (3, 4), True)))

ARCHITECTURES = {
    "spinenet": known.spinenet49(),
    "nasfpn": known.nasfpn(),
    "joint": known.spinenet49_nasfpn(),
    "mbconv": MOBILE,
}


def _check_dense_outputs(model, image_size, levels=range(3, 8)):
  images = tf.random.stateless_normal([1, image_size, image_size, 3], seed=[1, 2])
  outputs = model(images, training=True)
  assert sorted(outputs["cls_outputs"]) == sorted(str(level) for level in levels)
  for level in levels:
    side = image_size // 2 ** level
    scores = outputs["cls_outputs"][str(level)]
    boxes = outputs["box_outputs"][str(level)]
    assert scores.shape == (1, side, side, NUM_CLASSES * NUM_ANCHORS)
    assert boxes.shape == (1, side, side, 4 * NUM_ANCHORS)
    assert np.isfinite(scores.numpy()).all() and np.isfinite(boxes.numpy()).all()


def test_spinenet49_has_exactly_model_gardens_parameter_count():
  config = exp_factory.get_exp_config("retinanet_spinenet_coco").task.model
  config.input_size = [128, 128, 3]
  garden_model = factory.build_retinanet(
      tf_keras.layers.InputSpec(shape=[None, 128, 128, 3]), config)
  ours = builder.build_retinanet(known.spinenet49(), num_classes=91, image_size=128)
  assert count_params(ours) == count_params(garden_model) == 28_652_567


@pytest.fixture(scope="module")
def tiny_models():
  """One tiny RetinaNet per kind of architecture, shared by the tests below."""
  return {kind: builder.build_retinanet(arch, num_classes=NUM_CLASSES, image_size=128,
                                        scaling=TINY, max_num_detections=7)
          for kind, arch in ARCHITECTURES.items()}


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_forward_pass_is_finite_for_every_kind_of_architecture(tiny_models, kind):
  _check_dense_outputs(tiny_models[kind], 128)


def test_model_garden_parts_per_space(tiny_models):
  """Model Garden's classes build every part; spinenet and nasfpn come as
  the subclasses that only mark structural parts (modeling/structure.py)."""
  from official.vision.modeling.backbones import resnet, spinenet, spinenet_mobile
  from official.vision.modeling.decoders import nasfpn
  expected = {"spinenet": (spinenet.SpineNet, None), "nasfpn": (resnet.ResNet, nasfpn.NASFPN),
              "joint": (spinenet.SpineNet, nasfpn.NASFPN),
              "mbconv": (spinenet_mobile.SpineNetMobile, None)}
  for kind, (backbone, decoder) in expected.items():
    model = tiny_models[kind]
    assert isinstance(model.backbone, backbone), kind
    assert model.decoder is None if decoder is None else isinstance(model.decoder, decoder), kind
  for kind, garden_class in (("spinenet", spinenet.SpineNet),
                             ("mbconv", spinenet_mobile.SpineNetMobile)):
    # The marking subclass extends exactly this Model Garden class.
    mro = type(tiny_models[kind].backbone).__mro__
    assert [c for c in mro if c.__module__.startswith("official.")][0] is garden_class, kind
  assert tiny_models["nasfpn"].backbone.get_config()["model_id"] == TINY.resnet_model_id


def test_inference_runs_batched_nms_and_returns_detections(tiny_models):
  images = tf.random.stateless_normal([2, 128, 128, 3], seed=[3, 4])
  outputs = tiny_models["spinenet"](images, image_shape=tf.constant([[128.0, 128.0]] * 2),
                                    training=False)
  assert outputs["detection_boxes"].shape == (2, 7, 4)
  assert outputs["detection_scores"].shape == (2, 7)
  assert np.all(outputs["num_detections"].numpy() <= 7)


def test_scaling_argument_overrides_the_architectures_scaling():
  overridden = builder.build_retinanet(SHALLOW, num_classes=NUM_CLASSES, image_size=64,
                                       scaling=TINY)
  embedded = builder.build_retinanet(SHALLOW.with_scaling(TINY), num_classes=NUM_CLASSES,
                                     image_size=64)
  assert count_params(overridden) == count_params(embedded)
  assert overridden.head.get_config()["num_filters"] == TINY.head_num_filters
  assert overridden.backbone.get_config()["endpoints_num_filters"] == \
      TINY.endpoints_num_filters


def test_levels_follow_the_architecture():
  model = builder.build_retinanet(SHALLOW, num_classes=NUM_CLASSES, image_size=64,
                                  scaling=TINY)
  assert sorted(model.backbone.output_specs) == ["3", "4", "5"]
  _check_dense_outputs(model, 64, levels=range(3, 6))
  assert builder.build_decoder(SHALLOW, model.backbone.output_specs) is None


def test_image_size_not_a_multiple_of_the_coarsest_stride_is_refused():
  with pytest.raises(ArchitectureError, match=r"image size 100 is not a multiple of 128"):
    builder.build_retinanet(known.spinenet49(), num_classes=NUM_CLASSES, image_size=100,
                            scaling=TINY)


def test_bad_settings_are_refused_with_one_clear_message():
  with pytest.raises(ArchitectureError, match=r"resnet_model_id.*10, 18, 26.*got 11"):
    builder.build_backbone(known.nasfpn(), image_size=128, scaling=TINY.replace(resnet_model_id=11))
  with pytest.raises(ConfigError, match="activation"):
    builder.build_backbone(known.spinenet49(), image_size=128, scaling=TINY, activation="gelu")
  with pytest.raises(ConfigError, match="num_classes"):
    builder.build_retinanet(known.spinenet49(), num_classes=0, image_size=128, scaling=TINY)
  broken = known.spinenet49().replace(cells=known.nasfpn().cells)
  with pytest.raises(ArchitectureError, match="no merging cells"):
    builder.build_retinanet(broken, num_classes=NUM_CLASSES, image_size=128, scaling=TINY)


# Every space's default preset, the Mobile SpineNet (MBConv) preset of the
# spaces with a backbone, and the CR-NAS options (reallocation, dilation).
SPACE_PRESETS = [(name, "default") for name in sorted(SPACES)] + \
    [("spinenet", "mobile"), ("joint", "mobile"), ("spinenet", "realloc"),
     ("spinenet", "mobile_dilated"), ("scale_decreased", "dilated")]


def _sampled_architectures(seeds):
  for name, preset in SPACE_PRESETS:
    for seed in seeds:
      yield pytest.param(name, preset, seed, id=f"{name}-{preset}-{seed}")


def _check_sample_builds(space_name, preset, seed):
  _check_builds(build_space(space_name, preset).sample_architecture(random.Random(seed)))


def _check_builds(arch):
  """`arch` builds at the tiny scaling and gives finite outputs."""
  model = builder.build_retinanet(arch, num_classes=NUM_CLASSES, image_size=128, scaling=TINY)
  _check_dense_outputs(model, 128, levels=arch.output_levels)


@pytest.mark.parametrize("space_name,preset,seed", [
    p for p in _sampled_architectures([0]) if p.values[:2] != ("joint", "mobile")])
def test_random_samples_of_every_space_build_and_run(space_name, preset, seed):
  _check_sample_builds(space_name, preset, seed)


@pytest.mark.slow
@pytest.mark.parametrize("space_name,preset,seed", list(_sampled_architectures(range(1, 12))))
def test_many_random_samples_of_every_space_build_and_run(space_name, preset, seed):
  _check_sample_builds(space_name, preset, seed)


# The spaces and options of the CR-NAS, NAS-FCOS / Hit-Detector, Mobile
# SpineNet and EfficientDet dimensions.
NEW_SPACES = [("spinenet", "realloc", {}), ("scale_decreased", "default", {}),
              ("scale_decreased", "dilated", {}), ("spinenet", "mobile", {}),
              ("spinenet", "mobile_dilated", {}), ("nasfpn", "default", {"search_head": True}),
              ("spinenet", "default", {"search_head": True}),
              ("spinenet", "default", {"search_fusion": True})]


@pytest.mark.slow  # 200 builds and forward passes per space: 13-51 min each on one core (measured)
@pytest.mark.parametrize("space_name,preset,options", NEW_SPACES,
                         ids=[f"{n}-{p}-{'-'.join(o) or 'plain'}" for n, p, o in NEW_SPACES])
def test_200_random_samples_of_each_new_space_build_with_finite_outputs(space_name, preset,
                                                                        options):
  space = build_space(space_name, preset, **options)
  rng = random.Random(11)
  for _ in range(200):
    tf_keras.backend.clear_session()
    _check_builds(space.validate(space.decode(space.sample(rng))))


@pytest.mark.parametrize("kind", ["spinenet", pytest.param("joint", marks=pytest.mark.slow)])
def test_the_dense_detector_is_the_retinanet_s_backbone_decoder_and_head(kind):
  """The same weights in the same order (so the Zen-score draws the same
  kernels), the same outputs and the same cost as the RetinaNetModel's."""
  from spinesearch.modeling import cost
  architecture, settings = ARCHITECTURES[kind], dict(num_classes=NUM_CLASSES, image_size=128,
                                                     scaling=TINY)
  tf_keras.utils.set_random_seed(0)
  full = builder.build_retinanet(architecture, **settings)
  tf_keras.utils.set_random_seed(0)
  dense = builder.build_dense_detector(architecture, **settings)

  def signature(model):
    return [(w.name.rsplit("/", 1)[-1], tuple(w.shape)) for w in model.weights]

  assert signature(dense) == signature(full)
  assert count_params(dense) == count_params(full)
  assert cost.count_multiply_adds(dense, 128) == cost.count_multiply_adds(full, 128)
  for ours, theirs in zip(dense.weights, full.weights):
    ours.assign(theirs)
  images = tf.random.stateless_normal([2, 128, 128, 3], seed=[3, 4])
  class_outputs, box_outputs = dense(images, training=False)
  expected = full(images, training=False)
  for level in class_outputs:
    np.testing.assert_allclose(class_outputs[level], expected["cls_outputs"][level], atol=1e-5)
    np.testing.assert_allclose(box_outputs[level], expected["box_outputs"][level], atol=1e-5)
