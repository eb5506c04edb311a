"""EfficientDet's weighted input fusion as a decision of any space with searched
blocks: decisions, schema, round trips, and a Model Garden build whose fusion
weights are tracked and trained."""
import json
import random

import numpy as np
import pytest

from spinesearch import report_plots
from spinesearch.errors import ArchitectureError, ConfigError
from spinesearch.space import known
from spinesearch.space.architecture import Architecture, HeadSpec
from spinesearch.space.registry import build_space, space_from_config
from space_helpers import sample_round_trips

BLOCK_SPACES = [("spinenet", "default"), ("spinenet", "mobile"), ("joint", "default"),
                ("scale_decreased", "default")]


@pytest.mark.parametrize("space_name,preset", BLOCK_SPACES)
def test_every_space_with_blocks_can_search_its_fusion(space_name, preset):
  plain = build_space(space_name, preset)
  space = build_space(space_name, preset, search_fusion=True)
  assert space.name == plain.name
  assert [d.name for d in space.decisions()[len(plain.decisions()):]] == ["fusion.kind"]
  assert space.log10_size() == pytest.approx(plain.log10_size() + np.log10(2))
  samples = sample_round_trips(space, random.Random(5), 200)
  assert {architecture.fusion for architecture in samples} == {"sum", "weighted"}
  restored = space_from_config(json.loads(json.dumps(space.config())))
  assert restored.config() == space.config() and restored.name == space_name
  # The published point sums its inputs.
  assert known.published_point(space) == known.published_point(plain)
  assert known.published_point(space).fusion == "sum"


def test_fusion_and_head_stack_in_one_config():
  space = build_space("joint", search_head=True, search_fusion=True)
  names = [d.name for d in space.decisions()[-5:]]
  assert names == ["head.num_convs", "head.filters_scale", "head.separable", "fpn.repeats",
                   "fusion.kind"]
  config = json.loads(json.dumps(space.config()))
  assert set(config) >= {"head", "fusion"}
  assert space_from_config(config).config() == config
  point = known.published_point(space)
  assert point.head == HeadSpec(4, 1.0, False) and point.fusion == "sum"
  architecture = space.decode(space.sample(random.Random(1)))
  assert space.decode(space.encode(architecture)) == architecture


def test_the_nasfpn_space_and_bad_fusion_settings_are_refused():
  with pytest.raises(ConfigError, match="nasfpn space has no searched backbone blocks"):
    build_space("nasfpn", search_fusion=True)
  with pytest.raises(ConfigError, match="kind has a bad value 'mean'"):
    build_space("spinenet", search_fusion={"kind": ["sum", "mean"]})
  with pytest.raises(ConfigError, match="searches its fusion already"):
    from spinesearch.space.fusion import WithFusion
    WithFusion(build_space("spinenet", search_fusion=True))
  with pytest.raises(ConfigError, match="unknown setting"):
    space_from_config({**build_space("spinenet").config(), "fusion": {"weights": [1]}})
  only_weighted = build_space("spinenet", search_fusion={"kind": ["weighted"]})
  with pytest.raises(ArchitectureError, match="fusion.kind: 'sum' is not a choice"):
    only_weighted.encode(known.spinenet49())
  assert known.published_point(only_weighted) is None


@pytest.mark.parametrize("data,message", [
    ({"fusion": "mean"}, "fusion: must be one of sum, weighted, got 'mean'"),
    ({"fusion": 1}, "fusion: must be one of sum, weighted"),
])
def test_bad_fusion_values_are_refused(data, message):
  with pytest.raises(ArchitectureError, match=message):
    Architecture.from_dict({**known.spinenet49().to_dict(), **data})


def test_weighted_fusion_needs_searched_blocks_and_changes_the_structure():
  with pytest.raises(ArchitectureError, match="a nasfpn architecture has none"):
    Architecture.from_dict({**known.nasfpn().to_dict(), "fusion": "weighted"})
  weighted = known.spinenet49().replace(fusion="weighted")
  assert weighted.to_dict()["fusion"] == "weighted"
  assert "fusion" not in known.spinenet49().to_dict()  # old documents are unchanged
  assert weighted.fingerprint() != known.spinenet49().fingerprint()
  assert Architecture.from_json(weighted.to_json()) == weighted
  assert report_plots.head_caption(weighted) == "weighted input fusion"


@pytest.mark.parametrize("mobile", [False, True])
def test_weighted_fusion_weights_are_tracked_and_trained(mobile):
  """Model Garden's fusion variables would be graph constants; built here they
  are Keras weights: one per input of every block (two, plus the unconsumed
  blocks an output block sums in), marked by part, with gradients."""
  import tensorflow as tf
  from official.vision.modeling.backbones import spinenet, spinenet_mobile
  from spinesearch.modeling import builder, structure
  from spinesearch.oneshot import keys
  from spinesearch.proxy import ProxyConfig
  tiny = ProxyConfig.from_preset("tiny")
  point = known.mobile_spinenet49() if mobile else known.spinenet49()
  space = build_space("spinenet", "mobile" if mobile else "default")
  names = keys.block_names(space, point)
  summed = builder.build_backbone(tiny.scaled(point), image_size=128)
  marked = []

  def creator(next_creator, **kwargs):
    found = structure.current_part()
    if found and found[0].kind == "fusion":
      marked.append(keys.variable_key(found[0], found[1], True))
    return next_creator(**kwargs)

  with tf.variable_creator_scope(creator):
    weighted = builder.build_backbone(tiny.scaled(point.replace(fusion="weighted")),
                                      image_size=128, block_names=names)
  assert spinenet.tf is tf and spinenet_mobile.tf is tf  # Model Garden's module restored
  fusion = [w for w in weighted.trainable_weights if "fusion_weight" in w.name]
  assert not any("fusion_weight" in w.name for w in summed.weights)
  assert len(fusion) >= 2 * len(point.blocks)
  assert len(weighted.trainable_weights) == len(summed.trainable_weights) + len(fusion)
  assert len(marked) == len(fusion) and len(set(marked)) == len(marked)
  assert f"fusion/{names[0]}.input0/0" in marked and f"fusion/{names[0]}.input1/0" in marked
  assert any(".extra0/" in k for k in marked)  # an output block's unconsumed input
  images = tf.random.stateless_normal([2, 128, 128, 3], seed=[1, 2])
  with tf.GradientTape() as tape:
    outputs = weighted(images, training=True)
    loss = tf.add_n([tf.reduce_mean(tf.square(v)) for v in outputs.values()])
  gradients = tape.gradient(loss, fusion)
  assert all(g is not None and np.isfinite(g.numpy()) for g in gradients)
  assert sum(abs(float(g)) for g in gradients) > 0
  assert all(np.isfinite(v.numpy()).all() for v in outputs.values())
  # A weight moves the output: the fusion is in the graph, not a constant.
  before = weighted(images, training=False)
  fusion[0].assign(0.0)
  after = weighted(images, training=False)
  assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)
