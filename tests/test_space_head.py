"""The head as a searchable part of any space (NAS-FCOS, Hit-Detector) and the
NAS-FPN repeats: decisions, schema, round trips, and the Model Garden build."""
import json
import random

import numpy as np
import pytest

from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space import known
from spinesearch.space.architecture import Architecture, HeadSpec
from spinesearch.space.registry import SPACES, build_space, space_from_config
from space_helpers import sample_round_trips


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_every_space_can_search_its_head(space_name):
  plain = build_space(space_name)
  space = build_space(space_name, search_head=True)
  assert space.name == plain.name
  extra = [d.name for d in space.decisions()[len(plain.decisions()):]]
  cells = space_name in ("nasfpn", "joint")
  assert extra == ["head.num_convs", "head.filters_scale", "head.separable"] + \
      (["fpn.repeats"] if cells else [])
  assert space.log10_size() == pytest.approx(plain.log10_size() + np.log10(4 * 3 * 2) +
                                             (np.log10(4) if cells else 0))
  heads = {(architecture.head, architecture.fpn_repeats)
           for architecture in sample_round_trips(space, random.Random(3), 200)}
  assert len(heads) >= 0.7 * 24 * (4 if cells else 1)  # most of the combinations
  restored = space_from_config(json.loads(json.dumps(space.config())))
  assert restored.config() == space.config() and restored.name == space_name


def test_the_head_survives_a_proxy_scaling_and_sets_the_built_sizes():
  from spinesearch.proxy import ProxyConfig
  tiny = ProxyConfig.from_preset("tiny")
  architecture = known.nasfpn().replace(head=HeadSpec(3, 2.0, True), fpn_repeats=7)
  scaled = tiny.scaled(architecture)
  assert scaled.head == architecture.head and scaled.fpn_repeats == 7
  built = scaled.built_scaling
  assert built.head_num_convs == 3
  assert built.head_num_filters == 2 * tiny.scaling.head_num_filters
  assert built.fpn_num_repeats == 7
  # Defaults leave the scaling as it is, and the JSON as it was.
  assert known.nasfpn().built_scaling == known.nasfpn().scaling
  assert "head" not in known.nasfpn().to_dict() and "fpn_repeats" not in known.nasfpn().to_dict()
  assert architecture.fingerprint() != known.nasfpn().fingerprint()


@pytest.mark.parametrize("data,message", [
    ({"head": {"num_convs": 9}}, "head.num_convs: expected an integer 0..8"),
    ({"head": {"filters_scale": 0}}, "head.filters_scale: expected a number > 0"),
    ({"head": {"separable": 1}}, "head.separable: expected true or false"),
    ({"head": {"kernel": 3}}, "unknown key"),
    ({"fpn_repeats": 3}, "only an architecture with merging cells"),
])
def test_bad_head_settings_are_refused(data, message):
  document = {**known.spinenet49().to_dict(), **data}
  with pytest.raises(ArchitectureError, match=message):
    Architecture.from_dict(document)


def test_a_head_outside_the_space_and_bad_choices_are_refused():
  space = build_space("spinenet", search_head=True)
  with pytest.raises(ArchitectureError, match="head.num_convs: 0 is not a choice"):
    space.encode(known.spinenet49())
  with pytest.raises(ConfigError, match="num_convs has a bad value 0"):
    build_space("spinenet", search_head={"num_convs": [0, 1]})
  with pytest.raises(ConfigError, match="unknown setting"):
    space_from_config({**build_space("nasfpn").config(), "head": {"kernel": [3]}})


@pytest.mark.parametrize("space_name", ["spinenet", "nasfpn"])
def test_searched_heads_build_through_model_garden(space_name):
  import tensorflow as tf
  from official.vision.modeling.layers import nn_layers  # noqa: F401
  from spinesearch.modeling import builder
  from spinesearch.proxy import ProxyConfig
  tiny = ProxyConfig.from_preset("tiny")
  base = known.spinenet49() if space_name == "spinenet" else known.nasfpn()
  architecture = tiny.scaled(base.replace(
      head=HeadSpec(2, 2.0, True), fpn_repeats=2 if space_name == "nasfpn" else 0))
  model = builder.build_retinanet(architecture, num_classes=3, image_size=128)
  head = model.head
  assert head.get_config()["num_convs"] == 2
  assert head.get_config()["num_filters"] == 2 * tiny.scaling.head_num_filters
  assert head.get_config()["use_separable_conv"] is True
  assert any("separable" in type(layer).__name__.lower() for layer in head.submodules)
  if space_name == "nasfpn":
    assert model.decoder.get_config()["num_repeats"] == 2
  outputs = model(tf.zeros([1, 128, 128, 3]), training=True)
  assert all(np.isfinite(v.numpy()).all() for v in outputs["cls_outputs"].values())
