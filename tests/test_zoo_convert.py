"""Model Garden checkpoint -> zoo weights: a randomly initialised Model Garden
RetinaNet-SpineNet (its own `retinanet_spinenet_coco` experiment, at a tiny
scaling) saved the way its trainer saves, converted, computes the same."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.core import exp_factory
from official.vision.modeling.backbones import spinenet
from official.vision.serving import detection
from official.vision.tasks import retinanet as retinanet_task

import model_zoo
from model_zoo import cli, convert
from model_zoo.entry import HeadSpec, NormActivation, ZooEntry, ZooError
from spinesearch.modeling import builder
from spinesearch.space import known
from spinesearch.space.architecture import Scaling

TINY_ID = "zoo-test-tiny"
TINY_SCALING = {"endpoints_num_filters": 16, "filter_size_scale": 0.125, "resample_alpha": 0.25,
                "block_repeats": 1}
SIZE, CLASSES = 128, 5


@pytest.fixture(scope="module")
def garden_checkpoint(tmp_path_factory):
  """(Model Garden model, experiment config, checkpoint prefix)."""
  # Model Garden's SpineNet sizes come from its SCALING_MAP by model id; a
  # tiny id keeps the test fast.
  spinenet.SCALING_MAP[TINY_ID] = TINY_SCALING
  try:
    config = exp_factory.get_exp_config("retinanet_spinenet_coco")
    model_config = config.task.model
    model_config.backbone.spinenet.model_id = TINY_ID
    model_config.input_size = [SIZE, SIZE, 3]
    model_config.num_classes = CLASSES
    model_config.head.num_convs, model_config.head.num_filters = 1, 16
    model_config.norm_activation.use_sync_bn = False
    model_config.detection_generator.nms_version = "batched"
    # A random model scores under Model Garden's 0.05 floor everywhere; without
    # the floor its detections can be compared.
    model_config.detection_generator.pre_nms_score_threshold = 0.0
    tf_keras.utils.set_random_seed(7)
    model = retinanet_task.RetinaNetTask(config.task).build_model()
  finally:
    del spinenet.SCALING_MAP[TINY_ID]
  builder.complete_build(model)
  # As Model Garden's trainer does: model, optimizer (with its momentum slots),
  # step, and the model's backbone and head again at the root.
  optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
  optimizer.build(model.trainable_variables)
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                   global_step=tf.Variable(3, dtype=tf.int64),
                                   **model.checkpoint_items)
  prefix = checkpoint.save(str(tmp_path_factory.mktemp("garden") / "ckpt"))
  return model, config, prefix


def _matching_entry() -> ZooEntry:
  """The zoo entry of the same model: SpineNet-49 blocks at the tiny scaling,
  Model Garden's SpineNet-COCO head settings (swish, anchor size 3)."""
  scaling = Scaling(filter_size_scale=0.125, resample_alpha=0.25, endpoints_num_filters=16,
                    head_num_convs=1, head_num_filters=16)
  return ZooEntry(name="tiny-spinenet", architecture=known.spinenet49(scaling),
                  input_size=SIZE, num_classes=CLASSES,
                  head=HeadSpec(anchor_size=3.0, pre_nms_top_k=5000,
                                pre_nms_score_threshold=0.0),
                  norm_activation=NormActivation(activation="swish"),
                  provenance={"kind": "paper"})


def _image(seed=0, shape=(96, 160, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_converted_checkpoint_computes_what_model_garden_computes(garden_checkpoint, tmp_path):
  garden_model, config, prefix = garden_checkpoint
  entry = _matching_entry()
  entry_file = str(tmp_path / "source" / "entries" / "tiny-spinenet.json")
  entry.save(entry_file)
  output = str(tmp_path / "converted")
  assert cli.main(["convert", "--model_garden_checkpoint", os.path.dirname(prefix),
                   "--model", entry_file, "--output", output]) == 0
  converted = model_zoo.get_entry(entry.name, zoo_dir=output)
  assert "converted from" in converted.weights.source
  assert converted.provenance["converted_from"] == os.path.abspath(prefix)
  detector = model_zoo.load(entry.name, zoo_dir=output)

  images = tf.random.stateless_uniform([2, SIZE, SIZE, 3], seed=[3, 4], minval=-2, maxval=2)
  ours = detector.model(images, training=False)
  theirs = garden_model(images, training=False)
  for key in ("cls_outputs", "box_outputs"):
    for level in theirs[key]:
      np.testing.assert_allclose(ours[key][level].numpy(), theirs[key][level].numpy(),
                                 rtol=1e-5, atol=1e-5)

  # And end to end on an image: Model Garden's own serving module on its model
  # gives the same detections. Its boxes are in the resized image and may
  # cover the padding; ours are in the image's pixels, clipped to it.
  image = _image()
  garden_serving = detection.DetectionModule(config, batch_size=None,
                                             input_image_size=[SIZE, SIZE], model=garden_model)
  expected = {k: v.numpy() for k, v in garden_serving.serve(tf.constant(image[np.newaxis])).items()}
  got = detector.serve(image[np.newaxis])
  count = int(got["num_detections"][0])
  assert count == int(expected["num_detections"][0]) > 0
  np.testing.assert_allclose(got["detection_scores"], expected["detection_scores"], atol=1e-5)
  np.testing.assert_array_equal(got["detection_classes"], expected["detection_classes"])
  original, scale = expected["image_info"][0, 0], expected["image_info"][0, 2]
  in_resized_image = np.clip(expected["detection_boxes"][0, :count], 0,
                             np.tile(original * scale, 2))
  np.testing.assert_allclose(got["detection_boxes"][0, :count] * np.tile(scale, 2),
                             in_resized_image, atol=1e-3)


def test_a_checkpoint_of_another_model_is_refused(garden_checkpoint, tmp_path):
  _, _, prefix = garden_checkpoint
  deeper = _matching_entry()
  deeper = deeper.replace(architecture=deeper.architecture.with_scaling(head_num_convs=2))
  with pytest.raises(ZooError, match="not of this model"):
    convert.convert_checkpoint(deeper, prefix, str(tmp_path))
  assert not (tmp_path / "entries").exists()


@pytest.mark.slow
def test_a_checkpoint_of_a_wider_model_is_refused(garden_checkpoint, tmp_path):
  _, _, prefix = garden_checkpoint
  wider = _matching_entry()
  wider = wider.replace(architecture=wider.architecture.with_scaling(head_num_filters=32))
  with pytest.raises(ZooError, match="does not fit this model"):
    convert.convert_checkpoint(wider, prefix, str(tmp_path))
  assert not (tmp_path / "entries").exists()


def test_paths_that_are_not_checkpoints_are_refused(tmp_path):
  with pytest.raises(ZooError, match="no TensorFlow checkpoint"):
    convert.checkpoint_prefix(str(tmp_path))
  with pytest.raises(ZooError, match="not a TensorFlow checkpoint"):
    convert.checkpoint_prefix(str(tmp_path / "ckpt-1"))
