"""A zoo entry as a Model Garden experiment config, and the model it builds.

The model of an entry is built by Model Garden's own RetinaNet factory from
the entry's experiment config (the registered 'spinesearch' backbone and
decoder carry the architecture), so `model_garden_config()` describes the
zoo's model exactly, including what SpineSearch's builder has no argument for
(separable-convolution heads, as in Mobile SpineNet).
"""
from typing import Dict, Optional

import spinesearch  # noqa: F401  (Keras 2 environment before TensorFlow)
import tf_keras
from official.core import config_definitions as cfg
from official.vision.modeling import factory

from model_zoo.entry import ZooEntry
from spinesearch.modeling import builder, cost, garden


def model_garden_config(entry: ZooEntry, *, image_size: Optional[int] = None,
                        num_classes: Optional[int] = None,
                        norm_momentum: Optional[float] = None) -> cfg.ExperimentConfig:
  """Model Garden's ExperimentConfig of the entry's RetinaNet (experiment
  'retinanet_spinesearch'); data paths and schedule keep Model Garden's
  defaults. `image_size`, `num_classes` and `norm_momentum` override the
  entry's (the architecture's parameters do not depend on the input size)."""
  head, norm = entry.head, entry.norm_activation
  config = garden.experiment_config(
      entry.architecture.replace(name=entry.name),
      num_classes=num_classes or entry.num_classes,
      image_size=image_size or entry.input_size,
      activation=norm.activation,
      norm_momentum=norm.norm_momentum if norm_momentum is None else norm_momentum,
      norm_epsilon=norm.norm_epsilon,
      num_scales=head.num_scales,
      aspect_ratios=head.aspect_ratios,
      anchor_size=head.anchor_size,
      pre_nms_top_k=head.pre_nms_top_k,
      pre_nms_score_threshold=head.pre_nms_score_threshold,
      nms_iou_threshold=head.nms_iou_threshold,
      max_num_detections=head.max_num_detections)
  # An entry's head may ask for separable convolutions beyond its architecture's.
  config.task.model.head.use_separable_conv = (head.use_separable_conv or
                                               entry.architecture.head.separable)
  return config


def build_model(entry: ZooEntry, *, image_size: Optional[int] = None,
                num_classes: Optional[int] = None,
                norm_momentum: Optional[float] = None) -> tf_keras.Model:
  """The entry's Model Garden RetinaNetModel, all weights created (randomly
  initialised); it takes [batch, size, size, 3] float images."""
  config = model_garden_config(entry, image_size=image_size, num_classes=num_classes,
                               norm_momentum=norm_momentum)
  return build_from_config(config)


def build_from_config(config: cfg.ExperimentConfig) -> tf_keras.Model:
  """What Model Garden's RetinaNetTask.build_model does, without its task."""
  size = config.task.model.input_size[0]
  model = factory.build_retinanet(
      input_specs=tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
      model_config=config.task.model)
  builder.complete_build(model)
  return model


def measure_cost(entry: ZooEntry, model: Optional[tf_keras.Model] = None) -> Dict[str, int]:
  """Parameters (trainable, the papers' convention, and all) and multiply-
  adds of one image at the entry's input size, as an entry records them."""
  model = model or build_model(entry)
  return {
      "params": cost.count_params(model, trainable_only=True),
      "params_all": cost.count_params(model),
      "multiply_adds": cost.count_multiply_adds(model, entry.input_size),
      "input_size": entry.input_size,
  }
