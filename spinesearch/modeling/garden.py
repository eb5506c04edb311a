"""SpineSearch architectures as TF Model Garden components and experiments.

Importing this module registers with Model Garden's factories:

- backbone type 'spinesearch' (`task.model.backbone.spinesearch.architecture`
  holds the architecture JSON; it builds SpineNet, SpineNetMobile, or the fixed
  ResNet of the NAS-FPN space),
- decoder type 'spinesearch' (the architecture's merging cells as NASFPN, or
  no decoder for the SpineNet space; it reads the backbone's architecture, so
  the JSON lives in one place),
- the task config `SpineSearchRetinaNetTask`, served by Model Garden's own
  `RetinaNetTask`,
- the experiment 'retinanet_spinesearch' (SpineNet-49, 91 classes, 640 px until
  overridden).

So an architecture found by a search trains with Model Garden's own trainer::

  import spinesearch.modeling.garden  # registers the above
  config = garden.experiment_config(arch, num_classes=91, image_size=640)
  params_dict.save_params_dict_to_yaml(config, "exp.yaml")
  # official/vision/train.py --experiment=retinanet_spinesearch --config_file=exp.yaml
  # (with a module that imports spinesearch.modeling.garden)

Registration happens once per process; importing again (or reloading) is safe.
"""
import dataclasses
from typing import Optional

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.core import task_factory
from official.modeling import hyperparams
from official.vision.configs import backbones as backbones_cfg
from official.vision.configs import decoders as decoders_cfg
from official.vision.configs import retinanet as retinanet_cfg
from official.vision.modeling.backbones import factory as backbone_factory
from official.vision.modeling.decoders import factory as decoder_factory
from official.vision.tasks import retinanet as retinanet_task

from spinesearch.errors import ConfigError
from spinesearch.modeling import builder
from spinesearch.space import known
from spinesearch.space.architecture import Architecture, Scaling

COMPONENT_TYPE = "spinesearch"
EXPERIMENT_NAME = "retinanet_spinesearch"
_ARCHITECTURE_KEY = "task.model.backbone.spinesearch.architecture"


@dataclasses.dataclass
class SpineSearchBackbone(hyperparams.Config):
  """The architecture JSON (one line); its `scaling` sizes backbone and decoder."""
  architecture: str = ""


@dataclasses.dataclass
class SpineSearchDecoder(hyperparams.Config):
  """Empty on purpose: the decoder is the merging cells of the backbone's
  architecture, so the JSON is written once."""


@dataclasses.dataclass
class Backbone(backbones_cfg.Backbone):
  spinesearch: SpineSearchBackbone = dataclasses.field(default_factory=SpineSearchBackbone)


@dataclasses.dataclass
class Decoder(decoders_cfg.Decoder):
  spinesearch: SpineSearchDecoder = dataclasses.field(default_factory=SpineSearchDecoder)


@dataclasses.dataclass
class SpineSearchRetinaNet(retinanet_cfg.RetinaNet):
  """Model Garden's RetinaNet model config with SpineSearch backbone/decoder."""
  backbone: Backbone = dataclasses.field(
      default_factory=lambda: Backbone(type=COMPONENT_TYPE))
  decoder: Decoder = dataclasses.field(
      default_factory=lambda: Decoder(type=COMPONENT_TYPE))
  detection_generator: retinanet_cfg.DetectionGenerator = dataclasses.field(
      default_factory=lambda: retinanet_cfg.DetectionGenerator(nms_version=builder.NMS_VERSION))


@dataclasses.dataclass
class SpineSearchRetinaNetTask(retinanet_cfg.RetinaNetTask):
  model: SpineSearchRetinaNet = dataclasses.field(default_factory=SpineSearchRetinaNet)


def architecture_from_config(backbone_config: hyperparams.Config) -> Architecture:
  """Parses the architecture JSON of a 'spinesearch' backbone OneOfConfig."""
  if backbone_config.type != COMPONENT_TYPE:
    raise ConfigError(
        f"task.model.backbone.type: the '{COMPONENT_TYPE}' decoder needs the "
        f"'{COMPONENT_TYPE}' backbone, got {backbone_config.type!r}")
  text = backbone_config.get().architecture
  if not text:
    raise ConfigError(f"{_ARCHITECTURE_KEY}: empty; set it to an architecture JSON")
  return Architecture.from_json(text, source=_ARCHITECTURE_KEY)


def build_backbone_from_config(input_specs, backbone_config, norm_activation_config,
                               l2_regularizer=None):
  """Model Garden backbone builder for type 'spinesearch'."""
  architecture = architecture_from_config(backbone_config)
  _, height, width = input_specs.shape[:3]
  if height != width:
    raise ConfigError(f"task.model.input_size: SpineSearch models take square images, "
                      f"got {height} x {width}")
  return builder.build_backbone(
      architecture, image_size=height,
      activation=norm_activation_config.activation,
      norm_momentum=norm_activation_config.norm_momentum,
      norm_epsilon=norm_activation_config.norm_epsilon,
      l2_regularizer=l2_regularizer)


def build_decoder_from_config(input_specs, model_config, l2_regularizer=None):
  """Model Garden decoder builder for type 'spinesearch'."""
  architecture = architecture_from_config(model_config.backbone)
  levels = (model_config.min_level, model_config.max_level)
  if levels != (architecture.min_level, architecture.max_level):
    raise ConfigError(
        f"task.model.min_level/max_level: {levels[0]}..{levels[1]} differ from the "
        f"architecture's output levels {architecture.min_level}..{architecture.max_level}")
  norm_activation = model_config.norm_activation
  return builder.build_decoder(
      architecture, input_specs,
      activation=norm_activation.activation,
      norm_momentum=norm_activation.norm_momentum,
      norm_epsilon=norm_activation.norm_epsilon,
      l2_regularizer=l2_regularizer)


def experiment_config(architecture: Architecture, *, num_classes: int,
                      image_size: int, scaling: Optional[Scaling] = None,
                      l2_weight_decay: float = 0.0,
                      **model_options) -> cfg.ExperimentConfig:
  """A Model Garden ExperimentConfig for a RetinaNet on `architecture`.

  `model_options` are `builder.build_retinanet`'s keyword arguments that shape
  the model (activation, norm_momentum, norm_epsilon, anchors, NMS settings);
  Model Garden's `RetinaNetTask(config.task).build_model()` then builds the same
  model as `build_retinanet` with those arguments. Training data and schedule
  keep Model Garden's defaults, to be set by the caller or a YAML override.
  """
  architecture = builder.prepare_architecture(architecture, image_size, scaling)
  fields = builder.retinanet_config_fields(
      architecture, num_classes=num_classes, image_size=image_size, **model_options)
  model = SpineSearchRetinaNet(
      backbone=Backbone(type=COMPONENT_TYPE, spinesearch=SpineSearchBackbone(
          architecture=architecture.to_json(indent=None))),
      decoder=Decoder(type=COMPONENT_TYPE),
      **fields)
  task = SpineSearchRetinaNetTask(
      model=model,
      losses=retinanet_cfg.Losses(l2_weight_decay=l2_weight_decay),
      train_data=retinanet_cfg.DataConfig(is_training=True),
      validation_data=retinanet_cfg.DataConfig(is_training=False))
  return cfg.ExperimentConfig(
      task=task,
      restrictions=["task.train_data.is_training != None",
                    "task.validation_data.is_training != None"])


def default_experiment() -> cfg.ExperimentConfig:
  """The 'retinanet_spinesearch' experiment: SpineNet-49 at 640 px, 91 classes."""
  return experiment_config(known.spinenet49(), num_classes=91, image_size=640)


def _register(register, key, target) -> None:
  """Registers unless `key` is taken already (a second import or a reload)."""
  try:
    register(key)(target)
  except KeyError:
    pass


_register(backbone_factory.register_backbone_builder, COMPONENT_TYPE,
          build_backbone_from_config)
_register(decoder_factory.register_decoder_builder, COMPONENT_TYPE,
          build_decoder_from_config)
_register(task_factory.register_task_cls, SpineSearchRetinaNetTask,
          retinanet_task.RetinaNetTask)
_register(exp_factory.register_config_factory, EXPERIMENT_NAME, default_experiment)
