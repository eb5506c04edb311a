"""Tests for spinesearch.modeling.garden: SpineSearch inside Model Garden."""
import importlib

import pytest
import tf_keras
from official.core import exp_factory
from official.core import task_factory
from official.modeling.hyperparams import params_dict
from official.vision.modeling import factory
from official.vision.tasks import retinanet as retinanet_task

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.modeling import builder, garden
from spinesearch.modeling.cost import count_params
from spinesearch.space import known
from spinesearch.space.architecture import Architecture, Scaling

SMALL_JOINT = Scaling(filter_size_scale=0.25, resample_alpha=0.25, endpoints_num_filters=32,
                      head_num_convs=2, head_num_filters=32, fpn_num_filters=32,
                      fpn_num_repeats=2)


def _architecture_of(config) -> Architecture:
  return Architecture.from_json(config.task.model.backbone.spinesearch.architecture)


def test_the_experiment_is_registered_with_a_spinenet49_default():
  config = exp_factory.get_exp_config(garden.EXPERIMENT_NAME)
  assert config.task.model.backbone.type == "spinesearch"
  assert config.task.model.decoder.type == "spinesearch"
  assert config.task.model.detection_generator.nms_version == "batched"
  assert _architecture_of(config) == known.spinenet49().validate()
  assert isinstance(task_factory.get_task(config.task), retinanet_task.RetinaNetTask)


def test_registration_survives_a_second_import():
  reloaded = importlib.reload(garden)
  config = exp_factory.get_exp_config(reloaded.EXPERIMENT_NAME)
  assert _architecture_of(config).name == "spinenet49"


def _check_task_builds_the_same_model(architecture, scaling):
  config = garden.experiment_config(architecture, num_classes=91, image_size=128,
                                    scaling=scaling)
  garden_model = retinanet_task.RetinaNetTask(config.task).build_model()
  ours = builder.build_retinanet(architecture, num_classes=91, image_size=128,
                                 scaling=scaling)
  assert type(garden_model.backbone) is type(ours.backbone)
  assert type(garden_model.decoder) is type(ours.decoder)
  assert count_params(garden_model) == count_params(ours)
  return count_params(ours)


@pytest.mark.parametrize("architecture", [
    pytest.param(known.spinenet49(), id="spinenet49"),
    pytest.param(known.spinenet49_nasfpn(), id="joint", marks=pytest.mark.slow)])
def test_model_gardens_task_builds_the_same_model_as_build_retinanet(architecture):
  _check_task_builds_the_same_model(architecture, SMALL_JOINT)


@pytest.mark.slow
def test_model_gardens_task_builds_full_size_spinenet49():
  assert _check_task_builds_the_same_model(known.spinenet49(), None) == 28_652_567


def test_yaml_round_trip_keeps_the_architecture(tmp_path):
  arch = known.spinenet49_nasfpn(SMALL_JOINT).replace(name="found-by-search")
  config = garden.experiment_config(arch, num_classes=5, image_size=256, activation="swish")
  path = str(tmp_path / "experiment.yaml")
  params_dict.save_params_dict_to_yaml(config, path)

  restored = exp_factory.get_exp_config(garden.EXPERIMENT_NAME)
  params_dict.override_params_dict(restored, path, is_strict=True)
  restored.validate()
  assert _architecture_of(restored) == arch
  assert restored.task.model.num_classes == 5
  assert restored.task.model.input_size == [256, 256, 3]
  assert restored.task.model.head.num_filters == SMALL_JOINT.head_num_filters
  assert restored.task.model.norm_activation.activation == "swish"


def test_architecture_overridden_in_yaml_text_is_built():
  config = exp_factory.get_exp_config(garden.EXPERIMENT_NAME)
  arch = known.nasfpn(SMALL_JOINT.replace(resnet_model_id=10))
  override = {"task": {"model": {
      "input_size": [128, 128, 3], "num_classes": 3,
      "head": {"num_convs": 1, "num_filters": 16},
      "backbone": {"spinesearch": {"architecture": arch.to_json(indent=None)}}}}}
  params_dict.override_params_dict(config, override, is_strict=True)
  model = retinanet_task.RetinaNetTask(config.task).build_model()
  from official.vision.modeling.decoders import nasfpn
  assert type(model.backbone).__name__ == "ResNet"
  assert isinstance(model.decoder, nasfpn.NASFPN)


def _model_config(architecture_json, input_size=(128, 128, 3)):
  config = garden.experiment_config(known.spinenet49(SMALL_JOINT), num_classes=3,
                                    image_size=128)
  model = config.task.model
  model.backbone.spinesearch.architecture = architecture_json
  model.input_size = list(input_size)
  return model


def test_bad_configs_are_reported_in_one_line():
  spec = tf_keras.layers.InputSpec(shape=[None, 128, 128, 3])
  with pytest.raises(ConfigError, match="architecture: empty"):
    factory.build_retinanet(spec, _model_config(""))
  with pytest.raises(ArchitectureError, match="task.model.backbone.spinesearch.architecture"):
    factory.build_retinanet(spec, _model_config("{not json"))
  with pytest.raises(ConfigError, match="square"):
    factory.build_retinanet(tf_keras.layers.InputSpec(shape=[None, 128, 256, 3]),
                            _model_config(known.spinenet49(SMALL_JOINT).to_json(), (128, 256, 3)))
  mismatched = _model_config(known.spinenet49(SMALL_JOINT).to_json())
  mismatched.max_level = 6
  with pytest.raises(ConfigError, match="max_level"):
    factory.build_retinanet(spec, mismatched)
